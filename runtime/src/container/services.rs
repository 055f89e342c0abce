//! The `[services]` table of a container's supervisor: when each service starts and restarts
//! (the policy and back-off shared with the VM agent, `berth_agent_proto::restart`), its
//! output into a size-bounded log, the end of its process group with it, and what `status`
//! reports about it. The supervisor's loop ([`supervisor`](super::supervisor)) calls in on
//! its events; processes are started by [`ProcessStarter`].

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use berth_agent_proto::restart::{exit_note, ServiceRuns};
use envfile_spec::plan::ServicePlan;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fork_exec::{ProcessStarter, Stdio};
use super::logs::LogFile;
use super::spec::ContainerSpec;
use crate::backend::{service_restart, CrashLoop, ServiceStatus};

struct Service {
    name: String,
    plan: ServicePlan,
    pid: Option<i32>,
    /// Restarts, last exit and recent exits (the restart policy's and crash loop's input).
    runs: ServiceRuns,
    restart_at: Option<Instant>,
    /// Process group of the last run, killed before the next one starts.
    last_group: Option<i32>,
    output: Option<OwnedFd>,
    log: Option<LogFile>,
}

impl Service {
    fn crash_loop(&self) -> Option<CrashLoop> {
        let seen = self.runs.crash_loop(Instant::now())?;
        Some(CrashLoop {
            exits: seen.exits,
            seconds: seen.since.as_secs(),
            last_exit: seen.last_exit,
        })
    }

    /// Signals every process left in the service's process group (it runs as a session
    /// leader, so the group id is its pid; the number is not reused while any member lives).
    fn signal_group(&self, pgid: i32, sig: Signal) {
        let _ = kill(Pid::from_raw(-pgid), sig);
    }
}

/// The environment's services, in berth.toml's order.
pub(super) struct Services {
    list: Vec<Service>,
}

impl Services {
    /// The spec's services, each logging into its file under `logs`. Due to start at once
    /// unless the spec holds them (until [`Services::release_held`]).
    pub(super) fn new(spec: &ContainerSpec, logs: &OwnedFd) -> Services {
        let list = spec
            .services
            .iter()
            .map(|(name, plan)| Service {
                name: name.clone(),
                plan: plan.clone(),
                pid: None,
                runs: ServiceRuns::default(),
                restart_at: (!spec.hold_services).then(Instant::now),
                last_group: None,
                output: None,
                log: LogFile::new(logs, name, spec.log_limit).ok(),
            })
            .collect();
        Services { list }
    }

    /// When the next (re)start is due, if one is pending.
    pub(super) fn next_start(&self) -> Option<Instant> {
        self.list.iter().filter_map(|s| s.restart_at).min()
    }

    /// The output pipes to poll: (service index, descriptor).
    pub(super) fn output_fds(&self) -> Vec<(usize, RawFd)> {
        self.list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.output.as_ref().map(|f| (i, f.as_raw_fd())))
            .collect()
    }

    /// Makes the services held at start (that never ran: no pid, no exit, no restart
    /// pending) due now.
    pub(super) fn release_held(&mut self) {
        let now = Instant::now();
        for s in &mut self.list {
            if s.pid.is_none() && s.runs.last_exit().is_none() && s.restart_at.is_none() {
                s.restart_at = Some(now);
            }
        }
    }

    /// Cancels every pending restart (the environment is stopping).
    pub(super) fn cancel_restarts(&mut self) {
        for s in &mut self.list {
            s.restart_at = None;
        }
    }

    /// Starts the services whose (re)start is due.
    pub(super) fn start_due(&mut self, starter: &ProcessStarter) {
        let now = Instant::now();
        for s in &mut self.list {
            let due = s.restart_at.is_some_and(|t| t <= now) && s.pid.is_none();
            if !due {
                continue;
            }
            s.restart_at = None;
            if let Some(pgid) = s.last_group.take() {
                s.signal_group(pgid, Signal::SIGKILL);
            }
            let plan = &s.plan;
            let env: Vec<String> = plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let started = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| format!("cannot create a pipe: {e}"))
                .and_then(|(r, w)| {
                    let _ = nix::fcntl::fcntl(
                        r.as_raw_fd(),
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                    );
                    starter
                        .spawn(
                            &plan.command,
                            &env,
                            plan.workdir.as_deref(),
                            None,
                            Stdio::Pipe(w),
                            false,
                        )
                        .map(|pid| (pid, r))
                });
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
                    // Counts as a run that ended; not restarted (what failed here, before
                    // the fork, fails the same way the next time).
                    s.runs.record_exit(127, Instant::now());
                }
            }
        }
    }

    /// A child ended: when it was a service's, applies its restart policy and notes the exit
    /// in its log. `false` when `pid` is no service's. `stopping`: nothing restarts.
    pub(super) fn exited(&mut self, pid: i32, code: i32, stopping: bool) -> bool {
        let Some(s) = self.list.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        s.pid = None;
        let now = Instant::now();
        let restart_in = s
            .runs
            .ended(service_restart(s.plan.restart), code, now, stopping);
        // What the service started lives on in its process group (a web server's workers,
        // a reloader's child holding the port): end it with the service, SIGKILL for
        // whatever ignores this before the next start.
        s.signal_group(pid, Signal::SIGTERM);
        s.last_group = Some(pid);
        if let Some(delay) = restart_in {
            s.restart_at = Some(now + delay);
        }
        let note = exit_note(&s.name, code, restart_in);
        // Read what is still in the pipe first so the note comes after the output.
        if let Some(fd) = s.output.take() {
            drain_fd(&fd, s.log.as_mut());
        }
        if let Some(l) = s.log.as_mut() {
            let _ = l.append(note.as_bytes());
        }
        true
    }

    /// Moves what service `i` wrote into its log; closes the pipe at its end.
    pub(super) fn drain_output(&mut self, i: usize) {
        let s = &mut self.list[i];
        let Some(fd) = s.output.as_ref() else { return };
        if !drain_fd(fd, s.log.as_mut()) {
            s.output = None;
        }
    }

    /// Each service's state for `status`.
    pub(super) fn status(&self) -> Vec<ServiceStatus> {
        self.list
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                pid: s.pid,
                restarts: s.runs.restarts(),
                last_exit: s.runs.last_exit(),
                crash_loop: s.crash_loop(),
            })
            .collect()
    }
}

/// berth.toml's `restart` as the policy shared with the VM agent.
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
