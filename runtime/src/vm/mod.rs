//! The VM backend: the same berth.toml as a micro-VM. Two providers share the guest side
//! (kernel, initramfs, root disk, agent): berth's own VMM on KVM (`vmm`) and qemu (`qemu`).

pub mod kernel;
pub mod vmm;
