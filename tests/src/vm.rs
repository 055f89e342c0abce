//! What the VM tests (runtime's `vm_qemu` and the e2e `vm`) share: the workspace, the static
//! guest agent, and one kernel cache per checkout so the Debian kernel is downloaded once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where the VM tests keep downloaded kernels (shared by every VM test of this checkout).
pub fn kernel_cache() -> PathBuf {
    workspace().join("target/berth-test-cache/kernels")
}

/// The static agent, built the way `scripts/build-agent` builds it (into
/// `target/agent-static`; a no-op when it is up to date).
pub fn static_agent() -> PathBuf {
    let target_dir = workspace().join("target/agent-static");
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "berth-agent",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace())
        .status()
        .unwrap();
    assert!(st.success(), "building the static agent failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/berth-agent")
}
