//! Links `berth` as a position-dependent executable (`-no-pie`).
//!
//! The same binary runs as the CLI, the launcher and every environment's supervisor, which
//! stays resident for the environment's whole life. As a position-independent executable its
//! 22,000 pointers in read-only data (`.data.rel.ro`: vtables, string tables, clap's and
//! serde's statics) are rewritten by the dynamic loader at every start: 92 pages copied per
//! process (372 KiB of private memory in each idle supervisor, a third of an environment's
//! cost) and that many page faults and relocations in each CLI command. Linked at a fixed
//! address those pages need no rewriting: they stay clean pages of the file, shared by every
//! berth process. The code is still compiled position-independent; only the link changes.
//! The shared libraries, stack, heap and mappings keep their randomized addresses.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
