//! Isolated mode as root, with real traffic: two namespaces attached to a test bridge reach a
//! server on the host by name and address, cannot reach each other, and detaching the last
//! one removes the veths, the bridge and the nftables table.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use berth_runtime::net::bridge::{veth_name, BridgeConfig, ENV_LINK_MTU};
use berth_runtime::net::dns::ResolverSources;
use berth_runtime::net::nat::NatRules;
use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::{EnvNamespaces, NetAttachment, Network, NetworkOptions};
use berth_runtime::state::BerthHome;
use common::{dns_answer, dns_query, fake_dns_server, have_root, random_suffix, TestNetns};
use envfile_spec::plan::{NetworkMode, PortPlan, Protocol};

/// A hang detector, not a speed assertion.
const HANG: Duration = Duration::from_secs(20);

/// Removes whatever a bridge test may have left, whatever happened: detach of each
/// environment, then the bridge and table by name.
struct Cleanup {
    network: Network,
    envs: Vec<String>,
    bridge: String,
    table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for e in &self.envs {
            let _ = self.network.detach(e);
        }
        if let Ok(mut nl) = Netlink::open() {
            for e in &self.envs {
                let _ = nl.delete_link_named(&veth_name(e));
            }
            let _ = nl.delete_link_named(&self.bridge);
        }
        let _ = NatRules::remove(&self.table);
        let _ = std::fs::remove_dir_all(
            Path::new(berth_runtime::net::lease_store::MACHINE_NET_DIR).join(&self.bridge),
        );
    }
}

struct Setup {
    _home_dir: tempfile::TempDir,
    network: Network,
    bridge: String,
    table: String,
    subnet_prefix: String,
}

impl Setup {
    /// Removes what the test leaves of the environments `envs` and of this bridge.
    fn cleanup(&self, envs: &[&str]) -> Cleanup {
        Cleanup {
            network: self.network.clone(),
            envs: envs.iter().map(|e| e.to_string()).collect(),
            bridge: self.bridge.clone(),
            table: self.table.clone(),
        }
    }
}

fn setup(resolv_conf: &str) -> Setup {
    let home_dir = tempfile::tempdir().unwrap();
    let home = BerthHome::at(home_dir.path().join("home")).unwrap();
    let suffix = random_suffix();
    // A subnet of its own for each test of this binary (they run at once: one taken from
    // the random suffix's first byte collided once in CI, 1 in 256 for each pair).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let octet = (std::process::id().wrapping_mul(16).wrapping_add(n) % 256) as u8;
    let subnet_prefix = format!("10.231.{octet}");
    let resolv = home_dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        resolv_conf.replace("GATEWAY", &format!("{subnet_prefix}.1")),
    )
    .unwrap();
    let options = NetworkOptions {
        bridge: BridgeConfig {
            name: format!("bt{suffix}"),
            nft_table: format!("berth_test_{suffix}"),
            subnet: Some(format!("{subnet_prefix}.0/24")),
        },
        resolvers: ResolverSources {
            resolv_conf: resolv,
            upstream_resolv_conf: home_dir.path().join("no-such-file"),
        },
        user_mode: Some(false),
        ..Default::default()
    };
    Setup {
        network: Network::new(&home, options.clone()),
        bridge: options.bridge.name,
        table: options.bridge.nft_table,
        subnet_prefix,
        _home_dir: home_dir,
    }
}

fn attach(net: &Network, env: &str, ns: &TestNetns, ports: &[PortPlan]) -> NetAttachment {
    net.attach(
        env,
        EnvNamespaces {
            net: &ns.file,
            user: None,
        },
        NetworkMode::Isolated,
        ports,
    )
    .unwrap()
}

fn nameserver(resolv_conf: &str) -> Ipv4Addr {
    resolv_conf
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Inside `ns`: resolves `name` through `server` over UDP.
fn resolve_inside(ns: &TestNetns, server: Ipv4Addr, name: &str) -> Option<Ipv4Addr> {
    let name = name.to_string();
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(HANG)).unwrap();
        s.send_to(&dns_query(0x4242, &name), (server, 53)).unwrap();
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).ok()?;
        dns_answer(&buf[..n])
    })
}

/// Inside `ns`: connects to `addr` and reads what the server says.
fn fetch_inside(ns: &TestNetns, addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    ns.run(move || {
        let mut c = TcpStream::connect_timeout(&addr, timeout)?;
        c.set_read_timeout(Some(HANG))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
}

fn greeter(l: TcpListener, text: &'static str) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(text.as_bytes());
        }
    });
}

fn link_exists(name: &str) -> bool {
    Netlink::open().unwrap().link_index(name).unwrap().is_some()
}

#[test]
fn two_environments_reach_the_host_by_name_and_not_each_other() {
    if !have_root("two_environments_reach_the_host_by_name_and_not_each_other") {
        return;
    }
    // The host "uses a stub resolver on loopback": berth must forward DNS from the bridge.
    let s = setup("nameserver 127.0.0.77\nsearch example.test\n");
    let _cleanup = s.cleanup(&["env-a", "env-b"]);
    let gateway: Ipv4Addr = format!("{}.1", s.subnet_prefix).parse().unwrap();
    let stub = UdpSocket::bind("127.0.0.77:53").unwrap();
    fake_dns_server(stub, "host.berth.test", gateway);

    let (a, b) = (TestNetns::new(), TestNetns::new());
    // A server inside A, reached through a forwarded port in bridge mode too.
    let inside = a.run(|| TcpListener::bind("127.0.0.1:8000").unwrap());
    greeter(inside, "from env a");
    let port = PortPlan {
        host: 0,
        guest: 8000,
        protocol: Protocol::Tcp,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let att_a = attach(&s.network, "env-a", &a, &[port]);
    let att_b = attach(&s.network, "env-b", &b, &[]);
    assert!(link_exists(&s.bridge));
    assert!(NatRules::exists(&s.table));
    let (addr_a, addr_b) = (att_a.address.unwrap(), att_b.address.unwrap());
    assert_ne!(addr_a, addr_b);
    assert_eq!(att_a.gateway, Some(gateway));
    let rc = att_a.resolv_conf.clone().unwrap();
    assert_eq!(nameserver(&rc), gateway, "{rc}");
    assert!(rc.contains("search example.test"), "{rc}");

    let mut c = TcpStream::connect(att_a.ports[0].bound).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "from env a");

    // A server on the host side, on the bridge address.
    let host_server = TcpListener::bind((gateway, 0)).unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    greeter(host_server, "from the host");
    for (ns, att) in [(&a, &att_a), (&b, &att_b)] {
        let server = nameserver(att.resolv_conf.as_deref().unwrap());
        let ip = resolve_inside(ns, server, "host.berth.test").expect("name resolves inside");
        assert_eq!(ip, gateway);
        let by_name = fetch_inside(ns, SocketAddr::from((ip, host_port)), HANG).unwrap();
        assert_eq!(by_name, "from the host");
        let by_addr = fetch_inside(ns, SocketAddr::from((gateway, host_port)), HANG).unwrap();
        assert_eq!(by_addr, "from the host");
    }

    // B serves on its own address; the host reaches it, A must not.
    let in_b = b.run(|| TcpListener::bind("0.0.0.0:9000").unwrap());
    greeter(in_b, "from env b");
    let b_addr = SocketAddr::from((addr_b, 9000));
    let mut from_host = TcpStream::connect_timeout(&b_addr, HANG).unwrap();
    let mut got = String::new();
    from_host.read_to_string(&mut got).unwrap();
    assert_eq!(got, "from env b");
    let across = fetch_inside(&a, b_addr, Duration::from_secs(3));
    assert!(across.is_err(), "env a reached env b: {across:?}");

    // Detach: A leaves the bridge in place for B; B's detach removes everything.
    drop(att_a);
    s.network.detach("env-a").unwrap();
    assert!(!link_exists(&veth_name("env-a")));
    assert!(link_exists(&s.bridge));
    drop(att_b);
    s.network.detach("env-b").unwrap();
    s.network.detach("env-b").unwrap(); // idempotent
    assert!(!link_exists(&veth_name("env-b")));
    assert!(
        !link_exists(&s.bridge),
        "bridge removed with the last environment"
    );
    assert!(
        !NatRules::exists(&s.table),
        "nft table removed with the last environment"
    );
    assert!(
        !Path::new(berth_runtime::net::lease_store::MACHINE_NET_DIR)
            .join(&s.bridge)
            .exists(),
        "machine-wide lease record removed with the last environment"
    );
}

#[test]
fn ordinary_host_resolvers_are_used_directly() {
    if !have_root("ordinary_host_resolvers_are_used_directly") {
        return;
    }
    // The host's resolver is an ordinary address (here: a fake one on the bridge address,
    // which the test starts once the bridge exists).
    let s = setup("nameserver GATEWAY\n");
    let _cleanup = s.cleanup(&["env-c"]);
    let ns = TestNetns::new();
    let att = attach(&s.network, "env-c", &ns, &[]);
    let gateway = att.gateway.unwrap();
    let rc = att.resolv_conf.clone().unwrap();
    assert_eq!(nameserver(&rc), gateway, "copied from the host: {rc}");
    let upstream = UdpSocket::bind((gateway, 53)).unwrap();
    fake_dns_server(upstream, "direct.berth.test", Ipv4Addr::new(192, 0, 2, 99));
    assert_eq!(
        resolve_inside(&ns, gateway, "direct.berth.test"),
        Some(Ipv4Addr::new(192, 0, 2, 99))
    );
    drop(att);
    s.network.detach("env-c").unwrap();
    assert!(!link_exists(&s.bridge));
    assert!(!Path::new(&format!("/sys/class/net/{}", veth_name("env-c"))).exists());
}

#[test]
fn detach_from_the_record_cleans_up_after_a_dead_supervisor() {
    if !have_root("detach_from_the_record_cleans_up_after_a_dead_supervisor") {
        return;
    }
    let s = setup("nameserver 192.0.2.53\n");
    let _cleanup = s.cleanup(&["env-x", "env-y"]);
    let x = TestNetns::new();
    let att_x = attach(&s.network, "env-x", &x, &[]);
    // The supervisor of env-x dies (kill -9): its attachment is never dropped and its
    // namespace goes away, taking the veth pair with it.
    std::mem::forget(att_x);
    drop(x);
    let gone = (0..1000).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        !link_exists(&veth_name("env-x"))
    });
    assert!(gone, "the veth goes with its namespace");
    // Another environment comes up meanwhile: env-x's stale lease is dropped.
    let y = TestNetns::new();
    let att_y = attach(&s.network, "env-y", &y, &[]);
    drop(att_y);
    s.network.detach("env-y").unwrap();
    assert!(
        !link_exists(&s.bridge),
        "env-x's stale lease does not keep the bridge"
    );
    // `berth down` of env-x, from another process: only the record is left to clean.
    let later = Network::new(
        &BerthHome::at(s._home_dir.path().join("home")).unwrap(),
        NetworkOptions::default(),
    );
    assert!(later.record("env-x").unwrap().is_some());
    later.detach("env-x").unwrap();
    assert!(later.record("env-x").unwrap().is_none());
    assert!(!NatRules::exists(&s.table));
}

/// A leaving environment's veth (its namespace still alive, as when `berth run`'s removal
/// detaches right after the command) is deleted before the bridge's lock is taken: a start
/// waiting for that lock does not wait for the kernel to release the device as well (back to
/// back `berth run`s waited 11–27 ms for it).
#[test]
fn a_leaving_environments_veth_goes_before_the_bridge_lock_is_waited_for() {
    if !have_root("a_leaving_environments_veth_goes_before_the_bridge_lock_is_waited_for") {
        return;
    }
    let s = setup("nameserver 192.0.2.53\n");
    let _cleanup = s.cleanup(&["env-l", "env-k"]);
    let leaving = TestNetns::new();
    let keeper = TestNetns::new();
    drop(attach(&s.network, "env-l", &leaving, &[]));
    drop(attach(&s.network, "env-k", &keeper, &[]));
    let port = veth_name("env-l");
    assert!(link_exists(&port));
    // Another command holds the bridge's lock (a start leasing its address).
    let held = berth_runtime::net::lease_store::LeaseStore::for_bridge(&s.bridge)
        .lock()
        .unwrap();
    let network = s.network.clone();
    let detach = std::thread::spawn(move || network.detach("env-l"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while link_exists(&port) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let gone_while_locked = !link_exists(&port);
    assert!(
        !detach.is_finished(),
        "detach must wait for the lock to drop the lease"
    );
    drop(held);
    detach.join().unwrap().unwrap();
    assert!(
        gone_while_locked,
        "the veth of env-l was still there after 10 s of another command's holding the lock"
    );
    // The lease went with it; the keeper's stayed.
    let st = berth_runtime::net::lease_store::LeaseStore::for_bridge(&s.bridge)
        .peek()
        .unwrap()
        .unwrap();
    assert_eq!(st.leases.len(), 1);
    assert_eq!(st.leases[0].holder.env_id, "env-k");
    assert!(link_exists(&veth_name("env-k")));
    s.network.detach("env-k").unwrap();
    assert!(!link_exists(&s.bridge));
}

/// A veth from the host to a namespace standing for "the outside world", removed on drop.
struct Uplink {
    name: String,
}

impl Drop for Uplink {
    fn drop(&mut self) {
        if let Ok(mut nl) = Netlink::open() {
            let _ = nl.delete_link_named(&self.name);
        }
    }
}

/// "Outside": a namespace behind a veth of its own (MTU 1500, the kernel's 64 KiB packets, as
/// an uplink), 10.232.N.0/30, host end .1, far end .2. Returns the veth (removed on drop), the
/// namespace, and the host end's and far end's addresses.
fn outside_world(s: &Setup) -> (Uplink, TestNetns, Ipv4Addr, Ipv4Addr) {
    let outside = TestNetns::new();
    let octet = s.subnet_prefix.rsplit('.').next().unwrap().to_string();
    let host_ip: Ipv4Addr = format!("10.232.{octet}.1").parse().unwrap();
    let far_ip: Ipv4Addr = format!("10.232.{octet}.2").parse().unwrap();
    let uplink = Uplink {
        name: format!("bu{}", &s.bridge[2..]),
    };
    let mut nl = Netlink::open().unwrap();
    nl.create_veth(
        &uplink.name,
        0,
        "uplink0",
        std::os::fd::AsFd::as_fd(&outside.file),
        1500,
        None,
        None,
    )
    .unwrap();
    let idx = nl.link_index(&uplink.name).unwrap().unwrap();
    nl.add_address(idx, host_ip, 30).unwrap();
    nl.set_up(idx).unwrap();
    outside.run(|| {
        let mut nl = Netlink::open().unwrap();
        let i = nl.link_index("uplink0").unwrap().unwrap();
        nl.add_address(i, far_ip, 30).unwrap();
        nl.set_up(i).unwrap();
    });
    (uplink, outside, host_ip, far_ip)
}

#[test]
fn outbound_traffic_is_routed_and_masqueraded() {
    if !have_root("outbound_traffic_is_routed_and_masqueraded") {
        return;
    }
    let s = setup("nameserver 192.0.2.53\n");
    let _cleanup = s.cleanup(&["env-o"]);
    let (_uplink, outside, host_ip, far_ip) = outside_world(&s);
    // The outside server tells each client the address it sees.
    let server = outside.run(move || TcpListener::bind((far_ip, 8080)).unwrap());
    std::thread::spawn(move || {
        for mut c in server.incoming().flatten() {
            let peer = c.peer_addr().unwrap().ip().to_string();
            let _ = c.write_all(peer.as_bytes());
        }
    });
    let env = TestNetns::new();
    let att = attach(&s.network, "env-o", &env, &[]);
    let seen = fetch_inside(&env, SocketAddr::from((far_ip, 8080)), HANG).unwrap();
    assert_eq!(
        seen,
        host_ip.to_string(),
        "the outside sees the host's address, not the environment's {:?}",
        att.address
    );
    drop(att);
    s.network.detach("env-o").unwrap();
}

#[test]
fn ipv6_stub_resolver_is_relayed_from_the_bridge() {
    if !have_root("ipv6_stub_resolver_is_relayed_from_the_bridge") {
        return;
    }
    let s = setup("nameserver ::1\n");
    let _cleanup = s.cleanup(&["env-6"]);
    let stub = match UdpSocket::bind("[::1]:53") {
        Ok(stub) => stub,
        Err(e) => {
            eprintln!("skipping ipv6_stub_resolver_is_relayed_from_the_bridge: cannot bind [::1]:53 ({e})");
            return;
        }
    };
    fake_dns_server(stub, "six.berth.test", Ipv4Addr::new(192, 0, 2, 6));
    let ns = TestNetns::new();
    let att = attach(&s.network, "env-6", &ns, &[]);
    let gateway = att.gateway.unwrap();
    assert_eq!(nameserver(att.resolv_conf.as_deref().unwrap()), gateway);
    assert_eq!(
        resolve_inside(&ns, gateway, "six.berth.test"),
        Some(Ipv4Addr::new(192, 0, 2, 6))
    );
    drop(att);
    s.network.detach("env-6").unwrap();
}

/// Sends `len` bytes in one UDP datagram that must not be fragmented (`IP_PMTUDISC_DO`): the
/// kernel refuses one larger than the path's MTU with `EMSGSIZE`.
fn send_unfragmented(to: SocketAddr, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    let on: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: setsockopt with a valid int option value on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    s.send_to(&vec![7u8; len], to).map(drop)
}

/// The MTU `berth` gives an environment's outbound route: that of the host's uplink.
fn host_uplink_mtu() -> u32 {
    let out = std::process::Command::new("ip")
        .args(["-o", "route", "show", "default"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let dev = text
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_string);
    dev.and_then(|d| std::fs::read_to_string(format!("/sys/class/net/{d}/mtu")).ok())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}

/// The host ↔ environment path carries loopback-sized packets (veth pair and bridge at
/// [`ENV_LINK_MTU`]: a 30,000-byte datagram that must not be fragmented reaches the
/// environment in one piece), while the environment's default route keeps the uplink's MTU,
/// so outbound packets never need fragmenting on the way out. A VM's tap joins at the same
/// MTU, so it does not pull the bridge (and the host ↔ container path) down to 1500.
#[test]
fn the_host_path_has_loopback_mtu_and_the_default_route_the_uplinks() {
    if !have_root("the_host_path_has_loopback_mtu_and_the_default_route_the_uplinks") {
        return;
    }
    let s = setup("nameserver 192.0.2.53\n");
    let _cleanup = s.cleanup(&["env-m", "vm-m"]);
    let env = TestNetns::new();
    let att = attach(&s.network, "env-m", &env, &[]);
    let link_mtu = ENV_LINK_MTU.to_string();
    let mtu = |dev: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(mtu(&veth_name("env-m")), link_mtu);
    assert_eq!(mtu(&s.bridge), link_mtu, "the bridge follows its only port");
    let inside = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        env.run(move || {
            let o = std::process::Command::new("ip")
                .args(&args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).to_string()
        })
    };
    assert!(
        inside(&["-o", "link", "show", "eth0"]).contains(&format!("mtu {link_mtu}")),
        "{}",
        inside(&["-o", "link", "show", "eth0"])
    );
    let route = inside(&["-o", "route", "show", "default"]);
    let uplink = host_uplink_mtu();
    if uplink < ENV_LINK_MTU {
        assert!(route.contains(&format!(" mtu {uplink}")), "{route}");
    }

    let address = att.address.unwrap();
    let receiver = env.run(move || UdpSocket::bind((address, 0)).unwrap());
    receiver.set_read_timeout(Some(HANG)).unwrap();
    send_unfragmented(receiver.local_addr().unwrap(), 30_000).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = receiver.recv(&mut buf).unwrap();
    assert_eq!(n, 30_000, "one datagram, whole");

    // A VM's tap on the same bridge: at the same MTU, the bridge keeps it.
    let tap = s.network.plumb_tap("vm-m").unwrap();
    assert_eq!(mtu(&tap.tap), link_mtu, "the tap joins at the bridge's MTU");
    assert_eq!(
        mtu(&s.bridge),
        link_mtu,
        "the VM does not pull the bridge down"
    );
    send_unfragmented(receiver.local_addr().unwrap(), 30_000).unwrap();
    let n = receiver.recv(&mut buf).unwrap();
    assert_eq!(n, 30_000, "one datagram, whole, with the VM on the bridge");
    s.network.detach("vm-m").unwrap();

    // Outbound (any address off the subnet goes by the default route): the uplink's MTU.
    let far = SocketAddr::from(([192, 0, 2, 1], 9));
    let e = env.run(move || send_unfragmented(far, 30_000)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
    drop(att);
    s.network.detach("env-m").unwrap();
}

/// Whether the running kernel builds IPv4 packets above 64 KiB (BIG TCP for IPv4: Linux 6.3).
fn kernel_has_ipv4_big_tcp() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok())
        .collect::<Vec<_>>()
        .into_iter();
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 3)
}

/// A test bridge with its cleanup for environment `env`, when the test can run: as root, on a
/// kernel that builds IPv4 packets above 64 KiB (`test` names the test in the skip notice).
fn big_tcp_setup(test: &str, env: &str) -> Option<(Setup, Cleanup)> {
    if !have_root(test) {
        return None;
    }
    if !kernel_has_ipv4_big_tcp() {
        eprintln!("skipping {test}: IPv4 packets above 64 KiB need Linux 6.3");
        return None;
    }
    let s = setup("nameserver 192.0.2.53\n");
    let cleanup = s.cleanup(&[env]);
    Some((s, cleanup))
}

/// A packet socket on interface `index` of the calling thread's namespace, seeing every
/// packet (sent and received) as the stack hands it over, before any segmentation the
/// device does not need.
fn capture_on(index: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            all.into(),
        )
    };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `fd` is fresh and owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let big: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with an int value of the right size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    fd
}

/// The largest packet captured so far, (sent, received), draining the socket.
fn largest_captured(fd: &std::os::fd::OwnedFd) -> (usize, usize) {
    let (mut sent, mut received) = (0, 0);
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: sockaddr_ll is plain old data, filled in by recvfrom.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid for the sizes given; MSG_TRUNC returns the
        // packet's real length without copying more than `buf` holds.
        let n = unsafe {
            libc::recvfrom(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return (sent, received);
        }
        let n = n as usize;
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            sent = sent.max(n);
        } else {
            received = received.max(n);
        }
    }
}

/// Sends `bytes` from a fresh connection to `addr` and checks that the listener `l` got them
/// all.
fn bulk(connect: impl FnOnce() -> TcpStream, l: TcpListener, bytes: usize) {
    let reader = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(HANG)).unwrap();
        let mut sink = Vec::new();
        c.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    let mut c = connect();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..bytes / chunk.len() {
        c.write_all(&chunk).unwrap();
    }
    drop(c);
    assert_eq!(reader.join().unwrap(), bytes, "every byte arrived");
}

/// The host and an environment send each other packets larger than loopback's 64 KiB (BIG TCP
/// on the bridge and both ends of the veth pair, `ENV_LINK_PACKET`): each is bridged, looked
/// up by conntrack and handed over once per half MiB instead of per 64 KiB. Fails with the
/// kernel's default sizes (at most 65,536 bytes; before, the environment's `eth0` kept them).
/// The environment's packets out through the uplink stay within 64 KiB
/// (`bridge::outbound_segments`): larger ones would be cut up in software on the way out.
#[test]
fn the_host_path_moves_packets_larger_than_loopbacks() {
    let Some((s, _cleanup)) =
        big_tcp_setup("the_host_path_moves_packets_larger_than_loopbacks", "env-g")
    else {
        return;
    };
    let (_uplink, outside, _, far_ip) = outside_world(&s);
    let env = TestNetns::new();
    let att = attach(&s.network, "env-g", &env, &[]);
    let (address, gateway) = (att.address.unwrap(), att.gateway.unwrap());
    let capture = env.run(|| {
        let mut nl = Netlink::open().unwrap();
        capture_on(nl.link_index("eth0").unwrap().unwrap())
    });
    let bytes = 16 << 20;
    // The environment sends to the host (the gateway address).
    let host = TcpListener::bind((gateway, 0)).unwrap();
    let to_host = host.local_addr().unwrap();
    bulk(
        || env.run(move || TcpStream::connect_timeout(&to_host, HANG).unwrap()),
        host,
        bytes,
    );
    // Drained between each: a full capture buffer would drop the next one's packets.
    let (to_host_sent, _) = largest_captured(&capture);
    // The host sends to the environment's address.
    let inside = env.run(move || TcpListener::bind((address, 0)).unwrap());
    let to_env = inside.local_addr().unwrap();
    bulk(
        || TcpStream::connect_timeout(&to_env, HANG).unwrap(),
        inside,
        bytes,
    );
    let (_, received) = largest_captured(&capture);
    // The environment sends out through the uplink (its default route).
    let far = outside.run(move || TcpListener::bind((far_ip, 0)).unwrap());
    let to_far = far.local_addr().unwrap();
    bulk(
        || env.run(move || TcpStream::connect_timeout(&to_far, HANG).unwrap()),
        far,
        bytes,
    );
    let (outbound_sent, _) = largest_captured(&capture);
    assert!(
        to_host_sent > 65_536,
        "the environment's largest packet to the host was {to_host_sent} bytes"
    );
    assert!(
        received > 65_536,
        "the environment's largest packet in was {received} bytes"
    );
    assert!(
        (1..=65_536).contains(&outbound_sent),
        "the environment's largest packet out through the uplink was {outbound_sent} bytes"
    );
    drop(att);
    s.network.detach("env-g").unwrap();
}

/// A server inside answering through a port forwarded in the kernel (root's path: the host's
/// client is on loopback, the server on the environment's loopback, DNAT in between) sends in
/// packets larger than loopback's 64 KiB: the download of `bench/net.sh`, which with 64 KiB
/// packets took 1.2-1.4x direct loopback's CPU per GiB (conntrack, NAT and the bridge once
/// per packet). Fails on the old code (65,521 bytes at most: `eth0` kept 64 KiB).
#[test]
fn a_forwarded_port_answers_in_packets_larger_than_loopbacks() {
    let Some((s, _cleanup)) = big_tcp_setup(
        "a_forwarded_port_answers_in_packets_larger_than_loopbacks",
        "env-d",
    ) else {
        return;
    };
    let env = TestNetns::new();
    let bytes: usize = 16 << 20;
    let server = env.run(|| TcpListener::bind("127.0.0.1:8000").unwrap());
    let served = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..bytes / chunk.len() {
            c.write_all(&chunk).unwrap();
        }
    });
    let port = PortPlan {
        host: 0,
        guest: 8000,
        protocol: Protocol::Tcp,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let att = attach(&s.network, "env-d", &env, &[port]);
    assert!(
        s.network
            .forward_in_kernel("env-d", &env.file, &att.ports)
            .unwrap(),
        "the port is forwarded in the kernel"
    );
    let capture = env.run(|| {
        let mut nl = Netlink::open().unwrap();
        capture_on(nl.link_index("eth0").unwrap().unwrap())
    });
    let mut c = TcpStream::connect_timeout(&att.ports[0].bound, HANG).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    served.join().unwrap();
    assert_eq!(got.len(), bytes, "every byte arrived");
    let (sent, _) = largest_captured(&capture);
    assert!(
        sent > 65_536,
        "the server's largest packet through the forwarded port was {sent} bytes"
    );
    drop(att);
    s.network.detach("env-d").unwrap();
}
