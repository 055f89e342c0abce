//! Forwarded ports in the kernel (nftables DNAT, as root on berth's bridge) through the real
//! binary: connections made on the host reach a server inside that listens on its loopback
//! only, without the userspace forwarder; the host address a port was forwarded on keeps its
//! meaning; the port stays reserved; the rules follow `[[ports]]` and go with `down`, `run`
//! and a killed supervisor; and `route_localnet`, which the rules need on the bridge, does not
//! open the host's 127.0.0.1 to an environment (kube-proxy's CVE-2020-8558).

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::host::{copy_program_with_libs, veth_name, HostSnapshot};
use berth_e2e::ports::{free_port, host_ipv4};
use berth_e2e::project::Project;
use berth_e2e::user::TestUser;
use berth_e2e::{require_root, text, Berth};

/// Only detects a hang; never a speed assertion.
const HANG: Duration = Duration::from_secs(30);

/// Where berth records the host table of an environment's veth.
const RECORDS: &str = "/run/berth/port-nat";

/// Inside: on guest port 80 (loopback only) and 81 (all addresses), a server that answers
/// each connection with the peer address it sees and closes. Through the kernel's DNAT the
/// peer is the bridge's gateway (masqueraded); through the userspace forwarder, which dials
/// the environment's loopback, it is 127.0.0.1.
const PEER_SERVICES: &str = r#"
[services]
lo = { command = ["socat", "TCP-LISTEN:80,bind=127.0.0.1,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"] }
any = { command = ["socat", "TCP-LISTEN:81,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"] }
"#;

fn ports_toml(ports: &[(u16, &str, u16)]) -> String {
    let mut t = String::from("name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n");
    for (host, address, guest) in ports {
        t += &format!("[[ports]]\nhost = {host}\nguest = {guest}\naddress = \"{address}\"\n");
    }
    t + PEER_SERVICES
}

/// A busybox project with socat in its rootfs.
fn project(toml: &str) -> Project {
    let p = Project::new("berth-pnat-", "pn", toml);
    copy_program_with_libs(Path::new("/usr/bin/socat"), &p.path().join("rootfs"));
    p
}

fn snapshot(b: &Berth, p: &Project, env_ids: &[&str]) -> HostSnapshot {
    b.wait_for_background_teardowns();
    let home = b.home.path().to_string_lossy().into_owned();
    let mut tags = vec![home, b.bridge.clone(), p.name.clone()];
    tags.extend(env_ids.iter().map(|e| veth_name(e)));
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    HostSnapshot::take(&tags)
}

/// The host table berth made for the environment's veth, as `nft list` prints it.
fn host_table(env_id: &str) -> Option<String> {
    let o = Command::new("nft")
        .args([
            "list",
            "table",
            "ip",
            &format!("berthp_{}", veth_name(env_id)),
        ])
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn record_exists(env_id: &str) -> bool {
    Path::new(RECORDS).join(veth_name(env_id)).exists()
}

/// What the server behind `addr` answers (the peer it saw).
fn peer_seen(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, HANG)?;
    s.set_read_timeout(Some(HANG))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// Retries until the service inside answers (it starts right after `up` returns).
fn wait_peer(addr: SocketAddr) -> String {
    let t0 = Instant::now();
    loop {
        match peer_seen(addr) {
            Ok(s) if !s.is_empty() => return s,
            Ok(_) | Err(_) if t0.elapsed() > HANG => panic!("{addr} never answered"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Err(_) => true,
        // Accepted by something: refused only if it closes without serving.
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut b = [0u8; 1];
            matches!(s.read(&mut b), Ok(0) | Err(_))
        }
    }
}

#[test]
fn host_connections_reach_a_loopback_server_inside_through_the_kernel_and_follow_ports() {
    require_root!();
    let (lo_port, any_port, moved) = (free_port(), free_port(), free_port());
    let p = project(&ports_toml(&[
        (lo_port, "127.0.0.1", 80),
        (any_port, "0.0.0.0", 81),
    ]));
    let b = Berth::new();
    let before = snapshot(&b, &p, &[]);
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let gateway = st["network"]["gateway"].as_str().unwrap().to_string();
    let gw: Ipv4Addr = gateway.parse().unwrap();

    // The kernel's path: the server inside sees the gateway, not the forwarder's 127.0.0.1.
    let lo: SocketAddr = (Ipv4Addr::LOCALHOST, lo_port).into();
    assert_eq!(
        wait_peer(lo),
        gateway,
        "127.0.0.1:{lo_port} went through user space"
    );
    let any: SocketAddr = (Ipv4Addr::LOCALHOST, any_port).into();
    assert_eq!(wait_peer(any), gateway);
    // Another local user reaches it the same way.
    let user = TestUser::create("berthpnat");
    let o = user.run("socat", &["-T5", "-", &format!("TCP:127.0.0.1:{lo_port}")]);
    assert_eq!(
        text(&o).0.trim(),
        gateway,
        "as {}: {:?}",
        user.name,
        text(&o)
    );
    // A port on all addresses answers on the host's other addresses too.
    assert_eq!(peer_seen((gw, any_port).into()).unwrap(), gateway);
    if let Some(ip) = host_ipv4() {
        assert_eq!(peer_seen((ip, any_port).into()).unwrap(), gateway);
        // One forwarded on 127.0.0.1 does not.
        assert!(
            refused((ip, lo_port).into()),
            "{ip}:{lo_port} reached 127.0.0.1's port"
        );
    }
    assert!(
        refused((gw, lo_port).into()),
        "{gw}:{lo_port} reached 127.0.0.1's port"
    );
    let table = host_table(&env_id).expect("no host table for the environment's ports");
    assert!(
        table.contains(&format!("ip daddr 127.0.0.1 tcp dport {lo_port} dnat to")),
        "{table}"
    );
    assert!(record_exists(&env_id));

    // Inside, the environment reaches its own port on all addresses through the gateway
    // (served by the forwarder, which dials its loopback), but not the loopback-only one.
    let wget = |port: u16| {
        b.run_in(
            p.path(),
            &[
                "exec",
                "--",
                "timeout",
                "5",
                "socat",
                "-T3",
                "-",
                &format!("TCP:{gateway}:{port}"),
            ],
        )
    };
    let o = wget(any_port);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0.trim(), "127.0.0.1");
    let o = wget(lo_port);
    assert!(
        !o.status.success() || text(&o).0.trim().is_empty(),
        "the environment reached the port forwarded on the host's 127.0.0.1: {:?}",
        text(&o)
    );

    // Still reserved: nobody else can take the host port while the environment runs.
    let e = TcpListener::bind(lo).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");

    // A changed [[ports]] changes the rules with `up`.
    p.write(&ports_toml(&[(moved, "127.0.0.1", 80)]));
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id2 = st["env_id"].as_str().unwrap().to_string();
    let moved_addr: SocketAddr = (Ipv4Addr::LOCALHOST, moved).into();
    assert_eq!(wait_peer(moved_addr), gateway);
    let table = host_table(&env_id2).expect("no host table after the change");
    assert!(!table.contains(&format!("dport {lo_port} ")), "{table}");
    assert!(!table.contains(&format!("dport {any_port} ")), "{table}");
    assert!(refused(lo), "the old port still leads somewhere");
    TcpListener::bind(lo).expect("the old host port was not released");
    if env_id2 != env_id {
        assert!(host_table(&env_id).is_none() && !record_exists(&env_id));
    }

    b.ok(p.path(), &["down"]);
    assert!(host_table(&env_id2).is_none(), "down left the port rules");
    assert!(!record_exists(&env_id2), "down left the record");
    assert!(refused(moved_addr));
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &p, &[&env_id, &env_id2]));
}

#[test]
fn port_rules_go_with_a_killed_supervisor_at_the_next_command_and_with_run() {
    require_root!();
    let port = free_port();
    let p = project(&ports_toml(&[(port, "127.0.0.1", 80)]));
    let b = Berth::new();
    let before = snapshot(&b, &p, &[]);
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let pid = st["pid"].as_i64().unwrap() as i32;
    let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    wait_peer(addr);
    assert!(host_table(&env_id).is_some());
    // SAFETY: kill(2) on the supervisor this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < HANG {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Any command collects the rules of an environment whose namespace is gone.
    b.ok(p.path(), &["ls"]);
    assert!(
        host_table(&env_id).is_none(),
        "the rules outlived the killed supervisor"
    );
    assert!(!record_exists(&env_id));
    // The host port is free again and leads nowhere.
    let l = TcpListener::bind(addr).expect("the port stayed taken");
    drop(l);
    b.ok(p.path(), &["down"]);

    // A throw-away run: the rules live as long as it does.
    let o = b.run_in(
        p.path(),
        &[
            "run",
            "--",
            "sh",
            "-c",
            "nft list tables 2>/dev/null; echo ran",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let ls: serde_json::Value = serde_json::from_str(&b.ok(p.path(), &["ls", "--json"])).unwrap();
    assert!(
        !ls.as_array()
            .unwrap()
            .iter()
            .any(|e| e["ephemeral"] == true),
        "the run is still listed: {ls}"
    );
    // The run was the bridge's last user: its child removes bridge and table.
    b.wait_for_background_teardowns();
    let leftover = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let leftover = String::from_utf8_lossy(&leftover.stdout).into_owned();
    assert!(
        !leftover.contains(&b.bridge),
        "run left the bridge's table: {leftover}"
    );
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &p, &[&env_id]));
}

/// An Ethernet frame carrying one UDP datagram (IPv4, no UDP checksum).
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn mac(text: &str) -> [u8; 6] {
    let v: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// kube-proxy's CVE-2020-8558: with `route_localnet` on the bridge (which the port rules
/// need) the host would deliver packets for 127.0.0.1 that an environment sends to its
/// gateway's hardware address. The environment's root has CAP_NET_RAW (the OCI default), so
/// it writes such a frame (UDP to a server bound to the host's 127.0.0.1, with a marker)
/// straight onto its `eth0`: the server must not see it.
#[test]
fn an_environment_cannot_reach_the_hosts_loopback_through_its_gateway() {
    require_root!();
    let port = free_port();
    let p = project(&format!(
        "{}[[mounts]]\nsource = \"./x\"\ntarget = \"/x\"\n",
        ports_toml(&[(port, "127.0.0.1", 80)])
    ));
    std::fs::create_dir_all(p.path().join("x")).unwrap();
    let b = Berth::new();
    let before = snapshot(&b, &p, &[]);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let u = udp.local_addr().unwrap().port();
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let address: Ipv4Addr = st["network"]["address"].as_str().unwrap().parse().unwrap();
    wait_peer((Ipv4Addr::LOCALHOST, port).into());
    let localnet = format!("/proc/sys/net/ipv4/conf/{}/route_localnet", b.bridge);
    assert_eq!(
        std::fs::read_to_string(localnet).unwrap().trim(),
        "1",
        "the premise: route_localnet on the bridge"
    );
    let gw_mac =
        mac(&std::fs::read_to_string(format!("/sys/class/net/{}/address", b.bridge)).unwrap());
    let env_mac = mac(&b.ok(
        p.path(),
        &["exec", "--", "cat", "/sys/class/net/eth0/address"],
    ));
    let marker = b"berth-cve-2020-8558-marker";
    let frame = udp_frame(gw_mac, env_mac, address, Ipv4Addr::LOCALHOST, u, marker);
    std::fs::write(p.path().join("x/frame"), &frame).unwrap();
    for _ in 0..3 {
        let o = b.run_in(
            p.path(),
            &[
                "exec",
                "--",
                "socat",
                "-u",
                "OPEN:/x/frame",
                "INTERFACE:eth0",
            ],
        );
        assert!(
            o.status.success(),
            "the frame was not sent, nothing was tried: {:?}",
            text(&o)
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut buf = [0u8; 64];
    match udp.recv_from(&mut buf) {
        Ok((n, from)) => panic!(
            "the host's 127.0.0.1:{u} got {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
    }
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &p, &[&env_id]));
}
