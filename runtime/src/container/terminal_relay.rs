//! A tty exec driven through plain fds instead of the caller's terminal: what
//! [`Backend::exec_start`](crate::backend::Backend::exec_start) gives for `tty` (the SSH
//! endpoint's PTY sessions). A thread copies the bytes of the input fd onto the PTY master
//! the supervisor passed back and what the PTY shows to the output fd; the window size is set
//! on the master by [`CommandSession::resize`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::control::ExecSession;
use super::error::{ContainerError, Result};
use super::terminal::{set_window_size, write_all};
use crate::backend::{BackendError, CommandSession};

/// A command on a PTY inside the container, its terminal relayed to two fds.
pub struct RelayedTerminal {
    session: ExecSession,
    master: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned()
        .map_err(|e| ContainerError::io("cannot duplicate a terminal's fd", e))
}

impl RelayedTerminal {
    /// Relays `session`'s terminal (started by `exec_tty`) to `input` and `output`.
    pub fn start(
        mut session: ExecSession,
        input: BorrowedFd<'_>,
        output: BorrowedFd<'_>,
        winsize: Option<(u16, u16)>,
    ) -> Result<RelayedTerminal> {
        let master = session
            .master
            .take()
            .ok_or_else(|| ContainerError::Protocol("no terminal in this session".into()))?;
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| ContainerError::io("cannot configure the terminal", e.into()))?;
        if let Some(ws) = winsize {
            set_window_size(master.as_fd(), ws);
        }
        let master = Arc::new(master);
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            master: master.clone(),
            input: dup(input)?,
            output: dup(output)?,
            stop: stop.clone(),
        };
        let relay = std::thread::spawn(move || relay.run());
        Ok(RelayedTerminal {
            session,
            master,
            stop,
            relay: Some(relay),
        })
    }

    /// Lets the relay copy what is left on the terminal, then ends it (closing the output).
    fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.relay.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RelayedTerminal {
    fn drop(&mut self) {
        self.finish();
    }
}

impl CommandSession for RelayedTerminal {
    fn signal(&mut self, signal: i32) -> std::result::Result<(), BackendError> {
        Ok(self.session.signal(signal)?)
    }
    fn wait_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Option<i32>, BackendError> {
        let r = CommandSession::wait_timeout(&mut self.session, timeout);
        if !matches!(r, Ok(None)) {
            self.finish();
        }
        r
    }
    fn wait(mut self: Box<Self>) -> std::result::Result<i32, BackendError> {
        let r = self.session.wait_ref();
        self.finish();
        Ok(r?)
    }
    fn resize(&mut self, rows: u16, cols: u16) -> std::result::Result<(), BackendError> {
        set_window_size(self.master.as_fd(), (rows, cols));
        Ok(())
    }
}

/// The copying thread.
struct Relay {
    master: Arc<OwnedFd>,
    input: OwnedFd,
    output: OwnedFd,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn run(self) {
        let mut input_open = true;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            let mut fds = [
                PollFd::new(self.master.as_fd(), PollFlags::POLLIN),
                PollFd::new(
                    self.input.as_fd(),
                    if input_open && !stopping {
                        PollFlags::POLLIN
                    } else {
                        PollFlags::empty()
                    },
                ),
            ];
            // Once the command has ended, only what the terminal still holds is copied.
            let timeout = if stopping { 0u16 } else { 100u16 };
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return,
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let (m_ready, i_ready) = (ready(&fds[0]), ready(&fds[1]));
            if m_ready {
                match nix::unistd::read(self.master.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(Errno::EIO) => return,
                    Ok(n) => {
                        if !write_all(self.output.as_fd(), &buf[..n]) {
                            return;
                        }
                        continue;
                    }
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(_) => return,
                }
            }
            if stopping {
                return;
            }
            if i_ready && input_open {
                match nix::unistd::read(self.input.as_raw_fd(), &mut buf) {
                    // End of input: an EOF (Ctrl-D) for the line discipline, as a
                    // terminal's user would type it.
                    Ok(0) => {
                        input_open = false;
                        write_all(self.master.as_fd(), &[4]);
                    }
                    Ok(n) => {
                        write_all(self.master.as_fd(), &buf[..n]);
                    }
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                    Err(_) => input_open = false,
                }
            }
        }
    }
}
