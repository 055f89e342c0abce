//! The error type of the container backend.

use std::io;

use crate::state::StateError;

/// Everything that can go wrong starting, running or stopping a container environment. Each
/// message says what failed, where, and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A system call or file operation failed; `context` names the operation and its target.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// The environment description cannot be run as given.
    #[error("invalid environment: {0}")]
    Invalid(String),
    /// Setting up the environment failed inside the supervisor (message from the failing step).
    #[error("starting the environment failed: {0}")]
    Setup(String),
    /// The control socket answered something unexpected or broke off.
    #[error("control connection to the environment failed: {0}; if the environment is broken, run `berth down` and `berth up` again")]
    Protocol(String),
    /// The environment is not running (never started, stopped, or its supervisor died).
    #[error("environment {env_id} is not running; start it with `berth up`")]
    NotRunning { env_id: String },
    #[error(transparent)]
    State(#[from] StateError),
    /// A `[[ports]]` host port cannot be bound (taken: the message names the holder).
    #[error(transparent)]
    Forward(#[from] crate::net::forward::ForwardError),
    /// Setting up or removing the environment's network failed.
    #[error(transparent)]
    Network(#[from] crate::net::NetError),
}

impl ContainerError {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        ContainerError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an errno from `nix`.
    pub fn sys(context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        ContainerError::Io {
            context: context.into(),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }

    /// The environment whose state folder is `state_dir` is not running.
    pub fn not_running_at(state_dir: &std::path::Path) -> Self {
        ContainerError::NotRunning {
            env_id: state_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn path_io(what: &str, path: &std::path::Path, source: io::Error) -> Self {
        Self::io(format!("{what} {}", path.display()), source)
    }
}

/// Shorthand used across the container modules.
pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Helper trait to attach context to `nix` and `io` results.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ContainerError::io(what(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, nix::errno::Errno> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ContainerError::sys(what(), e))
    }
}
