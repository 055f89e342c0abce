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
    /// The host's credentials for a backend that relays them itself (a VM's agent; set by
    /// `SessionCredentials::add_env`). Never serialized: a container's come through sockets
    /// made before its command starts.
    #[serde(skip)]
    pub forward: Option<super::GuestForwarding>,
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

/// Runs `argv` as root inside the running environment in `dir` with `input` on its stdin
/// (fed from a thread of its own, so a large input cannot block on a full pipe); `Err`
/// holds what the command wrote to stderr (at most 4 KiB) and its exit code, or why it
/// could not run. For berth's own builtins that write into the environment at `up`.
pub fn run_fed(
    backend: &dyn super::Backend,
    dir: &std::path::Path,
    argv: Vec<String>,
    input: Vec<u8>,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let feeder = std::thread::spawn(move || {
        let mut w = std::fs::File::from(w);
        let _ = w.write_all(&input);
    });
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let req = ExecRequest {
        argv,
        env: Vec::new(),
        cwd: Some("/".into()),
        user: Some("0".into()),
        tty: false,
        winsize: None,
        forward: None,
    };
    let code = backend.exec(dir, &req, [r.as_fd(), devnull.as_fd(), err_w.as_fd()]);
    drop((r, err_w));
    let _ = feeder.join();
    let mut why = String::new();
    let _ = std::fs::File::from(err_r)
        .take(4096)
        .read_to_string(&mut why);
    match code {
        Ok(0) => Ok(()),
        Ok(c) => Err(format!("{} (exit {c})", why.trim())),
        Err(e) => Err(e.to_string()),
    }
}
