//! Host ports and addresses for the network tests.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

/// A host port nobody uses right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The host's own IPv4 address on an interface that is neither loopback nor a bridge of
/// berth's (the one carrying its default route, or any other), for "outbound to the host".
pub fn host_ipv4() -> Option<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (iface, addr) = (f.get(1)?, f.get(3)?);
        if *iface == "lo" || iface.starts_with("berth") || iface.starts_with("bv") {
            return None;
        }
        addr.split('/').next()?.parse().ok()
    })
}
