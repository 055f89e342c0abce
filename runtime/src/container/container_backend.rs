//! [`ContainerBackend`]: start, stop, exec, shell and status of container environments.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};

use crate::backend::{EnvStatus, ExecRequest, Started, StatusReport};
use crate::host::clock::now_secs;
use crate::host::fault_injection::checkpoint;
use crate::host::process::ProcessIdentity;

use super::cgroups::{env_cgroup_name, kill_and_remove, CgroupLayout};
use super::control::{self, ExecSession};
use super::error::{ContainerError, Context, Result};
use super::idmap::{IdMapping, Invoker};
use super::idmap_record::stable_mapping;
use super::launch_report::LaunchEvent;
use super::namespaces::{pipe, send_byte};
use super::network_attach::{self, EnvNetns};
use super::run_state::{ContainerState, Phase};
use super::selfexe::supervisor_command;
use super::spec::{ContainerSpec, MountSpec};

/// The launcher process of a start: an exec of berth, or a fork of it for a throw-away run
/// ([`launcher_fork`](super::launcher_fork)).
enum Launcher {
    Exec(std::process::Child),
    Forked(nix::unistd::Pid),
}

/// Runs environments as containers. Stateless: everything lives in the state dir. The caller
/// serializes commands on one environment with its lock (`envs/<id>/lock`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ContainerBackend;

impl ContainerBackend {
    /// Starts the environment. Returns when the supervisor accepts commands.
    pub fn start(&self, spec: &ContainerSpec) -> Result<Started> {
        self.start_with_hook(spec, &mut |_| Ok(()))
    }

    /// Like [`start`](Self::start), calling `hook(pid)` once the environment's namespaces exist
    /// and before anything runs inside: `pid` is the supervisor's host pid, so
    /// `/proc/<pid>/ns/net` is the environment's network namespace (networking adds its
    /// interfaces there).
    pub fn start_with_hook(
        &self,
        spec: &ContainerSpec,
        hook: &mut dyn FnMut(i32) -> Result<()>,
    ) -> Result<Started> {
        let t0 = Instant::now();
        checkpoint("start");
        spec.validate()?;
        let dir = &spec.state_dir;
        fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
        let mut state = ContainerState::load(dir)?;
        if let Some(s) = state.supervisor {
            if s.alive() && state.phase == Phase::Running {
                return Err(ContainerError::Invalid(format!(
                    "environment {} is already running (supervisor pid {}); stop it first with `berth down`",
                    spec.env_id, s.pid
                )));
            }
        }
        let recorded = state.mapping.clone();
        if state.phase != Phase::Stopped || state.cgroups.is_some() || state.supervisor.is_some() {
            self.cleanup(dir, &mut state)?;
        }
        let who = Invoker::current();
        let (mapping, mapping_notice) = match &spec.join {
            // A sidecar lives in the environment's user namespace: its mapping, not one of its own.
            Some(join) => (super::sidecar::Joined::open(spec, join)?.mapping, None),
            None => match &spec.chosen_mapping {
                Some(chosen) => (Some(chosen.clone()), None),
                None => stable_mapping(spec, &who, recorded.as_ref())?,
            },
        };
        let mut notices: Vec<String> = mapping_notice.into_iter().collect();
        if let (Some(m), true) = (&mapping, who.uid == 0) {
            for parent in &spec.searchable_parents {
                open_state_dir_to(parent, m.host_gid(0))?;
            }
            check_reachable_by_mapped_root(spec, m)?;
            // Root-owned bind sources others can reach stay read-only to the environment's
            // root: say so once here rather than let it meet EACCES inside.
            notices.extend(super::root_bind::notices(spec));
        }
        // Where the layer store has no id-mapped mounts: copies owned by the environment's ids.
        let copied = super::layer_copy::lowers_for(spec, mapping.as_ref(), who.uid == 0)?;
        let spec = match &copied {
            Some((with, notice)) => {
                notices.push(notice.clone());
                with
            }
            None => spec,
        };
        let cgroups = choose_cgroups(spec, who.uid == 0)?;
        state.phase = Phase::Starting;
        state.mapping = mapping.clone();
        state.cgroups = cgroups;
        state.supervisor = None;
        state.starter = ProcessIdentity::current();
        state.started_at = None;
        state.last_error = None;
        state.save(dir)?;
        checkpoint("state-written");
        match self.launch(spec, &mut state, mapping.as_ref(), who.uid == 0, hook) {
            Ok(Launched {
                pid,
                gitconfig_error,
            }) => {
                checkpoint("started");
                state.phase = Phase::Running;
                state.starter = None;
                state.started_at = Some(now_secs());
                state.save(dir)?;
                Ok(Started {
                    pid,
                    control_socket: spec.control_socket(),
                    elapsed: t0.elapsed(),
                    notices,
                    gitconfig_error,
                })
            }
            Err(e) => {
                let _ = self.cleanup(dir, &mut state);
                state.last_error = Some(e.to_string());
                let _ = state.save(dir);
                Err(e)
            }
        }
    }

    fn launch(
        &self,
        spec: &ContainerSpec,
        state: &mut ContainerState,
        mapping: Option<&IdMapping>,
        is_root: bool,
        hook: &mut dyn FnMut(i32) -> Result<()>,
    ) -> Result<Launched> {
        let owner = match (mapping, is_root) {
            (Some(m), true) => m.host_uid(0).zip(m.host_gid(0)),
            _ => None,
        };
        prepare_dirs(spec, owner)?;
        if let Some(l) = &state.cgroups {
            let cg = l.driver();
            cg.create()?;
            cg.apply(&spec.resources)?;
            // Rootless, the kernel refuses device programs, and nothing needs them: the
            // layers are mounted inside the user namespace (nodev) and nobody can mknod.
            if is_root && !spec.privileged {
                cg.restrict_devices(&super::devices::rules(&spec.devices))?;
            }
        }
        checkpoint("cgroups-created");
        crate::state::write_json_volatile(&spec.spec_file(), spec)?;
        let (report_r, report_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let logs_dir = spec.logs_dir();
        let log = super::logs::open_logs_dir(&spec.state_dir)
            .and_then(|d| super::logs::open_for_append(&d, &logs_dir, "supervisor.log"))
            .context(|| format!("cannot open {}/supervisor.log", logs_dir.display()))?;
        let procs_files: Vec<fs::File> = match &state.cgroups {
            Some(l) => l
                .driver()
                .self_join_files()
                .into_iter()
                .map(|p| {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .context(|| format!("cannot open {}", p.display()))
                })
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        // The launcher enters the cgroups before it runs a single instruction of its own, so a
        // stop racing with this start always finds (and kills) it. The forked child is
        // single-threaded, so it may join through the per-thread file (see `self_join_file`).
        // A throw-away run's launcher is a fork of this process, not an exec (launcher_fork).
        let launcher = if super::launcher_fork::may_fork(spec, mapping) {
            let pid = super::launcher_fork::spawn(
                &spec.state_dir,
                &log,
                &procs_files,
                report_w.as_raw_fd(),
                go_r.as_raw_fd(),
            )?;
            drop((report_w, go_r, procs_files, log));
            Launcher::Forked(pid)
        } else {
            let mut cmd = supervisor_command(&spec.state_dir, mapping.is_none())
                .context(|| "cannot prepare berth's supervisor".to_string())?;
            cmd.stdin(Stdio::null())
                .stdout(
                    log.try_clone()
                        .context(|| "cannot duplicate the log fd".to_string())?,
                )
                .stderr(log)
                .env_remove("RUST_BACKTRACE");
            let procs_fds: Vec<i32> = procs_files.iter().map(|f| f.as_raw_fd()).collect();
            let (rw, gr) = (report_w.as_raw_fd(), go_r.as_raw_fd());
            // SAFETY: only async-signal-safe write/fcntl/dup2 calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    super::launcher_fork::join_cgroups(&procs_fds)?;
                    let a = libc::fcntl(rw, libc::F_DUPFD_CLOEXEC, 10);
                    let b = libc::fcntl(gr, libc::F_DUPFD_CLOEXEC, 10);
                    if a < 0
                        || b < 0
                        || libc::dup2(a, super::launch::REPORT_FD) < 0
                        || libc::dup2(b, super::launch::GO_FD) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .context(|| "cannot start berth's supervisor process".to_string())?;
            drop((report_w, go_r, procs_files));
            Launcher::Exec(child)
        };
        checkpoint("supervisor-spawned");
        let launcher_pid = match &launcher {
            Launcher::Exec(child) => child.id() as i32,
            Launcher::Forked(pid) => pid.as_raw(),
        };
        let outcome = read_launch_events(
            report_r,
            go_w,
            state,
            spec,
            mapping.is_some(),
            launcher_pid,
            hook,
        );
        match launcher {
            Launcher::Exec(mut child) => {
                let _ = child.wait();
            }
            Launcher::Forked(pid) => {
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
        outcome
    }

    /// Stops the environment: SIGTERM to all processes, SIGKILL after `timeout`; then removes
    /// its cgroups and control socket. Also cleans up after a crashed supervisor or a start
    /// that was interrupted. Stopping a stopped environment is a no-op.
    pub fn stop(&self, state_dir: &Path, timeout: Duration) -> Result<()> {
        self.stop_recording(state_dir, timeout, true)
    }

    /// [`stop`](Self::stop) for an environment whose folder goes next (`Backend::destroy`):
    /// everything ends and is removed as by `stop`, but `stopped` is not recorded, which
    /// would only write a file about to be removed (one state write per `berth run`). A
    /// removal that then fails leaves a record of a supervisor that is gone: reported dead,
    /// and the next `stop` or `destroy` cleans up again (every step is idempotent).
    pub fn stop_for_removal(&self, state_dir: &Path, timeout: Duration) -> Result<()> {
        self.stop_recording(state_dir, timeout, false)
    }

    fn stop_recording(&self, state_dir: &Path, timeout: Duration, record: bool) -> Result<()> {
        if !state_dir.exists() {
            return Ok(());
        }
        let mut state = ContainerState::load(state_dir)?;
        if let Some(s) = state.supervisor.filter(|s| s.alive()) {
            let socket = state_dir.join("control.sock");
            let asked = control::request_stop(&socket, timeout.as_millis() as u64).is_ok();
            self.end_supervisor(&s, timeout, asked);
        }
        self.end_what_is_left(state_dir, &mut state)?;
        if record {
            state.save(state_dir)?;
        }
        Ok(())
    }

    /// The part of [`stop`](Self::stop) a caller must wait for: the environment's processes
    /// end (the supervisor's stop, SIGKILL after `timeout`) and its forwarded ports are
    /// released (the supervisor's sockets, the host's port rules). When that is all done
    /// while the supervisor is still exiting (its mount namespace's teardown, an overlay's
    /// sync of its filesystem: 3 to 70 ms, longer on a busy disk), `stopped` is recorded with
    /// the supervisor and cgroups still named, and this returns [`StopLeft::Teardown`]: the
    /// rest (waiting for that exit, the cgroups, the network, the control socket) is
    /// [`finish_stop`](Self::finish_stop)'s, or that of the next `stop` (every step is
    /// idempotent). Otherwise it does all of `stop` and returns [`StopLeft::Nothing`].
    ///
    /// "Ended" is checked, not assumed: the supervisor closed its end of the stop request's
    /// connection (it only does so by exiting, once nothing it started is left; its exit
    /// closed its descriptors, the ports' sockets among them) and its cgroup holds no process
    /// but the supervisor. Without cgroups to look at, or with any doubt, all of `stop` is
    /// done here.
    pub fn stop_processes(&self, state_dir: &Path, timeout: Duration) -> Result<StopLeft> {
        if !state_dir.exists() {
            return Ok(StopLeft::Nothing);
        }
        let mut state = ContainerState::load(state_dir)?;
        let (Some(s), Some(cgroups), Phase::Running) = (
            state.supervisor.filter(|s| s.alive()),
            state.cgroups.clone(),
            state.phase,
        ) else {
            self.stop_recording(state_dir, timeout, true)?;
            return Ok(StopLeft::Nothing);
        };
        let closed = control::stop_and_wait_for_close(
            &state_dir.join("control.sock"),
            timeout.as_millis() as u64,
            timeout + STOP_GRACE_SLACK,
        );
        if !matches!(closed, Ok(true)) || cgroups.driver().procs().iter().any(|p| *p != s.pid) {
            // A supervisor that closed exits now; one that did not within the wait is killed.
            self.end_supervisor(&s, timeout, matches!(closed, Ok(true)));
            self.end_what_is_left(state_dir, &mut state)?;
            state.save(state_dir)?;
            return Ok(StopLeft::Nothing);
        }
        network_attach::release_ports(state_dir)?;
        state.phase = Phase::Stopped;
        state.save(state_dir)?;
        Ok(StopLeft::Teardown)
    }

    /// What [`stop_processes`](Self::stop_processes) left when it returned
    /// [`StopLeft::Teardown`]: waits for the supervisor's exit, then removes its cgroups,
    /// control socket and network, and records the environment stopped without them.
    /// Idempotent, as [`stop`](Self::stop), which does the same.
    /// Nothing to do for an environment started again since (its start removed what was
    /// left) or whose stop is finished.
    pub fn finish_stop(&self, state_dir: &Path) -> Result<()> {
        if !state_dir.exists() {
            return Ok(());
        }
        let mut state = ContainerState::load(state_dir)?;
        if state.phase != Phase::Stopped || (state.supervisor.is_none() && state.cgroups.is_none())
        {
            return Ok(());
        }
        if let Some(s) = state.supervisor {
            s.wait_exit(SUPERVISOR_EXIT_WAIT);
        }
        self.cleanup(state_dir, &mut state)
    }

    /// Waits for the supervisor `s` asked to stop (`asked`) to exit, and SIGKILLs it when it
    /// does not within `timeout` and some slack.
    fn end_supervisor(&self, s: &ProcessIdentity, timeout: Duration, asked: bool) {
        if asked {
            s.wait_exit(timeout + STOP_GRACE_SLACK);
        }
        if s.alive() {
            s.kill(Signal::SIGKILL);
            s.wait_exit(SUPERVISOR_EXIT_WAIT);
        }
    }

    /// Kills whatever is left and removes cgroups and socket; records `stopped`.
    fn cleanup(&self, dir: &Path, state: &mut ContainerState) -> Result<()> {
        self.end_what_is_left(dir, state)?;
        state.save(dir)
    }

    /// [`cleanup`](Self::cleanup) without writing the record: `state` says `stopped`.
    fn end_what_is_left(&self, dir: &Path, state: &mut ContainerState) -> Result<()> {
        if let Some(s) = state.supervisor.filter(|s| s.alive()) {
            s.kill(Signal::SIGKILL);
            s.wait_exit(SUPERVISOR_EXIT_WAIT);
        }
        if let Some(l) = &state.cgroups {
            kill_and_remove(&*l.driver(), Duration::from_secs(10))?;
        }
        let _ = fs::remove_file(dir.join("control.sock"));
        // After the processes: the namespace is gone, so its end of the veth pair too.
        network_attach::detach(dir)?;
        state.phase = Phase::Stopped;
        state.supervisor = None;
        state.starter = None;
        state.cgroups = None;
        state.started_at = None;
        Ok(())
    }

    /// Stops the environment and removes its state folder: writable layer, logs, state.
    /// Named volumes live under `volumes/` and stay. When berth runs rootless with
    /// subordinate ids, files created by other users inside belong to ids the invoking user
    /// cannot remove directly; they are removed from inside a user namespace with the
    /// environment's mapping.
    pub fn destroy(&self, state_dir: &Path, timeout: Duration) -> Result<()> {
        self.stop(state_dir, timeout)?;
        let mapping = ContainerState::load(state_dir)?.mapping;
        match crate::state::remove_tree(state_dir) {
            Ok(()) => Ok(()),
            Err(e) => match mapping {
                Some(m) if !nix::unistd::geteuid().is_root() => {
                    remove_tree_as_mapped_root(state_dir, &m)
                }
                _ => Err(ContainerError::io(
                    format!("cannot remove {}", state_dir.display()),
                    e,
                )),
            },
        }
    }

    /// Freezes or thaws every process of a running environment (cgroup freezer). A no-op
    /// for an environment that is not running.
    pub fn set_frozen(&self, state_dir: &Path, frozen: bool) -> Result<()> {
        let state = ContainerState::load(state_dir)?;
        match (&state.cgroups, state.supervisor.filter(|s| s.alive())) {
            (Some(l), Some(_)) => l.driver().set_frozen(frozen),
            _ => Ok(()),
        }
    }

    /// Running, stopped or dead, with live usage from the cgroup.
    pub fn status(&self, state_dir: &Path) -> Result<StatusReport> {
        self.report(state_dir, true)
    }

    /// [`ContainerBackend::status`], reading the cgroup's usage only when `with_usage`.
    pub fn report(&self, state_dir: &Path, with_usage: bool) -> Result<StatusReport> {
        let state = ContainerState::load(state_dir)?;
        let alive = state.supervisor.filter(|s| s.alive());
        let status = status_of(&state, alive);
        let mut report = StatusReport {
            status,
            pid: alive.map(|s| s.pid),
            uptime: None,
            usage: None,
            services: Vec::new(),
            processes: None,
            last_error: state.last_error.clone(),
            vm: None,
        };
        if status == EnvStatus::Running {
            report.uptime = state
                .started_at
                .map(|t| Duration::from_secs(now_secs().saturating_sub(t)));
            if with_usage {
                report.usage = state.cgroups.as_ref().map(|l| l.driver().usage());
            }
            if let Ok(s) = control::status(&state_dir.join("control.sock")) {
                report.services = s.services;
                report.processes = Some(s.processes);
            }
        }
        Ok(report)
    }

    /// Only the state of [`ContainerBackend::status`]: the record and whether its processes
    /// live, without the cgroup's usage or a round trip to the supervisor.
    pub fn liveness(&self, state_dir: &Path) -> EnvStatus {
        match ContainerState::load(state_dir) {
            Ok(state) => status_of(&state, state.supervisor.filter(|s| s.alive())),
            Err(_) => EnvStatus::Dead,
        }
    }

    fn running_socket(&self, state_dir: &Path) -> Result<std::path::PathBuf> {
        let state = ContainerState::load(state_dir)?;
        match state.supervisor {
            Some(s) if state.phase == Phase::Running && s.alive() => {
                Ok(state_dir.join("control.sock"))
            }
            _ => Err(ContainerError::not_running_at(state_dir)),
        }
    }

    /// Runs a command with the caller's stdin/stdout/stderr; returns its exit code.
    pub fn exec(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<i32> {
        control::exec(&self.running_socket(state_dir)?, req, stdio)
    }

    /// Starts the services of an environment started with `hold_services`.
    pub fn start_services(&self, state_dir: &Path) -> Result<()> {
        control::start_services(&self.running_socket(state_dir)?)
    }

    /// Starts a command without waiting (to forward signals with [`ExecSession::signal`]).
    pub fn exec_start(
        &self,
        state_dir: &Path,
        req: &ExecRequest,
        stdio: [BorrowedFd<'_>; 3],
    ) -> Result<ExecSession> {
        control::exec_start(&self.running_socket(state_dir)?, req, stdio)
    }

    /// Starts a command on a new PTY inside; drive it with
    /// [`terminal::run_terminal`](super::terminal::run_terminal).
    pub fn exec_tty(&self, state_dir: &Path, req: &ExecRequest) -> Result<ExecSession> {
        control::exec_tty(&self.running_socket(state_dir)?, req)
    }

    /// An interactive command on the caller's terminal (raw mode, window size following
    /// SIGWINCH); when `stdin` is not a terminal, a plain exec with the caller's fds.
    pub fn shell(&self, state_dir: &Path, req: &ExecRequest) -> Result<i32> {
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        use std::os::fd::AsFd;
        if nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
            let mut r = req.clone();
            r.winsize = super::terminal::window_size(stdin.as_fd());
            let session = self.exec_tty(state_dir, &r)?;
            super::terminal::run_terminal(session, stdin.as_fd(), stdout.as_fd())
        } else {
            let mut r = req.clone();
            r.tty = false;
            self.exec(
                state_dir,
                &r,
                [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
            )
        }
    }
}

/// What [`ContainerBackend::stop_processes`] left for [`ContainerBackend::finish_stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopLeft {
    /// Nothing: the environment is stopped and everything of its start removed.
    Nothing,
    /// The supervisor's exit, the cgroups, the control socket and the network.
    Teardown,
}

/// How much longer than the stop's grace the supervisor gets to exit (its SIGKILL to what
/// is left comes at the end of the grace, and waits up to 2 s more).
const STOP_GRACE_SLACK: Duration = Duration::from_secs(3);

/// How long an exit is waited for after the processes are gone or killed (an exit waits
/// for the kernel's teardown of the namespaces, and a D-state process for its I/O).
const SUPERVISOR_EXIT_WAIT: Duration = Duration::from_secs(5);

fn choose_cgroups(spec: &ContainerSpec, is_root: bool) -> Result<Option<CgroupLayout>> {
    let wants_limits = spec.resources.memory.is_some()
        || spec.resources.cpus.is_some()
        || spec.resources.pids.is_some();
    let name = env_cgroup_name(&spec.env_id, &spec.state_dir);
    if is_root {
        return Ok(Some(CgroupLayout::discover(&name)?));
    }
    // Rootless: only a delegated cgroup v2 subtree is writable.
    match CgroupLayout::discover(&name) {
        Ok(l @ CgroupLayout::V2 { .. }) if l.driver().create().is_ok() => {
            let _ = l.driver().remove();
            Ok(Some(l))
        }
        _ if wants_limits => Err(ContainerError::Invalid(
            "resource limits need writable cgroups: without root this needs cgroup v2 with a delegated subtree (systemd user session); this host has none, so remove [resources] or run berth as root".into(),
        )),
        _ => Ok(None),
    }
}

/// Creates upper/work dirs, volume dirs and the logs dir; new ones are owned by the
/// environment's root (`owner`, host ids).
fn prepare_dirs(spec: &ContainerSpec, owner: Option<(u32, u32)>) -> Result<()> {
    open_state_dir_to(&spec.state_dir, owner.map(|(_, g)| g))?;
    let chown = |p: &Path| -> Result<()> {
        if let Some((u, g)) = owner {
            nix::unistd::chown(p, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                .context(|| format!("cannot chown {}", p.display()))?;
        }
        Ok(())
    };
    for d in [&spec.upper_dir, &spec.work_dir] {
        if !d.exists() {
            fs::create_dir_all(d).context(|| format!("cannot create {}", d.display()))?;
            if d == &spec.upper_dir {
                chown(d)?;
            }
        }
    }
    for m in &spec.mounts {
        if let MountSpec::Volume { source, .. } = m {
            if !source.exists() {
                fs::create_dir_all(source)
                    .context(|| format!("cannot create volume {}", source.display()))?;
                chown(source)?;
            }
        }
    }
    super::logs::open_logs_dir(&spec.state_dir)
        .map(drop)
        .context(|| format!("cannot create {}", spec.logs_dir().display()))
}

/// The environment's folder is its owner's alone (0700), except that with an id mapping the
/// environment's root (host gid `gid`) must pass through it to reach `rootfs/` from inside
/// its user namespace: then it is group `gid` with mode 0710 (search only; no other host
/// user is in that group, which lies in berth's subordinate range). Every file in it is 0600.
fn open_state_dir_to(dir: &Path, gid: Option<u32>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let f = crate::state::open_dir_nofollow(dir)
        .map_err(|e| crate::state::refuse_link(dir, e))
        .context(|| format!("cannot open {}", dir.display()))?;
    let mode = match gid {
        Some(g) => {
            nix::unistd::fchown(f.as_raw_fd(), None, Some(Gid::from_raw(g)))
                .context(|| format!("cannot chgrp {}", dir.display()))?;
            0o710
        }
        None => 0o700,
    };
    f.set_permissions(fs::Permissions::from_mode(mode))
        .context(|| format!("cannot chmod {}", dir.display()))
}

/// What the launcher chain reported of a successful start.
struct Launched {
    /// The supervisor's host pid.
    pid: i32,
    /// Why the spec's gitconfig is not inside (`LaunchEvent::GitconfigFailed`).
    gitconfig_error: Option<String>,
}

fn read_launch_events(
    report_r: OwnedFd,
    go_w: OwnedFd,
    state: &mut ContainerState,
    spec: &ContainerSpec,
    own_userns: bool,
    launcher_pid: i32,
    hook: &mut dyn FnMut(i32) -> Result<()>,
) -> Result<Launched> {
    let dir = &spec.state_dir;
    let mut reader = BufReader::new(fs::File::from(report_r));
    let mut pid = None;
    let mut gitconfig_error = None;
    let mut ports = Vec::new();
    let mut go = Some(go_w);
    // The network namespace plumbed before the supervisor existed (`LaunchEvent::Netns`),
    // and its resolv.conf, written once the launcher made the file.
    let mut plumbed: Option<(fs::File, network_attach::ResolvConf)> = None;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .context(|| "cannot read from the supervisor".to_string())?;
        if n == 0 {
            return Err(ContainerError::Setup(format!(
                "the supervisor exited while starting; see {}/logs/supervisor.log",
                dir.display()
            )));
        }
        match serde_json::from_str::<LaunchEvent>(line.trim()) {
            Ok(LaunchEvent::Pid { pid: p }) => {
                pid = Some(p);
                state.supervisor = ProcessIdentity::of(p);
                // With cgroups, every process of the environment is in them (recorded
                // before they were made), so a stop finds the supervisor without its pid:
                // it is recorded with `running`, in one write. Without cgroups (rootless,
                // none delegated) its pid is the only handle, recorded before anything else.
                if state.cgroups.is_none() {
                    state.save(dir)?;
                }
                match plumbed.take() {
                    Some((net, resolv_conf)) => {
                        same_netns(&net, p)?;
                        resolv_conf.write(spec)?;
                    }
                    None => {
                        network_attach::attach(spec, &EnvNetns::Of(p), own_userns, &ports)?
                            .write(spec)?;
                        checkpoint("network-attached");
                    }
                }
                hook(p)?;
                if let Some(g) = go.take() {
                    send_byte(&g, 1);
                }
            }
            // As root, the namespace is plumbed while the launcher maps the ids and mounts
            // the root (rootless plumbing needs the mapped user namespace: at `Pid`). Opened
            // only as the launcher's child, so a pid reused meanwhile is never plumbed.
            Ok(LaunchEvent::Netns { pid: p }) if nix::unistd::geteuid().is_root() => {
                if let Some(net) = crate::host::process::child_namespace(p, launcher_pid, "net") {
                    let resolv_conf =
                        network_attach::attach(spec, &EnvNetns::Open(&net), own_userns, &ports)?;
                    checkpoint("network-attached");
                    plumbed = Some((net, resolv_conf));
                }
            }
            Ok(LaunchEvent::Netns { .. }) => {}
            Ok(LaunchEvent::Ports { ports: p }) => ports = p,
            Ok(LaunchEvent::GitconfigFailed { message }) => gitconfig_error = Some(message),
            Ok(LaunchEvent::Ready) => {
                let pid = pid.ok_or_else(|| {
                    ContainerError::Setup("the supervisor reported ready without a pid".into())
                })?;
                return Ok(Launched {
                    pid,
                    gitconfig_error,
                });
            }
            Ok(LaunchEvent::Error { message }) => return Err(ContainerError::Setup(message)),
            Err(_) => continue,
        }
    }
}

/// Checks that the supervisor `pid` is in the network namespace `net` plumbed for it.
fn same_netns(net: &fs::File, pid: i32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/{pid}/ns/net");
    let theirs = fs::metadata(&path).context(|| format!("cannot look at {path}"))?;
    let ours = net
        .metadata()
        .context(|| "cannot look at the plumbed network namespace".to_string())?;
    if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
        return Err(ContainerError::Setup(
            "the supervisor is not in the network namespace prepared for it".into(),
        ));
    }
    Ok(())
}

/// Removes `path` from a child process in a new user namespace with `mapping`, as its root.
fn remove_tree_as_mapped_root(path: &Path, mapping: &IdMapping) -> Result<()> {
    use super::namespaces::recv_byte;
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    // SAFETY: the child only runs the removal and exits; berth's commands are single-threaded
    // when they destroy an environment, and the child touches no locks held by other threads
    // (remove_tree allocates, which glibc's fork handlers make safe).
    match unsafe { nix::unistd::fork() }.context(|| "cannot fork".to_string())? {
        nix::unistd::ForkResult::Child => {
            drop((ready_r, go_w));
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok()
                && send_byte(&ready_w, 1)
                && recv_byte(&go_r) == Some(1)
                && nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                    .is_ok()
                && nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                    .is_ok()
                && crate::state::remove_tree(path).is_ok();
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mapped = match recv_byte(&ready_r) {
                Some(1) => mapping.write_for(child.as_raw()),
                _ => Err(ContainerError::Setup(
                    "the removal helper could not create a user namespace".into(),
                )),
            };
            send_byte(&go_w, u8::from(mapped.is_ok()));
            let status = nix::sys::wait::waitpid(child, None);
            mapped?;
            match status {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                _ => Err(ContainerError::Setup(format!(
                    "cannot remove {} even as the environment's root; remove it by hand",
                    path.display()
                ))),
            }
        }
    }
}

/// The environment's root is an unprivileged host uid (e.g. 100000): from inside its user
/// namespace it must be able to walk to its state folder (`rootfs/` is bound there). The
/// layers are opened by the launcher as the host's root (id-mapped binds), so `layers/` stays
/// private. A folder on the way without search permission for others (e.g. BERTH_HOME under
/// a mode-0700 temp dir) would fail later with a bare EACCES from mount(2); say which folder
/// and what to do instead.
fn check_reachable_by_mapped_root(spec: &ContainerSpec, mapping: &IdMapping) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(root_uid) = mapping.host_uid(0) else {
        return Ok(());
    };
    let root_gid = mapping.host_gid(0);
    let paths = [spec.state_dir.clone()];
    for p in &paths {
        for dir in p.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            let searchable = meta.mode() & 0o001 != 0
                || meta.uid() == root_uid
                || (Some(meta.gid()) == root_gid && meta.mode() & 0o010 != 0);
            if !searchable {
                return Err(ContainerError::Invalid(format!(
                    "{} is not searchable by the environment's root (host uid {root_uid}), so it cannot reach {}; run `chmod o+x {}` or keep BERTH_HOME under a folder others may traverse",
                    dir.display(),
                    p.display(),
                    dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// An environment's state from its record and its live supervisor (`alive`).
fn status_of(state: &ContainerState, alive: Option<ProcessIdentity>) -> EnvStatus {
    match (state.phase, alive) {
        (Phase::Stopped, _) => EnvStatus::Stopped,
        (Phase::Running, Some(_)) => EnvStatus::Running,
        (Phase::Starting, Some(_)) => EnvStatus::Starting,
        (Phase::Starting, None) if state.starter.is_some_and(|s| s.alive()) => EnvStatus::Starting,
        _ => EnvStatus::Dead,
    }
}
