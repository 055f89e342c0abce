//! Name resolution inside an isolated environment.
//!
//! The environment gets a `resolv.conf` derived from the host's. When the host's resolvers
//! are reachable from the environment (ordinary addresses, through the bridge's NAT) they are
//! copied. When the host uses a stub resolver on loopback (systemd-resolved's 127.0.0.53,
//! a local dnsmasq), that address means the environment's own loopback inside it, so:
//! 1. the real upstreams from systemd-resolved's `/run/systemd/resolve/resolv.conf` are used
//!    when that file names any;
//! 2. otherwise the environment's resolv.conf names the bridge address, and DNS sent there
//!    is redirected to the stub in the kernel: a DNAT rule in berth's nftables table plus
//!    `route_localnet` on the bridge (no process needed, so DNS works for as long as the
//!    bridge exists, whichever process set it up). Only an IPv6 stub (`::1`), which an IPv4
//!    redirect cannot reach, is served by a userspace [`DnsForwarder`] instead.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envfile_spec::plan::Protocol;

use super::dialer::AddressDialer;
use super::forward::{ForwardError, ForwardSpec, PortForwarder};

/// Where the host's resolver configuration is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSources {
    pub resolv_conf: PathBuf,
    /// systemd-resolved's list of real upstream servers.
    pub upstream_resolv_conf: PathBuf,
}

impl Default for ResolverSources {
    fn default() -> Self {
        ResolverSources {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstream_resolv_conf: PathBuf::from("/run/systemd/resolve/resolv.conf"),
        }
    }
}

/// The parts of a resolv.conf berth carries over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub fn parse(text: &str) -> ResolvConf {
        let mut rc = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scoped IPv6 address (fe80::1%eth0) names a host interface: useless inside.
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        rc.nameservers.push(ip);
                    }
                }
                Some("search") | Some("domain") => {
                    rc.search = words.map(str::to_string).collect();
                }
                Some("options") => rc.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        rc
    }

    pub fn render(&self) -> String {
        let mut out = String::from("# written by berth from the host's resolver configuration\n");
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    fn reachable_nameservers(&self) -> Vec<IpAddr> {
        self.nameservers
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .collect()
    }
}

/// How the environment resolves names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsPlan {
    /// The environment talks to these resolvers itself.
    Direct(ResolvConf),
    /// The host resolver is a loopback stub: the environment's resolv.conf names the bridge
    /// address, and DNS sent there is passed on to `stub` (by a DNAT rule for an IPv4 stub,
    /// by a [`DnsForwarder`] for an IPv6 one). `conf` carries the search domains and options.
    Stub { stub: IpAddr, conf: ResolvConf },
}

impl DnsPlan {
    /// Decides from the host's resolv.conf text and systemd-resolved's upstream list (when
    /// present).
    pub fn decide(host: &str, upstream: Option<&str>) -> DnsPlan {
        let host = ResolvConf::parse(host);
        let reachable = host.reachable_nameservers();
        if !reachable.is_empty() {
            return DnsPlan::Direct(ResolvConf {
                nameservers: reachable,
                ..host
            });
        }
        let upstreams = upstream
            .map(ResolvConf::parse)
            .map(|u| u.reachable_nameservers())
            .unwrap_or_default();
        if !upstreams.is_empty() {
            return DnsPlan::Direct(ResolvConf {
                nameservers: upstreams,
                ..host
            });
        }
        // No nameserver line at all means "127.0.0.1" to the C library.
        let stub = host
            .nameservers
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        DnsPlan::Stub {
            stub,
            conf: ResolvConf {
                nameservers: Vec::new(),
                ..host
            },
        }
    }

    /// Reads the host's files and decides.
    pub fn for_host(sources: &ResolverSources) -> DnsPlan {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        DnsPlan::decide(
            &read(&sources.resolv_conf).unwrap_or_default(),
            read(&sources.upstream_resolv_conf).as_deref(),
        )
    }

    /// The plan for an environment with IPv4 only (the bridge): IPv6 resolvers are dropped
    /// from a direct plan, and when only IPv6 ones remain the environment asks the bridge
    /// address, which relays to the first of them (like a stub).
    pub fn for_ipv4_only(self) -> DnsPlan {
        match self {
            DnsPlan::Direct(c) => {
                let v4: Vec<IpAddr> = c
                    .nameservers
                    .iter()
                    .copied()
                    .filter(IpAddr::is_ipv4)
                    .collect();
                match (v4.is_empty(), c.nameservers.first().copied()) {
                    (true, Some(v6)) => DnsPlan::Stub {
                        stub: v6,
                        conf: ResolvConf {
                            nameservers: Vec::new(),
                            ..c
                        },
                    },
                    _ => DnsPlan::Direct(ResolvConf {
                        nameservers: v4,
                        ..c
                    }),
                }
            }
            stub => stub,
        }
    }

    /// The IPv4 loopback stub to redirect DNS to, if that is the plan.
    pub fn ipv4_stub(&self) -> Option<Ipv4Addr> {
        match self {
            DnsPlan::Stub {
                stub: IpAddr::V4(v4),
                ..
            } => Some(*v4),
            _ => None,
        }
    }

    /// The resolv.conf of an environment whose bridge address is `gateway`.
    pub fn resolv_conf(&self, gateway: Ipv4Addr) -> String {
        match self {
            DnsPlan::Direct(c) => c.render(),
            DnsPlan::Stub { conf, .. } => ResolvConf {
                nameservers: vec![IpAddr::V4(gateway)],
                ..conf.clone()
            }
            .render(),
        }
    }
}

/// DNS port.
pub const DNS_PORT: u16 = 53;

/// Forwards DNS over UDP and TCP from the bridge address to the host's stub resolver. Every
/// environment's supervisor runs one on the same address (`SO_REUSEPORT`), so DNS keeps
/// working as long as any environment on the bridge is up, with no daemon.
#[derive(Debug)]
pub struct DnsForwarder {
    _forwarder: PortForwarder,
}

impl DnsForwarder {
    pub fn start(listen: Ipv4Addr, upstream: IpAddr) -> Result<DnsForwarder, ForwardError> {
        let spec = |protocol| ForwardSpec {
            protocol,
            host: SocketAddr::new(IpAddr::V4(listen), DNS_PORT),
            guest_port: DNS_PORT,
            shared: true,
        };
        let forwarder = PortForwarder::start(
            &[spec(Protocol::Udp), spec(Protocol::Tcp)],
            Arc::new(AddressDialer { ip: upstream }),
        )?;
        Ok(DnsForwarder {
            _forwarder: forwarder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

    #[test]
    fn ordinary_resolvers_are_copied() {
        let host = "# generated\nnameserver 10.255.255.53\nnameserver ::1\nsearch corp.example\noptions edns0 ndots:2\n";
        let plan = DnsPlan::decide(host, None);
        assert_eq!(
            plan.resolv_conf(GW),
            "# written by berth from the host's resolver configuration\nnameserver 10.255.255.53\nsearch corp.example\noptions edns0 ndots:2\n"
        );
        assert_eq!(plan.ipv4_stub(), None);
    }

    #[test]
    fn ipv4_only_environments_drop_or_relay_ipv6_resolvers() {
        let mixed = DnsPlan::decide("nameserver 2001:db8::1\nnameserver 192.0.2.1\n", None);
        assert_eq!(
            mixed
                .for_ipv4_only()
                .resolv_conf(GW)
                .lines()
                .filter(|l| l.starts_with("nameserver"))
                .collect::<Vec<_>>(),
            ["nameserver 192.0.2.1"]
        );
        let v6 = DnsPlan::decide("nameserver 2001:db8::1\n", None).for_ipv4_only();
        assert!(matches!(
            v6,
            DnsPlan::Stub {
                stub: IpAddr::V6(_),
                ..
            }
        ));
        assert!(v6.resolv_conf(GW).contains("nameserver 10.88.0.1"));
        assert_eq!(
            v6.ipv4_stub(),
            None,
            "relayed by the userspace forwarder, not DNAT"
        );
    }

    #[test]
    fn systemd_stub_uses_its_upstreams() {
        let host = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.0.2.53\nnameserver 2001:db8::53\n";
        match DnsPlan::decide(host, Some(upstream)) {
            DnsPlan::Direct(c) => {
                assert_eq!(c.nameservers.len(), 2);
                assert_eq!(c.search, vec!["lan"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loopback_stub_without_upstreams_is_reached_through_the_bridge() {
        let plan = DnsPlan::decide(
            "nameserver 127.0.0.1\nsearch lan\n",
            Some("nameserver 127.0.0.53\n"),
        );
        assert_eq!(plan.ipv4_stub(), Some(Ipv4Addr::LOCALHOST));
        let rc = plan.resolv_conf(GW);
        assert!(
            rc.contains("nameserver 10.88.0.1\n") && rc.contains("search lan\n"),
            "{rc}"
        );
        assert!(!rc.contains("127.0.0.1"));
        // An empty resolv.conf means 127.0.0.1 to the resolver library.
        assert_eq!(
            DnsPlan::decide("", None).ipv4_stub(),
            Some(Ipv4Addr::LOCALHOST)
        );
        // An IPv6 stub cannot be reached by an IPv4 redirect.
        let v6 = DnsPlan::decide("nameserver ::1\n", None);
        assert!(matches!(v6, DnsPlan::Stub { .. }) && v6.ipv4_stub().is_none());
    }
}
