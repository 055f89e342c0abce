//! The [`Backend`] trait: everything the environment layer needs from a way of running an
//! environment (a container, a micro-VM), and the backend-neutral types it speaks in.
//!
//! `environment::Environments` picks one backend per environment (from the plan at `up`,
//! from the record afterwards) and calls only through this trait; the container backend
//! (`container::ContainerBackend`) and the VM backend (`vm::VmBackend`) implement it, each
//! turning the plan into its own spec. This module imports neither of them.

mod error;
mod exec_request;
mod guest_forwarding;
mod report;
mod start;

use std::any::Any;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envfile_spec::Plan;

pub use error::BackendError;
pub use exec_request::{run_fed, CommandSession, ExecRequest};
pub use guest_forwarding::{ForwardConnector, ForwardKind, GuestForwarding};
pub use report::{
    service_restart, CrashLoop, EnvStatus, ServiceStatus, Started, StatusReport, Usage, VmFacts,
    VmProvider,
};
pub use start::{ImageDefaults, StartRequest};

use crate::progress::Progress;
use crate::state::BerthHome;
use crate::sync::Transport;

/// berth's own files for [`Backend::put_run_files`].
pub enum RunFiles<'a> {
    /// `[secrets]` (name, value): each `/run/secrets/NAME`, mode 0400, owned by `owner` (the
    /// `[shell]` user; `None`: root); the folder's other files are removed.
    Secrets {
        owner: Option<&'a str>,
        files: &'a [(String, Vec<u8>)],
    },
    /// The environment's gitconfig (`/run/berth/gitconfig`, 0644, root's); `None` removes it.
    Gitconfig(Option<&'a str>),
}

/// What `berth logs` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsRequest {
    pub services: Vec<String>,
    /// Only the last this many lines.
    pub tail: Option<usize>,
    /// Keep printing what is appended until interrupted.
    pub follow: bool,
}

/// What a backend's snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotForm {
    /// A tar of the writable layer: only fits the image it was taken on.
    Layer,
    /// A self-contained copy of a disk (its base image pinned beside it).
    Disk,
}

impl SnapshotForm {
    /// How an error message names it.
    pub fn describe(self) -> &'static str {
        match self {
            SnapshotForm::Layer => "a container's writable layer",
            SnapshotForm::Disk => "a VM disk",
        }
    }
}

/// What [`Backend::snapshot_save`] wrote under the snapshots folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSnapshot {
    /// Bytes the snapshot takes.
    pub size: u64,
    /// The folder holding a disk snapshot (`None` for a layer's `<name>.tar`).
    pub disk: Option<String>,
}

/// Both sides of every mount the live sync serves, and how it knows the environment is
/// still there.
pub struct SyncEndpoint {
    /// (host side, environment side) per mount, in the order asked.
    pub pairs: Vec<(Arc<dyn Transport>, Arc<dyn Transport>)>,
    /// Whether the environment (and the channel to it) is still there; called every 200 ms.
    pub alive: Box<dyn FnMut() -> bool + Send>,
    /// When the environment goes away under the sync, say this and fail (`None`: end
    /// quietly).
    pub gone: Option<String>,
    /// Held while the sync runs (folders kept open, the connection's reader).
    pub keep: Box<dyn Any + Send>,
}

/// One way of running environments. Every method takes the environment's folder
/// (`BerthHome::env_dir`); the caller holds the environment's lock around the ones that
/// change it (start, stop, destroy, snapshots).
pub trait Backend {
    /// Starts the environment of `req.plan` and returns once it accepts commands; its
    /// supervisor (or VMM) keeps running detached.
    fn start(&self, req: &StartRequest<'_>) -> Result<Started, BackendError>;
    /// Starts the services of an environment started with `hold_services` (a no-op where
    /// services start with the environment).
    fn start_services(&self, state_dir: &Path) -> Result<(), BackendError>;
    /// Replaces the names (name, address) the running environment resolves for its sidecars
    /// (`StartRequest::hosts`): a VM's `/etc/hosts` block, after a sidecar restarted with
    /// another address. A container's sidecars share its `localhost`: nothing to do.
    fn set_hosts(
        &self,
        state_dir: &Path,
        hosts: &[(String, std::net::Ipv4Addr)],
    ) -> Result<(), BackendError>;
    /// Writes berth's own files into the running environment's tmpfs folders (never onto a
    /// disk): `[secrets]` into `/run/secrets`, or the environment's gitconfig into
    /// `/run/berth`; see [`RunFiles`].
    fn put_run_files(&self, state_dir: &Path, files: RunFiles<'_>) -> Result<(), BackendError>;
    /// SIGTERM to everything inside, SIGKILL after `timeout`, then removes what the start
    /// created (except the writable layer or disk). Also repairs a crashed or half-started
    /// one.
    fn stop(&self, state_dir: &Path, timeout: Duration) -> Result<(), BackendError>;
    /// The part of [`Backend::stop`] a caller must wait for: when it returns, the
    /// environment's processes are gone and its forwarded host ports are free. Whether
    /// something is left for [`Backend::finish_stop`] (the environment's lock held until
    /// then; the next `stop` does it as well). By default all of `stop`.
    fn stop_processes(&self, state_dir: &Path, timeout: Duration) -> Result<bool, BackendError> {
        self.stop(state_dir, timeout)?;
        Ok(false)
    }
    /// The rest of a stop that [`Backend::stop_processes`] left (waiting for the kernel's
    /// teardown of what the processes leave, removing cgroups and network); nothing for an
    /// environment started again since. By default nothing: the default `stop_processes`
    /// leaves nothing.
    fn finish_stop(&self, _state_dir: &Path, _timeout: Duration) -> Result<(), BackendError> {
        Ok(())
    }
    /// Stops the environment and deletes what a stop keeps (a VM's disk); the caller
    /// removes the environment's folder afterwards.
    fn destroy(&self, state_dir: &Path, timeout: Duration) -> Result<(), BackendError>;
    fn status(&self, state_dir: &Path) -> Result<StatusReport, BackendError>;
    /// [`Backend::status`] without the resource usage (`usage` is `None`): what `up`
    /// decides with (the state, the pid, the services), at every warm `up`. By default the
    /// full status.
    fn status_without_usage(&self, state_dir: &Path) -> Result<StatusReport, BackendError> {
        self.status(state_dir)
    }
    /// Only the state [`Backend::status`] reports, as cheaply as the backend can tell it
    /// (`berth ls` asks it of every environment): by default the full status.
    fn liveness(&self, state_dir: &Path) -> EnvStatus {
        self.status(state_dir)
            .map(|s| s.status)
            .unwrap_or(EnvStatus::Dead)
    }
    /// Whether the environment still answers: a command that failed while it does not
    /// failed because the environment stopped under it.
    fn still_running(&self, state_dir: &Path) -> bool;
    /// Resumes an environment left paused (a killed `snapshot save`); the notice to show
    /// when it was.
    fn resume_if_paused(&self, state_dir: &Path) -> Result<Option<String>, BackendError>;
    /// Runs a command inside with the given stdin/stdout/stderr; returns its exit code.
    fn exec(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32, BackendError>;
    /// Starts a command without waiting for it, to forward signals or enforce a deadline.
    /// With `req.tty` it runs on a new terminal inside: the bytes read from `stdio[0]` are
    /// typed on it, everything it shows is written to `stdio[1]` (`stdio[2]` stays unused),
    /// and [`CommandSession::resize`] changes its size (the SSH endpoint's PTY sessions).
    fn exec_start(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<Box<dyn CommandSession>, BackendError>;
    /// An interactive command on the caller's terminal (or plain stdio when not a terminal).
    fn shell(&self, state_dir: &Path, req: &ExecRequest) -> Result<i32, BackendError>;
    /// The services whose logs `berth logs` shows by default.
    fn logged_services(&self, state_dir: &Path, plan: &Plan) -> Vec<String>;
    /// Prints the services' logs on stdout; the exit code.
    fn logs(&self, state_dir: &Path, req: &LogsRequest) -> Result<i32, BackendError>;
    /// Keeps the writable state (layer, disk) aside because the image changed: the
    /// environment starts fresh, the user's changes stay one generation. The notice to show.
    fn set_aside(&self, state_dir: &Path) -> Result<Option<String>, BackendError>;
    /// Indexes (in `plan.mounts`) of the mounts berth's sync process serves.
    fn sync_mounts(&self, state_dir: &Path, plan: &Plan) -> Vec<usize>;
    /// The two sides of each of `mounts` for the sync process of the running environment
    /// (`cancelled`: give up retrying).
    fn sync_endpoint(
        &self,
        state_dir: &Path,
        home: &BerthHome,
        plan: &Plan,
        mounts: &[usize],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<SyncEndpoint, String>;
    /// What this backend's snapshots hold.
    fn snapshot_form(&self) -> SnapshotForm;
    /// Captures the environment's writable state as snapshot `name` in `snaps` (made in a
    /// hidden `.partial` place and renamed in).
    fn snapshot_save(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
    ) -> Result<SavedSnapshot, BackendError>;
    /// Stops the environment and puts snapshot `name` (`disk`: its folder) back; returns
    /// whether it was running (the caller starts it again then).
    fn snapshot_restore(
        &self,
        state_dir: &Path,
        snaps: &Path,
        name: &str,
        disk: Option<&str>,
        env_name: &str,
        progress: &Progress,
    ) -> Result<bool, BackendError>;
}
