//! The agent's event loop: control frames in, process output and exit statuses out.

mod exec_sessions;
mod guest_services;
mod guest_setup;

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use berth_agent_proto::{encode, Forward, Frame, FrameBuffer, Message};

use crate::channel::Channel;
use crate::forward::Watch;
use crate::sys;

use exec_sessions::{Session, MAX_PENDING_FORWARDS};
use guest_services::Service;

const READ_CHUNK: usize = 64 * 1024;

/// A session is named by its channel and the id the host chose on that channel.
type Key = (usize, u32);

/// One control channel (the host may use several at once, one client each).
/// How long a channel that just received data may look hung up before writes to it fail.
const HUP_GRACE: Duration = Duration::from_millis(1000);

struct Chan {
    fd: i32,
    /// A virtio port survives host disconnects; a plain stream does not.
    survives: bool,
    connected: bool,
    frames: FrameBuffer,
    /// When the host last sent data: a host that just (re)connected may still look hung up
    /// to the guest for a moment (see [`sys::write_all_bounded`]).
    last_input: Option<std::time::Instant>,
}

pub struct Server {
    sessions: HashMap<Key, Session>,
    services: Vec<Service>,
    env: Vec<(String, String)>,
    /// `[secrets]` wanted as variables: read from `/run/secrets` at each start.
    secret_env: Vec<String>,
    chans: Vec<Chan>,
    poweroff: bool,
    /// `Forward` requests waiting for the `Exec` of their session.
    pending_forwards: HashMap<Key, Forward>,
}

fn default_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
    ]
}

impl Server {
    pub fn new() -> Self {
        Server {
            sessions: HashMap::new(),
            services: Vec::new(),
            env: default_env(),
            secret_env: Vec::new(),
            chans: Vec::new(),
            poweroff: false,
            pending_forwards: HashMap::new(),
        }
    }

    /// Serves the channels until a stream channel ends or a poweroff is requested.
    pub fn run(&mut self, channels: Vec<Channel>) -> io::Result<()> {
        self.chans = channels
            .iter()
            .map(|c| Chan {
                fd: c.fd().as_raw_fd(),
                survives: c.survives_disconnect(),
                connected: !c.survives_disconnect(),
                frames: FrameBuffer::new(),
                last_input: None,
            })
            .collect();
        let sigchld = sys::sigchld_fd()?;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if self.poweroff {
                return Ok(());
            }
            // A disconnected virtio port polls as hangup until the host comes back, so it is
            // left out of the poll set and probed on a short timer instead.
            let mut fds = vec![libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let mut polled_chans = Vec::new();
            for (i, c) in self.chans.iter().enumerate() {
                if c.connected {
                    fds.push(libc::pollfd {
                        fd: c.fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    polled_chans.push(i);
                }
            }
            let first_session = fds.len();
            let mut owners: Vec<(Key, u8)> = Vec::new();
            for (&key, s) in &self.sessions {
                for (which, fd) in [(1u8, &s.stdout), (2u8, &s.stderr)] {
                    if let Some(fd) = fd {
                        fds.push(libc::pollfd {
                            fd: fd.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        });
                        owners.push((key, which));
                    }
                }
                if let (Some(fd), false) = (&s.stdin, s.stdin_buf.is_empty()) {
                    fds.push(libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                    owners.push((key, 0));
                }
            }
            let first_forward = fds.len();
            let mut forward_owners: Vec<(Key, Watch)> = Vec::new();
            for (&key, s) in &self.sessions {
                if let Some(f) = &s.forward {
                    for (fd, events, watch) in f.watches() {
                        fds.push(libc::pollfd {
                            fd,
                            events,
                            revents: 0,
                        });
                        forward_owners.push((key, watch));
                    }
                }
            }
            let mut timeout = self.poll_timeout();
            if self.chans.iter().any(|c| !c.connected) {
                timeout = timeout.min(20);
            }
            // SAFETY: fds is a valid array of pollfd for its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut to_read: Vec<usize> = Vec::new();
            for (slot, &chan) in polled_chans.iter().enumerate() {
                let ev = fds[1 + slot].revents;
                if ev & libc::POLLNVAL != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a control channel descriptor is not open",
                    ));
                }
                if ev != 0 {
                    to_read.push(chan);
                }
            }
            for (i, c) in self.chans.iter().enumerate() {
                if !c.connected {
                    let mut p = libc::pollfd {
                        fd: c.fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 0) };
                    // Readable (maybe with hangup): data the host sent, or 0 while it is away.
                    if p.revents & libc::POLLIN != 0 {
                        to_read.push(i);
                    }
                }
            }
            for chan in to_read {
                if !self.read_channel(chan, &mut buf)? {
                    self.kill_all_sessions();
                    return Ok(());
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let mut sink = [0u8; 128 * 8];
                while sys::read(sigchld.as_raw_fd(), &mut sink).is_ok_and(|n| n > 0) {}
            }
            // Reap on every round: cheap, and no exit is ever missed.
            self.reap();
            for (i, (key, which)) in owners.iter().enumerate() {
                if fds[first_session + i].revents == 0 {
                    continue;
                }
                if *which == 0 {
                    self.flush_stdin(*key);
                } else {
                    self.pump_output(*key, *which, &mut buf);
                }
            }
            for (i, (key, watch)) in forward_owners.into_iter().enumerate() {
                if fds[first_forward + i].revents != 0 {
                    self.forward_ready(key, watch, &mut buf);
                }
            }
            self.finish_sessions();
            self.restart_services();
        }
    }

    /// Reads and handles what channel `chan` has; false when a stream channel ended.
    fn read_channel(&mut self, chan: usize, buf: &mut [u8]) -> io::Result<bool> {
        let fd = self.chans[chan].fd;
        match sys::read(fd, buf) {
            Ok(0) => {
                if !self.chans[chan].survives {
                    return Ok(false);
                }
                if self.chans[chan].connected {
                    self.host_disconnected(chan);
                }
                Ok(true)
            }
            Ok(n) => {
                self.chans[chan].connected = true;
                self.chans[chan].last_input = Some(std::time::Instant::now());
                self.chans[chan].frames.push(&buf[..n]);
                loop {
                    match self.chans[chan].frames.next_frame() {
                        Ok(Some(f)) => self.handle(chan, f),
                        Ok(None) => break,
                        Err(e) => {
                            self.send(
                                chan,
                                0,
                                Message::Error {
                                    message: e.to_string(),
                                },
                            );
                            self.chans[chan].frames.resync();
                        }
                    }
                }
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn poll_timeout(&self) -> i32 {
        let now = Instant::now();
        self.services
            .iter()
            .filter_map(|s| s.restart_at)
            .map(|t| t.saturating_duration_since(now).as_millis() as i32 + 1)
            .min()
            .unwrap_or(1000)
            .min(1000)
    }

    fn send(&mut self, chan: usize, session: u32, message: Message) {
        let Some(c) = self.chans.get_mut(chan) else {
            return;
        };
        if !c.connected {
            return;
        }
        let Ok(bytes) = encode(&Frame { session, message }) else {
            return;
        };
        let written = if c.survives {
            // The host may vanish mid-frame; never let one channel stall the agent. A hangup
            // right after the host sent something is the news of its connection still on the
            // way (virtio-serial delivers data and port events on separate queues): wait a
            // little for it instead of dropping the answer.
            let hup_grace = match c.last_input {
                Some(t) if t.elapsed() < HUP_GRACE => HUP_GRACE,
                _ => Duration::ZERO,
            };
            sys::write_all_bounded(c.fd, &bytes, Duration::from_secs(2), hup_grace)
        } else {
            sys::write_all(c.fd, &bytes)
        };
        if written.is_err() {
            self.host_disconnected(chan);
        }
    }

    /// The host closed channel `chan`: its sessions end (like a hung-up terminal).
    fn host_disconnected(&mut self, chan: usize) {
        self.chans[chan].connected = false;
        self.chans[chan].frames = FrameBuffer::new();
        self.end_sessions_of(chan);
    }

    /// Ends the sessions and pending forwards of channel `chan`'s client, which is gone: their
    /// processes are killed and they leave the table at once, so nothing of theirs (output,
    /// exit) reaches the channel's next client, whose session numbers start at 1 again. The
    /// processes are reaped like any child.
    fn end_sessions_of(&mut self, chan: usize) {
        self.pending_forwards.retain(|k, _| k.0 != chan);
        let gone: Vec<Key> = self
            .sessions
            .keys()
            .filter(|k| k.0 == chan)
            .copied()
            .collect();
        for key in gone {
            if let Some(s) = self.sessions.remove(&key) {
                // SAFETY: kill on the session's process group; no memory involved.
                unsafe { libc::kill(-s.pid, libc::SIGHUP) };
                // SAFETY: as above, kill takes no memory.
                unsafe { libc::kill(-s.pid, libc::SIGKILL) };
            }
        }
    }

    fn handle(&mut self, ctl: usize, frame: Frame) {
        let id = frame.session;
        let key = (ctl, id);
        match frame.message {
            Message::Hello { nonce } => {
                // A hello opens every host connection: whoever used this channel before is
                // gone, even where the channel could not tell (berth's VMM's virtio-console
                // has no port events, so a killed `berth exec` leaves its session running).
                self.end_sessions_of(ctl);
                let ack = Message::HelloAck {
                    nonce,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    kernel_release: sys::kernel_release(),
                    ready: true,
                };
                self.send(ctl, 0, ack);
            }
            Message::Setup(setup) => match self.apply_setup(setup) {
                Ok(()) => self.send(ctl, id, Message::SetupDone),
                Err(e) => self.send(ctl, id, Message::Error { message: e }),
            },
            Message::StartServices => {
                let now = Instant::now();
                for svc in &mut self.services {
                    if svc.held {
                        svc.held = false;
                        svc.restart_at = Some(now);
                    }
                }
                self.restart_services();
                self.send(ctl, id, Message::SetupDone);
            }
            Message::PutFile(p) => match crate::run_files::put(&p) {
                Ok(()) => self.send(ctl, id, Message::SetupDone),
                Err(e) => self.send(ctl, id, Message::Error { message: e }),
            },
            Message::KeepFiles { dir, keep } => match crate::run_files::keep(&dir, &keep) {
                Ok(()) => self.send(ctl, id, Message::SetupDone),
                Err(e) => self.send(ctl, id, Message::Error { message: e }),
            },
            Message::Forward(f) => {
                if self.pending_forwards.len() >= MAX_PENDING_FORWARDS
                    && !self.pending_forwards.contains_key(&key)
                {
                    let message =
                        "too many credential forwardings waiting for their command".into();
                    self.send(ctl, id, Message::Error { message });
                } else {
                    self.pending_forwards.insert(key, f);
                }
            }
            m @ (Message::StreamData { .. }
            | Message::StreamEof { .. }
            | Message::StreamClose { .. }) => {
                if let Some(f) = self.sessions.get_mut(&key).and_then(|s| s.forward.as_mut()) {
                    for m in f.host_sent(m) {
                        self.send(ctl, id, m);
                    }
                }
            }
            Message::Exec(exec) => self.start_exec(key, exec),
            Message::Stdin(data) => {
                if let Some(s) = self.sessions.get_mut(&key) {
                    if data.is_empty() {
                        s.stdin_eof = true;
                        if s.tty {
                            s.stdin_buf.push(4); // ^D: end of input on a terminal
                        }
                    } else {
                        s.stdin_buf.extend_from_slice(&data);
                    }
                    self.flush_stdin(key);
                }
            }
            Message::Resize { rows, cols } => {
                if let Some(Session {
                    stdin: Some(m),
                    tty: true,
                    ..
                }) = self.sessions.get(&key)
                {
                    berth_inside_files::window_size::set(m.as_raw_fd(), rows, cols);
                }
            }
            Message::Signal { signal } => {
                if let Some(s) = self.sessions.get(&key) {
                    // SAFETY: kill on the session's process group, or on the process itself
                    // when it has not made its own session yet.
                    unsafe {
                        if libc::kill(-s.pid, signal) != 0 {
                            libc::kill(s.pid, signal);
                        }
                    }
                }
            }
            Message::Poweroff => {
                self.kill_all_sessions();
                for svc in &self.services {
                    if let Some(pid) = svc.pid {
                        // SAFETY: kill on a service's process group.
                        unsafe { libc::kill(-pid, libc::SIGTERM) };
                    }
                }
                self.services.clear();
                // SAFETY: sync has no arguments.
                unsafe { libc::sync() };
                self.poweroff = true;
            }
            other => {
                let message = format!("unexpected message from the host: {other:?}");
                self.send(ctl, id, Message::Error { message });
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let decoded = if libc::WIFEXITED(status) {
                (libc::WEXITSTATUS(status), 0)
            } else if libc::WIFSIGNALED(status) {
                let sig = libc::WTERMSIG(status);
                (128 + sig, sig)
            } else {
                continue;
            };
            if let Some(s) = self.sessions.values_mut().find(|s| s.pid == pid) {
                s.status = Some(decoded);
            } else if let Some(svc) = self.services.iter_mut().find(|s| s.pid == Some(pid)) {
                let note = svc.ended(decoded.0, Instant::now());
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(svc.log_path());
                if let Ok(log) = log {
                    let _ = sys::write_all(log.as_raw_fd(), note.as_bytes());
                }
            }
        }
    }
}
