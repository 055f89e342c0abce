//! Networking of environments: port forwarding from the host into an environment, the
//! bridge/NAT/DNS setup of isolated mode as root, and user-mode networking (pasta) rootless.
//!
//! Entry point: [`network::Network`] (`attach` / `detach`). The pieces:
//! - [`forward`]: the userspace port forwarder, with [`relay`] (TCP, splice) and [`udp_relay`];
//! - [`dialer`]: how the forwarder reaches the guest port (netns thread, address, later vsock);
//! - [`bridge`], [`nat`], [`dns`], [`subnet`]: isolated mode as root;
//! - [`pasta`]: isolated mode rootless;
//! - [`netlink`], [`netns`], [`port_owner`]: the system interfaces underneath.

pub mod bridge;
pub mod dialer;
pub mod dns;
pub mod error;
pub mod forward;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod pasta;
pub mod port_owner;
pub mod relay;
pub mod subnet;
mod sys;
pub mod tcp_loop;
pub mod udp_relay;

pub use error::NetError;
pub use network::{EnvNamespaces, NetAttachment, NetPlumbing, NetRecord, Network, NetworkOptions};
pub use pasta::rootless_network_available;
