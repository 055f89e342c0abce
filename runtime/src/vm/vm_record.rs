//! `envs/<id>/vm.json`: what berth recorded about a VM it started ([`VmState`]: provider,
//! VMM process, sockets, kernel, boot time, and the choices made at `up`), and reading it
//! back ([`VmStatus`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Provider;
use crate::host::process::ProcessIdentity;

/// Recorded in `vm.json` before the VMM starts and completed once the agent is ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub provider: Provider,
    pub accel: String,
    pub process: Option<ProcessIdentity>,
    pub control_socket: PathBuf,
    pub console_log: PathBuf,
    pub disk: PathBuf,
    pub vcpus: u32,
    pub memory: u64,
    pub kernel_release: String,
    /// Unix time (ms) the VMM was started.
    pub started_at_ms: u64,
    /// Milliseconds from VMM start to agent ready.
    pub boot_ms: Option<u64>,
    /// Host side of the guest's vsock (berth's VMM): connect and send `CONNECT <port>\n` to
    /// reach a guest port; guest connections to host port P arrive at `<path>_<P>`.
    #[serde(default)]
    pub vsock_socket: Option<PathBuf>,
    /// The virtiofsd processes serving the VM's shared folders (qemu); they end with qemu.
    #[serde(default)]
    pub shares: Vec<ProcessIdentity>,
    /// qemu's QMP socket (none for berth's VMM, or a VM started by an older berth).
    #[serde(default)]
    pub qmp_socket: Option<PathBuf>,
    /// Whether the VM shares host folders through virtio-fs, decided at `up` (`None`: a VM
    /// started by an older berth, which did not say).
    #[serde(default)]
    pub folders_shared: Option<bool>,
    /// The image's working directory and user: where and as whom a command runs that does
    /// not say (as in a container).
    #[serde(default)]
    pub image_workdir: Option<String>,
    #[serde(default)]
    pub image_user: Option<String>,
    /// The agent booted with the VM forwards credentials (`Forward` and its streams); one
    /// booted by an older berth does not, and a `Forward` could cost it the `Exec` after it.
    #[serde(default)]
    pub agent_streams: bool,
}

#[cfg(test)]
impl VmState {
    /// The record of a 256 MiB, 1-vCPU VM of `provider` in `env` whose VMM is `pid` (tests
    /// stand a plain process in for the VMM).
    pub(crate) fn stand_in(provider: Provider, env: &Path, pid: u32) -> VmState {
        let kvm = provider == Provider::Kvm;
        VmState {
            provider,
            accel: if kvm { "kvm" } else { "tcg" }.into(),
            process: ProcessIdentity::of(pid as i32),
            control_socket: env.join("control.sock"),
            console_log: env.join("console.log"),
            disk: env.join(if kvm { "disk.img" } else { "disk.qcow2" }),
            vcpus: 1,
            memory: 1 << 28,
            kernel_release: "6.1".into(),
            started_at_ms: 0,
            boot_ms: Some(1),
            vsock_socket: kvm.then(|| env.join("vsock.sock")),
            shares: vec![],
            qmp_socket: None,
            folders_shared: Some(false),
            image_workdir: None,
            image_user: None,
            agent_streams: true,
        }
    }
}

/// Said when a VM left paused was resumed.
pub const PAUSED_NOTICE: &str = "the VM was paused (a `berth snapshot save` was interrupted while it copied the disk); resumed it";

/// What `berth status` shows for a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub running: bool,
    pub state: Option<VmState>,
}

pub(super) fn vm_json(state_dir: &Path) -> PathBuf {
    state_dir.join("vm.json")
}

/// The last `n` lines of the console log, for error messages.
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
