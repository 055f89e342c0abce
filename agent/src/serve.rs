//! The agent's event loop: control frames in, process output and exit statuses out.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use berth_agent_proto::restart::{exit_note, ServiceRuns};
use berth_agent_proto::{
    encode, Exec, Forward, Frame, FrameBuffer, Message, ServiceSpec, Setup, MAX_PAYLOAD,
};

use crate::channel::Channel;
use crate::forward::{Forwarding, Watch};
use crate::spawn::{spawn, SpawnRequest};
use crate::sys;
use crate::users;

const READ_CHUNK: usize = 64 * 1024;
use berth_agent_proto::SERVICE_LOG_DIR;

struct Session {
    pid: i32,
    tty: bool,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_eof: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    status: Option<(i32, i32)>,
    /// The host's credentials forwarded to this command (its folder goes with the session).
    forward: Option<Forwarding>,
}

/// `Forward` requests waiting for their `Exec` at most (a host sending more is refused).
const MAX_PENDING_FORWARDS: usize = 16;

struct Service {
    spec: ServiceSpec,
    pid: Option<i32>,
    restart_at: Option<Instant>,
    /// Restarts and recent exits: the restart policy's back-off, as in a container.
    runs: ServiceRuns,
    /// Not started yet: waits for `StartServices`.
    held: bool,
}

impl Service {
    /// The service's run ended with `code` at `now`: schedules the next run as its restart
    /// policy says (with the back-off a container's supervisor uses) and returns the note for
    /// its log.
    fn ended(&mut self, code: i32, now: Instant) -> String {
        self.pid = None;
        let restart_in = self.runs.ended(self.spec.restart, code, now, false);
        self.restart_at = restart_in.map(|delay| now + delay);
        exit_note(&self.spec.name, code, restart_in)
    }

    fn log_path(&self) -> String {
        format!("{SERVICE_LOG_DIR}/{}.log", self.spec.name)
    }
}

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

    /// A forwarded socket or stream of session `key` is ready: relays what it has.
    fn forward_ready(&mut self, key: Key, watch: Watch, buf: &mut [u8]) {
        let Some(f) = self.sessions.get_mut(&key).and_then(|s| s.forward.as_mut()) else {
            return;
        };
        for m in f.ready(watch, buf) {
            self.send(key.0, key.1, m);
        }
    }

    /// The host closed channel `chan`: its sessions end (like a hung-up terminal).
    fn host_disconnected(&mut self, chan: usize) {
        self.chans[chan].connected = false;
        self.chans[chan].frames = FrameBuffer::new();
        self.pending_forwards.retain(|k, _| k.0 != chan);
        for (key, s) in &self.sessions {
            if key.0 == chan {
                // SAFETY: kill on the session's process group; no memory involved.
                unsafe { libc::kill(-s.pid, libc::SIGHUP) };
                // SAFETY: as above, kill takes no memory.
                unsafe { libc::kill(-s.pid, libc::SIGKILL) };
            }
        }
    }

    fn kill_all_sessions(&mut self) {
        for s in self.sessions.values() {
            // SAFETY: kill on the session's process group; no memory involved.
            unsafe { libc::kill(-s.pid, libc::SIGHUP) };
            // SAFETY: as above, kill takes no memory.
            unsafe { libc::kill(-s.pid, libc::SIGKILL) };
        }
    }

    fn handle(&mut self, ctl: usize, frame: Frame) {
        let id = frame.session;
        let key = (ctl, id);
        match frame.message {
            Message::Hello { nonce } => {
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
                    sys::set_winsize(m.as_raw_fd(), rows, cols);
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

    fn apply_setup(&mut self, setup: Setup) -> Result<(), String> {
        if !setup.hostname.is_empty() {
            // SAFETY: pointer and length of a valid byte string.
            let r =
                unsafe { libc::sethostname(setup.hostname.as_ptr().cast(), setup.hostname.len()) };
            if r != 0 {
                return Err(format!(
                    "cannot set the hostname to {}: {}",
                    setup.hostname,
                    io::Error::last_os_error()
                ));
            }
        }
        for m in &setup.mounts {
            std::fs::create_dir_all(&m.target)
                .map_err(|e| format!("cannot create mount point {}: {e}", m.target))?;
            let (flags, data) = mount_flags(&m.options);
            sys::mount(&m.source, &m.target, &m.fstype, flags, &data).map_err(|e| {
                format!(
                    "cannot mount {} ({}) on {}: {e}",
                    m.source, m.fstype, m.target
                )
            })?;
        }
        // Before the services start: they may reach the sidecars by name at once.
        crate::hosts_file::update(std::path::Path::new("/etc/hosts"), &setup.hosts)
            .map_err(|e| format!("cannot write the sidecars' names into /etc/hosts: {e}"))?;
        for (k, v) in setup.env {
            self.env.retain(|(ek, _)| *ek != k);
            self.env.push((k, v));
        }
        if !setup.secret_env.is_empty() {
            self.secret_env = setup.secret_env;
        }
        for spec in setup.services {
            self.services.push(Service {
                spec,
                pid: None,
                restart_at: (!setup.hold_services).then(Instant::now),
                held: setup.hold_services,
                runs: ServiceRuns::default(),
            });
        }
        self.restart_services();
        Ok(())
    }

    fn start_exec(&mut self, key: Key, exec: Exec) {
        let (ctl, id) = key;
        let forward = self.pending_forwards.remove(&key);
        if self.sessions.contains_key(&key) {
            self.send(
                ctl,
                id,
                Message::Error {
                    message: format!("session {id} is already running"),
                },
            );
            return;
        }
        let user = match exec.user.as_deref() {
            None | Some("root") | Some("0") => users::root(),
            Some(spec) => match users::resolve(spec) {
                Ok(u) => u,
                Err(message) => {
                    self.send(ctl, id, Message::Error { message });
                    self.send(
                        ctl,
                        id,
                        Message::Exit {
                            code: 126,
                            signal: 0,
                        },
                    );
                    return;
                }
            },
        };
        let mut env = self.process_env();
        env.retain(|(k, _)| k != "HOME");
        env.push(("HOME".into(), user.home.clone()));
        // A forwarding that cannot be made is said; the command runs without it.
        let forward = match forward.map(|f| Forwarding::create(&f, &user)) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                let message = format!("the host's credentials are not forwarded: {e}");
                self.send(ctl, id, Message::Error { message });
                None
            }
            None => None,
        };
        for (k, v) in forward.iter().flat_map(|f| f.env()) {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in exec.env {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        let req = SpawnRequest {
            argv: &exec.argv,
            env: &env,
            cwd: exec.cwd.as_deref(),
            user: &user,
            tty: exec.tty.then_some((exec.rows, exec.cols)),
            log: None,
        };
        match spawn(&req) {
            Ok(p) => {
                self.send(ctl, id, Message::Started { pid: p.pid as u32 });
                self.sessions.insert(
                    key,
                    Session {
                        pid: p.pid,
                        tty: exec.tty,
                        stdin: p.stdin,
                        stdin_buf: Vec::new(),
                        stdin_eof: false,
                        stdout: p.stdout,
                        stderr: p.stderr,
                        status: None,
                        forward,
                    },
                );
            }
            Err(e) => {
                drop(forward);
                self.send(
                    ctl,
                    id,
                    Message::Error {
                        message: format!("cannot start {:?}: {e}", exec.argv),
                    },
                );
                self.send(
                    ctl,
                    id,
                    Message::Exit {
                        code: 127,
                        signal: 0,
                    },
                );
            }
        }
    }

    /// The variables of every process started now: the environment's gitconfig while it
    /// exists (a variable of `[env]` wins), `Setup`'s variables, then the `[secrets]` wanted
    /// as variables, read from their tmpfs (not there yet: left out).
    fn process_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if std::path::Path::new(berth_agent_proto::GITCONFIG_PATH).exists() {
            env.push((
                "GIT_CONFIG_SYSTEM".to_string(),
                berth_agent_proto::GITCONFIG_PATH.to_string(),
            ));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        for name in &self.secret_env {
            let path = format!("{}/{name}", berth_agent_proto::SECRETS_DIR);
            let Ok(v) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(v) = String::from_utf8(v) {
                if !v.contains('\0') {
                    env.retain(|(ek, _)| ek != name);
                    env.push((name.clone(), v));
                }
            }
        }
        env
    }

    fn flush_stdin(&mut self, key: Key) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(fd) = &s.stdin else {
            s.stdin_buf.clear();
            return;
        };
        while !s.stdin_buf.is_empty() {
            match sys::write(fd.as_raw_fd(), &s.stdin_buf) {
                Ok(n) => {
                    s.stdin_buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    s.stdin_buf.clear();
                    if !s.tty {
                        s.stdin = None;
                    }
                    return;
                }
            }
        }
        if s.stdin_eof && !s.tty {
            s.stdin = None;
        }
    }

    fn pump_output(&mut self, key: Key, which: u8, buf: &mut [u8]) {
        let (ctl, id) = key;
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let slot = if which == 1 {
            &mut s.stdout
        } else {
            &mut s.stderr
        };
        let Some(fd) = slot else { return };
        let n = buf.len().min(MAX_PAYLOAD);
        match sys::read(fd.as_raw_fd(), &mut buf[..n]) {
            Ok(0) => *slot = None,
            Ok(n) => {
                let data = buf[..n].to_vec();
                let m = if which == 1 {
                    Message::Stdout(data)
                } else {
                    Message::Stderr(data)
                };
                self.send(ctl, id, m);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            // EIO: the PTY's last slave closed.
            Err(_) => *slot = None,
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

    fn finish_sessions(&mut self) {
        let done: Vec<Key> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.status.is_some() && (s.tty || (s.stdout.is_none() && s.stderr.is_none()))
            })
            .map(|(key, _)| *key)
            .collect();
        let mut buf = vec![0u8; READ_CHUNK];
        for key in done {
            // A terminal may still hold output the process wrote just before exiting.
            while self.sessions.get(&key).is_some_and(|s| s.stdout.is_some()) {
                let before = self
                    .sessions
                    .get(&key)
                    .and_then(|s| s.stdout.as_ref().map(|f| f.as_raw_fd()));
                self.pump_output(key, 1, &mut buf);
                let mut p = libc::pollfd {
                    fd: before.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut p, 1, 0) };
                if ready <= 0 || p.revents & libc::POLLIN == 0 {
                    break;
                }
            }
            if let Some(s) = self.sessions.remove(&key) {
                let (code, signal) = s.status.unwrap_or((0, 0));
                // The session's forwarded folder and streams go before the host hears of
                // the exit: a command that returned leaves nothing behind.
                drop(s);
                self.send(key.0, key.1, Message::Exit { code, signal });
            }
        }
    }

    fn restart_services(&mut self) {
        let now = Instant::now();
        let env = self.process_env();
        for svc in &mut self.services {
            let Some(at) = svc.restart_at else { continue };
            if at > now {
                continue;
            }
            svc.restart_at = None;
            let _ = std::fs::create_dir_all(SERVICE_LOG_DIR);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(svc.log_path());
            let Ok(log) = log else { continue };
            let log: OwnedFd = log.into();
            let mut senv = env.clone();
            senv.extend(svc.spec.env.iter().cloned());
            let req = SpawnRequest {
                argv: &svc.spec.argv,
                env: &senv,
                cwd: svc.spec.cwd.as_deref().or(Some("/")),
                user: &users::root(),
                tty: None,
                log: Some(&log),
            };
            match spawn(&req) {
                Ok(p) => svc.pid = Some(p.pid),
                Err(e) => {
                    let _ = sys::write_all(
                        log.as_raw_fd(),
                        format!("berth-agent: cannot start service: {e}\n").as_bytes(),
                    );
                    // Counts as a run that ended; not restarted (what failed here, before the
                    // fork, fails the same way the next time), as in a container.
                    svc.runs.record_exit(127, now);
                }
            }
        }
    }
}

/// `ro` among a mount's options is the read-only flag; the rest is the filesystem's data.
fn mount_flags(options: &str) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= libc::MS_RDONLY,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::{mount_flags, Service};
    use berth_agent_proto::{Restart, ServiceSpec};
    use std::time::{Duration, Instant};

    fn service(restart: Restart) -> Service {
        Service {
            spec: ServiceSpec {
                name: "flaky".into(),
                argv: vec!["false".into()],
                env: Vec::new(),
                cwd: None,
                restart,
            },
            pid: Some(7),
            restart_at: None,
            runs: Default::default(),
            held: false,
        }
    }

    #[test]
    fn a_crashing_service_backs_off_as_in_a_container() {
        let mut svc = service(Restart::Always);
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for i in 0..8 {
            let now = t0 + Duration::from_secs(i * 10);
            let note = svc.ended(3, now);
            assert_eq!(svc.pid, None);
            let wait = svc.restart_at.expect("restarted") - now;
            assert_eq!(
                note,
                format!(
                    "[berth] service flaky exited with code 3; restarting in {} ms\n",
                    wait.as_millis()
                )
            );
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6400, 6400]);
        let crash = svc.runs.crash_loop(t0 + Duration::from_secs(70)).unwrap();
        assert_eq!((crash.exits, crash.last_exit), (7, 3));
    }

    #[test]
    fn a_service_stays_stopped_when_its_policy_says_so() {
        let mut svc = service(Restart::OnFailure);
        let now = Instant::now();
        assert_eq!(
            svc.ended(0, now),
            "[berth] service flaky exited with code 0\n"
        );
        assert_eq!(svc.restart_at, None);
        let mut svc = service(Restart::No);
        assert_eq!(
            svc.ended(1, now),
            "[berth] service flaky exited with code 1\n"
        );
        assert_eq!(svc.restart_at, None);
    }

    #[test]
    fn read_only_is_a_flag() {
        assert_eq!(mount_flags(""), (0, String::new()));
        assert_eq!(mount_flags("size=1024"), (0, "size=1024".into()));
        assert_eq!(
            mount_flags("ro,size=1024"),
            (libc::MS_RDONLY, "size=1024".into())
        );
    }
}
