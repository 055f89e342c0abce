//! Outbound access for environments on the bridge: IPv4 forwarding and an nftables table that
//! masquerades the bridge subnet and stops environments from routing to each other.
//!
//! The bridge may have `route_localnet` set (the DNS redirect to a loopback stub, kernel port
//! forwarding from the host's 127.0.0.1, see [`super::port_nat`]). That alone would let an
//! environment reach every service bound to the host's 127.0.0.1 by sending packets for
//! 127.0.0.1 to its gateway (kube-proxy's CVE-2020-8558), so the table's `input` chain drops
//! packets from the bridge to 127.0.0.0/8 unless berth's own DNAT rules put that address there.
//!
//! The table belongs to berth alone (`inet berth` by default) and is replaced in one nftables
//! transaction, so it is never half-applied and never touches anyone else's rules. berth
//! sends that transaction itself over netlink ([`super::nft_netlink`]; the text form
//! [`NatRules::ruleset`] is what it encodes, and what a test compares it with through `nft`),
//! so making and removing the bridge starts no `nft` process.

use std::fs;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use super::subnet::Subnet;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Errors from applying or removing the NAT rules.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("cannot run nft: {0}; install nftables (Debian package `nftables`)")]
    Spawn(io::Error),
    #[error("nft rejected berth's ruleset for table inet {table}: {stderr}; check that the kernel has nf_tables (modprobe nf_tables nft_masq)")]
    Rejected { table: String, stderr: String },
    #[error("the kernel refused to {what} nftables table inet {table}: {source}; check that the kernel has nf_tables (modprobe nf_tables nft_masq nft_nat nft_ct)")]
    Netlink {
        what: &'static str,
        table: String,
        source: io::Error,
    },
    #[error("cannot enable IPv4 forwarding ({IP_FORWARD}): {0}; environments would have no outbound network")]
    Forwarding(io::Error),
    #[error(
        "cannot set {path}: {source}; DNS through the host's loopback resolver would not work"
    )]
    Sysctl { path: String, source: io::Error },
    #[error(
        "cannot set {path}: {source}; forwarded ports fall back to berth's userspace forwarder"
    )]
    PortSysctl { path: String, source: io::Error },
    #[error("cannot write {path}: {source}; check that /run is writable by root")]
    Record { path: String, source: io::Error },
    #[error("cannot enter the environment's network namespace: {0}; the environment may have stopped — run `berth up` again")]
    Namespace(io::Error),
}

/// The nftables ruleset berth owns for one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRules {
    pub table: String,
    pub bridge: String,
    pub subnet: Subnet,
    /// The host's DNS stub resolver on IPv4 loopback (systemd-resolved's 127.0.0.53, a local
    /// dnsmasq), when it has one: DNS sent to the bridge address is redirected to it.
    pub dns_stub: Option<std::net::Ipv4Addr>,
}

impl NatRules {
    /// The ruleset text: created, flushed and refilled in one transaction.
    pub fn ruleset(&self) -> String {
        let NatRules {
            table,
            bridge,
            subnet,
            dns_stub,
        } = self;
        let gateway = subnet.gateway();
        let dns = match dns_stub {
            Some(stub) => format!(
                "\tchain prerouting {{\n\
                 \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
                 \t\tiifname \"{bridge}\" ip daddr {gateway} udp dport 53 dnat ip to {stub}:53\n\
                 \t\tiifname \"{bridge}\" ip daddr {gateway} tcp dport 53 dnat ip to {stub}:53\n\
                 \t}}\n"
            ),
            None => String::new(),
        };
        format!(
            "table inet {table} {{}}\n\
             flush table inet {table}\n\
             table inet {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {subnet} ip daddr != {subnet} masquerade\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{bridge}\" oifname \"{bridge}\" drop\n\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\t{}\n\
             \t}}\n\
             {dns}\
             }}\n",
            no_loopback_from(bridge)
        )
    }

    /// Installs (or refreshes) the table: [`ruleset`](Self::ruleset) in one transaction,
    /// sent over netlink.
    pub fn apply(&self) -> Result<(), NatError> {
        super::nft_netlink::apply(&self.table, &self.bridge, &self.subnet, self.dns_stub).map_err(
            |source| NatError::Netlink {
                what: "create",
                table: self.table.clone(),
                source,
            },
        )
    }

    /// Removes the table; a table that is already gone is fine.
    pub fn remove(table: &str) -> Result<(), NatError> {
        super::nft_netlink::delete_table(table).map_err(|source| NatError::Netlink {
            what: "delete",
            table: table.to_string(),
            source,
        })
    }

    /// Whether the table exists.
    pub fn exists(table: &str) -> bool {
        Command::new("nft")
            .args(["list", "table", "inet", table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

/// The rule that keeps packets arriving on `interface` away from 127.0.0.0/8 unless a DNAT
/// rule of berth's sent them there (conntrack status `dnat`; replies to such connections
/// carry it too): with `route_localnet` on `interface` the kernel would otherwise deliver
/// packets for the loopback addresses that a neighbour sends to it.
pub fn no_loopback_from(interface: &str) -> String {
    format!("iifname \"{interface}\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop")
}

pub(super) enum NftFailure {
    Spawn(io::Error),
    Rejected(String),
}

impl NftFailure {
    pub(super) fn into_error(self, table: &str) -> NatError {
        match self {
            NftFailure::Spawn(e) => NatError::Spawn(e),
            NftFailure::Rejected(stderr) => NatError::Rejected {
                table: table.to_string(),
                stderr,
            },
        }
    }
}

/// Runs `nft -f -` with `script` (one transaction) in the calling thread's network namespace.
pub(super) fn nft(script: &str) -> Result<(), NftFailure> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftFailure::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftFailure::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftFailure::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftFailure::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Lets packets from the bridge be routed to loopback addresses (needed for the DNS
/// redirect to a 127.x stub). The setting belongs to the bridge and disappears with it.
pub fn allow_loopback_destinations(bridge: &str) -> Result<(), NatError> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    fs::write(&path, "1").map_err(|source| NatError::Sysctl { path, source })
}

/// Where the value of `ip_forward` from before any berth bridge existed is kept. It is
/// host-wide (several berth homes, or tests, may each have a bridge) and on tmpfs, so a
/// reboot, which resets `ip_forward`, forgets it too.
const FORWARD_NOTE: &str = "/run/berth-ipv4-forward.before";

/// Turns IPv4 forwarding on, first noting the previous value when berth is the one turning
/// it on.
pub fn enable_ipv4_forwarding() -> Result<(), NatError> {
    let now = fs::read_to_string(IP_FORWARD).map_err(NatError::Forwarding)?;
    if now.trim() == "1" {
        return Ok(());
    }
    if !std::path::Path::new(FORWARD_NOTE).exists() {
        fs::write(FORWARD_NOTE, now.trim()).map_err(|source| NatError::Sysctl {
            path: FORWARD_NOTE.into(),
            source,
        })?;
    }
    fs::write(IP_FORWARD, "1").map_err(NatError::Forwarding)
}

/// Puts IPv4 forwarding back to what it was before berth turned it on, unless another
/// berth table (another bridge) still needs it. `own_table` is the table being removed.
pub fn release_ipv4_forwarding(own_table: &str) -> Result<(), NatError> {
    if other_berth_tables(own_table) {
        return Ok(());
    }
    let Ok(before) = fs::read_to_string(FORWARD_NOTE) else {
        return Ok(());
    };
    fs::write(IP_FORWARD, before.trim()).map_err(NatError::Forwarding)?;
    let _ = fs::remove_file(FORWARD_NOTE);
    Ok(())
}

/// Whether nftables holds an `inet` table of berth's (named `berth…`) besides `own_table`.
fn other_berth_tables(own_table: &str) -> bool {
    super::nft_netlink::inet_tables().is_ok_and(|tables| {
        tables
            .iter()
            .any(|name| name.starts_with("berth") && name != own_table)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_the_subnet_and_drops_env_to_env_routing() {
        let r = NatRules {
            table: "berth".into(),
            bridge: "berth0".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            dns_stub: None,
        }
        .ruleset();
        assert!(r.starts_with("table inet berth {}\nflush table inet berth\n"));
        assert!(r.contains("ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade"));
        assert!(r.contains("iifname \"berth0\" oifname \"berth0\" drop"));
        assert!(!r.contains("dnat ip to"));
        assert!(r.contains(
            "type filter hook input priority filter; policy accept;\n\t\tiifname \"berth0\" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop\n"
        ));
    }

    #[test]
    fn a_loopback_stub_resolver_is_reached_by_dnat_from_the_bridge_address() {
        let r = NatRules {
            table: "berth".into(),
            bridge: "berth0".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            dns_stub: Some("127.0.0.53".parse().unwrap()),
        }
        .ruleset();
        assert!(r.contains(
            "iifname \"berth0\" ip daddr 10.88.0.1 udp dport 53 dnat ip to 127.0.0.53:53"
        ));
        assert!(r.contains("tcp dport 53 dnat ip to 127.0.0.53:53"));
    }
}
