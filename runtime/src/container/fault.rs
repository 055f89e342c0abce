//! The named points of starting a container environment where the crash-safety tests make
//! berth die (`BERTH_ABORT_AT=<step>`, see [`crate::host::fault_injection`]).

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
