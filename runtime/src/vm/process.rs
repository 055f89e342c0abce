//! A VMM process recorded by pid and start time (from /proc), so a recycled pid is never
//! mistaken for the VM, plus termination with escalation.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    pub starttime: u64,
}

/// `(state, starttime)` of a process from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let starttime = fields.get(19)?.parse().ok()?;
    Some((state, starttime))
}

impl ProcessRecord {
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, starttime)| ProcessRecord { pid, starttime })
    }

    /// Running (not a zombie) and still the same process.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, st)) if st == self.starttime && state != 'Z' && state != 'X')
    }

    pub fn signal(&self, sig: i32) {
        if self.is_alive() {
            // SAFETY: kill with a pid we verified is still the recorded process.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Reaps the process if it is our child (no-op otherwise).
    fn reap(&self) {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG on a specific pid and a valid out-pointer.
        unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap();
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
    pub fn terminate(&self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if !self.wait_gone(grace) {
            self.signal(libc::SIGKILL);
            self.wait_gone(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_a_child_and_its_death() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = ProcessRecord::of(child.id() as i32).unwrap();
        assert!(rec.is_alive());
        let other = ProcessRecord {
            starttime: rec.starttime + 1,
            ..rec
        };
        assert!(
            !other.is_alive(),
            "a different start time is a different process"
        );
        rec.terminate(Duration::from_secs(5));
        assert!(!rec.is_alive());
        let _ = child.wait();
        assert!(ProcessRecord::of(i32::MAX).is_none());
    }
}
