//! Helpers shared by the networking tests: root detection and throw-away network namespaces.
#![allow(dead_code)]

use std::fs::File;

use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::netns::run_in_netns;

/// Whether the test can run; prints why it skips otherwise.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping {test}: needs root (network namespaces, veth, nftables)");
        false
    }
}

/// A network namespace that exists only as long as this value: it is held by an open file
/// descriptor, never mounted or named, so the kernel removes it (and every interface inside)
/// when the test drops it, whatever the outcome.
pub struct TestNetns {
    pub file: File,
}

impl TestNetns {
    /// A fresh namespace with its loopback up.
    pub fn new() -> TestNetns {
        let file = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            File::open("/proc/thread-self/ns/net").expect("open own netns")
        })
        .join()
        .unwrap();
        run_in_netns(&file, || {
            let mut nl = Netlink::open().unwrap();
            let lo = nl.link_index("lo").unwrap().unwrap();
            nl.set_up(lo).unwrap();
        })
        .unwrap();
        TestNetns { file }
    }

    /// Runs `f` inside the namespace (sockets it creates stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.file, f).unwrap()
    }
}

/// A short random suffix for names of host-visible objects (interfaces, tables).
pub fn random_suffix() -> String {
    let mut b = [0u8; 3];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A DNS query for the A record of `name`, with id `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The first A record of a DNS response, if any.
pub fn dns_answer(resp: &[u8]) -> Option<std::net::Ipv4Addr> {
    if resp.len() < 12 || u16::from_be_bytes([resp[6], resp[7]]) == 0 {
        return None;
    }
    // Skip the question (name + type + class), then read the first answer.
    let mut i = 12;
    while *resp.get(i)? != 0 {
        i += 1 + resp[i] as usize;
    }
    i += 5;
    // Answer: name (pointer, 2 bytes), type, class, ttl, rdlength, rdata.
    let rdata = i + 2 + 2 + 2 + 4 + 2;
    let b = resp.get(rdata..rdata + 4)?;
    Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// A toy authoritative DNS server over UDP: answers `name` with `ip`, NXDOMAIN otherwise.
/// Runs on a detached thread until the process ends or the socket errors.
pub fn fake_dns_server(sock: std::net::UdpSocket, name: &'static str, ip: std::net::Ipv4Addr) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            let mut i = 12;
            let mut labels = Vec::new();
            while i < n && q[i] != 0 {
                let l = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + l).min(n)]).to_string());
                i += 1 + l;
            }
            let qend = (i + 5).min(n);
            let known = labels.join(".") == name;
            let mut r = Vec::new();
            r.extend_from_slice(&q[0..2]);
            r.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
            r.extend_from_slice(&[0, 1, 0, if known { 1 } else { 0 }, 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..qend]);
            if known {
                r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&ip.octets());
            }
            let _ = sock.send_to(&r, from);
        }
    });
}
