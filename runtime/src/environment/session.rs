//! [`CommandSession`]: a command started by [`Environments::exec_start`](super::Environments::exec_start)
//! in a container or a VM, with one interface for `berth run`: forward a signal, wait with a
//! deadline.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::error::EnvError;
use crate::container::control::ExecSession;
use crate::vm::command::VmCommand;

pub enum CommandSession {
    Container(ExecSession),
    Vm(VmCommand),
}

impl CommandSession {
    /// Sends `signal` to the command (its process group inside).
    pub fn signal(&mut self, signal: i32) -> Result<(), EnvError> {
        match self {
            CommandSession::Container(s) => Ok(s.signal(signal)?),
            CommandSession::Vm(c) => Ok(c.signal(signal)?),
        }
    }

    /// The exit code once the command ended, waiting at most `timeout`; `None` while it runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>, EnvError> {
        match self {
            CommandSession::Container(s) => {
                let ready = s.reply_buffered() || {
                    // SAFETY: the session owns this fd and outlives the poll.
                    let fd = unsafe { BorrowedFd::borrow_raw(s.control_fd()) };
                    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                    let ms = timeout.as_millis().min(u128::from(u16::MAX)) as u16;
                    poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0
                };
                if ready {
                    Ok(Some(s.wait_ref()?))
                } else {
                    Ok(None)
                }
            }
            CommandSession::Vm(c) => Ok(c.wait_timeout(timeout)?),
        }
    }

    /// Waits for the exit code.
    pub fn wait(self) -> Result<i32, EnvError> {
        match self {
            CommandSession::Container(s) => Ok(s.wait()?),
            CommandSession::Vm(c) => Ok(c.wait()?),
        }
    }
}
