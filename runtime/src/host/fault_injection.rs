//! Fault injection for crash-safety tests: `BERTH_ABORT_AT=<point>` kills the process (as a
//! crash or a `kill -9` would) when it reaches the named point: a step of starting an
//! environment (`container::fault::STEPS`), or of pulling an image (`blob-download`,
//! `blob-midway`). `BERTH_TRACE_START=1` prints a monotonic timestamp at every point to stderr
//! (the supervisor's goes to `logs/supervisor.log`), to see where start time goes.

/// The variable naming the point to die at.
pub const ABORT_AT_ENV: &str = "BERTH_ABORT_AT";
/// The variable that turns on the timestamp trace.
pub const TRACE_ENV: &str = "BERTH_TRACE_START";

/// Whether a fault is to be injected somewhere in this process (lets a caller prepare, e.g.
/// flush what a crash must find on disk, only when a test asks for it).
pub fn armed() -> bool {
    std::env::var_os(ABORT_AT_ENV).is_some()
}

/// Traces `point` when `BERTH_TRACE_START` is set, and kills the process when `BERTH_ABORT_AT`
/// names it.
pub fn checkpoint(point: &str) {
    if std::env::var_os(TRACE_ENV).is_some() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        eprintln!(
            "berth-trace {}.{:06} {} {point}",
            ts.tv_sec,
            ts.tv_nsec / 1000,
            std::process::id()
        );
    }
    if std::env::var_os(ABORT_AT_ENV).is_some_and(|v| v == point) {
        eprintln!("berth: aborting at step {point} ({ABORT_AT_ENV})");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// Set in the copy of this test binary the test runs: the point that copy passes.
    const CHILD_POINT: &str = "BERTH_FAULT_INJECTION_TEST_POINT";

    fn run_child(abort_at: &str, point: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "host::fault_injection::tests::dies_at_the_named_point_only",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ABORT_AT_ENV, abort_at)
            .env(CHILD_POINT, point)
            .env(TRACE_ENV, "1")
            .output()
            .unwrap()
    }

    #[test]
    fn dies_at_the_named_point_only() {
        if let Some(point) = std::env::var_os(CHILD_POINT) {
            assert!(armed());
            checkpoint(point.to_str().unwrap());
            return;
        }
        let died = run_child("blob-download", "blob-download");
        assert_eq!(died.status.signal(), Some(libc::SIGABRT), "{died:?}");
        let err = String::from_utf8_lossy(&died.stderr);
        assert!(err.contains("aborting at step blob-download"), "{err}");
        assert!(
            err.contains("berth-trace ") && err.contains(" blob-download"),
            "{err}"
        );
        let passed = run_child("blob-midway", "blob-download");
        assert!(passed.status.success(), "{passed:?}");
    }
}
