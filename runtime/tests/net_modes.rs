//! The other attach paths: user-mode networking with pasta (what rootless environments get),
//! `none` mode, and a busy host port failing the whole attach with nothing left behind.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use berth_runtime::net::bridge::BridgeConfig;
use berth_runtime::net::dns::ResolverSources;
use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::{EnvNamespaces, NetError, Network, NetworkOptions};
use berth_runtime::state::BerthHome;
use common::{dns_answer, dns_query, fake_dns_server, have_root, random_suffix, TestNetns};
use envfile_spec::plan::{NetworkMode, PortPlan, Protocol};

const HANG: Duration = Duration::from_secs(20);

fn network(home: &std::path::Path, user_mode: bool) -> Network {
    let suffix = random_suffix();
    // The host "uses a loopback stub resolver" at 127.0.0.1 (a fake one the test runs).
    let resolv = home.join("host-resolv.conf");
    std::fs::create_dir_all(home).unwrap();
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    Network::new(
        &BerthHome::at(home).unwrap(),
        NetworkOptions {
            bridge: BridgeConfig {
                name: format!("bt{suffix}"),
                nft_table: format!("berth_test_{suffix}"),
                subnet: None,
            },
            resolvers: ResolverSources {
                resolv_conf: resolv,
                upstream_resolv_conf: home.join("no-such-file"),
            },
            user_mode: Some(user_mode),
            ..Default::default()
        },
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port(host: u16, guest: u16) -> PortPlan {
    PortPlan {
        host,
        guest,
        protocol: Protocol::Tcp,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

fn greet(l: TcpListener, text: &'static str) {
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(text.as_bytes());
        }
    });
}

fn fetch(port: u16) -> String {
    let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// Detaches on drop, so a failing assertion still stops pasta.
struct Detach<'a>(&'a Network, &'a str);
impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = self.0.detach(self.1);
    }
}

#[test]
fn pasta_configures_the_namespace_and_forwards_ports() {
    if !have_root("pasta_configures_the_namespace_and_forwards_ports") {
        return;
    }
    if let Err(why) = berth_runtime::net::rootless_network_available() {
        eprintln!("skipping pasta_configures_the_namespace_and_forwards_ports: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), true);
    let _detach = Detach(&net, "env-p");
    let ns = TestNetns::new();
    let inside = ns.run(|| TcpListener::bind("0.0.0.0:8000").unwrap());
    greet(inside, "through pasta");
    let host_port = free_port();
    let att = net
        .attach(
            "env-p",
            EnvNamespaces {
                net: &ns.file,
                user: None,
            },
            NetworkMode::Isolated,
            &[port(host_port, 8000)],
        )
        .unwrap();
    assert_eq!(att.ports[0].bound.port(), host_port);
    let record = net.record("env-p").unwrap().unwrap();
    let pid = match record.plumbing {
        berth_runtime::net::network::Plumbing::Pasta { pid: Some(pid) } => pid,
        other => panic!("{other:?}"),
    };
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // pasta gave the namespace an interface with an address and a default route.
    let links = ns.run(|| std::fs::read_to_string("/proc/net/route").unwrap());
    assert!(
        links
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "no default route inside: {links}"
    );
    assert_eq!(fetch(host_port), "through pasta");
    // DNS: the environment asks the gateway address, which pasta maps to the host's
    // loopback, where the stub answers.
    match UdpSocket::bind("127.0.0.1:53") {
        Err(e) => eprintln!("pasta DNS not checked: cannot bind 127.0.0.1:53 ({e})"),
        Ok(stub) => {
            fake_dns_server(stub, "pasta.berth.test", Ipv4Addr::new(192, 0, 2, 78));
            let rc = att.resolv_conf.clone().unwrap();
            let server: Ipv4Addr = rc
                .lines()
                .find_map(|l| l.strip_prefix("nameserver "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let answer = ns.run(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(HANG)).unwrap();
                s.send_to(&dns_query(7, "pasta.berth.test"), (server, 53))
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).unwrap();
                dns_answer(&buf[..n])
            });
            assert_eq!(answer, Some(Ipv4Addr::new(192, 0, 2, 78)), "{rc}");
        }
    }
    drop(att);
    net.detach("env-p").unwrap();
    // pasta is gone (or a zombie of nobody's) shortly after detach.
    let gone = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    assert!(gone, "pasta {pid} still runs after detach");
    assert!(net.record("env-p").unwrap().is_none());
}

#[test]
fn none_mode_has_loopback_and_forwarded_ports() {
    if !have_root("none_mode_has_loopback_and_forwarded_ports") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = network(dir.path(), false);
    let _detach = Detach(&net, "env-n");
    let ns = TestNetns::new();
    let inside = ns.run(|| TcpListener::bind("127.0.0.1:8000").unwrap());
    greet(inside, "loopback only");
    let att = net
        .attach(
            "env-n",
            EnvNamespaces {
                net: &ns.file,
                user: None,
            },
            NetworkMode::None,
            &[port(0, 8000)],
        )
        .unwrap();
    assert_eq!(att.address, None);
    assert_eq!(att.resolv_conf, None);
    assert_eq!(fetch(att.ports[0].bound.port()), "loopback only");
    // The record tells `berth status` what is forwarded.
    let record = net.record("env-n").unwrap().unwrap();
    assert_eq!(record.ports, att.ports);
    net.record_ports("env-n", &[]).unwrap();
    assert!(net.record("env-n").unwrap().unwrap().ports.is_empty());
    let links = ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        (nl.link_index("lo").unwrap(), nl.link_index("eth0").unwrap())
    });
    assert!(links.0.is_some() && links.1.is_none());
    drop(att);
    net.detach("env-n").unwrap();
}

#[test]
fn busy_host_port_fails_attach_and_leaves_nothing() {
    if !have_root("busy_host_port_fails_attach_and_leaves_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for user_mode in [false, true] {
        let net = network(dir.path(), user_mode);
        let bridge = net_bridge_name(&net);
        let _detach = Detach(&net, "env-busy");
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        let ns = TestNetns::new();
        let err = net
            .attach(
                "env-busy",
                EnvNamespaces {
                    net: &ns.file,
                    user: None,
                },
                NetworkMode::Isolated,
                &[port(0, 80), port(busy, 81)],
            )
            .unwrap_err();
        assert!(matches!(err, NetError::Forward(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(net.record("env-busy").unwrap().is_none(), "no record left");
        assert!(
            Netlink::open()
                .unwrap()
                .link_index(&bridge)
                .unwrap()
                .is_none(),
            "no bridge left"
        );
    }
}

fn net_bridge_name(net: &Network) -> String {
    net.options().bridge.name.clone()
}
