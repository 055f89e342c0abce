//! [`VmError`]: what can go wrong running an environment as a VM; each says what to do next.

use std::path::PathBuf;

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
    Kernel(#[from] super::kernel::KernelError),
    #[error(transparent)]
    Disk(#[from] super::rootdisk::DiskError),
    #[error(transparent)]
    Qemu(#[from] super::qemu::QemuError),
    #[error(transparent)]
    Vmm(#[from] berth_vmm::VmmError),
    #[error(transparent)]
    Qmp(#[from] super::qmp::QmpError),
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
}
