//! The networking entry point the backends call: attach an environment's network namespace
//! according to `network.mode`, forward its `[[ports]]`, and detach it again.
//!
//! ```text
//! isolated, root      veth on bridge berth0 + NAT + DNS; ports through a NetnsDialer
//! isolated, rootless  pasta (user-mode networking), which also forwards the ports
//! none                loopback only; ports still forwarded through a NetnsDialer
//! host                nothing to do: the environment shares the host's stack and ports
//! ```
//!
//! Everything [`Network::attach`] creates on the host is first written to
//! `envs/<id>/network.json`, so [`Network::detach`] can remove it later from any process,
//! also after the supervisor was killed with `kill -9`.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use envfile_spec::plan::{NetworkMode, PortPlan};
use serde::{Deserialize, Serialize};

use crate::state::{self, BerthHome};

use super::bridge::{Bridge, BridgeConfig};
use super::dialer::NetnsDialer;
use super::dns::{DnsForwarder, DnsPlan, ResolverSources};
use super::error::NetError;
use super::forward::{ForwardSpec, ForwardedPort, PortForwarder};
use super::netlink::Netlink;
use super::pasta::{self, Pasta};

/// Settings of the networking layer; [`Default`] is what berth uses.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    pub bridge: BridgeConfig,
    pub resolvers: ResolverSources,
    /// Isolated mode through pasta (user-mode networking): `None` = exactly when not root.
    pub user_mode: Option<bool>,
}

/// The namespaces of the environment being attached.
#[derive(Debug, Clone, Copy)]
pub struct EnvNamespaces<'a> {
    /// Its network namespace (`/proc/PID/ns/net`).
    pub net: &'a File,
    /// Its user namespace (`/proc/PID/ns/user`) when it has its own (rootless); pasta joins it.
    pub user: Option<&'a File>,
}

/// How an environment's network was set up, as recorded for [`Network::detach`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Plumbing {
    /// A veth pair on berth's bridge.
    Bridge { bridge: String, nft_table: String },
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
}

/// A live attachment: what the backend needs to finish the environment, plus the running
/// forwarders. Keep it alive as long as the environment runs (in its supervisor); dropping
/// it stops the forwarders. Host-side interfaces and rules stay until [`Network::detach`].
#[derive(Debug)]
pub struct NetAttachment {
    /// The environment's IPv4 address (bridge mode).
    pub address: Option<Ipv4Addr>,
    /// Its default gateway (bridge mode).
    pub gateway: Option<Ipv4Addr>,
    /// Content for the environment's `/etc/resolv.conf`; `None` means keep what the image
    /// or host provides (`host` mode, `none` mode).
    pub resolv_conf: Option<String>,
    /// Forwarded ports with the host addresses actually bound.
    pub ports: Vec<ForwardedPort>,
    forwarder: Option<PortForwarder>,
    dns: Option<DnsForwarder>,
    pasta: Option<Pasta>,
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
        drop(self.dns.take());
        drop(self.pasta.take());
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
        state::create_dir_all(&self.home.env_dir(env_id))?;
        Ok(state::write_json(&path, record)?)
    }

    /// The recorded network of an environment, if it is attached.
    pub fn record(&self, env_id: &str) -> Result<Option<NetRecord>, NetError> {
        Ok(state::read_json(&self.record_path(env_id))?)
    }

    /// Gives the environment whose namespaces are `ns` the network `mode` asks for and
    /// forwards `ports` into it. On error nothing is left behind: no port bound, no
    /// interface, no rule, no record.
    pub fn attach(
        &self,
        env_id: &str,
        ns: EnvNamespaces<'_>,
        mode: NetworkMode,
        ports: &[PortPlan],
    ) -> Result<NetAttachment, NetError> {
        let specs: Vec<ForwardSpec> = ports.iter().map(ForwardSpec::from).collect();
        let mut att = NetAttachment {
            address: None,
            gateway: None,
            resolv_conf: None,
            ports: Vec::new(),
            forwarder: None,
            dns: None,
            pasta: None,
        };
        let rootless_isolated =
            mode == NetworkMode::Isolated && self.options.user_mode.unwrap_or(!is_root());
        // Ports are bound first: a port in use fails before anything else exists.
        if mode != NetworkMode::Host && !rootless_isolated && !specs.is_empty() {
            let dialer = NetnsDialer::new(ns.net, format!("environment {env_id}"))
                .map_err(NetError::Namespace)?;
            let fwd = PortForwarder::start(&specs, Arc::new(dialer))?;
            att.ports = fwd.ports().to_vec();
            att.forwarder = Some(fwd);
        }
        let mut record = NetRecord {
            mode,
            plumbing: Plumbing::Nothing,
            address: None,
            gateway: None,
            ports: att.ports.clone(),
        };
        let mut rollback = Rollback {
            net: self,
            env_id,
            armed: true,
        };
        match mode {
            NetworkMode::Host => {}
            NetworkMode::None => {
                self.save(env_id, &record)?;
                loopback_up(ns.net)?;
            }
            NetworkMode::Isolated if rootless_isolated => {
                pasta::check_ports_free(&specs)?;
                record.plumbing = Plumbing::Pasta { pid: None };
                self.save(env_id, &record)?;
                let p = Pasta::start(&self.home.env_dir(env_id), ns, &specs)?;
                record.plumbing = Plumbing::Pasta { pid: Some(p.pid()) };
                att.ports = specs
                    .iter()
                    .map(|s| ForwardedPort {
                        spec: *s,
                        bound: s.host,
                    })
                    .collect();
                record.ports = att.ports.clone();
                att.pasta = Some(p);
            }
            NetworkMode::Isolated => {
                let cfg = &self.options.bridge;
                record.plumbing = Plumbing::Bridge {
                    bridge: cfg.name.clone(),
                    nft_table: cfg.nft_table.clone(),
                };
                self.save(env_id, &record)?;
                let lease = Bridge::new(&self.home, cfg.clone()).attach(env_id, ns.net)?;
                let dns = DnsPlan::for_host(&self.options.resolvers, lease.gateway);
                if let DnsPlan::Forward {
                    upstream, listen, ..
                } = &dns
                {
                    att.dns = Some(DnsForwarder::start(*listen, *upstream)?);
                }
                att.resolv_conf = Some(dns.resolv_conf());
                att.address = Some(lease.address);
                att.gateway = Some(lease.gateway);
                record.address = att.address;
                record.gateway = att.gateway;
            }
        }
        if mode != NetworkMode::Host {
            self.save(env_id, &record)?;
        }
        rollback.armed = false;
        Ok(att)
    }

    /// Removes everything [`Network::attach`] created on the host for `env_id`: its veth,
    /// its lease, the bridge, NAT table and forwarding when it was the last environment; its
    /// pasta process. Idempotent: detaching an environment that is not attached succeeds.
    /// Forwarders live in the attaching process and end with its [`NetAttachment`].
    pub fn detach(&self, env_id: &str) -> Result<(), NetError> {
        let Some(record) = self.record(env_id)? else {
            return Ok(());
        };
        match &record.plumbing {
            Plumbing::Bridge { bridge, nft_table } => {
                let cfg = BridgeConfig {
                    name: bridge.clone(),
                    nft_table: nft_table.clone(),
                    subnet: None,
                };
                Bridge::new(&self.home, cfg).detach(env_id)?;
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
