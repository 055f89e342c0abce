//! Isolated mode as root: the host bridge, its address leases and one veth pair per
//! environment.
//!
//! The bridge (`berth0`), its nftables table and IPv4 forwarding exist while at least one
//! environment holds a lease; the last release removes them. The shared state (subnet,
//! leases) lives in
//! `BERTH_HOME/net/bridge-<name>.json`, read and written only under
//! `BERTH_HOME/locks/net-<name>.lock`. Each change to the host is recorded *before* it is
//! made, so a crash at any point leaves a record that `release` can clean up from.
//!
//! Environments are kept apart at layer 2 by bridge-port isolation (`IFLA_BRPORT_ISOLATED`)
//! on every veth, and at layer 3 by the nftables rule that drops bridge-to-bridge routing.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{self, BerthHome, FileLock, LockMode};

use super::error::NetError;
use super::nat::{self, NatRules};
use super::netlink::Netlink;
use super::subnet::{self, Subnet};

/// Name of the interface inside the environment.
pub const GUEST_INTERFACE: &str = "eth0";

/// Which bridge, nftables table and subnet to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge interface name (at most 15 bytes).
    pub name: String,
    /// Name of berth's nftables table (family `inet`).
    pub nft_table: String,
    /// Requested subnet (CIDR); `None` picks the default or a free fallback.
    pub subnet: Option<String>,
}

/// Names another bridge than `berth0` (and the nftables table of the same name), e.g. for
/// berth homes side by side on one host, whose leases must not mix.
pub const BRIDGE_ENV: &str = "BERTH_BRIDGE";

/// The bridge name `BERTH_BRIDGE` asks for (`None` when unset or empty), or why it cannot be
/// used: it must start with `berth` (berth recognises its own tables by that) and be at most
/// 15 lowercase letters, digits or `_`, so it is valid both as an interface and a table name.
pub fn bridge_name_from_env() -> Result<Option<String>, String> {
    match std::env::var(BRIDGE_ENV).ok().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(name) => check_bridge_name(&name).map(|()| Some(name)),
    }
}

/// Whether `name` can name berth's bridge and its nftables table.
pub fn check_bridge_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with("berth")
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{BRIDGE_ENV}={name:?}: a bridge name must start with `berth` and have at most 15 lowercase letters, digits or `_`"
        ))
    }
}

impl Default for BridgeConfig {
    /// `berth0`, table `inet berth` (or both named by a valid `BERTH_BRIDGE`), subnet from
    /// `BERTH_SUBNET` when set.
    fn default() -> Self {
        let (name, nft_table) = match bridge_name_from_env() {
            Ok(Some(name)) => (name.clone(), name),
            _ => ("berth0".into(), "berth".into()),
        };
        BridgeConfig {
            name,
            nft_table,
            subnet: std::env::var(subnet::SUBNET_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

/// What berth knows about its bridge, shared by all environments on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeState {
    pub bridge: String,
    pub subnet: Subnet,
    pub nft_table: String,
    /// Environment id → its address.
    pub leases: BTreeMap<String, Ipv4Addr>,
}

/// An environment's place on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub subnet: Subnet,
}

/// The host-side veth name of an environment (or the tap of a VM): short (IFNAMSIZ is 16)
/// and stable.
pub fn veth_name(env_id: &str) -> String {
    let d = Sha256::digest(env_id.as_bytes());
    format!("bv{}", &hex::encode(d)[..10])
}

/// The bridge shared by the environments of one berth home.
#[derive(Debug, Clone)]
pub struct Bridge {
    home: BerthHome,
    config: BridgeConfig,
}

fn netlink() -> Result<Netlink, NetError> {
    Netlink::open().map_err(|e| NetError::link("open a netlink socket", e))
}

impl Bridge {
    pub fn new(home: &BerthHome, config: BridgeConfig) -> Bridge {
        Bridge {
            home: home.clone(),
            config,
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    fn state_path(&self) -> PathBuf {
        self.home
            .root()
            .join("net")
            .join(format!("bridge-{}.json", self.config.name))
    }

    fn lock(&self) -> Result<FileLock, NetError> {
        let path = self
            .home
            .locks_dir()
            .join(format!("net-{}.lock", self.config.name));
        Ok(FileLock::acquire(&path, LockMode::Exclusive)?)
    }

    fn save(&self, st: &BridgeState) -> Result<(), NetError> {
        let path = self.state_path();
        if let Some(dir) = path.parent() {
            state::create_dir_all(dir)?;
        }
        Ok(state::write_json(&path, st)?)
    }

    /// The current shared state, if the bridge is set up.
    pub fn state(&self) -> Result<Option<BridgeState>, NetError> {
        Ok(state::read_json(&self.state_path())?)
    }

    /// Leases an address for `env_id`, sets up the bridge, NAT and forwarding when this is
    /// the first environment, and plugs a veth pair into `netns` (peer `eth0`, address,
    /// default route via the bridge, loopback up).
    /// `dns_stub`: the host's IPv4 loopback resolver, to which DNS sent to the bridge
    /// address is redirected.
    pub fn attach(
        &self,
        env_id: &str,
        netns: &File,
        dns_stub: Option<Ipv4Addr>,
    ) -> Result<Lease, NetError> {
        let _lock = self.lock()?;
        let mut nl = netlink()?;
        let (lease, bridge_index) = self.lease(&mut nl, env_id, dns_stub)?;
        plug_veth(&mut nl, env_id, bridge_index, netns, &lease)?;
        Ok(lease)
    }

    /// Like [`attach`](Self::attach) for a VM of berth's own VMM: leases an address and plugs
    /// a persistent tap interface named [`veth_name`] into the bridge, for the VMM to attach
    /// to ([`super::tap::Tap::open`]). The guest configures its own side (the address goes on
    /// its kernel command line). [`detach`](Self::detach) removes the tap like a veth.
    pub fn attach_tap(&self, env_id: &str, dns_stub: Option<Ipv4Addr>) -> Result<Lease, NetError> {
        let _lock = self.lock()?;
        let mut nl = netlink()?;
        let (lease, bridge_index) = self.lease(&mut nl, env_id, dns_stub)?;
        plug_tap(&mut nl, env_id, bridge_index)?;
        Ok(lease)
    }

    /// Prepares the bridge and leases `env_id` an address (its old one if it has one);
    /// returns the lease and the bridge's interface index. Called under the lock.
    fn lease(
        &self,
        nl: &mut Netlink,
        env_id: &str,
        dns_stub: Option<Ipv4Addr>,
    ) -> Result<(Lease, u32), NetError> {
        let mut st = self.prepare_bridge(nl, dns_stub)?;
        prune_stale_leases(&mut st, nl, env_id);
        let address = match st.leases.get(env_id) {
            Some(a) => *a,
            None => free_address(&st)?,
        };
        st.leases.insert(env_id.to_string(), address);
        self.save(&st)?;
        let lease = Lease {
            address,
            gateway: st.subnet.gateway(),
            subnet: st.subnet,
        };
        let bridge_index = nl
            .link_index(&st.bridge)
            .map_err(|e| NetError::link(format!("find bridge {}", st.bridge), e))?
            .ok_or_else(|| {
                NetError::link(
                    format!("find bridge {}", st.bridge),
                    std::io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        Ok((lease, bridge_index))
    }

    /// Reads the state, creating the bridge, its address, the NAT table and forwarding when
    /// they are missing. Each step is recorded before it is taken.
    fn prepare_bridge(
        &self,
        nl: &mut Netlink,
        dns_stub: Option<Ipv4Addr>,
    ) -> Result<BridgeState, NetError> {
        let name = self.config.name.clone();
        let existing = nl
            .link_index(&name)
            .map_err(|e| NetError::link(format!("look up bridge {name}"), e))?;
        let st = match (self.state()?, existing) {
            // Known bridge: still re-assert address, link state, rules and forwarding (cheap,
            // idempotent), in case someone flushed the ruleset or the host rebooted.
            (Some(st), _) => st,
            (None, _) => {
                let subnet = subnet::choose_subnet(
                    self.config.subnet.as_deref(),
                    &subnet::host_routes(),
                    &name,
                )
                .map_err(NetError::Subnet)?;
                BridgeState {
                    bridge: name.clone(),
                    subnet,
                    nft_table: self.config.nft_table.clone(),
                    leases: BTreeMap::new(),
                }
            }
        };
        self.save(&st)?;
        let index = match existing {
            Some(i) => i,
            None => {
                nl.create_bridge(&name)
                    .map_err(|e| NetError::link(format!("create bridge {name}"), e))?;
                nl.link_index(&name)
                    .map_err(|e| NetError::link(format!("look up bridge {name}"), e))?
                    .ok_or_else(|| {
                        NetError::link(
                            format!("look up bridge {name}"),
                            std::io::Error::from_raw_os_error(libc::ENODEV),
                        )
                    })?
            }
        };
        match nl.add_address(index, st.subnet.gateway(), st.subnet.prefix()) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(NetError::link(
                    format!("give bridge {name} the address {}", st.subnet.gateway()),
                    e,
                ))
            }
            _ => {}
        }
        nl.set_up(index)
            .map_err(|e| NetError::link(format!("bring bridge {name} up"), e))?;
        if dns_stub.is_some() {
            nat::allow_loopback_destinations(&name)?;
        }
        NatRules {
            table: st.nft_table.clone(),
            bridge: name.clone(),
            subnet: st.subnet,
            dns_stub,
        }
        .apply()?;
        nat::enable_ipv4_forwarding()?;
        Ok(st)
    }

    /// Unplugs `env_id` (its veth), drops its lease and, when it was the last, removes the
    /// NAT table and the bridge and restores IPv4 forwarding (unless another berth bridge
    /// still needs it). Idempotent.
    pub fn detach(&self, env_id: &str) -> Result<(), NetError> {
        let _lock = self.lock()?;
        let mut nl = netlink()?;
        let veth = veth_name(env_id);
        nl.delete_link_named(&veth)
            .map_err(|e| NetError::link(format!("delete veth {veth}"), e))?;
        let Some(mut st) = self.state()? else {
            return Ok(());
        };
        st.leases.remove(env_id);
        prune_stale_leases(&mut st, &mut nl, env_id);
        if !st.leases.is_empty() {
            return self.save(&st);
        }
        NatRules::remove(&st.nft_table)?;
        nl.delete_link_named(&st.bridge)
            .map_err(|e| NetError::link(format!("delete bridge {}", st.bridge), e))?;
        nat::release_ipv4_forwarding(&st.nft_table)?;
        match std::fs::remove_file(self.state_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetError::State(state::StateError::Write {
                    path: self.state_path(),
                    source: e,
                }))
            }
            _ => Ok(()),
        }
    }
}

/// Drops leases of environments whose veth no longer exists (their namespace died, which
/// removes the veth pair with it), except `keep`'s.
fn prune_stale_leases(st: &mut BridgeState, nl: &mut Netlink, keep: &str) {
    st.leases
        .retain(|env, _| env == keep || !matches!(nl.link_index(&veth_name(env)), Ok(None)));
}

fn free_address(st: &BridgeState) -> Result<Ipv4Addr, NetError> {
    let taken: std::collections::BTreeSet<Ipv4Addr> = st.leases.values().copied().collect();
    (2..)
        .map_while(|n| st.subnet.host(n))
        .find(|a| !taken.contains(a))
        .ok_or_else(|| NetError::SubnetFull {
            subnet: st.subnet.to_string(),
            leases: st.leases.len(),
        })
}

/// MTU of the interface carrying the host's default route (1500 when unknown), so that
/// environments never send packets the uplink must fragment.
fn uplink_mtu() -> u32 {
    let iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000"))
                    .then(|| f[0].to_string())
            })
        });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}

fn plug_veth(
    nl: &mut Netlink,
    env_id: &str,
    bridge_index: u32,
    netns: &File,
    lease: &Lease,
) -> Result<(), NetError> {
    let veth = veth_name(env_id);
    // A veth of an earlier run whose namespace is still alive: replace it.
    nl.delete_link_named(&veth)
        .map_err(|e| NetError::link(format!("delete stale veth {veth}"), e))?;
    nl.create_veth(
        &veth,
        bridge_index,
        GUEST_INTERFACE,
        netns.as_fd(),
        uplink_mtu(),
    )
    .map_err(|e| NetError::link(format!("create veth {veth}"), e))?;
    let index = nl
        .link_index(&veth)
        .map_err(|e| NetError::link(format!("look up veth {veth}"), e))?
        .ok_or_else(|| {
            NetError::link(
                format!("look up veth {veth}"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    nl.set_bridge_port_isolated(index)
        .map_err(|e| NetError::link(format!("isolate bridge port {veth}"), e))?;
    nl.set_up(index)
        .map_err(|e| NetError::link(format!("bring veth {veth} up"), e))?;
    configure_guest(netns, lease)
}

fn plug_tap(nl: &mut Netlink, env_id: &str, bridge_index: u32) -> Result<(), NetError> {
    let tap = veth_name(env_id);
    // A tap of an earlier run (its VMM was killed): replace it.
    nl.delete_link_named(&tap)
        .map_err(|e| NetError::link(format!("delete stale tap {tap}"), e))?;
    super::tap::create_persistent(&tap)
        .map_err(|e| NetError::link(format!("create tap {tap}"), e))?;
    let plugged = (|| {
        let index = nl
            .link_index(&tap)?
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))?;
        nl.set_master(index, bridge_index)?;
        nl.set_bridge_port_isolated(index)?;
        nl.set_up(index)
    })();
    if let Err(e) = plugged {
        let _ = nl.delete_link_named(&tap);
        return Err(NetError::link(format!("plug tap {tap} into the bridge"), e));
    }
    Ok(())
}

/// Inside the environment: loopback up, `eth0` addressed and up, default route via the bridge.
fn configure_guest(netns: &File, lease: &Lease) -> Result<(), NetError> {
    let mut nl = Netlink::open_in(netns).map_err(NetError::Namespace)?;
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| NetError::link(format!("{what} inside the environment"), e))
    };
    if let Some(lo) = nl.link_index("lo").ok().flatten() {
        step("bring lo up", nl.set_up(lo))?;
    }
    let eth = nl
        .link_index(GUEST_INTERFACE)
        .map_err(|e| NetError::link("look up eth0 inside the environment", e))?
        .ok_or_else(|| {
            NetError::link(
                "look up eth0 inside the environment",
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
    match nl.add_address(eth, lease.address, lease.subnet.prefix()) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
            return step(&format!("give eth0 the address {}", lease.address), Err(e))
        }
        _ => {}
    }
    step("bring eth0 up", nl.set_up(eth))?;
    match nl.add_default_route(lease.gateway, eth) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => step(
            &format!("add the default route via {}", lease.gateway),
            Err(e),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_must_be_berths_and_fit_both_namespaces() {
        assert!(check_bridge_name("berth0").is_ok());
        assert!(check_bridge_name("berth_ci_12345").is_ok());
        for bad in [
            "br0",
            "berth-ci",
            "Berth0",
            "berth0123456789ab",
            "berth0;drop",
        ] {
            let e = check_bridge_name(bad).unwrap_err();
            assert!(e.contains("BERTH_BRIDGE"), "{e}");
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz_and_differ() {
        let a = veth_name("web-12345678");
        assert!(a.len() <= 15);
        assert_ne!(a, veth_name("web-87654321"));
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_and_never_twice() {
        let mut st = BridgeState {
            bridge: "b".into(),
            subnet: "10.9.0.0/29".parse().unwrap(),
            nft_table: "t".into(),
            leases: BTreeMap::new(),
        };
        let mut got = Vec::new();
        for i in 0..5 {
            let a = free_address(&st).unwrap();
            st.leases.insert(format!("e{i}"), a);
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert!(matches!(
            free_address(&st),
            Err(NetError::SubnetFull { .. })
        ));
        st.leases.remove("e1");
        assert_eq!(free_address(&st).unwrap().to_string(), "10.9.0.3");
    }
}
