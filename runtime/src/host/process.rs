//! A process identified beyond its pid (pid numbers are reused, start times are not), as the
//! state files record the processes berth started (a container's supervisor, a VMM, qemu, a
//! virtiofsd, a sync process, the owner of a throw-away environment): whether it still runs,
//! signals that reach exactly it (through a pidfd), and waiting for its end (woken by the
//! pidfd the moment it exits; polling /proc where the kernel has no `pidfd_open`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// A process: its pid and its start time, which together never name another process.
///
/// On disk as `{"pid": …, "start_time": …}`; `vm.json` of earlier versions wrote the start
/// time as `starttime`, which still loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    #[serde(alias = "starttime")]
    pub start_time: u64,
}

/// How long to sleep between looks at /proc where there is no pidfd to wait on.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A pidfd wait re-checks at least this often all the same.
const PIDFD_RECHECK: Duration = Duration::from_millis(100);

impl ProcessIdentity {
    /// The process running as `pid` now; `None` when there is none.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        Some(ProcessIdentity {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// This process.
    pub fn current() -> Option<ProcessIdentity> {
        Self::of(std::process::id() as i32)
    }

    /// The same process is still there (not a reused pid, not a zombie).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, st)) if st == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends `signal` to the process if it is still this one; whether it was sent. Through a
    /// pidfd opened before the identity is checked, so a pid reused in between is never
    /// signalled; with `kill(2)` after the check where the kernel has no pidfds.
    pub fn kill(&self, signal: Signal) -> bool {
        let pidfd = open_pidfd(self.pid);
        if !self.alive() {
            return false;
        }
        match pidfd {
            // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo and no flags.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal as i32,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                ) == 0
            },
            None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal).is_ok(),
        }
    }

    /// A pidfd of the process if it is still this one (opened before the identity is
    /// checked, so it never refers to a process that reused the pid); `None` when it is gone
    /// or the kernel has no pidfds.
    pub fn pidfd(&self) -> Option<OwnedFd> {
        let pidfd = open_pidfd(self.pid)?;
        self.alive().then_some(pidfd)
    }

    /// Waits up to `timeout` for the process to end; whether it did. Reaps it when it is a
    /// child of this process (its zombie would otherwise linger until this process exits).
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Opened before the first look: if the pid is reused after it, `alive` says so.
        let pidfd = open_pidfd(self.pid);
        loop {
            self.reap();
            if !self.alive() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &pidfd {
                Some(fd) => wait_readable(fd, left.min(PIDFD_RECHECK)),
                None => std::thread::sleep(left.min(POLL_INTERVAL)),
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone (or 5 s after the
    /// SIGKILL, for a process stuck in the kernel).
    pub fn terminate(&self, grace: Duration) {
        self.kill(Signal::SIGTERM);
        if !self.wait_exit(grace) {
            self.kill(Signal::SIGKILL);
            self.wait_exit(Duration::from_secs(5));
        }
    }

    /// Collects the exit status if the process is an exited child of this one; no-op
    /// otherwise.
    fn reap(&self) {
        if stat(self.pid).is_some_and(|(state, st)| st == self.start_time && state == 'Z') {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on a specific pid and a valid out-pointer.
            unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        }
    }
}

/// The namespace `kind` (`net`, `user`, … under /proc/<pid>/ns) of process `pid`, opened only
/// while `pid` is a child of `parent`: the /proc/<pid> folder opened first pins that one
/// process (a pid reused later is another /proc folder, and the folder of a process that
/// ended answers no more lookups), so a pid reused before the look cannot lend its namespace
/// unless `parent` made it. `None` when the process is gone or not `parent`'s child.
pub fn child_namespace(pid: i32, parent: i32, kind: &str) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if pid <= 0 {
        return None;
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(format!("/proc/{pid}"))
        .ok()?;
    let at = |name: &str| {
        let dir_path = format!("/proc/self/fd/{}/{name}", dir.as_raw_fd());
        std::fs::File::open(dir_path)
    };
    let stat = std::io::read_to_string(at("stat").ok()?).ok()?;
    // Field 4 (ppid), the second after the command name.
    let ppid: i32 = fields_after_comm(&stat)?.nth(1)?.parse().ok()?;
    (ppid == parent).then_some(())?;
    at(&format!("ns/{kind}")).ok()
}

/// Start time of a process, from /proc/<pid>/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, st)| st)
}

/// `(state, start time)` of a process from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = fields_after_comm(&s)?.collect();
    // After ')' the first field is field 3 (state); start time is field 22.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

/// The fields of a /proc/<pid>/stat line after the command name (field 2, which may contain
/// spaces and parentheses: split after the last ')'), from field 3 (state) on.
fn fields_after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// A pidfd for `pid` (readable once the process exits), or `None` without pidfd support.
fn open_pidfd(pid: i32) -> Option<OwnedFd> {
    if pid <= 0 {
        return None;
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable or `timeout` passed.
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
        // Not pollable after all: fall back to the plain interval rather than spin.
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_namespace_is_opened_only_as_that_parents_child() {
        use std::os::unix::fs::MetadataExt;
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        let ns = child_namespace(pid, me, "net").expect("our child's namespace");
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_eq!(
            ns.metadata().unwrap().ino(),
            ours.ino(),
            "the same namespace"
        );
        assert!(child_namespace(pid, 1, "net").is_none(), "not init's child");
        assert!(child_namespace(me, pid, "net").is_none());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(child_namespace(pid, me, "net").is_none(), "gone");
    }

    #[test]
    fn own_process_is_alive_and_fake_one_is_not() {
        let me = ProcessIdentity::current().unwrap();
        assert!(me.alive());
        let reused = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!reused.alive());
        assert!(
            !reused.kill(Signal::SIGTERM),
            "a reused pid is never signalled"
        );
        assert!(ProcessIdentity::of(i32::MAX).is_none());
        assert!(ProcessIdentity::of(0).is_none() && ProcessIdentity::of(-1).is_none());
    }

    #[test]
    fn a_pidfd_is_given_only_for_the_same_process() {
        let me = ProcessIdentity::current().unwrap();
        let fd = me.pidfd().expect("a pidfd of this process");
        // It refers to this process: its fdinfo names its pid.
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
        assert!(
            info.lines().any(|l| l == format!("Pid:\t{}", me.pid)),
            "{info}"
        );
        let reused = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(reused.pidfd().is_none(), "a reused pid gives no pidfd");
    }

    #[test]
    fn tracks_a_child_and_its_death() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = ProcessIdentity::of(child.id() as i32).unwrap();
        assert!(p.alive());
        let t0 = Instant::now();
        assert!(
            !p.wait_exit(Duration::from_millis(200)),
            "sleep 30 ended early"
        );
        assert!(t0.elapsed() >= Duration::from_millis(200));
        p.terminate(Duration::from_secs(5));
        assert!(!p.alive());
        // Reaped by the wait: nothing is left to collect.
        assert!(child.try_wait().is_err(), "the zombie was not reaped");
    }

    #[test]
    fn the_wait_ends_when_the_process_does_not_at_the_timeout() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let p = ProcessIdentity::of(child.id() as i32).unwrap();
        let t0 = Instant::now();
        assert!(p.wait_exit(Duration::from_secs(20)));
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "woke {:?} after the exit",
            t0.elapsed()
        );
        assert!(!p.kill(Signal::SIGKILL), "a gone process is not signalled");
        assert!(child.try_wait().is_err(), "the zombie was not reaped");
    }

    #[test]
    fn both_earlier_record_formats_load() {
        // A container's state.json (`starter`, `supervisor`), env.json's ephemeral owner and
        // the sync process record wrote `start_time`.
        let c: ProcessIdentity = serde_json::from_str(r#"{"pid":41,"start_time":7}"#).unwrap();
        // vm.json (`process`, `shares`) wrote `starttime`.
        let v: ProcessIdentity = serde_json::from_str(r#"{"pid":41,"starttime":7}"#).unwrap();
        assert_eq!(c, v);
        assert_eq!(
            c,
            ProcessIdentity {
                pid: 41,
                start_time: 7
            }
        );
        let back: serde_json::Value = serde_json::to_value(c).unwrap();
        assert_eq!(back, serde_json::json!({"pid": 41, "start_time": 7}));
    }
}
