//! The supervisor: PID 1 of an environment. It finishes the environment's setup, reaps every
//! process, runs the `[services]` (their table and restart policy: `services.rs`)
//! and serves the control socket (exec, tty exec, signal, status, stop); processes are started
//! by [`fork_exec`](super::fork_exec). One `poll` loop over the socket, a signalfd (SIGCHLD;
//! SIGTERM, SIGINT, SIGHUP from the host only), the connections and the services' output
//! pipes. The only other threads are the `[[ports]]` forwarder's, which take no lock a forked
//! child needs (their descriptors are all close-on-exec, glibc's malloc is fork-safe), so
//! forking a child from the loop stays safe.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::control::{
    encode, recv_with_fds, send_with_fds, FrameDecoder, Request, Response, SupervisorStatus,
};
use super::error::{ContainerError, Context, Result};
use super::fork_exec::ProcessStarter;
use super::idmap::IdMapping;
use super::launch_report::{report, LaunchEvent};
use super::namespaces::recv_byte;
use super::rootfs::OverlayRootfs;
use super::security::ProcessSecurity;
use super::services::Services;
use super::spec::ContainerSpec;
use crate::backend::ExecRequest;
use crate::host::clock::now_secs;
use crate::host::fault_injection::checkpoint;
use crate::net::dialer::LoopbackDialer;
use crate::net::forward::{BoundPorts, ForwardedPort, PortForwarder};

/// Default grace period when the supervisor itself receives SIGTERM.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

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
    // The root filesystem is finished while the starter plumbs the network namespace (the
    // two touch nothing of each other's: the starter writes the bound resolv.conf in place);
    // nothing runs inside before the starter's go says the network is there.
    let new_netns = spec.network != envfile_spec::plan::NetworkMode::Host;
    if new_netns {
        // Forwarded ports reach services through loopback; as the namespace's own root this
        // works rootless too, where nothing outside may enter the namespace.
        super::network_attach::loopback_up_here()?;
    }
    OverlayRootfs::new(spec, mapping).enter(new_netns)?;
    nix::unistd::sethostname(&spec.hostname)
        .context(|| format!("cannot set the hostname to {}", spec.hostname))?;
    checkpoint("namespaces-entered");
    if recv_byte(&go) != Some(1) {
        return Err(ContainerError::Setup(
            "the starter gave up before the environment was ready".into(),
        ));
    }
    drop(go);
    // The host's git identity, before any process (service or command) can start: a start
    // that brings it needs no `write-gitconfig` builtin (a fork and a control round trip).
    if let Some(text) = &spec.gitconfig {
        if let Err(message) = crate::ssh_inside::write_gitconfig(text.as_bytes()) {
            report(report_fd, &LaunchEvent::GitconfigFailed { message });
        }
    }
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

struct Supervisor {
    starter: ProcessStarter,
    listener: UnixListener,
    signals: SignalFd,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    execs: HashMap<i32, u64>,
    services: Services,
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
        let services = Services::new(&spec, &logs);
        Ok(Supervisor {
            starter: ProcessStarter { spec, security },
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
            let svc_fds = self.services.output_fds();
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
                self.services.drain_output(i);
            }
        }
    }

    fn poll_timeout(&self) -> PollTimeout {
        let next = match self.stop_deadline {
            Some(deadline) => Some(deadline),
            None => self.services.next_start(),
        };
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
        self.services.exited(pid, code, stopping);
    }

    fn begin_stop(&mut self, grace: Duration) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.services.cancel_restarts();
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
            Request::Namespaces => {
                let open = |kind: &str| fs::File::open(format!("/proc/self/ns/{kind}"));
                match (open("user"), open("net")) {
                    (Ok(user), Ok(net)) => self.respond(
                        id,
                        &Response::Namespaces,
                        &[user.as_raw_fd(), net.as_raw_fd()],
                    ),
                    (Err(e), _) | (_, Err(e)) => self.respond(
                        id,
                        &Response::Error {
                            message: format!("cannot open the environment's namespaces: {e}"),
                        },
                        &[],
                    ),
                }
            }
            Request::StartServices => {
                self.services.release_held();
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
                    // Nothing starts in a stopping environment; the client reports it as
                    // not running.
                    self.respond(id, &Response::Stopping, &[]);
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
        self.starter.exec(req, passed)
    }

    fn start_services(&mut self) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.services.start_due(&self.starter);
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
            services: self.services.status(),
            processes,
            usage: None,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
