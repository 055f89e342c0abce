//! The error type of the networking layer.

use std::io;

use crate::state::StateError;

use super::forward::ForwardError;
use super::nat::NatError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Nat(#[from] NatError),
    /// A netlink request failed: `what` says which step, for which interface.
    #[error("cannot {what}: {source}; {hint}")]
    Link {
        what: String,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot choose the environment network: {0}")]
    Subnet(String),
    #[error("the environment network {subnet} is full ({leases} addresses leased); set BERTH_SUBNET to a larger range once every environment is down")]
    SubnetFull { subnet: String, leases: usize },
    #[error("bridge {bridge} already uses the subnet {subnet} ({users} environment(s) of this or another berth home on it), but BERTH_SUBNET asks for {asked}; use BERTH_SUBNET={subnet}, unset it, or pick another bridge with BERTH_BRIDGE")]
    SubnetInUse {
        bridge: String,
        subnet: String,
        asked: String,
        users: usize,
    },
    #[error("cannot enter the environment's network namespace: {0}; the environment may have stopped — run `berth up` again")]
    Namespace(io::Error),
    #[error("berth's own VMM connects a VM to berth's bridge through a tap interface, which needs root (CAP_NET_ADMIN); run berth as root, use vmm = \"qemu\" (user-mode networking), or set network.mode = \"none\"")]
    TapNeedsRoot,
    #[error("rootless networking is unavailable: {0}")]
    Rootless(String),
}

/// The hint for a failed netlink request, by errno.
pub fn link_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "this needs root (CAP_NET_ADMIN); rootless environments use pasta instead"
        }
        Some(libc::EOPNOTSUPP) => "the kernel lacks bridge or veth support (modprobe bridge veth)",
        Some(libc::EEXIST) => "an interface or address with this name already exists; run `berth down` for stale environments",
        _ => "run `berth doctor` to check the host",
    }
}

impl NetError {
    pub(crate) fn link(what: impl Into<String>, source: io::Error) -> NetError {
        let hint = link_hint(&source);
        NetError::Link {
            what: what.into(),
            source,
            hint,
        }
    }
}
