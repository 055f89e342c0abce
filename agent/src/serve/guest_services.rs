//! The guest's `[services]`: each started when its time comes, its output appended to its
//! log, restarted as its policy says with the back-off a container's supervisor uses.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use berth_agent_proto::restart::{exit_note, ServiceRuns};
use berth_agent_proto::{ServiceSpec, SERVICE_LOG_DIR};

use super::Server;
use crate::spawn::{spawn, SpawnRequest};
use crate::sys;
use crate::users;

/// One `[services]` entry and its restarts.
pub(super) struct Service {
    pub(super) spec: ServiceSpec,
    pub(super) pid: Option<i32>,
    pub(super) restart_at: Option<Instant>,
    /// Restarts and recent exits: the restart policy's back-off, as in a container.
    pub(super) runs: ServiceRuns,
    /// Not started yet: waits for `StartServices`.
    pub(super) held: bool,
}

impl Service {
    /// A service not started yet: due at `now`, or `held` until `StartServices`.
    pub(super) fn new(spec: ServiceSpec, held: bool, now: Instant) -> Service {
        Service {
            spec,
            pid: None,
            restart_at: (!held).then_some(now),
            held,
            runs: ServiceRuns::default(),
        }
    }

    /// The service's run ended with `code` at `now`: schedules the next run as its restart
    /// policy says (with the back-off a container's supervisor uses) and returns the note for
    /// its log.
    pub(super) fn ended(&mut self, code: i32, now: Instant) -> String {
        self.pid = None;
        let restart_in = self.runs.ended(self.spec.restart, code, now, false);
        self.restart_at = restart_in.map(|delay| now + delay);
        exit_note(&self.spec.name, code, restart_in)
    }

    pub(super) fn log_path(&self) -> String {
        format!("{SERVICE_LOG_DIR}/{}.log", self.spec.name)
    }
}

impl Server {
    pub(super) fn restart_services(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::Service;
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
}
