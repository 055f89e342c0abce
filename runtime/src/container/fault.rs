//! The named points of starting a container environment where the crash-safety tests make
//! berth die (`BERTH_ABORT_AT=<step>`, see [`crate::host::fault_injection`]).

/// Steps in the order `start` reaches them, but for `network-attached` and
/// `namespaces-entered`: the starter plumbs the network while the supervisor enters its root
/// filesystem, in either order; `ready` waits for both.
pub const STEPS: [&str; 9] = [
    "state-written",
    "cgroups-created",
    "supervisor-spawned",
    "cgroups-joined",
    "userns-mapped",
    "rootfs-mounted",
    // The starter plumbed the network; the supervisor's pid is in no record yet when the
    // cgroups hold it (see `read_launch_events`).
    "network-attached",
    "namespaces-entered",
    "ready",
];
