//! Fault injection for crash-safety tests: `BERTH_ABORT_AT=<step>` makes berth abort (as if
//! killed) when it reaches that named step of starting an environment. `BERTH_TRACE_START=1`
//! prints a monotonic timestamp at every step to stderr (the supervisor's goes to
//! `logs/supervisor.log`), to see where start time goes.

/// Steps in the order `start` reaches them.
pub const STEPS: [&str; 8] = [
    "state-written",
    "cgroups-created",
    "supervisor-spawned",
    "cgroups-joined",
    "userns-mapped",
    "rootfs-mounted",
    "namespaces-entered",
    "ready",
];

/// Aborts the process when `BERTH_ABORT_AT` names `step`.
pub fn checkpoint(step: &str) {
    if std::env::var_os("BERTH_TRACE_START").is_some() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fills the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        eprintln!(
            "berth-trace {}.{:06} {} {step}",
            ts.tv_sec,
            ts.tv_nsec / 1000,
            std::process::id()
        );
    }
    if std::env::var_os("BERTH_ABORT_AT").is_some_and(|v| v == step) {
        eprintln!("berth: aborting at step {step} (BERTH_ABORT_AT)");
        std::process::abort();
    }
}
