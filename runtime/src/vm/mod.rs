//! The VM backend: the same berth.toml as a micro-VM. Two providers share the guest side
//! (kernel, initramfs, root disk, agent): berth's own VMM on KVM (the `berth-vmm`
//! crate, run as a process by `vmm_process`) and qemu (`qemu`).
//! [`VmBackend`] is the entry point; it implements [`crate::backend::Backend`] (`vm_seam`).

pub mod agent_binary;
pub mod connect;
pub mod disk_snapshot;
pub mod error;
pub mod guest_command;
pub mod guest_logs;
pub mod guest_streams;
pub mod kernel;
pub mod qemu;
pub mod qmp;
pub mod rootdisk;
pub mod shared_folder;
pub mod startup;
pub mod sync_channel;
pub mod vm_backend;
pub mod vm_record;
pub mod vm_seam;
pub mod vm_spec;
pub mod vmm_memory;
pub mod vmm_process;

#[cfg(test)]
mod vm_json_tests;
#[cfg(test)]
mod vmm_network_tests;

use std::path::{Path, PathBuf};

/// Control channels offered to the agent: `control.sock`, `control-1.sock`, ... (one client
/// each, so `exec` works while a `shell` is open).
pub const CONTROL_CHANNELS: usize = 4;

/// The sockets of all control channels, given the first (`…/control.sock`).
pub fn control_sockets(first: &Path) -> Vec<PathBuf> {
    (0..CONTROL_CHANNELS)
        .map(|i| match i {
            0 => first.to_path_buf(),
            i => first.with_file_name(format!("control-{i}.sock")),
        })
        .collect()
}

/// The lock a client holds while it uses channel socket `socket`.
pub fn control_lock(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

pub use crate::backend::VmProvider as Provider;
pub use berth_agent_proto as agent_proto;
pub use connect::VmConnection;
pub use error::VmError;
pub use vm_backend::VmBackend;
pub use vm_record::{VmState, VmStatus};
pub use vm_spec::VmSpec;
