//! The client side of a tty exec (`berth shell`): the caller's terminal in raw mode, bytes
//! copied between it and the PTY master the supervisor passed back, window size copied on
//! start and on every SIGWINCH, exit code from the control connection. Ctrl-C and Ctrl-D are
//! plain bytes in raw mode, so they reach the shell inside exactly as typed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios::{self, SetArg, Termios};

use super::control::ExecSession;
use super::error::{ContainerError, Result};

/// Restores the terminal's settings when dropped (also on error paths).
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    /// Raw mode on `fd` when it is a terminal; `None` otherwise.
    pub fn enter(fd: BorrowedFd<'a>) -> Option<RawMode<'a>> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// (rows, columns) of a terminal.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    berth_inside_files::window_size::get(fd.as_raw_fd())
}

pub(crate) fn set_window_size(fd: BorrowedFd<'_>, (rows, cols): (u16, u16)) {
    berth_inside_files::window_size::set(fd.as_raw_fd(), rows, cols);
}

pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut p, PollTimeout::from(100u16));
            }
            Err(_) => return false,
        }
    }
    true
}

/// Copies between `input`/`output` and the session's PTY until the process exits; returns
/// its exit code. `input` is put in raw mode when it is a terminal.
pub fn run_terminal(
    mut session: ExecSession,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
) -> Result<i32> {
    let master = session
        .master
        .take()
        .ok_or_else(|| ContainerError::Protocol("no terminal in this session".into()))?;
    let _ = nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let _raw = RawMode::enter(input);
    if let Some(ws) = window_size(input) {
        set_window_size(master.as_fd(), ws);
    }
    let mut winch = SigSet::empty();
    winch.add(Signal::SIGWINCH);
    let _ = winch.thread_block();
    let sigfd = SignalFd::with_flags(&winch, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok();
    // SAFETY: the control fd lives in `session` for this whole function.
    let control = unsafe { BorrowedFd::borrow_raw(session.control_fd()) };
    let mut input_open = true;
    let mut master_open = true;
    let mut buf = [0u8; 16384];
    let result = loop {
        let mut fds = vec![PollFd::new(control, PollFlags::POLLIN)];
        let mi = fds.len();
        fds.push(PollFd::new(
            master.as_fd(),
            if master_open {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        ));
        let ii = fds.len();
        fds.push(PollFd::new(
            input,
            if input_open {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            },
        ));
        let si = fds.len();
        if let Some(s) = &sigfd {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        // An exit status read together with the Started answer never makes the socket
        // readable again: do not block then.
        let timeout = if session.reply_buffered() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(ContainerError::io("poll on the terminal failed", e.into())),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (c_ready, m_ready, i_ready, s_ready) = (
            ready(0) || session.reply_buffered(),
            ready(mi),
            ready(ii),
            sigfd.is_some() && ready(si),
        );
        drop(fds);
        if m_ready && master_open {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => master_open = false,
                Ok(n) => {
                    write_all(output, &buf[..n]);
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => master_open = false,
            }
        }
        if i_ready && input_open {
            match nix::unistd::read(input.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    // End of a non-terminal input: send EOF (Ctrl-D) to the line discipline.
                    input_open = false;
                    write_all(master.as_fd(), &[4]);
                }
                Ok(n) => {
                    write_all(master.as_fd(), &buf[..n]);
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => input_open = false,
            }
        }
        if s_ready {
            if let Some(s) = &sigfd {
                while let Ok(Some(_)) = s.read_signal() {}
            }
            if let Some(ws) = window_size(input) {
                set_window_size(master.as_fd(), ws);
            }
        }
        if c_ready {
            let code = session.wait_ref();
            // Flush what the process wrote just before exiting.
            while master_open {
                match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                    Ok(n) if n > 0 => {
                        write_all(output, &buf[..n]);
                    }
                    _ => master_open = false,
                }
            }
            break code;
        }
    };
    let _ = winch.thread_unblock();
    result
}
