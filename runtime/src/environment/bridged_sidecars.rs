//! Sidecars of a VM environment (runtime/README.md, "Sidecars beside a VM"): containers of
//! their own on berth's bridge (`container::sidecar::bridged_sidecar_spec`: own user and
//! network namespaces, a veth and an address leased like a container environment's), started
//! before the VM; the guest reaches each by its name, which the agent writes into the guest's
//! `/etc/hosts` (`StartRequest::hosts` at boot, `Backend::set_hosts` when a sidecar restarted).
//! The guest reaches the bridge through its VMM: qemu's user network connects from the host,
//! which routes the bridge's subnet; berth's own VMM's tap is on the bridge itself.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use envfile_spec::plan::{BackendKind, NetworkMode};
use envfile_spec::Plan;

use super::error::EnvError;
use super::sidecar_error::SidecarError;
use crate::container::sidecar::bridged_sidecar_net_id;
use crate::net::{Network, NetworkOptions};
use crate::state::BerthHome;

/// Whether the sidecars of `plan` run on the bridge (a VM's) rather than in the
/// environment's own network namespace (a container's).
pub(super) fn on_bridge(plan: &Plan) -> bool {
    plan.backend == BackendKind::Vm
}

/// Refuses, before anything starts, a VM whose sidecars it could not reach: without root
/// berth sets up no bridge (rootless containers get pasta, which gives the host no address to
/// reach them at), and a VM with `network.mode = "none"` reaches nothing outside.
pub(super) fn check_reachable(plan: &Plan) -> Result<(), EnvError> {
    if !on_bridge(plan) || plan.sidecars.is_empty() {
        return Ok(());
    }
    let why = if !nix::unistd::geteuid().is_root() {
        "sidecars beside a VM run on berth's bridge, which only root sets up; as another user the VM would have no way to reach them. Run `berth up` as root, or use the container backend (backend = \"container\"), whose sidecars share the environment's own network namespace without root"
    } else if plan.network.mode == NetworkMode::None {
        "the VM has network.mode = \"none\", so it reaches nothing outside, its sidecars neither. Remove network.mode (or set \"isolated\") to reach them"
    } else {
        return Ok(());
    };
    Err(EnvError::Sidecar(SidecarError::Unreachable {
        env: plan.name.clone(),
        why: why.to_string(),
    }))
}

/// The address sidecar `name` of environment `env_id` has on the bridge, once started.
pub(super) fn address(home: &BerthHome, env_id: &str, name: &str) -> Option<Ipv4Addr> {
    let network = Network::new(home, NetworkOptions::default());
    network
        .record(&bridged_sidecar_net_id(env_id, name))
        .ok()
        .flatten()
        .and_then(|r| r.address)
}

/// The names the VM resolves: every sidecar of `plan` with its address on the bridge.
pub(super) fn hosts(
    home: &BerthHome,
    plan: &Plan,
    env_id: &str,
) -> Result<Vec<(String, Ipv4Addr)>, EnvError> {
    plan.sidecar_start_order()
        .into_iter()
        .map(|name| match address(home, env_id, name) {
            Some(a) => Ok((name.to_string(), a)),
            None => Err(EnvError::Sidecar(SidecarError::Start {
                name: name.to_string(),
                message: "it has no address on berth's bridge (its network record is missing)"
                    .into(),
            })),
        })
        .collect()
}

/// Whether a TCP connection to `address:port` succeeds now (a bridged sidecar's
/// `ready = { tcp = PORT }`): from the host, the way the VM's traffic arrives.
pub(super) fn tcp_answers(address: Ipv4Addr, port: u16) -> bool {
    let to = SocketAddr::from((address, port));
    TcpStream::connect_timeout(&to, Duration::from_secs(1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_listening_on_the_address_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(tcp_answers(Ipv4Addr::LOCALHOST, port));
        drop(listener);
        assert!(!tcp_answers(Ipv4Addr::LOCALHOST, port));
    }
}
