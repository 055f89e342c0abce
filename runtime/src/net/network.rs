//! The networking entry point the backends call: attach an environment's network namespace
//! according to `network.mode`, forward its `[[ports]]`, and detach it again.
//!
//! ```text
//! isolated, root      veth on bridge berth0 + NAT + DNS; ports through a NetnsDialer
//! isolated, rootless  pasta (user-mode networking); ports through pasta (`attach`) or the
//!                     supervisor's own forwarder (`plumb` + BoundPorts + LoopbackDialer)
//! none                loopback only; ports still forwarded through a NetnsDialer
//! host                nothing to do: the environment shares the host's stack and ports
//! ```
//!
//! Everything [`Network::attach`] creates on the host is first written to
//! `envs/<id>/network.json`, so [`Network::detach`] can remove it later from any process,
//! also after the supervisor was killed with `kill -9`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use envfile_spec::plan::{NetworkMode, PortPlan};
use serde::{Deserialize, Serialize};

use crate::state::{self, BerthHome};

use super::bridge::{Bridge, BridgeConfig, LastUser};
use super::bridge_idle::IdleBridge;
use super::dialer::NetnsDialer;
use super::dns::{DnsForwarder, DnsPlan, ResolverSources};
use super::error::NetError;
use super::forward::{BoundPorts, ForwardSpec, ForwardedPort, OnPortInUse, PortForwarder};
use super::netlink::Netlink;
use super::netns::EnvNamespaces;
use super::pasta::{self, Pasta};
use super::port_nat::{self, KernelForward};
use super::subnet;

/// Settings of the networking layer; [`Default`] is what berth uses.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    pub bridge: BridgeConfig,
    pub resolvers: ResolverSources,
    /// Isolated mode through pasta (user-mode networking): `None` = exactly when not root.
    pub user_mode: Option<bool>,
    /// What [`Network::attach`] does when a declared host port is taken.
    pub on_port_in_use: OnPortInUse,
}

/// How an environment's network was set up, as recorded for [`Network::detach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Plumbing {
    /// A veth pair (or a VM's tap) on berth's bridge.
    Bridge {
        bridge: String,
        nft_table: String,
        /// The host-side interface, once leased (records of earlier berth versions have
        /// none: theirs is [`super::bridge::veth_name`] of the environment id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// A pasta process (`pid` once it runs).
    Pasta { pid: Option<u32> },
    /// Loopback only (`none`) or the host's stack (`host`): nothing on the host to remove.
    Nothing,
}

/// The record in `envs/<id>/network.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub mode: NetworkMode,
    pub plumbing: Plumbing,
    pub address: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub ports: Vec<ForwardedPort>,
    /// Set by [`Network::leave_bridge_idle`]: when this environment is the bridge's last
    /// user, [`Network::detach`] leaves the bridge idle for the caller to remove.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaves_bridge_idle: bool,
}

impl NetRecord {
    /// The record of an environment with loopback only (`none`): nothing on the host.
    pub fn loopback_only() -> NetRecord {
        NetRecord {
            mode: NetworkMode::None,
            plumbing: Plumbing::Nothing,
            address: None,
            gateway: None,
            ports: Vec::new(),
            leaves_bridge_idle: false,
        }
    }
}

/// The host-side plumbing of an environment's network, as [`Network::plumb`] made it. It
/// lives until [`Network::detach`], whichever process made it (pasta keeps running too).
#[derive(Debug)]
pub struct NetPlumbing {
    /// The environment's IPv4 address (bridge mode).
    pub address: Option<Ipv4Addr>,
    /// Its default gateway (bridge mode).
    pub gateway: Option<Ipv4Addr>,
    /// Content for the environment's `/etc/resolv.conf`; `None` means keep what the image
    /// or host provides (`host` mode, `none` mode).
    pub resolv_conf: Option<String>,
    /// Only when the host's resolvers are all IPv6 (a `::1` stub, or IPv6 servers the
    /// IPv4-only bridge cannot reach): the userspace DNS relay on the bridge address. Keep it
    /// alive as long as the environment runs.
    pub dns_forwarder: Option<DnsForwarder>,
}

/// The host side of a VM's network under berth's own VMM, as [`Network::plumb_tap`] made it:
/// a persistent tap on the bridge and the guest's address plan. It lives until
/// [`Network::detach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlumbing {
    /// The tap interface the VMM attaches its virtio-net device to.
    pub tap: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The resolvers the guest asks: the host's IPv4 resolvers, or the bridge address when
    /// the host's resolver is a loopback stub (redirected there by the NAT table) or IPv6
    /// only (see `dns_relay`).
    pub nameservers: Vec<Ipv4Addr>,
    /// The host's resolvers are all IPv6: a [`DnsForwarder`] from the bridge address to this
    /// one must run as long as the VM does (the VMM process runs it).
    pub dns_relay: Option<IpAddr>,
}

/// A live attachment ([`Network::attach`]): the plumbing plus the port forwarders running
/// in this process. Keep it alive as long as the environment runs; dropping it stops the
/// forwarders. Interfaces, rules and pasta stay until [`Network::detach`].
#[derive(Debug)]
pub struct NetAttachment {
    pub address: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub resolv_conf: Option<String>,
    /// Forwarded ports with the host addresses actually bound.
    pub ports: Vec<ForwardedPort>,
    forwarder: Option<PortForwarder>,
    dns_forwarder: Option<DnsForwarder>,
}

impl NetAttachment {
    /// Stops the forwarders (the supervisor calls this before [`Network::detach`]).
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for NetAttachment {
    fn drop(&mut self) {
        drop(self.forwarder.take());
        drop(self.dns_forwarder.take());
    }
}

/// Attaches and detaches environments' networks for one berth home.
#[derive(Debug, Clone)]
pub struct Network {
    home: BerthHome,
    options: NetworkOptions,
}

/// Removes what a failed attach created, unless disarmed.
struct Rollback<'a> {
    net: &'a Network,
    env_id: &'a str,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.net.detach(self.env_id);
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Network {
    pub fn new(home: &BerthHome, options: NetworkOptions) -> Network {
        Network {
            home: home.clone(),
            options,
        }
    }

    pub fn options(&self) -> &NetworkOptions {
        &self.options
    }

    fn record_path(&self, env_id: &str) -> PathBuf {
        self.home.env_dir(env_id).join("network.json")
    }

    fn save(&self, env_id: &str, record: &NetRecord) -> Result<(), NetError> {
        let path = self.record_path(env_id);
        // Never inside a home removed under this process (a run's removal child): making it
        // again would leave an empty home behind.
        state::create_private_dir_in_place(&self.home.env_dir(env_id))?;
        // Nothing it names outlives a reboot (interfaces, leases on /run, rules, a pasta
        // process): replaced atomically, never fsynced. A power cut may leave it empty or
        // zero-filled, which `detach` reads as nothing to remove.
        Ok(state::write_json_volatile(&path, record)?)
    }

    /// [`record`](Self::record) for [`detach`](Self::detach): a record that is empty or only
    /// zero bytes and white space (what a power cut leaves of a file renamed into place
    /// without fsync; berth never writes one) names nothing that survived the reboot, and is
    /// read as none. Any other unreadable record stays an error.
    fn record_to_detach(&self, env_id: &str) -> Result<Option<NetRecord>, NetError> {
        match self.record(env_id) {
            Err(NetError::State(state::StateError::Corrupt { .. }))
                if std::fs::read(self.record_path(env_id))
                    .is_ok_and(|b| b.iter().all(|c| *c == 0 || c.is_ascii_whitespace())) =>
            {
                Ok(None)
            }
            r => r,
        }
    }

    /// The recorded network of an environment, if it is attached.
    pub fn record(&self, env_id: &str) -> Result<Option<NetRecord>, NetError> {
        Ok(state::read_json(&self.record_path(env_id))?)
    }

    /// Whether isolated mode goes through pasta (user-mode networking) here.
    pub fn uses_pasta(&self, mode: NetworkMode) -> bool {
        mode == NetworkMode::Isolated && self.options.user_mode.unwrap_or(!is_root())
    }

    /// Gives the environment whose namespaces are `ns` the network `mode` asks for and
    /// forwards `ports` into it from this process, which must be in the host's network
    /// namespace and live as long as the environment (a VM supervisor, a test). As root the
    /// forwarder dials into the namespace itself; rootless (pasta) pasta forwards the ports.
    /// On error nothing is left behind: no port bound, no interface, no rule, no record.
    pub fn attach(
        &self,
        env_id: &str,
        ns: EnvNamespaces<'_>,
        mode: NetworkMode,
        ports: &[PortPlan],
    ) -> Result<NetAttachment, NetError> {
        let specs: Vec<ForwardSpec> = ports.iter().map(ForwardSpec::from).collect();
        let pasta_forwards = self.uses_pasta(mode);
        // Ports are bound first: a port in use fails before anything else exists.
        let bound = if mode != NetworkMode::Host && !pasta_forwards && !specs.is_empty() {
            let bound = BoundPorts::bind_with(&specs, self.options.on_port_in_use)?;
            let dialer = NetnsDialer::new(ns.net, format!("environment {env_id}"))
                .map_err(NetError::Namespace)?;
            Some((bound, dialer))
        } else {
            None
        };
        let pasta_specs: &[ForwardSpec] = if pasta_forwards { &specs } else { &[] };
        let plumbing = self.plumb(env_id, ns, mode, pasta_specs)?;
        let mut rollback = Rollback {
            net: self,
            env_id,
            armed: true,
        };
        let (forwarder, ports) = match bound {
            Some((bound, dialer)) => {
                let f = bound.start(Arc::new(dialer))?;
                let ports = f.ports().to_vec();
                (Some(f), ports)
            }
            None if pasta_forwards => (
                None,
                specs
                    .iter()
                    .map(|s| ForwardedPort {
                        spec: *s,
                        bound: s.host,
                    })
                    .collect(),
            ),
            None => (None, Vec::new()),
        };
        if mode != NetworkMode::Host {
            if let Some(mut record) = self.record(env_id)? {
                record.ports = ports.clone();
                self.save(env_id, &record)?;
            }
        }
        rollback.armed = false;
        Ok(NetAttachment {
            address: plumbing.address,
            gateway: plumbing.gateway,
            resolv_conf: plumbing.resolv_conf,
            ports,
            forwarder,
            dns_forwarder: plumbing.dns_forwarder,
        })
    }

    /// Sets up the environment's network on the host side only, without port forwarding:
    /// for a backend whose long-lived process cannot stay in the host's namespace (the
    /// container supervisor forwards ports itself with [`BoundPorts`] and
    /// [`super::dialer::LoopbackDialer`]). Call it from the host's network namespace, once
    /// the environment's namespaces exist and before anything runs inside.
    /// `pasta_ports`: ports pasta should forward (rootless `attach` only; else empty).
    pub fn plumb(
        &self,
        env_id: &str,
        ns: EnvNamespaces<'_>,
        mode: NetworkMode,
        pasta_ports: &[ForwardSpec],
    ) -> Result<NetPlumbing, NetError> {
        let mut plumbing = NetPlumbing {
            address: None,
            gateway: None,
            resolv_conf: None,
            dns_forwarder: None,
        };
        let mut record = NetRecord {
            mode,
            plumbing: Plumbing::Nothing,
            address: None,
            gateway: None,
            ports: Vec::new(),
            leaves_bridge_idle: false,
        };
        let mut rollback = Rollback {
            net: self,
            env_id,
            armed: true,
        };
        match mode {
            NetworkMode::Host => {
                rollback.armed = false;
                return Ok(plumbing);
            }
            NetworkMode::None => {
                self.save(env_id, &record)?;
                loopback_up(ns.net)?;
            }
            NetworkMode::Isolated if self.uses_pasta(mode) => {
                pasta::check_ports_free(pasta_ports)?;
                record.plumbing = Plumbing::Pasta { pid: None };
                self.save(env_id, &record)?;
                // pasta copies the host's addresses and routes, so ordinary resolvers are
                // reached as they are. A stub on 127.0.0.1 is reached through the gateway
                // address, which pasta maps to the host's loopback; another loopback stub
                // through pasta's DNS mapping (`--dns-forward`, recent pasta versions).
                let dns = DnsPlan::for_host(&self.options.resolvers);
                let (stub, nameserver) = match &dns {
                    DnsPlan::Stub {
                        stub: IpAddr::V4(v4),
                        ..
                    } if *v4 == Ipv4Addr::LOCALHOST => (
                        None,
                        subnet::host_default_gateway().unwrap_or(pasta::PASTA_DNS),
                    ),
                    DnsPlan::Stub { stub, .. } => (Some(*stub), pasta::PASTA_DNS),
                    DnsPlan::Direct(_) => (None, pasta::PASTA_DNS),
                };
                let p = Pasta::start(&self.home.env_dir(env_id), ns, pasta_ports, stub)?;
                record.plumbing = Plumbing::Pasta { pid: Some(p.pid()) };
                plumbing.resolv_conf = Some(dns.resolv_conf(nameserver));
            }
            NetworkMode::Isolated => {
                let cfg = &self.options.bridge;
                record.plumbing = Plumbing::Bridge {
                    bridge: cfg.name.clone(),
                    nft_table: cfg.nft_table.clone(),
                    port: None,
                };
                self.save(env_id, &record)?;
                let dns = DnsPlan::for_host(&self.options.resolvers).for_ipv4_only();
                let lease =
                    Bridge::new(&self.home, cfg.clone()).attach(env_id, ns.net, dns.ipv4_stub())?;
                if let DnsPlan::Stub {
                    stub: stub @ IpAddr::V6(_),
                    ..
                } = &dns
                {
                    plumbing.dns_forwarder = Some(DnsForwarder::start(lease.gateway, *stub)?);
                }
                plumbing.resolv_conf = Some(dns.resolv_conf(lease.gateway));
                record.plumbing = Plumbing::Bridge {
                    bridge: cfg.name.clone(),
                    nft_table: cfg.nft_table.clone(),
                    port: Some(lease.port.clone()),
                };
                plumbing.address = Some(lease.address);
                plumbing.gateway = Some(lease.gateway);
                record.address = plumbing.address;
                record.gateway = plumbing.gateway;
            }
        }
        self.save(env_id, &record)?;
        rollback.armed = false;
        Ok(plumbing)
    }

    /// Plugs a VM of berth's own VMM into the bridge (isolated mode as root): leases an
    /// address, creates the bridge, NAT and forwarding when it is the first user, and a
    /// persistent tap for the VMM (see [`Bridge::attach_tap`]). Recorded like a container's
    /// veth, so [`Network::detach`] removes it, also after the VMM was killed. On error
    /// nothing is left behind.
    pub fn plumb_tap(&self, env_id: &str) -> Result<TapPlumbing, NetError> {
        if !is_root() {
            return Err(NetError::TapNeedsRoot);
        }
        let cfg = &self.options.bridge;
        let mut record = NetRecord {
            mode: NetworkMode::Isolated,
            plumbing: Plumbing::Bridge {
                bridge: cfg.name.clone(),
                nft_table: cfg.nft_table.clone(),
                port: None,
            },
            address: None,
            gateway: None,
            ports: Vec::new(),
            leaves_bridge_idle: false,
        };
        let mut rollback = Rollback {
            net: self,
            env_id,
            armed: true,
        };
        self.save(env_id, &record)?;
        let dns = DnsPlan::for_host(&self.options.resolvers).for_ipv4_only();
        let lease = Bridge::new(&self.home, cfg.clone()).attach_tap(env_id, dns.ipv4_stub())?;
        let (nameservers, dns_relay) = match &dns {
            DnsPlan::Direct(c) => {
                let v4: Vec<Ipv4Addr> = c
                    .nameservers
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) => Some(*v4),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                (
                    if v4.is_empty() {
                        vec![lease.gateway]
                    } else {
                        v4
                    },
                    None,
                )
            }
            DnsPlan::Stub {
                stub: stub @ IpAddr::V6(_),
                ..
            } => (vec![lease.gateway], Some(*stub)),
            DnsPlan::Stub { .. } => (vec![lease.gateway], None),
        };
        record.address = Some(lease.address);
        record.gateway = Some(lease.gateway);
        record.plumbing = Plumbing::Bridge {
            bridge: cfg.name.clone(),
            nft_table: cfg.nft_table.clone(),
            port: Some(lease.port.clone()),
        };
        self.save(env_id, &record)?;
        rollback.armed = false;
        Ok(TapPlumbing {
            tap: lease.port,
            address: lease.address,
            prefix: lease.subnet.prefix(),
            gateway: lease.gateway,
            nameservers,
            dns_relay,
        })
    }

    /// Records an environment that has loopback only and brings it up itself (a container
    /// supervisor does, also rootless, where nothing outside may enter its namespace): there
    /// is nothing on the host to set up or remove.
    pub fn record_loopback_only(&self, env_id: &str) -> Result<(), NetError> {
        self.save(env_id, &NetRecord::loopback_only())
    }

    /// Notes the forwarded ports in the environment's record, for `berth status` (the
    /// container backend forwards them itself; [`Network::attach`] records its own).
    pub fn record_ports(&self, env_id: &str, ports: &[ForwardedPort]) -> Result<(), NetError> {
        let mut record = self.record(env_id)?.unwrap_or(NetRecord {
            mode: NetworkMode::Host,
            plumbing: Plumbing::Nothing,
            address: None,
            gateway: None,
            ports: Vec::new(),
            leaves_bridge_idle: false,
        });
        record.ports = ports.to_vec();
        self.save(env_id, &record)
    }

    /// As root on berth's bridge: forwards `ports` (bound by the environment's forwarder,
    /// which keeps serving them) in the kernel too, for connections made on the host (see
    /// [`port_nat`]). Call it after [`Network::plumb`], from the host's network namespace;
    /// `netns` is the environment's. Returns whether the kernel forwards any port; `Ok(false)`
    /// for other modes and IPv6-only ports. On error nothing was changed on the host and the
    /// forwarder serves every connection, as without this step.
    pub fn forward_in_kernel(
        &self,
        env_id: &str,
        netns: &File,
        ports: &[ForwardedPort],
    ) -> Result<bool, NetError> {
        let Some(record) = self.record_to_detach(env_id)? else {
            return Ok(false);
        };
        let (
            Plumbing::Bridge {
                bridge,
                port: Some(port),
                ..
            },
            Some(address),
        ) = (&record.plumbing, record.address)
        else {
            return Ok(false);
        };
        Ok(KernelForward {
            bridge,
            port,
            address,
            ports,
        }
        .install(netns)?)
    }

    /// Garbage collection of the bridge (as root; rootless homes have none): releases the
    /// leases of environments, of any berth home, that are gone (see
    /// [`Bridge::collect_departed`]), and the bridge and NAT with the last; removes the
    /// kernel port forwarding of environments whose namespace is gone
    /// ([`port_nat::collect_stale`]). Returns how many leases went.
    pub fn collect_departed(&self) -> Result<usize, NetError> {
        if !is_root() {
            return Ok(0);
        }
        port_nat::collect_stale();
        Bridge::new(&self.home, self.options.bridge.clone()).collect_departed()
    }

    /// Asks [`detach`](Self::detach) of `env_id` to leave the bridge idle when `env_id` is
    /// its last user (see [`LastUser::LeavesIdle`]): `berth run` removes it in the child
    /// that outlives it, off the path to the command's exit code. Returns the bridge to
    /// remove with [`IdleBridge::remove_if_idle_for`] after the detach, or `None` when
    /// `env_id` is on no bridge (nothing was changed then).
    pub fn leave_bridge_idle(&self, env_id: &str) -> Result<Option<IdleBridge>, NetError> {
        let Some(mut record) = self.record(env_id)? else {
            return Ok(None);
        };
        let Plumbing::Bridge {
            bridge, nft_table, ..
        } = &record.plumbing
        else {
            return Ok(None);
        };
        let idle = IdleBridge {
            name: bridge.clone(),
            nft_table: nft_table.clone(),
        };
        record.leaves_bridge_idle = true;
        self.save(env_id, &record)?;
        Ok(Some(idle))
    }

    /// The first step of [`detach`](Self::detach), for a caller that leaves the rest for
    /// later: frees `env_id`'s forwarded host ports, the kernel's port rules (which must not
    /// outlive the address they send to) or its pasta process. Idempotent.
    pub fn release_forwarded_ports(&self, env_id: &str) -> Result<(), NetError> {
        match self.record_to_detach(env_id)?.map(|r| r.plumbing) {
            Some(Plumbing::Bridge {
                port: Some(port), ..
            }) => Ok(port_nat::remove(&port)?),
            Some(Plumbing::Pasta { pid: Some(pid) }) => {
                pasta::stop(pid);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes everything [`Network::attach`] created on the host for `env_id`: its veth,
    /// its lease, the bridge, NAT table and forwarding when it was the last environment; its
    /// pasta process. Idempotent: detaching an environment that is not attached succeeds.
    /// Forwarders live in the attaching process and end with its [`NetAttachment`].
    pub fn detach(&self, env_id: &str) -> Result<(), NetError> {
        let Some(record) = self.record_to_detach(env_id)? else {
            let _ = std::fs::remove_file(self.record_path(env_id));
            return Ok(());
        };
        match &record.plumbing {
            Plumbing::Bridge {
                bridge,
                nft_table,
                port,
            } => {
                // The port rules first: they must not outlive the address they send to.
                // (A record without `port` is of a berth that made no port rules.)
                if let Some(port) = port {
                    port_nat::remove(port)?;
                }
                let cfg = BridgeConfig {
                    name: bridge.clone(),
                    nft_table: nft_table.clone(),
                    subnet: None,
                };
                let last = if record.leaves_bridge_idle {
                    LastUser::LeavesIdle
                } else {
                    LastUser::RemovesBridge
                };
                Bridge::new(&self.home, cfg).detach(env_id, port.as_deref(), last)?;
            }
            Plumbing::Pasta { pid: Some(pid) } => pasta::stop(*pid),
            Plumbing::Pasta { pid: None } | Plumbing::Nothing => {}
        }
        match std::fs::remove_file(self.record_path(env_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(NetError::State(state::StateError::Write {
                    path: self.record_path(env_id),
                    source: e,
                }))
            }
            _ => Ok(()),
        }
    }
}

/// A [`Network`] on a bridge of its own for a test in `home` (`tag` keeps tests apart), or
/// `None` with the reason printed: the bridge and its NAT need root and nft.
#[cfg(test)]
pub(crate) fn test_network(home: &BerthHome, tag: &str) -> Option<Network> {
    if !is_root() {
        eprintln!("skipping: berth's bridge needs root (CAP_NET_ADMIN)");
        return None;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: nft (nftables) is not installed");
        return None;
    }
    let name = format!("berth_t{tag}{}", std::process::id() % 100_000);
    // A /24 of its own: tests running at once must not all pick the default subnet (two
    // bridges with one subnet would steal each other's routes). Second octet by tag, third
    // by process, moved on past host routes.
    let second = 200 + tag.bytes().map(u32::from).sum::<u32>() % 50;
    let routes = subnet::host_routes();
    let subnet = (0..256u32)
        .map(|i| format!("10.{second}.{}.0/24", (std::process::id() + i) % 256))
        .find(|s| subnet::choose_subnet(Some(s), &routes, &name).is_ok())?;
    Some(Network::new(
        home,
        NetworkOptions {
            bridge: BridgeConfig {
                name: name.clone(),
                nft_table: name,
                subnet: Some(subnet),
            },
            ..NetworkOptions::default()
        },
    ))
}

/// Detaches a test's environment when dropped, so a failing assertion leaves no tap, lease,
/// NAT table or bridge behind.
#[cfg(test)]
pub(crate) struct DetachOnDrop<'a> {
    pub net: &'a Network,
    pub env_id: &'a str,
}

#[cfg(test)]
impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.net.detach(self.env_id);
    }
}

/// Asserts that everything `env_id` had of `net` is gone: its tap `tap`, its lease and record,
/// and (it was the bridge's last user) the bridge and its NAT table.
#[cfg(test)]
pub(crate) fn assert_released(net: &Network, env_id: &str, tap: &str) {
    let bridge = &net.options().bridge.name;
    let mut nl = super::netlink::Netlink::open().unwrap();
    assert_eq!(nl.link_index(tap).unwrap(), None, "tap removed");
    assert_eq!(nl.link_index(bridge).unwrap(), None, "bridge removed");
    assert!(!super::nat::NatRules::exists(bridge), "NAT table removed");
    assert!(
        !super::lease_store::LeaseStore::for_bridge(bridge)
            .dir()
            .exists(),
        "machine-wide lease record removed"
    );
    assert!(
        net.record(env_id).unwrap().is_none(),
        "lease and record removed"
    );
}

/// The bridge interface `port` is plugged into, if any.
#[cfg(test)]
pub(crate) fn master_of(port: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/class/net/{port}/master"))
        .ok()
        .and_then(|p| p.file_name()?.to_str().map(str::to_string))
}

/// Brings the loopback interface of `netns` up.
pub fn loopback_up(netns: &File) -> Result<(), NetError> {
    let mut nl = Netlink::open_in(netns).map_err(NetError::Namespace)?;
    let lo = nl
        .link_index("lo")
        .map_err(|e| NetError::link("look up lo inside the environment", e))?;
    if let Some(lo) = lo {
        nl.set_up(lo)
            .map_err(|e| NetError::link("bring lo up inside the environment", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_a_power_cut_left_empty_is_detached_as_nothing_and_a_corrupt_one_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let home = BerthHome::at(t.path()).unwrap();
        let net = Network::new(&home, NetworkOptions::default());
        let path = home.env_dir("e").join("network.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // What `save` writes now goes without fsync: after a power cut the file may be
        // there with its size but no content.
        for torn in [&b""[..], &[0u8; 117][..], &b"\0\0\n"[..]] {
            std::fs::write(&path, torn).unwrap();
            net.detach("e").unwrap();
            assert!(!path.exists(), "the torn record is removed");
        }
        // Not a power cut's: berth does not guess what it named.
        std::fs::write(&path, b"{\"mode\": ").unwrap();
        assert!(net.detach("e").is_err());
        assert!(path.exists());
    }
}
