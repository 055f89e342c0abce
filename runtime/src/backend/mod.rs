//! The [`Backend`] trait: what the CLI needs from any way of running an environment
//! (containers now, micro-VMs later), and the backend-neutral result types.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::container::cgroups::Usage;
use crate::container::control::{ExecRequest, ServiceStatus};

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
}

/// One way of running environments.
pub trait Backend {
    type Spec;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Starts the environment and returns once it accepts commands; its supervisor keeps
    /// running detached.
    fn start(&self, spec: &Self::Spec) -> Result<Started, Self::Error>;
    /// SIGTERM to everything inside, SIGKILL after `timeout`, then removes what the start
    /// created (except the writable layer). Also repairs a crashed or half-started one.
    fn stop(&self, state_dir: &Path, timeout: Duration) -> Result<(), Self::Error>;
    /// Runs a command inside with the given stdin/stdout/stderr; returns its exit code.
    fn exec(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, Self::Error>;
    fn status(&self, state_dir: &Path) -> Result<StatusReport, Self::Error>;
}
