//! The supervisor: PID 1 of an environment. It reaps every process, runs the `[services]`
//! with their restart policies (output into size-bounded logs), and serves the control socket
//! (exec, tty exec, signal, status, stop). One `poll` loop over the socket, a signalfd
//! (SIGCHLD; SIGTERM, SIGINT, SIGHUP from the host only), the connections and the services' output pipes. The
//! only other threads are the `[[ports]]` forwarder's, which take no lock a forked child
//! needs (their descriptors are all close-on-exec, glibc's malloc is fork-safe), so forking a
//! child from the loop stays safe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envfile_spec::plan::{RestartPolicy, ServicePlan};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::control::{
    encode, recv_with_fds, send_with_fds, CrashLoop, ExecRequest, FrameDecoder, Request, Response,
    ServiceStatus, SupervisorStatus,
};
use super::error::{ContainerError, Context, Result};
use super::fault::checkpoint;
use super::idmap::IdMapping;
use super::launch::{report, LaunchEvent};
use super::logs::LogFile;
use super::namespaces::recv_byte;
use super::rootfs::OverlayRootfs;
use super::security::{close_fds_from, ProcessSecurity};
use super::spec::ContainerSpec;
use super::state::now_secs;
use super::users;
use crate::net::dialer::LoopbackDialer;
use crate::net::forward::{BoundPorts, ForwardedPort, PortForwarder};

/// Entry point of berth's hidden `__supervisor <state-dir>` subcommand: the launcher, which
/// becomes the supervisor (see [`launch`](super::launch)). Returns the launcher's exit code.
pub fn main(state_dir: &std::path::Path) -> i32 {
    super::launch::main(state_dir)
}

/// Default grace period when the supervisor itself receives SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs as PID 1 in the new namespaces: waits for the starter's go, finishes the root
/// filesystem, then supervises until stopped. Never returns. `rootless`: berth runs without
/// host root (nested user namespaces stay allowed then).
#[allow(clippy::too_many_arguments)]
pub fn run_pid1(
    spec: ContainerSpec,
    mapping: Option<IdMapping>,
    listener: UnixListener,
    logs: OwnedFd,
    report_fd: OwnedFd,
    go: OwnedFd,
    ports: Vec<(ForwardedPort, OwnedFd)>,
    rootless: bool,
) -> ! {
    // Re-executed from a memfd, PID 1 would be called `exe` in `ps` and /proc/1/comm.
    // SAFETY: prctl with a pointer to a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"berth-init".as_ptr(), 0, 0, 0) };
    let mut keep = vec![
        listener.as_raw_fd(),
        logs.as_raw_fd(),
        report_fd.as_raw_fd(),
        go.as_raw_fd(),
    ];
    keep.extend(ports.iter().map(|(_, fd)| fd.as_raw_fd()));
    super::security::close_fds_except(&keep);
    let code = match setup_and_serve(
        &spec,
        mapping.as_ref(),
        listener,
        logs,
        &report_fd,
        go,
        ports,
        rootless,
    ) {
        Ok(()) => 0,
        Err(e) => {
            report(
                &report_fd,
                &LaunchEvent::Error {
                    message: e.to_string(),
                },
            );
            1
        }
    };
    std::process::exit(code)
}

#[allow(clippy::too_many_arguments)]
fn setup_and_serve(
    spec: &ContainerSpec,
    mapping: Option<&IdMapping>,
    listener: UnixListener,
    logs: OwnedFd,
    report_fd: &OwnedFd,
    go: OwnedFd,
    ports: Vec<(ForwardedPort, OwnedFd)>,
    rootless: bool,
) -> Result<()> {
    if recv_byte(&go) != Some(1) {
        return Err(ContainerError::Setup(
            "the starter gave up before the environment was ready".into(),
        ));
    }
    drop(go);
    let new_netns = spec.network != envfile_spec::plan::NetworkMode::Host;
    if new_netns {
        // Forwarded ports reach services through loopback; as the namespace's own root this
        // works rootless too, where nothing outside may enter the namespace.
        super::network::loopback_up_here()?;
    }
    OverlayRootfs::new(spec, mapping).enter(new_netns)?;
    nix::unistd::sethostname(&spec.hostname)
        .context(|| format!("cannot set the hostname to {}", spec.hostname))?;
    checkpoint("namespaces-entered");
    if let Err(e) = super::login_env::write(std::path::Path::new("/"), &spec.env) {
        eprintln!("berth: {e}; login shells may not see berth.toml's [env]");
    }
    // Processes inside run as the same uid; without this they could ptrace PID 1, which keeps
    // every capability of the user namespace.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let security = ProcessSecurity::new(spec.privileged, rootless)?;
    // Before any thread or process exists: the supervisor itself, and so everything it
    // forks, runs under the allowlist from here on.
    security.confine_supervisor()?;
    let mut sup = Supervisor::new(spec.clone(), security, listener, logs)?;
    // After Supervisor::new blocked the signals: the forwarder's threads inherit the mask,
    // so SIGCHLD and SIGTERM keep arriving at the signalfd of the main loop.
    sup._forwarder = start_forwarding(ports)?;
    sup.start_services();
    checkpoint("ready");
    report(report_fd, &LaunchEvent::Ready);
    // Done reporting: let the starter see end-of-file (the fd number stays valid).
    if let Ok(null) = fs::File::open("/dev/null") {
        // SAFETY: dup3 onto a descriptor this process owns (close-on-exec, as dup2 would clear).
        unsafe { libc::dup3(null.as_raw_fd(), report_fd.as_raw_fd(), libc::O_CLOEXEC) };
    }
    sup.run();
    Ok(())
}

/// Serves the host ports the launcher bound, dialing the environment's loopback. The
/// forwarder lives as long as the supervisor: forwarded ports end with the environment.
fn start_forwarding(ports: Vec<(ForwardedPort, OwnedFd)>) -> Result<Option<PortForwarder>> {
    if ports.is_empty() {
        return Ok(None);
    }
    let bound = BoundPorts::from_parts(ports)
        .context(|| "cannot take over the forwarded ports".to_string())?;
    Ok(Some(bound.start(Arc::new(LoopbackDialer))?))
}

struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder,
    fds: VecDeque<OwnedFd>,
    pids: Vec<i32>,
}

struct Service {
    name: String,
    plan: ServicePlan,
    pid: Option<i32>,
    restarts: u32,
    last_exit: Option<i32>,
    restart_at: Option<Instant>,
    /// When the recent runs ended (the last [`CrashLoop::WINDOW_SECS`] seconds' worth).
    exits: VecDeque<Instant>,
    /// Process group of the last run, killed before the next one starts.
    last_group: Option<i32>,
    output: Option<OwnedFd>,
    log: Option<LogFile>,
}

impl Service {
    /// Records an exit and forgets the ones older than the crash-loop window.
    fn note_exit(&mut self, code: i32) {
        let now = Instant::now();
        self.last_exit = Some(code);
        self.exits.push_back(now);
        let window = Duration::from_secs(CrashLoop::WINDOW_SECS);
        while self
            .exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.exits.pop_front();
        }
    }

    fn crash_loop(&self) -> Option<CrashLoop> {
        let now = Instant::now();
        let window = Duration::from_secs(CrashLoop::WINDOW_SECS);
        let recent: Vec<&Instant> = self
            .exits
            .iter()
            .filter(|t| now.duration_since(**t) <= window)
            .collect();
        if (recent.len() as u32) < CrashLoop::MIN_EXITS {
            return None;
        }
        Some(CrashLoop {
            exits: recent.len() as u32,
            seconds: now.duration_since(*recent[0]).as_secs(),
            last_exit: self.last_exit.unwrap_or(0),
        })
    }

    /// Signals every process left in the service's process group (it runs as a session
    /// leader, so the group id is its pid; the number is not reused while any member lives).
    fn signal_group(&self, pgid: i32, sig: Signal) {
        let _ = kill(Pid::from_raw(-pgid), sig);
    }
}

enum Stdio {
    /// stdin, stdout, stderr passed by the client.
    Fds([OwnedFd; 3]),
    /// The slave side of a PTY, by path inside the environment.
    Pty(CString),
    /// /dev/null in, a pipe out (services).
    Pipe(OwnedFd),
}

struct Supervisor {
    spec: ContainerSpec,
    security: ProcessSecurity,
    listener: UnixListener,
    signals: SignalFd,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    execs: HashMap<i32, u64>,
    services: Vec<Service>,
    started_at: u64,
    stop_deadline: Option<Instant>,
    killed: bool,
    /// The `[[ports]]` forwarder (its own threads; see the module documentation).
    _forwarder: Option<PortForwarder>,
}

impl Supervisor {
    fn new(
        spec: ContainerSpec,
        security: ProcessSecurity,
        listener: UnixListener,
        logs: OwnedFd,
    ) -> Result<Supervisor> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        mask.thread_block()
            .context(|| "cannot block signals".to_string())?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context(|| "cannot create a signalfd".to_string())?;
        listener
            .set_nonblocking(true)
            .context(|| "cannot make the control socket non-blocking".to_string())?;
        let services = spec
            .services
            .iter()
            .map(|(name, plan)| Service {
                name: name.clone(),
                plan: plan.clone(),
                pid: None,
                restarts: 0,
                last_exit: None,
                restart_at: (!spec.hold_services).then(Instant::now),
                exits: VecDeque::new(),
                last_group: None,
                output: None,
                log: LogFile::new(&logs, name, spec.log_limit).ok(),
            })
            .collect();
        Ok(Supervisor {
            spec,
            security,
            listener,
            signals,
            conns: BTreeMap::new(),
            next_conn: 0,
            execs: HashMap::new(),
            services,
            started_at: now_secs(),
            stop_deadline: None,
            killed: false,
            _forwarder: None,
        })
    }

    fn run(&mut self) {
        loop {
            self.start_services();
            if let Some(deadline) = self.stop_deadline {
                if !self.has_children() {
                    std::process::exit(0);
                }
                if Instant::now() >= deadline {
                    if self.killed {
                        std::process::exit(0);
                    }
                    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                    self.killed = true;
                    self.stop_deadline = Some(Instant::now() + Duration::from_secs(2));
                }
            }
            let timeout = self.poll_timeout();
            let conn_ids: Vec<u64> = self.conns.keys().copied().collect();
            let svc_fds: Vec<(usize, RawFd)> = self
                .services
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.output.as_ref().map(|f| (i, f.as_raw_fd())))
                .collect();
            let (sig_ready, accept_ready, conn_ready, svc_ready) = {
                let mut pfds = vec![
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                for id in &conn_ids {
                    pfds.push(PollFd::new(
                        self.conns[id].stream.as_fd(),
                        PollFlags::POLLIN,
                    ));
                }
                for (_, fd) in &svc_fds {
                    // SAFETY: the fd belongs to a service entry alive for this whole block.
                    pfds.push(PollFd::new(
                        unsafe { BorrowedFd::borrow_raw(*fd) },
                        PollFlags::POLLIN,
                    ));
                }
                match poll(&mut pfds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
                let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
                let conn_ready: Vec<u64> = conn_ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| ready(&pfds[2 + i]))
                    .map(|(_, id)| *id)
                    .collect();
                let svc_ready: Vec<usize> = svc_fds
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| ready(&pfds[2 + conn_ids.len() + i]))
                    .map(|(_, (s, _))| *s)
                    .collect();
                (ready(&pfds[0]), ready(&pfds[1]), conn_ready, svc_ready)
            };
            if sig_ready {
                self.handle_signals();
            }
            if accept_ready {
                self.accept();
            }
            for id in conn_ready {
                self.read_conn(id);
            }
            for i in svc_ready {
                self.drain_service_output(i);
            }
        }
    }

    fn poll_timeout(&self) -> PollTimeout {
        let mut next: Option<Instant> = self.stop_deadline;
        if self.stop_deadline.is_none() {
            for s in &self.services {
                if let Some(t) = s.restart_at {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        match next {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(60_000) as u16;
                PollTimeout::from(ms.max(1))
            }
        }
    }

    fn has_children(&self) -> bool {
        // SAFETY: waitid with WNOWAIT only inspects; no memory is passed but the siginfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        !(rc == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD))
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if stops_the_environment(info.ssi_signo, info.ssi_pid) {
                self.begin_stop(DEFAULT_GRACE);
            }
        }
        self.reap();
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.child_exited(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.child_exited(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }

    fn child_exited(&mut self, pid: i32, code: i32) {
        if let Some(conn_id) = self.execs.remove(&pid) {
            if let Some(c) = self.conns.get_mut(&conn_id) {
                c.pids.retain(|p| *p != pid);
                let _ = send_with_fds(c.stream.as_fd(), &encode(&Response::Exited { code }), &[]);
            }
            return;
        }
        let stopping = self.stop_deadline.is_some();
        if let Some(s) = self.services.iter_mut().find(|s| s.pid == Some(pid)) {
            s.pid = None;
            s.note_exit(code);
            // What the service started lives on in its process group (a web server's workers,
            // a reloader's child holding the port): end it with the service, SIGKILL for
            // whatever ignores this before the next start.
            s.signal_group(pid, Signal::SIGTERM);
            s.last_group = Some(pid);
            let again = match s.plan.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => code != 0,
                RestartPolicy::Always => true,
            } && !stopping;
            let delay =
                Duration::from_millis(100u64 << s.restarts.min(6)).min(Duration::from_secs(10));
            let note = if again {
                s.restart_at = Some(Instant::now() + delay);
                s.restarts += 1;
                format!(
                    "[berth] service {} exited with code {code}; restarting in {} ms\n",
                    s.name,
                    delay.as_millis()
                )
            } else {
                format!("[berth] service {} exited with code {code}\n", s.name)
            };
            // Read what is still in the pipe first so the note comes after the output.
            if let Some(fd) = s.output.take() {
                drain_fd(&fd, s.log.as_mut());
            }
            if let Some(l) = s.log.as_mut() {
                let _ = l.append(note.as_bytes());
            }
        }
    }

    fn begin_stop(&mut self, grace: Duration) {
        if self.stop_deadline.is_some() {
            return;
        }
        for s in &mut self.services {
            s.restart_at = None;
        }
        // From PID 1, pid -1 means every other process of the namespace.
        let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
        self.stop_deadline = Some(Instant::now() + grace);
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(
                id,
                Conn {
                    stream,
                    decoder: FrameDecoder::default(),
                    fds: VecDeque::new(),
                    pids: Vec::new(),
                },
            );
        }
    }

    fn read_conn(&mut self, id: u64) {
        let mut closed = false;
        {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let mut buf = [0u8; 16384];
            loop {
                match recv_with_fds(c.stream.as_fd(), &mut buf, &mut c.fds) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => c.decoder.push(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
                if c.fds.len() > 16 {
                    closed = true;
                    break;
                }
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            match c.decoder.next_message::<Request>() {
                Ok(Some(req)) => self.handle(id, req),
                Ok(None) => break,
                Err(e) => {
                    let _ = send_with_fds(
                        c.stream.as_fd(),
                        &encode(&Response::Error {
                            message: format!("bad request: {e}"),
                        }),
                        &[],
                    );
                    closed = true;
                    break;
                }
            }
        }
        if closed {
            if let Some(c) = self.conns.remove(&id) {
                for pid in c.pids {
                    self.execs.remove(&pid);
                    // The caller went away: its processes lose their terminal/caller.
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGHUP);
                }
            }
        }
    }

    fn respond(&mut self, id: u64, r: &Response, fds: &[RawFd]) {
        if let Some(c) = self.conns.get(&id) {
            let _ = send_with_fds(c.stream.as_fd(), &encode(r), fds);
        }
    }

    fn handle(&mut self, id: u64, req: Request) {
        match req {
            Request::Ping => self.respond(id, &Response::Pong, &[]),
            Request::StartServices => {
                let now = Instant::now();
                for s in &mut self.services {
                    // Held services never ran: no pid, no exit, no restart pending.
                    if s.pid.is_none() && s.last_exit.is_none() && s.restart_at.is_none() {
                        s.restart_at = Some(now);
                    }
                }
                self.start_services();
                self.respond(id, &Response::Pong, &[]);
            }
            Request::Status => {
                let st = self.status();
                self.respond(id, &Response::Status(st), &[]);
            }
            Request::Stop { grace_ms } => {
                self.respond(id, &Response::Stopping, &[]);
                self.begin_stop(Duration::from_millis(grace_ms));
            }
            Request::Signal { pid, signal } => {
                let owns = self.conns.get(&id).is_some_and(|c| c.pids.contains(&pid));
                let r = match (owns, Signal::try_from(signal)) {
                    (true, Ok(sig)) => {
                        // Its group exists once the child called setsid; until then, the process
                        // itself (the signal stays pending until it execs).
                        if kill(Pid::from_raw(-pid), sig).is_err() {
                            let _ = kill(Pid::from_raw(pid), sig);
                        }
                        None
                    }
                    (false, _) => Some(format!("process {pid} was not started by this connection")),
                    (_, Err(_)) => Some(format!("unknown signal {signal}")),
                };
                if let Some(message) = r {
                    self.respond(id, &Response::Error { message }, &[]);
                }
            }
            Request::Exec(req) => {
                if self.stop_deadline.is_some() {
                    self.respond(
                        id,
                        &Response::Error {
                            message: "the environment is stopping".into(),
                        },
                        &[],
                    );
                    return;
                }
                match self.exec(id, &req) {
                    Ok((pid, master)) => {
                        self.execs.insert(pid, id);
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.pids.push(pid);
                        }
                        let fds: Vec<RawFd> = master.iter().map(|m| m.as_raw_fd()).collect();
                        self.respond(id, &Response::Started { pid }, &fds);
                    }
                    Err(message) => self.respond(id, &Response::Error { message }, &[]),
                }
            }
        }
    }

    fn exec(
        &mut self,
        id: u64,
        req: &ExecRequest,
    ) -> std::result::Result<(i32, Option<OwnedFd>), String> {
        // Whatever descriptors came with this request are used now or closed.
        let passed: Vec<OwnedFd> = self
            .conns
            .get_mut(&id)
            .map(|c| c.fds.drain(..).collect())
            .unwrap_or_default();
        if req.argv.is_empty() {
            return Err("exec needs a command".into());
        }
        if req.tty {
            let (master, slave) = open_pty(req.winsize)?;
            let pid = self.spawn(
                &req.argv,
                &req.env,
                req.cwd.as_deref(),
                req.user.as_deref(),
                Stdio::Pty(slave),
                true,
            )?;
            Ok((pid, Some(master)))
        } else {
            let fds: [OwnedFd; 3] = passed.try_into().map_err(|_| {
                "exec without a terminal needs exactly stdin, stdout and stderr passed as file descriptors".to_string()
            })?;
            let pid = self.spawn(
                &req.argv,
                &req.env,
                req.cwd.as_deref(),
                req.user.as_deref(),
                Stdio::Fds(fds),
                false,
            )?;
            Ok((pid, None))
        }
    }

    fn start_services(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        let now = Instant::now();
        for i in 0..self.services.len() {
            let due = self.services[i].restart_at.is_some_and(|t| t <= now)
                && self.services[i].pid.is_none();
            if !due {
                continue;
            }
            self.services[i].restart_at = None;
            if let Some(pgid) = self.services[i].last_group.take() {
                self.services[i].signal_group(pgid, Signal::SIGKILL);
            }
            let plan = self.services[i].plan.clone();
            let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let started = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| format!("cannot create a pipe: {e}"))
                .and_then(|(r, w)| {
                    let _ = nix::fcntl::fcntl(
                        r.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                    );
                    self.spawn(
                        &plan.command,
                        &env,
                        plan.workdir.as_deref(),
                        None,
                        Stdio::Pipe(w),
                        false,
                    )
                    .map(|pid| (pid, r))
                });
            let s = &mut self.services[i];
            match started {
                Ok((pid, r)) => {
                    s.pid = Some(pid);
                    s.output = Some(r);
                }
                Err(e) => {
                    if let Some(l) = s.log.as_mut() {
                        let _ = l.append(
                            format!("[berth] cannot start service {}: {e}\n", s.name).as_bytes(),
                        );
                    }
                    s.note_exit(127);
                }
            }
        }
    }

    fn drain_service_output(&mut self, i: usize) {
        let s = &mut self.services[i];
        let Some(fd) = s.output.as_ref() else { return };
        if !drain_fd(fd, s.log.as_mut()) {
            s.output = None;
        }
    }

    fn status(&self) -> SupervisorStatus {
        let processes = fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count()
            })
            .unwrap_or(0) as u32;
        SupervisorStatus {
            started_at: self.started_at,
            services: self
                .services
                .iter()
                .map(|s| ServiceStatus {
                    name: s.name.clone(),
                    pid: s.pid,
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                    crash_loop: s.crash_loop(),
                })
                .collect(),
            processes,
            usage: None,
        }
    }

    /// Forks and execs one process with the environment's security profile.
    fn spawn(
        &self,
        argv: &[String],
        extra_env: &[String],
        cwd: Option<&str>,
        user: Option<&str>,
        stdio: Stdio,
        tty: bool,
    ) -> std::result::Result<i32, String> {
        if argv.is_empty() {
            return Err("empty command".into());
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        let who = users::resolve(user.or(self.spec.image.user.as_deref()), &passwd, &group)?;
        let env = compose_env(&self.spec, &who.home, tty, extra_env);
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        let program = find_program(&argv[0], &path_var);
        let cwd = cwd.map_or_else(
            || default_cwd(self.spec.image.workdir.as_deref()),
            str::to_string,
        );
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let c_prog = c(&program)?;
        let c_argv: Vec<CString> = argv
            .iter()
            .map(|a| c(a))
            .collect::<std::result::Result<_, _>>()?;
        let c_env: Vec<CString> = env
            .iter()
            .map(|a| c(a))
            .collect::<std::result::Result<_, _>>()?;
        let c_cwd = c(&cwd)?;
        let devnull = match &stdio {
            Stdio::Pipe(_) => Some(
                fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?,
            ),
            _ => None,
        };
        // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(format!("cannot fork: {e}")),
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
            Ok(nix::unistd::ForkResult::Child) => {
                let err = child_exec(
                    &self.security,
                    &who,
                    &stdio,
                    devnull.as_ref(),
                    &c_prog,
                    &c_argv,
                    &c_env,
                    &c_cwd,
                );
                let msg = exec_failure_message(&argv[0], &cwd, err);
                // SAFETY: writing to our stderr and exiting without unwinding.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(if err == ("exec", libc::ENOENT) {
                        127
                    } else {
                        126
                    })
                }
            }
        }
    }
}

/// The working directory of a command that asked for none: the image's, or `/` when the image
/// names none or the folder does not exist (as Docker does), the same as the VM agent. An
/// asked-for folder that does not exist fails the command instead.
fn default_cwd(image_workdir: Option<&str>) -> String {
    match image_workdir {
        Some(dir) if Path::new(dir).is_dir() => dir.to_string(),
        _ => "/".to_string(),
    }
}

const STEP_CHDIR: &str = "change to the working directory";
const STEP_CWD_OUTSIDE: &str = "working directory outside the environment";

/// What the forked child prints when it cannot run `program` (the failing step and errno
/// returned by [`child_exec`]); names the working directory when that was the problem.
fn exec_failure_message(program: &str, cwd: &str, (step, errno): (&str, i32)) -> String {
    match step {
        STEP_CWD_OUTSIDE => format!(
            "berth: cannot run {program}: the working directory {cwd} is outside the environment \
             (it leads to a folder of the host); choose a folder inside the environment\n"
        ),
        STEP_CHDIR => format!(
            "berth: cannot run {program}: cannot change to the working directory {cwd}: {}\n",
            io::Error::from_raw_os_error(errno)
        ),
        _ => format!(
            "berth: cannot run {program}: {step}: {}\n",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Whether the current working directory is reachable from this process's root (runc's check
/// since 1.1.12): the kernel's getcwd prefixes "(unreachable)" to a folder outside the root,
/// e.g. one entered through a descriptor opened before pivot_root. A raw system call: the C
/// library's wrapper hides the prefix behind ENOENT only in newer versions.
pub fn cwd_is_inside_root() -> bool {
    let mut buf = [0u8; libc::PATH_MAX as usize];
    // SAFETY: getcwd writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    rc > 0 && buf[0] == b'/'
}

/// Whether a SIGTERM/SIGINT/SIGHUP read from the signalfd stops the environment: only when
/// it comes from outside the environment's pid namespace (the host: `kill` of the supervisor,
/// system shutdown), where the sender has no pid in this namespace and `ssi_pid` is 0. A
/// process inside sending `kill -TERM 1` has its own pid there and is ignored, as an init
/// ignores it; the other default-action signals from inside never arrive (the kernel drops
/// them for a pid namespace's init that has no handler for them), SIGKILL/SIGSTOP included.
fn stops_the_environment(signo: u32, sender_pid: u32) -> bool {
    let stopping = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    stopping.contains(&(signo as i32)) && sender_pid == 0
}

/// Runs in the forked child; returns only on failure (step name, errno).
#[allow(clippy::too_many_arguments)]
fn child_exec(
    security: &ProcessSecurity,
    who: &users::ResolvedUser,
    stdio: &Stdio,
    devnull: Option<&fs::File>,
    prog: &CString,
    argv: &[CString],
    env: &[CString],
    cwd: &CString,
) -> (&'static str, i32) {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let _ = SigSet::all().thread_unblock();
    // SAFETY: resetting signal dispositions to their defaults in the child before exec.
    unsafe {
        for s in [
            libc::SIGPIPE,
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
        ] {
            libc::signal(s, libc::SIG_DFL);
        }
    }
    let _ = nix::unistd::setsid();
    // SAFETY: dup2/open/ioctl on descriptors this child owns.
    unsafe {
        match stdio {
            Stdio::Fds(fds) => {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(fd.as_raw_fd(), i as i32) < 0 {
                        return ("redirect stdio", errno());
                    }
                }
            }
            Stdio::Pty(slave) => {
                let fd = libc::open(slave.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return ("open the terminal", errno());
                }
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return ("make the terminal the controlling one", errno());
                }
                for i in 0..3 {
                    libc::dup2(fd, i);
                }
            }
            Stdio::Pipe(w) => {
                if let Some(n) = devnull {
                    libc::dup2(n.as_raw_fd(), 0);
                }
                libc::dup2(w.as_raw_fd(), 1);
                libc::dup2(w.as_raw_fd(), 2);
            }
        }
    }
    // Nothing but the three standard streams may be open from here on: a descriptor of a host
    // folder the supervisor holds (its log folder, the control socket's) would otherwise be
    // reachable as /proc/self/fd/N by the chdir below (CVE-2024-21626), and close-on-exec
    // only takes effect at execve, after the chdir.
    close_fds_from(3);
    if security.drop_bounding().is_err() {
        return ("drop capabilities", errno());
    }
    let gids: Vec<nix::unistd::Gid> = who
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // Fails in a single-id user namespace (setgroups denied); the gid below still applies.
    let _ = nix::unistd::setgroups(&gids);
    let g = nix::unistd::Gid::from_raw(who.gid);
    let u = nix::unistd::Uid::from_raw(who.uid);
    if let Err(e) = nix::unistd::setresgid(g, g, g) {
        return ("switch group", e as i32);
    }
    if let Err(e) = nix::unistd::setresuid(u, u, u) {
        return ("switch user", e as i32);
    }
    // SAFETY: chdir with a NUL-terminated path.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return (STEP_CHDIR, errno());
    }
    if !cwd_is_inside_root() {
        return (STEP_CWD_OUTSIDE, libc::EXDEV);
    }
    if let Err(step) = security.apply_before_exec() {
        return (step, errno());
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of pointers to live CStrings.
    unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    ("exec", errno())
}

/// Reads everything available; `false` on end of file.
fn drain_fd(fd: &OwnedFd, mut log: Option<&mut LogFile>) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if let Some(l) = log.as_deref_mut() {
                    let _ = l.append(&buf[..n]);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}

/// PATH, HOME, HOSTNAME (and TERM for a tty), then the image's, the spec's and the request's
/// variables, later ones overriding earlier ones.
pub fn compose_env(spec: &ContainerSpec, home: &str, tty: bool, extra: &[String]) -> Vec<String> {
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.into()),
        ("HOSTNAME".into(), spec.hostname.clone()),
    ];
    if tty {
        vars.push(("TERM".into(), "xterm".into()));
    }
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(kk, _)| kk == k) {
        Some(e) => e.1 = v.to_string(),
        None => vars.push((k.to_string(), v.to_string())),
    };
    for e in &spec.image.env {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    for e in extra {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `name` searched in `path` when it has no slash; returned unchanged when not found (exec
/// then reports it missing).
pub fn find_program(name: &str, path: &str) -> String {
    if name.contains('/') {
        return name.to_string();
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = std::path::Path::new(dir).join(name);
        if let Ok(m) = fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return p.to_string_lossy().into_owned();
            }
        }
    }
    name.to_string()
}

/// A new PTY in the environment's devpts: (master, slave path).
fn open_pty(winsize: Option<(u16, u16)>) -> std::result::Result<(OwnedFd, CString), String> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )
    .map_err(|e| format!("cannot open a terminal (/dev/ptmx): {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    if let Some((rows, cols)) = winsize {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize struct on our master fd.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    use std::os::fd::IntoRawFd;
    // SAFETY: PtyMaster gives up its fd; the OwnedFd is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    Ok((
        fd,
        CString::new(name).map_err(|_| "bad pty name".to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn env_layers_override_in_order() {
        let mut s = ContainerSpec::new("e", "host", Path::new("/s"), vec!["/l".into()]);
        s.image.env = vec!["PATH=/img".into(), "A=img".into()];
        s.env.insert("A".into(), "spec".into());
        let e = compose_env(&s, "/root", true, &["B=req".into(), "A=req".into()]);
        assert!(e.contains(&"PATH=/img".to_string()));
        assert!(e.contains(&"A=req".to_string()));
        assert!(e.contains(&"TERM=xterm".to_string()));
        assert!(e.contains(&"HOSTNAME=host".to_string()));
        assert_eq!(e.iter().filter(|v| v.starts_with("A=")).count(), 1);
    }

    #[test]
    fn only_the_hosts_stop_signals_stop_the_environment() {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            assert!(stops_the_environment(sig as u32, 0), "{sig} from the host");
            assert!(
                !stops_the_environment(sig as u32, 7),
                "{sig} from pid 7 inside"
            );
        }
        assert!(!stops_the_environment(libc::SIGCHLD as u32, 0));
    }

    #[test]
    fn the_default_working_directory_falls_back_to_the_root() {
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().unwrap();
        assert_eq!(default_cwd(Some(tmp)), tmp);
        assert_eq!(default_cwd(Some("/nonexistent/berth-default-cwd")), "/");
        assert_eq!(default_cwd(None), "/");
    }

    #[test]
    fn failures_name_the_working_directory() {
        let m = exec_failure_message("sh", "/proc/self/fd/0", (STEP_CWD_OUTSIDE, libc::EXDEV));
        assert!(
            m.contains("/proc/self/fd/0 is outside the environment"),
            "{m}"
        );
        let m = exec_failure_message("sh", "/nope", (STEP_CHDIR, libc::ENOENT));
        assert!(m.contains("working directory /nope: No such file"), "{m}");
        let m = exec_failure_message("sh", "/", ("exec", libc::ENOENT));
        assert!(m.starts_with("berth: cannot run sh: exec: "), "{m}");
    }

    #[test]
    fn a_cwd_outside_the_root_is_detected() {
        // Needs chroot (root); the check itself runs in a forked child.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for chroot; CI runs as root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("root")).unwrap();
        let outside = fs::File::open(t.path()).unwrap();
        let root = CString::new(t.path().join("root").to_str().unwrap()).unwrap();
        // SAFETY: the child makes system calls only and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut code = 0;
                // SAFETY: chroot/chdir/fchdir with valid arguments, in the child only.
                unsafe {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        libc::_exit(10);
                    }
                    if !cwd_is_inside_root() {
                        code |= 1;
                    }
                    // What /proc/self/fd/N of a folder opened before the chroot gives.
                    if libc::fchdir(outside.as_raw_fd()) != 0 {
                        libc::_exit(11);
                    }
                    if cwd_is_inside_root() {
                        code |= 2;
                    }
                    libc::_exit(code);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = waitpid(child, None).unwrap();
                assert_eq!(st, WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn programs_are_found_on_path() {
        assert_eq!(find_program("/x/y", "/bin"), "/x/y");
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tool");
        fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", t.path().display());
        assert_eq!(find_program("tool", &path), p.to_string_lossy());
        assert_eq!(find_program("missing", &path), "missing");
    }
}
