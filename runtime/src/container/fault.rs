//! Fault injection for crash-safety tests: `BERTH_ABORT_AT=<step>` makes berth abort (as if
//! killed) when it reaches that named step of starting an environment.

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
    if std::env::var_os("BERTH_ABORT_AT").is_some_and(|v| v == step) {
        eprintln!("berth: aborting at step {step} (BERTH_ABORT_AT)");
        std::process::abort();
    }
}
