//! IPv4 subnets for the environment bridge, and the choice of one that does not collide with
//! the host's routes.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR form, e.g. `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

/// The subnet berth tries first, and the ones it falls back to, in order, when a host route
/// overlaps.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
const FALLBACKS: &[&str] = &[
    "10.89.0.0/16",
    "10.90.0.0/16",
    "10.91.0.0/16",
    "10.92.0.0/16",
    "10.93.0.0/16",
    "172.28.0.0/16",
    "172.29.0.0/16",
    "172.30.0.0/16",
    "192.168.188.0/24",
    "192.168.189.0/24",
];

/// The environment variable that overrides the bridge subnet.
pub const SUBNET_ENV: &str = "BERTH_SUBNET";

impl Subnet {
    /// A subnet from an address and prefix length; host bits are cleared.
    pub fn new(ip: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "prefix length /{prefix} is not usable for an environment network; use /8 to /30"
            ));
        }
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(ip) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's own address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The `n`-th host address (1 is the gateway), `None` past the last usable address.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        (n >= 1 && u64::from(n) < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(p) == u32::from(other.network) & mask(p)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an IPv4 subnet in CIDR form like {DEFAULT_SUBNET}");
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Subnet::new(ip, prefix)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// An IPv4 route of the host (from `/proc/net/route`), default routes left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub interface: String,
    pub subnet: Subnet,
}

/// The host's IPv4 routes except default routes.
pub fn host_routes() -> Vec<HostRoute> {
    fs::read_to_string("/proc/net/route")
        .map(|t| parse_proc_route(&t))
        .unwrap_or_default()
}

fn parse_proc_route(text: &str) -> Vec<HostRoute> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The kernel prints the raw network-order words as host integers.
            let prefix = u32::from_be_bytes(mask.to_ne_bytes()).leading_ones() as u8;
            if prefix == 0 {
                return None;
            }
            let network = Ipv4Addr::from(dest.to_ne_bytes());
            Some(HostRoute {
                interface: f[0].to_string(),
                subnet: Subnet {
                    network: Ipv4Addr::from(u32::from(network) & self::mask(prefix)),
                    prefix,
                },
            })
        })
        .collect()
}

/// The gateway of the host's IPv4 default route, if it has one.
pub fn host_default_gateway() -> Option<Ipv4Addr> {
    let text = fs::read_to_string("/proc/net/route").ok()?;
    default_gateway(&text)
}

fn default_gateway(text: &str) -> Option<Ipv4Addr> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        if *dest != "00000000" || *mask != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.to_ne_bytes()))
    })
}

/// The subnet for berth's bridge `bridge`: `BERTH_SUBNET` when set (`requested`), else the
/// first of the defaults that overlaps no host route (routes through `bridge` itself, which
/// berth made, do not count).
pub fn choose_subnet(
    requested: Option<&str>,
    routes: &[HostRoute],
    bridge: &str,
) -> Result<Subnet, String> {
    let foreign: Vec<&HostRoute> = routes.iter().filter(|r| r.interface != bridge).collect();
    if let Some(s) = requested.filter(|s| !s.trim().is_empty()) {
        let subnet: Subnet = s.parse().map_err(|e| format!("{SUBNET_ENV}: {e}"))?;
        if let Some(r) = foreign.iter().find(|r| r.subnet.overlaps(&subnet)) {
            return Err(format!(
                "{SUBNET_ENV}={subnet} overlaps the host's route {} on {}; pick a free range",
                r.subnet, r.interface
            ));
        }
        return Ok(subnet);
    }
    std::iter::once(DEFAULT_SUBNET)
        .chain(FALLBACKS.iter().copied())
        .filter_map(|s| s.parse::<Subnet>().ok())
        .find(|s| !foreign.iter().any(|r| r.subnet.overlaps(s)))
        .ok_or_else(|| {
            format!(
                "every subnet berth tries ({DEFAULT_SUBNET} and {} others) overlaps a host route; set {SUBNET_ENV} to a free IPv4 range, e.g. 10.123.0.0/24",
                FALLBACKS.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_computes_addresses() {
        let s: Subnet = "10.88.7.9/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(s.host(2), Some(Ipv4Addr::new(10, 88, 0, 2)));
        let small: Subnet = "192.168.1.0/30".parse().unwrap();
        assert_eq!(small.host(2), Some(Ipv4Addr::new(192, 168, 1, 2)));
        assert_eq!(small.host(3), None, "broadcast is not a host");
        assert!("10.0.0.0".parse::<Subnet>().is_err());
        assert!("10.0.0.0/31".parse::<Subnet>().is_err());
        assert!("x/16".parse::<Subnet>().is_err());
    }

    #[test]
    fn overlap() {
        let a: Subnet = "10.88.0.0/16".parse().unwrap();
        assert!(a.overlaps(&"10.88.3.0/24".parse().unwrap()));
        assert!(a.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!a.overlaps(&"10.89.0.0/16".parse().unwrap()));
    }

    #[test]
    fn reads_proc_net_route() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
docker0\t000058AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(default_gateway(text), Some(Ipv4Addr::new(192, 0, 2, 1)));
        let r = parse_proc_route(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].subnet.to_string(), "192.0.2.0/24");
        assert_eq!(r[1].subnet.to_string(), "172.88.0.0/16");
    }

    #[test]
    fn picks_a_subnet_avoiding_host_routes() {
        let route = |i: &str, s: &str| {
            let (ip, prefix) = s.split_once('/').unwrap();
            HostRoute {
                interface: i.into(),
                subnet: Subnet {
                    network: ip.parse().unwrap(),
                    prefix: prefix.parse().unwrap(),
                },
            }
        };
        assert_eq!(
            choose_subnet(None, &[], "berth0").unwrap().to_string(),
            DEFAULT_SUBNET
        );
        let taken = [route("eth0", "10.88.0.0/16"), route("wg0", "10.89.0.0/20")];
        assert_eq!(
            choose_subnet(None, &taken, "berth0").unwrap().to_string(),
            "10.90.0.0/16"
        );
        // berth's own bridge route does not count as a collision.
        let own = [route("berth0", "10.88.0.0/16")];
        assert_eq!(
            choose_subnet(None, &own, "berth0").unwrap().to_string(),
            DEFAULT_SUBNET
        );
        assert_eq!(
            choose_subnet(Some("10.5.0.0/24"), &taken, "berth0")
                .unwrap()
                .to_string(),
            "10.5.0.0/24"
        );
        let err = choose_subnet(Some("10.88.1.0/24"), &taken, "berth0").unwrap_err();
        assert!(err.contains("overlaps") && err.contains("eth0"), "{err}");
        let everything = [route("eth0", "0.0.0.0/1"), route("eth1", "128.0.0.0/1")];
        assert!(choose_subnet(None, &everything, "berth0")
            .unwrap_err()
            .contains(SUBNET_ENV));
    }
}
