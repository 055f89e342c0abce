//! What a backend reports about an environment: [`Started`], [`StatusReport`] with its
//! [`EnvStatus`], the services' [`ServiceStatus`] (and [`CrashLoop`]), resource [`Usage`], and
//! the facts of a VM ([`VmFacts`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A started environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Host pid of the supervisor (the container's PID 1 or the VMM).
    pub pid: i32,
    pub control_socket: PathBuf,
    /// How long the start took.
    pub elapsed: Duration,
    /// Things the user should know about this start (e.g. an id mapping kept although
    /// `/etc/subuid` changed).
    #[serde(default)]
    pub notices: Vec<String>,
    /// Why the gitconfig the start was given ([`StartRequest::gitconfig`](super::StartRequest))
    /// is not inside (`None`: it was written, or none was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitconfig_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvStatus {
    Running,
    /// A start is in progress (or was interrupted; the next start or stop repairs it).
    Starting,
    Stopped,
    /// The state says running but the supervisor is gone (killed or crashed); `stop` cleans up.
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub status: EnvStatus,
    pub pid: Option<i32>,
    pub uptime: Option<Duration>,
    pub usage: Option<Usage>,
    pub services: Vec<ServiceStatus>,
    /// Processes inside (including the supervisor).
    pub processes: Option<u32>,
    /// Why the last start failed, when it did.
    pub last_error: Option<String>,
    /// VM facts (provider, vCPUs, memory, kernel, boot time) while a VM environment runs or
    /// after its VMM died; `None` for a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmFacts>,
}

/// Live resource usage; `None` where the controller or file is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub pids_current: Option<u64>,
    /// Processes killed by the OOM killer because of this environment's memory limit.
    pub oom_kills: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// Pid inside while running.
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Exit code of the last run, if it ended.
    pub last_exit: Option<i32>,
    /// Set while the service keeps exiting (see [`CrashLoop`]).
    #[serde(default)]
    pub crash_loop: Option<CrashLoop>,
}

/// A service that exited at least [`CrashLoop::MIN_EXITS`] times within the last
/// [`CrashLoop::WINDOW_SECS`] seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashLoop {
    /// Exits within the window.
    pub exits: u32,
    /// Seconds from the first of those exits until the status was taken.
    pub seconds: u64,
    /// Exit code of the last run (128 + signal number when killed by a signal).
    pub last_exit: i32,
}

impl CrashLoop {
    pub const MIN_EXITS: u32 = berth_agent_proto::restart::CRASH_LOOP_MIN_EXITS;
    pub const WINDOW_SECS: u64 = berth_agent_proto::restart::CRASH_LOOP_WINDOW.as_secs();

    /// `crash-looping: exited N times in M s, last exit code X`.
    pub fn describe(&self) -> String {
        format!(
            "crash-looping: exited {} times in {} s, last exit code {}",
            self.exits,
            self.seconds.max(1),
            self.last_exit
        )
    }
}

/// Which program runs a VM: qemu or berth's own VMM on KVM. Chosen once by `up` and
/// recorded in the VM's `vm.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmProvider {
    Qemu,
    Kvm,
}

/// VM facts shown by `berth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFacts {
    pub provider: VmProvider,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    pub kernel_release: String,
    /// Milliseconds from VMM start to agent ready.
    pub boot_ms: Option<u64>,
    pub console_log: PathBuf,
}

/// The restart policy of a berth.toml service as both the container supervisor and the VM
/// agent apply it (`berth_agent_proto::restart`: one decision, one back-off).
pub fn service_restart(policy: envfile_spec::plan::RestartPolicy) -> berth_agent_proto::Restart {
    use berth_agent_proto::Restart;
    use envfile_spec::plan::RestartPolicy;
    match policy {
        RestartPolicy::No => Restart::No,
        RestartPolicy::OnFailure => Restart::OnFailure,
        RestartPolicy::Always => Restart::Always,
    }
}
