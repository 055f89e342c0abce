//! A command in the VM wired to the caller's stdin/stdout/stderr: [`VmCommand`].
//!
//! Two threads serve a running command. The *waiter* owns the agent connection: it writes the
//! command's stdout and stderr frames to the caller's fds as they arrive and reports the exit
//! status through a channel, so the caller can wait with a deadline and still send signals.
//! The *input forwarder* copies the caller's stdin to the command (end of input is sent on
//! EOF) and, for a terminal session, the window size on every SIGWINCH; it stops as soon as
//! the command has exited, so it never swallows input meant for whatever runs next.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_agent_proto::{ClientError, Exec, SessionHandle};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::guest_streams::{forward_request, GuestStreams};
use super::{VmConnection, VmError};
use crate::backend::GuestForwarding;
use crate::container::terminal::{window_size, RawMode};

/// A command started in the VM, still running.
pub struct VmCommand {
    handle: SessionHandle,
    exited: mpsc::Receiver<Result<i32, ClientError>>,
    stop_input: Arc<AtomicBool>,
    input: Option<JoinHandle<()>>,
    waiter: Option<JoinHandle<()>>,
    /// SIGWINCH was blocked for this thread by `start`; unblocked when the command ends.
    winch_blocked: bool,
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, VmError> {
    fd.try_clone_to_owned().map_err(|e| VmError::Io {
        path: format!("fd {}", fd.as_raw_fd()).into(),
        source: e,
    })
}

impl VmCommand {
    /// Starts `exec` over `conn` with the given stdin, stdout and stderr, with the host's
    /// credentials `forward`ed to it (the agent's streams relayed by [`GuestStreams`] while
    /// it runs). With `exec.tty`, stdin is forwarded byte for byte and SIGWINCH resizes the
    /// guest's terminal (put the terminal in raw mode yourself, or use [`run_terminal`]).
    pub fn start(
        conn: VmConnection,
        exec: Exec,
        forward: Option<&GuestForwarding>,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<VmCommand, VmError> {
        let input = dup(stdio[0])?;
        let mut out = File::from(dup(stdio[1])?);
        let mut err = File::from(dup(stdio[2])?);
        let tty = exec.tty;
        let mut client = conn.client;
        let handle = client.start_forwarding(exec, forward.map(forward_request))?;
        let mut streams = forward.map(|f| {
            let warn = err
                .try_clone()
                .ok()
                .map(|w| Box::new(w) as Box<dyn Write + Send>);
            GuestStreams::new(handle.clone(), f.clone(), warn)
        });
        // Blocked before the forwarder thread exists, so it inherits the mask and its
        // signalfd is the only receiver of SIGWINCH.
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        let winch_blocked = tty && winch.thread_block().is_ok();
        let stop_input = Arc::new(AtomicBool::new(false));
        let forwarder = InputForwarder {
            input,
            handle: handle.clone(),
            stop: stop_input.clone(),
            watch_winch: winch_blocked,
        };
        let input_thread = std::thread::spawn(move || forwarder.run());
        let (tx, exited) = mpsc::channel();
        let wait_handle = handle.clone();
        let waiter = std::thread::spawn(move || {
            let r = client
                .wait_routing(&wait_handle, &mut out, &mut err, &mut |m| {
                    if let Some(s) = streams.as_mut() {
                        s.handle(m);
                    }
                })
                .map(|s| s.code);
            // The session's forwarded streams end with it.
            drop(streams);
            let _ = out.flush();
            let _ = err.flush();
            let _ = tx.send(r);
        });
        Ok(VmCommand {
            handle,
            exited,
            stop_input,
            input: Some(input_thread),
            waiter: Some(waiter),
            winch_blocked,
        })
    }

    /// Delivers `signal` to the command's process group in the guest.
    pub fn signal(&mut self, signal: i32) -> Result<(), VmError> {
        Ok(self.handle.signal(signal)?)
    }

    /// Sets the size of the guest terminal of a command started with `tty`.
    pub fn resize(&mut self, rows: u16, cols: u16) -> Result<(), VmError> {
        Ok(self.handle.resize(rows, cols)?)
    }

    /// The exit code (128 + signal when killed) once the command has ended, waiting at most
    /// `timeout`; `None` while it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>, VmError> {
        match self.exited.recv_timeout(timeout) {
            Ok(r) => {
                self.finish();
                Ok(Some(r?))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.finish();
                Err(ClientError::Closed.into())
            }
        }
    }

    /// Waits for the exit code.
    pub fn wait(mut self) -> Result<i32, VmError> {
        loop {
            if let Some(code) = self.wait_timeout(Duration::from_secs(3600))? {
                return Ok(code);
            }
        }
    }

    fn finish(&mut self) {
        self.stop_input.store(true, Ordering::SeqCst);
        if let Some(t) = self.waiter.take() {
            let _ = t.join();
        }
        if let Some(t) = self.input.take() {
            let _ = t.join();
        }
        if self.winch_blocked {
            let mut winch = SigSet::empty();
            winch.add(Signal::SIGWINCH);
            let _ = winch.thread_unblock();
            self.winch_blocked = false;
        }
    }
}

impl Drop for VmCommand {
    fn drop(&mut self) {
        // The waiter thread ends when the connection does (the VM stops or the process
        // exits); only the input forwarder is stopped here.
        self.stop_input.store(true, Ordering::SeqCst);
        if let Some(t) = self.input.take() {
            let _ = t.join();
        }
    }
}

/// Copies the caller's stdin to the command until EOF or until told to stop.
struct InputForwarder {
    input: OwnedFd,
    handle: SessionHandle,
    stop: Arc<AtomicBool>,
    watch_winch: bool,
}

impl InputForwarder {
    fn run(self) {
        let sigfd = if self.watch_winch {
            let mut winch = SigSet::empty();
            winch.add(Signal::SIGWINCH);
            SignalFd::with_flags(&winch, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok()
        } else {
            None
        };
        let mut input_open = true;
        let mut buf = vec![0u8; 32 * 1024];
        while !self.stop.load(Ordering::SeqCst) && (input_open || sigfd.is_some()) {
            let mut fds = Vec::with_capacity(2);
            fds.push(PollFd::new(
                self.input.as_fd(),
                if input_open {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                },
            ));
            if let Some(s) = &sigfd {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (in_ready, winch_ready) = (input_open && ready(0), ready(1));
            drop(fds);
            if in_ready {
                match nix::unistd::read(self.input.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        input_open = false;
                        if self.handle.stdin(&[]).is_err() {
                            return;
                        }
                    }
                    Ok(n) => {
                        if self.handle.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        input_open = false;
                        let _ = self.handle.stdin(&[]);
                    }
                }
            }
            if winch_ready {
                if let Some(s) = &sigfd {
                    while let Ok(Some(_)) = s.read_signal() {}
                }
                if let Some((rows, cols)) = window_size(self.input.as_fd()) {
                    if self.handle.resize(rows, cols).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// An interactive command on the caller's terminal: raw mode on `input` while it runs, the
/// guest terminal sized like the caller's and resized on SIGWINCH. Returns the exit code.
pub fn run_terminal(
    conn: VmConnection,
    mut exec: Exec,
    forward: Option<&GuestForwarding>,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<i32, VmError> {
    exec.tty = true;
    if let Some((rows, cols)) = window_size(stdio[0]) {
        exec.rows = rows;
        exec.cols = cols;
    }
    let _raw = RawMode::enter(stdio[0]);
    VmCommand::start(conn, exec, forward, stdio)?.wait()
}
