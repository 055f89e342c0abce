//! Primitives of the host berth runs on, shared by every other module and importing nothing
//! from them (the lowest floor): a process identity that survives pid reuse ([`process`]),
//! wall-clock timestamps ([`clock`]), the fault-injection hook of the crash-safety tests
//! ([`fault_injection`]), and read-only probes of the machine ([`probe`]: the root to probe
//! below, [`kvm`]: which KVM backs `/dev/kvm`, [`cgroup_layout`]: how cgroups are mounted),
//! where ext4 places new folders ([`dir_spread`]), and whether a Unix socket listens yet
//! ([`unix_socket`]).

pub mod cgroup_layout;
pub mod clock;
pub mod dir_spread;
pub mod fault_injection;
pub mod kvm;
pub mod probe;
pub mod process;
pub mod unix_socket;
