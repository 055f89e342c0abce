//! What happens when a `[services]` entry exits, for both places that run services: the
//! container supervisor (PID 1 of a container) and `berth-agent` (PID 1 of a VM). One policy,
//! one back-off schedule, one crash-loop rule, so a service behaves the same in either backend.
//!
//! - The policy is berth.toml's `restart` (envfile-spec/SPEC.md, `[services]`): `"no"` never
//!   restarts, `"on-failure"` restarts after a non-zero exit code (a kill by a signal counts as
//!   128 + the signal number, so it is a failure), `"always"` restarts after any exit. Nothing
//!   restarts while the environment is stopping.
//! - The back-off: [`FIRST_DELAY`] before the first restart, doubling with each restart up to
//!   [`LONGEST_DELAY`], so a crashing service does not spin.
//! - A crash loop: at least [`CRASH_LOOP_MIN_EXITS`] exits within the last
//!   [`CRASH_LOOP_WINDOW`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Restart;

/// The wait before the first restart.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// How many times the wait doubles: it stays at [`LONGEST_DELAY`] from then on.
const DOUBLINGS: u32 = 6;
/// The longest wait between two runs: [`FIRST_DELAY`] doubled [`DOUBLINGS`] times (6.4 s).
pub const LONGEST_DELAY: Duration = Duration::from_millis(100 << DOUBLINGS);

/// Exits within [`CRASH_LOOP_WINDOW`] that make a service crash-looping.
pub const CRASH_LOOP_MIN_EXITS: u32 = 3;
/// How far back exits count towards a crash loop.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(60);

impl Restart {
    /// Whether a run that ended with exit `code` (128 + signal when killed) starts again.
    pub fn restarts_after(self, code: i32) -> bool {
        match self {
            Restart::No => false,
            Restart::OnFailure => code != 0,
            Restart::Always => true,
        }
    }
}

/// The wait before the next run of a service that has been restarted `restarts` times so far.
pub fn backoff(restarts: u32) -> Duration {
    FIRST_DELAY * (1u32 << restarts.min(DOUBLINGS))
}

/// The line berth adds to a service's log when it exits: `restart_in` is the wait before the
/// next run, `None` when it stays stopped.
pub fn exit_note(service: &str, code: i32, restart_in: Option<Duration>) -> String {
    match restart_in {
        Some(delay) => format!(
            "[berth] service {service} exited with code {code}; restarting in {} ms\n",
            delay.as_millis()
        ),
        None => format!("[berth] service {service} exited with code {code}\n"),
    }
}

/// A service that keeps exiting: [`CRASH_LOOP_MIN_EXITS`] or more exits in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoopSeen {
    /// Exits within [`CRASH_LOOP_WINDOW`].
    pub exits: u32,
    /// From the first of those exits until now.
    pub since: Duration,
    /// Exit code of the last run.
    pub last_exit: i32,
}

/// The run history of one service: how often it was restarted, how its last run ended, and
/// when its recent runs ended.
#[derive(Debug, Clone, Default)]
pub struct ServiceRuns {
    restarts: u32,
    last_exit: Option<i32>,
    /// When the runs of the last [`CRASH_LOOP_WINDOW`] ended, oldest first.
    exits: VecDeque<Instant>,
}

impl ServiceRuns {
    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Exit code of the last run, if one ended (127 when it could not be started).
    pub fn last_exit(&self) -> Option<i32> {
        self.last_exit
    }

    /// Records that a run ended with `code` at `now`, and forgets exits older than the
    /// crash-loop window. Use [`ServiceRuns::ended`] to also decide about a restart.
    pub fn record_exit(&mut self, code: i32, now: Instant) {
        self.last_exit = Some(code);
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASH_LOOP_WINDOW)
        {
            self.exits.pop_front();
        }
    }

    /// Records that a run ended with `code` at `now` and applies `policy`: the wait before the
    /// next run when the service restarts (counted as a restart), `None` when it stays
    /// stopped. `stopping`: the environment is going down, nothing restarts.
    pub fn ended(
        &mut self,
        policy: Restart,
        code: i32,
        now: Instant,
        stopping: bool,
    ) -> Option<Duration> {
        self.record_exit(code, now);
        if stopping || !policy.restarts_after(code) {
            return None;
        }
        let delay = backoff(self.restarts);
        self.restarts += 1;
        Some(delay)
    }

    /// The crash loop the service is in at `now`, if any.
    pub fn crash_loop(&self, now: Instant) -> Option<CrashLoopSeen> {
        let recent: Vec<&Instant> = self
            .exits
            .iter()
            .filter(|t| now.saturating_duration_since(**t) <= CRASH_LOOP_WINDOW)
            .collect();
        if (recent.len() as u32) < CRASH_LOOP_MIN_EXITS {
            return None;
        }
        Some(CrashLoopSeen {
            exits: recent.len() as u32,
            since: now.saturating_duration_since(*recent[0]),
            last_exit: self.last_exit.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_wait_doubles_from_100_ms_and_stops_growing() {
        let waits: Vec<Duration> = (0..9).map(backoff).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(6400),
                ms(6400)
            ]
        );
        assert_eq!(backoff(u32::MAX), LONGEST_DELAY);
    }

    #[test]
    fn the_policy_decides_by_exit_code() {
        for code in [0, 1, 3, 127, 128 + 9] {
            assert!(!Restart::No.restarts_after(code));
            assert!(Restart::Always.restarts_after(code));
            assert_eq!(Restart::OnFailure.restarts_after(code), code != 0);
        }
    }

    #[test]
    fn each_restart_waits_longer_and_counts() {
        let t0 = Instant::now();
        let mut runs = ServiceRuns::default();
        let mut waits = Vec::new();
        for i in 0..8 {
            waits.push(runs.ended(Restart::Always, 1, t0 + ms(i * 10), false));
        }
        assert_eq!(runs.restarts(), 8);
        assert_eq!(runs.last_exit(), Some(1));
        let expected: Vec<Option<Duration>> = [100, 200, 400, 800, 1600, 3200, 6400, 6400]
            .into_iter()
            .map(|n| Some(ms(n)))
            .collect();
        assert_eq!(waits, expected);
    }

    #[test]
    fn no_restart_when_the_policy_says_so_or_while_stopping() {
        let t0 = Instant::now();
        let mut runs = ServiceRuns::default();
        assert_eq!(runs.ended(Restart::OnFailure, 0, t0, false), None);
        assert_eq!(runs.ended(Restart::No, 1, t0, false), None);
        assert_eq!(runs.ended(Restart::Always, 1, t0, true), None);
        assert_eq!(runs.restarts(), 0, "a run that stays stopped is no restart");
        assert_eq!(runs.last_exit(), Some(1));
        // The first real restart still waits the shortest time.
        assert_eq!(runs.ended(Restart::OnFailure, 2, t0, false), Some(ms(100)));
    }

    #[test]
    fn three_exits_within_a_minute_are_a_crash_loop() {
        let t0 = Instant::now();
        let mut runs = ServiceRuns::default();
        runs.record_exit(1, t0);
        runs.record_exit(2, t0 + Duration::from_secs(10));
        assert_eq!(runs.crash_loop(t0 + Duration::from_secs(11)), None);
        runs.record_exit(3, t0 + Duration::from_secs(20));
        assert_eq!(
            runs.crash_loop(t0 + Duration::from_secs(25)),
            Some(CrashLoopSeen {
                exits: 3,
                since: Duration::from_secs(25),
                last_exit: 3
            })
        );
        // The first exit leaves the window: two left, no longer a loop.
        assert_eq!(runs.crash_loop(t0 + Duration::from_secs(61)), None);
        // Old exits are forgotten as new ones come in.
        runs.record_exit(4, t0 + Duration::from_secs(200));
        assert_eq!(runs.exits.len(), 1);
    }
}
