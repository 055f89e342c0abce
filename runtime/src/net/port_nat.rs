//! Port forwarding in the kernel, as root on berth's bridge: nftables DNAT from the host's
//! address and port to the environment's, in front of the userspace forwarder.
//!
//! TCP connections made on the host (a browser, `curl`, a test runner: what a developer does) to
//! a forwarded port are rewritten by conntrack to the environment's address and never touch
//! the forwarder; the bytes move between two sockets, not four (see `bench/net.sh`). Per
//! environment, two tables:
//!
//! - on the host, `ip berthp_<veth>` (named after the environment's host-side veth, which is
//!   unique machine-wide): `output` DNAT of locally generated packets to a forwarded address
//!   (`127.0.0.1:8080`, or any local address for a port forwarded on `0.0.0.0`) to the
//!   environment's address and guest port; `postrouting` masquerade of those connections onto
//!   the bridge (a packet from 127.0.0.1 cannot leave on the bridge otherwise; this needs
//!   `route_localnet` on the bridge, against whose misuse the bridge's own table drops
//!   packets from the bridge to 127.0.0.0/8, [`super::nat::no_loopback_from`]); and `forward`,
//!   which drops new connections routed from elsewhere to the redirected guest ports.
//! - inside the environment, `ip berth_fwd`: the guest port on its `eth0` address is sent to
//!   its own 127.0.0.1, exactly where the userspace forwarder dials
//!   ([`super::dialer::LoopbackDialer`]), so a server inside that listens on loopback only
//!   keeps working; `route_localnet` on `eth0` with the same drop rule as the host's.
//!
//! What stays as it was: the supervisor still binds every host port and serves it with the
//! userspace forwarder. The listening socket keeps the port reserved (a later binder gets
//! `EADDRINUSE`, `ss -ltnp` and berth's port-in-use error name the environment), and serves
//! what the rules leave to it: connections from other hosts and network namespaces (other
//! environments through the gateway address), IPv6, UDP, and everything when the rules could not
//! be installed. Which addresses reach a port is therefore unchanged: a port forwarded on
//! 127.0.0.1 is not reachable through the host's other addresses.
//!
//! Records: `/run/berth/port-nat/<veth>` exists while the host table may (written before it
//! is installed). [`remove`] (from `Network::detach`) deletes both; [`collect_stale`] (every
//! command's garbage collection, and every install) deletes those whose veth is gone: the
//! environment's namespace died with a killed supervisor.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use envfile_spec::plan::Protocol;

use super::bridge::GUEST_INTERFACE;
use super::forward::ForwardedPort;
use super::nat::{self, nft, NatError};
use super::netlink::Netlink;
use super::netns::run_in_netns;

/// Machine-wide records of the host tables (tmpfs: a reboot forgets them with the rules).
pub const RECORD_DIR: &str = "/run/berth/port-nat";

/// The table inside the environment's network namespace.
pub const ENV_TABLE: &str = "berth_fwd";

/// Name of the host table of the environment whose host-side veth is `port`.
pub fn table_name(port: &str) -> String {
    format!("berthp_{port}")
}

/// Whether `port` is an interface name berth makes (it names a table and a record file).
fn plain_name(port: &str) -> bool {
    !port.is_empty()
        && port.len() <= 15
        && port
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn record_path(port: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(port)
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The kernel forwarding of one environment's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelForward<'a> {
    /// berth's bridge the environment is on.
    pub bridge: &'a str,
    /// The environment's host-side veth on it.
    pub port: &'a str,
    /// The environment's address.
    pub address: Ipv4Addr,
    /// The forwarded ports, with the host addresses the forwarder bound. IPv6 and UDP ones
    /// are left to the forwarder (the bridge is IPv4 only; UDP see `redirected`).
    pub ports: &'a [ForwardedPort],
}

impl KernelForward<'_> {
    /// IPv4 host address (`None`: any local address) and port, protocol and guest port of
    /// every port the rules take: TCP only. A UDP server inside that listens on all
    /// addresses answers a datagram redirected to its 127.0.0.1 from the address its route
    /// picks (`eth0`'s), which matches no connection, so UDP stays with the forwarder's relay
    /// (it talks to the server from inside, over loopback).
    fn redirected(&self) -> Vec<(Option<Ipv4Addr>, u16, Protocol, u16)> {
        self.ports
            .iter()
            .filter(|p| p.spec.protocol == Protocol::Tcp)
            .filter_map(|p| match p.bound.ip() {
                IpAddr::V4(ip) => Some((
                    (!ip.is_unspecified()).then_some(ip),
                    p.bound.port(),
                    p.spec.protocol,
                    p.spec.guest_port,
                )),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Guest ports and protocols the rules send to the environment, without repeats.
    fn guest_ports(&self) -> Vec<(Protocol, u16)> {
        let mut v: Vec<(Protocol, u16)> = self
            .redirected()
            .into_iter()
            .map(|(_, _, p, g)| (p, g))
            .collect();
        v.sort_by_key(|(p, g)| (proto(*p), *g));
        v.dedup();
        v
    }

    /// The host table (created, flushed and filled in one transaction), or `None` when no
    /// port is IPv4.
    pub fn host_ruleset(&self) -> Option<String> {
        let redirected = self.redirected();
        if redirected.is_empty() {
            return None;
        }
        let (table, bridge, env) = (table_name(self.port), self.bridge, self.address);
        let (mut output, mut invalid) = (String::new(), String::new());
        for (host, port, protocol, guest) in &redirected {
            let to = match host {
                Some(ip) => format!("ip daddr {ip}"),
                None => "fib daddr type local".to_string(),
            };
            let p = proto(*protocol);
            output += &format!("\t\t{to} {p} dport {port} dnat to {env}:{guest}\n");
            invalid += &format!("\t\t{to} {p} dport {port} ct state invalid drop\n");
        }
        let (mut forward, mut invalid_back) = (String::new(), String::new());
        for (protocol, guest) in self.guest_ports() {
            let p = proto(protocol);
            forward += &format!("\t\tip daddr {env} {p} dport {guest} ct state new drop\n");
            invalid_back += &format!(
                "\t\tiifname \"{bridge}\" ip saddr {env} {p} sport {guest} ct state invalid drop\n"
            );
        }
        // A packet conntrack finds out of window (it happens with SYN cookies under a full
        // accept queue) is marked invalid and NAT skips it: it would reach the forwarder's
        // socket (or the host's address) and reset the connection, as kube-proxy found
        // (kubernetes#74839). Those are dropped; TCP retransmits them.
        // Named priorities are not accepted for the nat output hook by nft 1.0 (dstnat = -100).
        Some(format!(
            "table ip {table} {{}}\n\
             flush table ip {table}\n\
             table ip {table} {{\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             {output}\
             \t}}\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"{bridge}\" ip daddr {env} ct status dnat masquerade\n\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             {forward}\
             \t}}\n\
             \tchain output_invalid {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             {invalid}\
             \t}}\n\
             \tchain input_invalid {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             {invalid_back}\
             \t}}\n\
             }}\n"
        ))
    }

    /// The table inside the environment.
    pub fn env_ruleset(&self) -> String {
        let (table, eth, env) = (ENV_TABLE, GUEST_INTERFACE, self.address);
        let (mut prerouting, mut invalid) = (String::new(), String::new());
        for (protocol, guest) in self.guest_ports() {
            let p = proto(protocol);
            prerouting += &format!(
                "\t\tiifname \"{eth}\" ip daddr {env} {p} dport {guest} dnat to 127.0.0.1:{guest}\n"
            );
            invalid += &format!(
                "\t\tiifname \"{eth}\" ip daddr {env} {p} dport {guest} ct state invalid drop\n"
            );
        }
        format!(
            "table ip {table} {{}}\n\
             flush table ip {table}\n\
             table ip {table} {{\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             {prerouting}\
             \t}}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\t{}\n\
             {invalid}\
             \t}}\n\
             }}\n",
            nat::no_loopback_from(eth)
        )
    }

    /// Installs both tables (replacing earlier ones of this veth: a changed `[[ports]]`),
    /// first removing stale ones of environments that are gone. `netns`: the environment's
    /// network namespace, entered by a short-lived thread. Returns whether any port is
    /// forwarded in the kernel. On error the host is left as before (the forwarder serves).
    pub fn install(&self, netns: &File) -> Result<bool, NatError> {
        let Some(host) = self.host_ruleset() else {
            return Ok(false);
        };
        if !plain_name(self.port) || !plain_name(self.bridge) {
            return Err(NatError::Rejected {
                table: table_name(self.port),
                stderr: format!(
                    "{:?} or {:?} is not an interface name berth makes",
                    self.port, self.bridge
                ),
            });
        }
        collect_stale();
        let env = self.env_ruleset();
        run_in_netns(netns, || -> Result<(), NatError> {
            set_route_localnet(GUEST_INTERFACE)?;
            no_syncookies()?;
            nft(&env).map_err(|e| e.into_error(ENV_TABLE))
        })
        .map_err(NatError::Namespace)??;
        let record = record_path(self.port);
        let installed = (|| {
            fs::create_dir_all(RECORD_DIR).map_err(|source| NatError::Record {
                path: RECORD_DIR.into(),
                source,
            })?;
            fs::write(&record, self.bridge).map_err(|source| NatError::Record {
                path: record.display().to_string(),
                source,
            })?;
            set_route_localnet(self.bridge)?;
            nft(&host).map_err(|e| e.into_error(&table_name(self.port)))
        })();
        if installed.is_err() {
            let _ = remove(self.port);
        }
        installed.map(|()| true)
    }
}

/// Lets `interface` carry packets from and to 127.0.0.0/8 (`route_localnet`), in the calling
/// thread's network namespace. The setting goes with the interface.
fn set_route_localnet(interface: &str) -> Result<(), NatError> {
    let path = format!("/proc/sys/net/ipv4/conf/{interface}/route_localnet");
    fs::write(&path, "1").map_err(|source| NatError::PortSysctl { path, source })
}

/// Turns SYN cookies off in the calling thread's network namespace (the environment's).
///
/// Behind the userspace forwarder a server inside only ever saw the forwarder's connections,
/// each sending its request in one piece once connected. Through DNAT it sees the clients
/// themselves, as on plain loopback: when a burst overflows a small listen backlog (busybox
/// httpd's is 9), the kernel answers with SYN cookies, and a client that already sent its
/// request in several segments gets its second segment checked as a cookie, which fails, and
/// is reset (the same happens on the host's own loopback). Without cookies the overflowing
/// handshakes are retried by TCP instead (a delay, no error), as behind the forwarder. Only
/// host-local clients reach the environment's ports this way, so the SYN-flood defence
/// cookies give is not needed there.
fn no_syncookies() -> Result<(), NatError> {
    let path = "/proc/sys/net/ipv4/tcp_syncookies".to_string();
    fs::write(&path, "0").map_err(|source| NatError::PortSysctl { path, source })
}

/// Removes the host table of the environment whose veth is `port`, and its record.
/// Idempotent; nothing to do (and no `nft` run) when there is no record.
pub fn remove(port: &str) -> Result<(), NatError> {
    let record = record_path(port);
    if !plain_name(port) || !record.exists() {
        return Ok(());
    }
    let table = table_name(port);
    nft(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
        .map_err(|e| e.into_error(&table))?;
    match fs::remove_file(&record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NatError::Record {
            path: record.display().to_string(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Removes the host tables whose veth no longer exists (the environment's namespace is
/// gone: a killed supervisor), so that no rule sends a port to an address the next
/// environment may lease. Cheap when there is nothing recorded (one `readdir`). Returns how
/// many went.
pub fn collect_stale() -> usize {
    let Ok(rd) = fs::read_dir(RECORD_DIR) else {
        return 0;
    };
    let ports: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| plain_name(p))
        .collect();
    if ports.is_empty() {
        return 0;
    }
    let Ok(mut nl) = Netlink::open() else {
        return 0;
    };
    ports
        .iter()
        .filter(|p| matches!(nl.link_index(p), Ok(None)))
        .filter(|p| remove(p).is_ok())
        .count()
}

#[cfg(test)]
#[path = "port_nat_tests.rs"]
mod tests;
