//! Commands inside an environment: the [`ExecRequest`] every backend takes, and the
//! [`CommandSession`] of a command started without waiting for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::BackendError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries added to (and overriding) the environment's variables.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `name`, `uid` or `uid:gid` inside; `None` = the image's user, else root.
    pub user: Option<String>,
    pub tty: bool,
    /// Initial window size (rows, columns) for a tty.
    pub winsize: Option<(u16, u16)>,
}

/// A command started by [`Backend::exec_start`](super::Backend::exec_start), still running:
/// one interface for `berth run` to forward a signal or wait with a deadline, whichever
/// backend runs it.
pub trait CommandSession {
    /// Sends `signal` to the command (its process group inside).
    fn signal(&mut self, signal: i32) -> Result<(), BackendError>;
    /// The exit code once the command ended, waiting at most `timeout`; `None` while it runs.
    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>, BackendError>;
    /// Waits for the exit code.
    fn wait(self: Box<Self>) -> Result<i32, BackendError>;
    /// Sets the size (rows, columns) of the command's terminal: for a command started with
    /// `tty` (an error, or no effect, for one without a terminal).
    fn resize(&mut self, rows: u16, cols: u16) -> Result<(), BackendError>;
}
