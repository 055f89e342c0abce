//! Networking of environments: port forwarding from the host into an environment, the
//! bridge/NAT/DNS setup of isolated mode as root, and user-mode networking (pasta) rootless.

pub mod dialer;
pub mod forward;
pub mod netlink;
pub mod netns;
pub mod port_owner;
pub mod relay;
mod sys;
pub mod udp_relay;
