//! Networking of container environments through the real binary, as root: `[[ports]]`
//! forwarded from the host (TCP and UDP, many connections, a 100 MB transfer), outbound
//! access from inside, a busy port, environments kept apart, `down` removing veths, bridge
//! and nftables table, `run --publish-auto`, and a rootless user's forwarded port.
//!
//! Every test has its own berth home and with it its own bridge and subnet
//! ([`Berth::new`]), and checks afterwards that nothing it made is left on the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::host::{copy_program_with_libs, root_skip_reason, veth_name, HostSnapshot};
use berth_e2e::ports::{free_port, host_ipv4};
use berth_e2e::project::Project;
use berth_e2e::user::TestUser;
use berth_e2e::{require_root, text, Berth};
use sha2::{Digest, Sha256};

/// Only detects a hang; never a speed assertion.
const HANG: Duration = Duration::from_secs(30);

/// A project folder with a busybox rootfs (plus socat as a UDP echo server) and `toml`, in
/// which `{name}` becomes a name unique to this test.
fn project(toml: &str) -> Project {
    let p = Project::new("berth-net-", "n", toml);
    copy_program_with_libs(Path::new("/usr/bin/socat"), &p.path().join("rootfs"));
    std::fs::create_dir_all(p.path().join("www")).unwrap();
    std::fs::write(p.path().join("www/index.html"), "hello from inside\n").unwrap();
    p
}

/// Host resources of this test: its home, project, bridge (and table), and the veths of
/// the given environments.
fn snapshot(b: &Berth, projects: &[&Project], env_ids: &[String]) -> HostSnapshot {
    b.wait_for_background_teardowns();
    let home = b.home.path().to_string_lossy().into_owned();
    let mut tags: Vec<String> = vec![home, b.bridge.clone()];
    tags.extend(projects.iter().map(|p| p.name.clone()));
    tags.extend(env_ids.iter().map(|e| veth_name(e)));
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    HostSnapshot::take(&tags)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn nft_table_exists(name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `GET path` over HTTP/1.0 to `addr`; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, HANG)?;
    s.set_read_timeout(Some(HANG))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {all:?}")))?;
    let head = String::from_utf8_lossy(&all[..at]).into_owned();
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(head));
    }
    Ok(all[at + 4..].to_vec())
}

/// Retries until the service inside answers (it starts right after `up` returns).
fn wait_http(addr: SocketAddr) {
    let t0 = Instant::now();
    loop {
        match http_get(addr, "/index.html") {
            Ok(_) => return,
            Err(e) if t0.elapsed() > HANG => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

const SERVICES: &str = r#"
[services]
web = { command = ["httpd", "-f", "-p", "80", "-h", "/www"] }
echo = { command = ["socat", "UDP-RECVFROM:53,fork", "PIPE"] }
[[mounts]]
source = "./www"
target = "/www"
"#;

fn web_project(tcp: u16, udp: u16, address: &str) -> Project {
    project(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n\
         [[ports]]\nhost = {tcp}\nguest = 80\naddress = \"{address}\"\n\
         [[ports]]\nhost = {udp}\nguest = 53\nprotocol = \"udp\"\n{SERVICES}"
    ))
}

#[test]
fn forwarded_ports_carry_tcp_and_udp_traffic_and_down_removes_the_network() {
    require_root!();
    let (tcp, udp) = (free_port(), free_port());
    let p = web_project(tcp, udp, "127.0.0.1");
    // 100 MB of incompressible-ish data served by httpd from the live mount.
    let mut data = Vec::with_capacity(100 << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < 100 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(p.path().join("www/big.bin"), &data).unwrap();
    let want = Sha256::digest(&data);
    drop(data);
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);

    let out = b.ok(p.path(), &["up"]);
    assert!(
        out.contains(&format!("127.0.0.1:{tcp} → 80/tcp")),
        "up prints the forwarded ports: {out}"
    );
    assert!(out.contains(&format!("127.0.0.1:{udp} → 53/udp")), "{out}");
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let net = &st["network"];
    let address: Ipv4Addr = net["address"].as_str().unwrap().parse().unwrap();
    let gateway: Ipv4Addr = net["gateway"].as_str().unwrap().parse().unwrap();
    assert!(
        b.subnet.starts_with(&format!(
            "{}.",
            gateway.octets()[..3]
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(".")
        )),
        "gateway {gateway} outside {}",
        b.subnet
    );
    assert_eq!(net["ports"].as_array().unwrap().len(), 2, "{net}");
    let human = b.ok(p.path(), &["status"]);
    assert!(
        human.contains(&format!("address {address}, gateway {gateway}")),
        "{human}"
    );
    assert!(
        human.contains(&format!("127.0.0.1:{tcp} → 80/tcp")),
        "{human}"
    );
    // The environment is on this test's bridge through the veth berth names for it.
    let veth = veth_name(&env_id);
    assert!(link_exists(&veth), "veth {veth} missing");
    assert!(link_exists(&b.bridge) && nft_table_exists(&b.bridge));
    let inside = b.ok(p.path(), &["exec", "--", "ip", "-o", "-4", "addr"]);
    assert!(inside.contains(&format!("{address}/")), "{inside}");

    let web: SocketAddr = (Ipv4Addr::LOCALHOST, tcp).into();
    wait_http(web);
    for i in 0..1000 {
        let body = http_get(web, "/index.html")
            .unwrap_or_else(|e| panic!("sequential connection {i} failed: {e}"));
        assert_eq!(body, b"hello from inside\n");
    }
    let clients: Vec<_> = (0..100)
        .map(|_| std::thread::spawn(move || http_get(web, "/index.html")))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let body = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("concurrent connection {i} failed: {e}"));
        assert_eq!(body, b"hello from inside\n");
    }
    let big = http_get(web, "/big.bin").unwrap();
    assert_eq!(big.len(), 100 << 20);
    assert_eq!(
        Sha256::digest(&big),
        want,
        "the 100 MB transfer was corrupted"
    );
    drop(big);

    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut echoed = 0;
    for i in 0..100 {
        let msg = format!("datagram {i}\n");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", udp)).unwrap();
        let mut buf = [0u8; 64];
        // The echo server may not be up yet for the first datagrams: UDP gives no error.
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from.port(), udp);
            assert_eq!(&buf[..n], msg.as_bytes());
            echoed += 1;
        }
    }
    assert!(echoed >= 90, "only {echoed} of 100 datagrams came back");

    b.ok(p.path(), &["down"]);
    assert!(
        TcpStream::connect_timeout(&web, Duration::from_secs(2)).is_err(),
        "the forwarded port outlived the environment"
    );
    // The interfaces and the table go in `down`'s background child.
    b.wait_for_background_teardowns();
    assert!(!link_exists(&veth), "down left veth {veth}");
    assert!(!link_exists(&b.bridge), "down left the bridge");
    assert!(!nft_table_exists(&b.bridge), "down left the nftables table");
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&p], &[env_id]));
}

/// A one-shot HTTP server on `addr` answering `body` to every request, until dropped.
struct HostServer {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostServer {
    fn start(ip: Ipv4Addr, body: &'static str) -> HostServer {
        let l = TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 1024];
                        let _ = c.read(&mut buf);
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HostServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn outbound_reaches_a_host_server_by_address_and_names_resolve() {
    require_root!();
    let p = project("name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n");
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let gateway: Ipv4Addr = st["network"]["gateway"].as_str().unwrap().parse().unwrap();

    // By address: a server of this test on the bridge address.
    let server = HostServer::start(gateway, "hello from the host\n");
    let url = format!("http://{}/", server.addr);
    let got = b.ok(
        p.path(),
        &["exec", "--", "timeout", "10", "wget", "-q", "-O", "-", &url],
    );
    assert_eq!(got, "hello from the host\n");
    drop(server);

    // By name: the environment uses the host's resolvers (its resolv.conf is written by berth
    // from the host's). No name of our own can be put into the host's resolver, so a public
    // name the host itself resolves is used; without one (offline CI) this part is skipped.
    let resolv = b.ok(p.path(), &["exec", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver "), "{resolv}");
    let name = "deb.debian.org";
    match (name, 80).to_socket_addrs() {
        Ok(addrs) => {
            let host_view: Vec<String> = addrs
                .filter(|a| a.is_ipv4())
                .map(|a| a.ip().to_string())
                .collect();
            let o = b.ok(p.path(), &["exec", "--", "nslookup", name]);
            assert!(
                host_view.iter().any(|a| o.contains(a.as_str())),
                "inside, {name} resolved to something else than on the host ({host_view:?}):\n{o}"
            );
            if TcpStream::connect_timeout(&(name, 80).to_socket_addrs().unwrap().next().unwrap(), Duration::from_secs(5)).is_ok() {
                let o = b.run_in(
                    p.path(),
                    &["exec", "--", "timeout", "20", "wget", "-q", "-O", "/dev/null", &format!("http://{name}/debian/dists/stable/Release")],
                );
                assert!(o.status.success(), "outbound HTTP to {name} by name failed inside: {:?}", text(&o));
            } else {
                eprintln!("part skipped: the host cannot reach {name}:80, so neither can the environment");
            }
        }
        Err(e) => eprintln!("part skipped: the host's resolver cannot resolve {name} ({e}); resolution by name was not checked"),
    }
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&p], &[env_id]));
}

#[test]
fn a_busy_port_fails_up_naming_the_holder_and_nothing_is_left() {
    require_root!();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let p = web_project(port, free_port(), "127.0.0.1");
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);
    let o = b.run_in(p.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "up succeeded with a busy port: {out}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}"))
            && err.contains("already in use")
            && err.contains(&format!("pid {}", std::process::id())),
        "the error names neither the port nor its holder: {err}"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&b.run_in(p.path(), &["status", "--json"]).stdout).unwrap();
    assert_ne!(st["status"], "running", "{st}");
    assert!(!link_exists(&b.bridge), "a failed start made the bridge");
    assert!(!nft_table_exists(&b.bridge));
    let env_id = st["env_id"].as_str().unwrap_or_default().to_string();
    before.assert_nothing_leaked(&snapshot(&b, &[&p], &[env_id]));
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn environments_cannot_reach_each_other_but_can_use_forwarded_host_ports() {
    require_root!();
    // Exposed on all host addresses, so the other environment reaches it via the gateway.
    let (port_a, port_b) = (free_port(), free_port());
    let a = web_project(port_a, free_port(), "0.0.0.0");
    let c = web_project(port_b, free_port(), "0.0.0.0");
    let b = Berth::new();
    let before = snapshot(&b, &[&a, &c], &[]);
    b.ok(a.path(), &["up"]);
    b.ok(c.path(), &["up"]);
    let sa = b.status_json(a.path());
    let sc = b.status_json(c.path());
    let ids = vec![
        sa["env_id"].as_str().unwrap().to_string(),
        sc["env_id"].as_str().unwrap().to_string(),
    ];
    let addr_a = sa["network"]["address"].as_str().unwrap().to_string();
    let addr_c = sc["network"]["address"].as_str().unwrap().to_string();
    let gateway = sa["network"]["gateway"].as_str().unwrap().to_string();
    assert_ne!(addr_a, addr_c);
    assert_eq!(gateway, sc["network"]["gateway"].as_str().unwrap());
    wait_http((Ipv4Addr::LOCALHOST, port_a).into());
    wait_http((Ipv4Addr::LOCALHOST, port_b).into());
    // Directly: refused by bridge-port isolation and the forward rule (wget gives up).
    for (from, to) in [(&c, &addr_a), (&a, &addr_c)] {
        let o = b.run_in(
            from.path(),
            &[
                "exec",
                "--",
                "timeout",
                "3",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{to}/index.html"),
            ],
        );
        assert!(!o.status.success(), "reached {to} directly: {:?}", text(&o));
    }
    // Through the other's forwarded host port on the host's bridge address: allowed.
    for (from, port) in [(&c, port_a), (&a, port_b)] {
        let got = b.ok(
            from.path(),
            &[
                "exec",
                "--",
                "timeout",
                "10",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{gateway}:{port}/index.html"),
            ],
        );
        assert_eq!(got, "hello from inside\n");
    }
    // The bridge stays while one environment is on it, and goes with the last.
    b.ok(a.path(), &["down"]);
    b.wait_for_background_teardowns();
    assert!(!link_exists(&veth_name(&ids[0])));
    assert!(link_exists(&b.bridge) && nft_table_exists(&b.bridge));
    b.ok(c.path(), &["down"]);
    b.wait_for_background_teardowns();
    assert!(!link_exists(&b.bridge) && !nft_table_exists(&b.bridge));
    b.ok(a.path(), &["destroy"]);
    b.ok(c.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&a, &c], &ids));
}

/// The lines of a child's stderr, read on a thread, until `pattern` shows up.
fn read_until(child: &mut std::process::Child, pattern: &str) -> String {
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + HANG;
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(pattern) {
                return seen;
            }
        }
    }
    panic!("never saw {pattern:?}; stderr so far:\n{seen}");
}

#[test]
fn parallel_runs_get_their_own_network_and_publish_auto_picks_free_ports() {
    require_root!();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let p = project(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[ports]]\nhost = {port}\nguest = 80\n"
    ));
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);

    // Even without --publish-auto a run publishes elsewhere, naming the holder.
    let o = b.run_in(p.path(), &["run", "--", "true"]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "port {port} is in use (by pid {} (",
            std::process::id()
        )) && err.contains("; published on 127.0.0.1:"),
        "{err}"
    );

    // Two runs at once: each its own address and a free host port, printed.
    let script = "ip -o -4 addr show eth0; hostname > /tmp/i; httpd -p 80 -h /tmp; sleep 5";
    let mut runs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            b.cmd()
                .current_dir(p.path())
                .args(["run", "--publish-auto", "--", "sh", "-c", script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    let mut ports = Vec::new();
    for r in &mut runs {
        let seen = read_until(r, "→ 80/tcp");
        let line = seen.lines().find(|l| l.contains("→ 80/tcp")).unwrap();
        assert!(
            line.contains(&format!("(127.0.0.1:{port} was taken)")),
            "{line}"
        );
        let bound: SocketAddr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(bound.port(), port);
        let body = {
            let t0 = Instant::now();
            loop {
                match http_get(bound, "/i") {
                    Ok(b) => break b,
                    Err(e) if t0.elapsed() > HANG => panic!("{bound}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        };
        // Each run answers with its own name: the port leads into that run.
        let run_name = line.split(':').next().unwrap();
        assert_eq!(String::from_utf8_lossy(&body), format!("{run_name}\n"));
        ports.push(bound.port());
    }
    let ls: serde_json::Value = serde_json::from_str(&b.ok(p.path(), &["ls", "--json"])).unwrap();
    for e in ls.as_array().unwrap() {
        ids.push(e["env_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 2, "{ls}");
    for id in &ids {
        assert!(
            link_exists(&veth_name(id)),
            "run {id} has no veth of its own"
        );
    }
    assert_ne!(ports[0], ports[1]);
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|r| r.wait_with_output().unwrap())
        .collect();
    let addrs: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{:?}", text(o));
            let out = text(o).0;
            out.split_whitespace()
                .find(|w| w.contains('/') && w.starts_with("10."))
                .unwrap_or_else(|| panic!("no address in {out}"))
                .to_string()
        })
        .collect();
    assert_ne!(addrs[0], addrs[1], "parallel runs share an address");
    // The last run's child removes the bridge after `berth run` returned.
    b.wait_for_background_teardowns();
    assert!(!link_exists(&b.bridge), "the runs left the bridge");
    before.assert_nothing_leaked(&snapshot(&b, &[&p], &ids));
}

#[test]
fn rootless_environment_forwards_its_ports() {
    if let Some(why) = root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let user = TestUser::create("berthnet");
    let tcp = free_port();
    let p = web_project(tcp, free_port(), "127.0.0.1");
    user.own(p.path());
    let ok = |args: &[&str]| {
        let o = user.berth(p.path(), args);
        assert!(
            o.status.success(),
            "berth {args:?} as {}: {:?}",
            user.name,
            text(&o)
        );
        text(&o)
    };
    // pasta needs /dev/net/tun; where this user cannot open it (mode 0600 here), berth says
    // so and the environment keeps loopback only, its ports still forwarded.
    let doctor: serde_json::Value =
        serde_json::from_slice(&user.berth(p.path(), &["doctor", "--json"]).stdout).unwrap();
    let pasta_ok = doctor["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "rootless networking" && c["status"] == "ok");
    let (out, err) = ok(&["up"]);
    if pasta_ok {
        assert!(out.contains("user-mode networking"), "{out}");
    } else {
        assert!(
            err.contains("no outbound network") && err.contains("/dev/net/tun"),
            "no notice about the missing rootless networking: {err}"
        );
        assert!(out.contains("loopback only"), "{out}");
    }
    assert!(out.contains(&format!("127.0.0.1:{tcp} → 80/tcp")), "{out}");
    let web: SocketAddr = (Ipv4Addr::LOCALHOST, tcp).into();
    wait_http(web);
    for _ in 0..50 {
        assert_eq!(
            http_get(web, "/index.html").unwrap(),
            b"hello from inside\n"
        );
    }
    ok(&["destroy"]);
    assert!(
        TcpStream::connect_timeout(&web, Duration::from_secs(2)).is_err(),
        "the forwarded port outlived the environment"
    );
}

#[test]
fn down_after_a_killed_supervisor_removes_veth_bridge_and_rules() {
    require_root!();
    let tcp = free_port();
    let p = web_project(tcp, free_port(), "127.0.0.1");
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);
    b.ok(p.path(), &["up"]);
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    let pid = st["pid"].as_i64().unwrap() as i32;
    wait_http((Ipv4Addr::LOCALHOST, tcp).into());
    // SAFETY: kill(2) on the supervisor this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < HANG {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The forwarder died with its supervisor; the host side waits for `down`.
    assert!(TcpStream::connect(("127.0.0.1", tcp)).is_err());
    assert!(link_exists(&b.bridge) && nft_table_exists(&b.bridge));
    b.ok(p.path(), &["down"]);
    assert!(!link_exists(&veth_name(&env_id)));
    assert!(
        !link_exists(&b.bridge),
        "down after kill -9 left the bridge"
    );
    assert!(
        !nft_table_exists(&b.bridge),
        "down after kill -9 left the table"
    );
    // And the port is free for the next start.
    b.ok(p.path(), &["up"]);
    wait_http((Ipv4Addr::LOCALHOST, tcp).into());
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&p], &[env_id]));
}

#[test]
fn none_mode_has_loopback_only_with_ports_forwarded_and_host_mode_shares_the_host() {
    require_root!();
    let tcp = free_port();
    let p = project(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n\
         [[ports]]\nhost = {tcp}\nguest = 80\n{SERVICES}"
    ));
    let b = Berth::new();
    let before = snapshot(&b, &[&p], &[]);
    let out = b.ok(p.path(), &["up"]);
    assert!(out.contains("loopback only, no outbound network"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{tcp} → 80/tcp")), "{out}");
    let links = b.ok(p.path(), &["exec", "--", "ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "more than loopback: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let web: SocketAddr = (Ipv4Addr::LOCALHOST, tcp).into();
    wait_http(web);
    assert_eq!(
        http_get(web, "/index.html").unwrap(),
        b"hello from inside\n"
    );
    assert!(!link_exists(&b.bridge), "none mode made a bridge");
    let st = b.status_json(p.path());
    let env_id = st["env_id"].as_str().unwrap().to_string();
    assert_eq!(st["network"]["mode"], "none", "{st}");
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&p], std::slice::from_ref(&env_id)));

    // host mode: the host's interfaces, nothing set up, ports not forwarded (and said so).
    let h = project(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"host\"\n\
         [[ports]]\nhost = {tcp}\nguest = 80\n"
    ));
    let o = b.run_in(h.path(), &["up"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let (out, err) = text(&o);
    assert!(err.contains("not forwarded"), "{err}");
    assert!(!out.contains("→"), "{out}");
    let inside = b.ok(h.path(), &["exec", "--", "ip", "-o", "link"]);
    let host_links = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert_eq!(inside.lines().count(), host_links, "{inside}");
    assert!(!link_exists(&b.bridge));
    b.ok(h.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&p, &h], &[env_id]));
}

/// The host-side interface berth recorded for an environment of `b`.
fn recorded_port(b: &Berth, env_id: &str) -> String {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(b.home.path().join("envs").join(env_id).join("network.json")).unwrap(),
    )
    .unwrap();
    rec["plumbing"]["port"].as_str().unwrap().to_string()
}

/// Two berth homes (two CI jobs, two users) on one bridge: the leases and the bridge's users
/// are counted machine-wide, so each environment gets its own address, and destroying the
/// last environment of one home leaves the bridge and NAT to the other home's environment.
/// Both homes run the same project, so even their environment ids are equal.
#[test]
fn two_homes_share_one_bridge_without_sharing_addresses_or_tearing_it_down() {
    require_root!();
    let p = project("name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n");
    let one = Berth::new();
    let mut two = Berth::new();
    two.bridge = one.bridge.clone();
    two.subnet = one.subnet.clone();
    let record_dir = Path::new(berth_e2e::host::BRIDGE_RECORDS).join(&one.bridge);
    let tags = |ids: &[&str]| {
        let mut t = vec![
            one.home.path().to_string_lossy().into_owned(),
            two.home.path().to_string_lossy().into_owned(),
            one.bridge.clone(),
            p.name.clone(),
        ];
        t.extend(ids.iter().map(|s| s.to_string()));
        t
    };
    let take = |t: &[String]| HostSnapshot::take(&t.iter().map(String::as_str).collect::<Vec<_>>());
    let before = take(&tags(&[]));
    let server = HostServer::start(Ipv4Addr::UNSPECIFIED, "hello from the host\n");
    let host_addr = host_ipv4();
    let reaches = |b: &Berth, gateway: Ipv4Addr, when: &str| {
        let mut targets = vec![gateway];
        targets.extend(host_addr);
        for ip in targets {
            let url = format!("http://{ip}:{}/", server.addr.port());
            let o = b.run_in(
                p.path(),
                &["exec", "--", "timeout", "10", "wget", "-q", "-O", "-", &url],
            );
            assert_eq!(
                text(&o).0,
                "hello from the host\n",
                "{url} not reached from inside ({when}, home {}): {:?}",
                b.home.path().display(),
                text(&o)
            );
        }
    };

    one.ok(p.path(), &["up"]);
    two.ok(p.path(), &["up"]);
    let (st1, st2) = (one.status_json(p.path()), two.status_json(p.path()));
    let id = st1["env_id"].as_str().unwrap().to_string();
    assert_eq!(
        st2["env_id"].as_str(),
        Some(id.as_str()),
        "one project, one id"
    );
    let addr = |st: &serde_json::Value| st["network"]["address"].as_str().unwrap().to_string();
    assert_ne!(addr(&st1), addr(&st2), "two homes leased the same address");
    let gateway: Ipv4Addr = st2["network"]["gateway"].as_str().unwrap().parse().unwrap();
    let (port1, port2) = (recorded_port(&one, &id), recorded_port(&two, &id));
    assert_ne!(port1, port2, "one veth name for two environments");
    assert!(link_exists(&port1) && link_exists(&port2));
    reaches(&one, gateway, "both up");
    reaches(&two, gateway, "both up");

    // The last environment of home one goes: home two's keeps bridge, NAT and its traffic.
    one.ok(p.path(), &["destroy"]);
    assert!(!link_exists(&port1), "destroy left its veth {port1}");
    assert!(
        link_exists(&one.bridge),
        "destroy in one home removed the bridge"
    );
    assert!(
        nft_table_exists(&one.bridge),
        "destroy in one home removed the NAT table"
    );
    assert!(record_dir.exists(), "the lease record went with users left");
    let inside = two.ok(p.path(), &["exec", "--", "ip", "-o", "-4", "addr"]);
    assert!(inside.contains(&format!("{}/", addr(&st2))), "{inside}");
    reaches(&two, gateway, "after the other home's destroy");

    // The last user of any home: everything goes.
    two.ok(p.path(), &["destroy"]);
    assert!(!link_exists(&port2));
    assert!(
        !link_exists(&one.bridge),
        "the bridge outlived its last environment"
    );
    assert!(
        !nft_table_exists(&one.bridge),
        "the NAT table outlived its last environment"
    );
    assert!(
        !record_dir.exists(),
        "the lease record outlived its last environment"
    );
    drop(server);
    before.assert_nothing_leaked(&take(&tags(&[&port1, &port2])));
}

/// `up` beside another project's running environment that holds the declared host port:
/// the error names that environment and suggests `--publish-auto`, with which `up` publishes
/// on a free port and says so.
#[test]
fn a_port_held_by_another_environment_names_it_and_publish_auto_moves_aside() {
    require_root!();
    let port = free_port();
    let toml = format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[ports]]\nhost = {port}\nguest = 80\n"
    );
    let (holder, second) = (project(&toml), project(&toml));
    let b = Berth::new();
    let before = snapshot(&b, &[&holder, &second], &[]);
    b.ok(holder.path(), &["up"]);
    let o = b.run_in(second.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "up succeeded on a taken port: {out}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}"))
            && err.contains(&format!("already in use by environment {}", holder.name))
            && err.contains("--publish-auto"),
        "the error names neither the environment nor the way out: {err}"
    );
    let o = b.run_in(second.path(), &["up", "--publish-auto"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "port {port} is in use (by environment {}); published on 127.0.0.1:",
            holder.name
        )),
        "{err}"
    );
    let st = b.status_json(second.path());
    let bound: SocketAddr = st["network"]["ports"][0]["bound"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(bound.port(), port);
    let ids: Vec<String> = [&holder, &second]
        .iter()
        .map(|p| {
            b.status_json(p.path())["env_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    b.ok(holder.path(), &["destroy"]);
    b.ok(second.path(), &["destroy"]);
    before.assert_nothing_leaked(&snapshot(&b, &[&holder, &second], &ids));
}
