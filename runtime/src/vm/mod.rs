//! The VM backend: the same berth.toml as a micro-VM. Two providers share the guest side
//! (kernel, initramfs, root disk, agent): berth's own VMM on KVM (`vmm`) and qemu (`qemu`).
//! [`VmBackend`] is the entry point for the CLI.

pub mod agent_binary;
pub mod vm_backend;
pub mod disk_snapshot;
pub mod guest_logs;
pub mod kernel;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod rootdisk;
pub mod command;
pub mod shared_folder;
pub mod sync_channel;
pub mod vmm;
pub mod vmm_memory;
pub mod vmm_process;

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

pub use vm_backend::{Provider, VmBackend, VmConnection, VmSpec, VmState, VmStatus};
pub use berth_agent_proto as agent_proto;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm here is kvm_pvm, which cannot safely boot a Linux kernel (it may restart the host); use vmm = \"qemu\" (or \"auto\")")]
    UnsafeKvm,
    #[error(
        "vmm = \"kvm\" needs /dev/kvm, which this host lacks; use vmm = \"qemu\" (or \"auto\")"
    )]
    NoKvm,
    #[error("the static berth-agent was not found (looked at: {}); run `scripts/build-agent` in berth's source tree (it installs the agent beside the berth binary), or set BERTH_AGENT to a berth-agent built with `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p berth-agent --release --target x86_64-unknown-linux-gnu`", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoAgent(Vec<PathBuf>),
    #[error("{0} is dynamically linked, but the agent must run inside any guest image: build it with `scripts/build-agent` (static, `-C target-feature=+crt-static`)")]
    DynamicAgent(PathBuf),
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Disk(#[from] rootdisk::DiskError),
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error(transparent)]
    Ports(#[from] crate::net::forward::ForwardError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Agent(#[from] berth_agent_proto::ClientError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("VM configuration: {0}")]
    Config(String),
    #[error("the VM did not become ready: {reason}\n--- last console lines ---\n{console}")]
    Boot { reason: String, console: String },
    #[error("the VM is not running; start it with `berth up`")]
    NotRunning,
    #[error("all control channels of this VM are in use by other berth commands; wait for one to finish")]
    Busy,
    #[error("on_up command `{command}` failed with exit code {code}: {stderr}")]
    OnUp {
        command: String,
        code: i32,
        stderr: String,
    },
}
