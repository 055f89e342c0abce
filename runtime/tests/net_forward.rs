//! Port forwarding into a network namespace, with real traffic: a server runs inside a
//! namespace the test creates, clients connect to the forwarded port on the host's loopback.

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::net::dialer::{Dialer, NetnsDialer};
use berth_runtime::net::forward::{ForwardSpec, PortForwarder};
use common::{have_root, TestNetns};
use envfile_spec::plan::Protocol;
use sha2::{Digest, Sha256};

/// A hang detector, not a speed assertion.
const HANG: Duration = Duration::from_secs(30);

fn spec(protocol: Protocol, guest_port: u16) -> ForwardSpec {
    ForwardSpec {
        protocol,
        host: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        guest_port,
        shared: false,
    }
}

fn dialer(ns: &TestNetns) -> Arc<dyn Dialer> {
    Arc::new(NetnsDialer::new(&ns.file, "test namespace").unwrap())
}

/// An echo server on 127.0.0.1:`port` inside `ns`; it runs until the listener is dropped
/// with the namespace (the accept thread is detached and ends with the test process).
fn echo_server(ns: &TestNetns, port: u16) {
    let l = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

fn round_trip(addr: SocketAddr, msg: &[u8]) -> io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(HANG))?;
    c.write_all(msg)?;
    c.shutdown(Shutdown::Write)?;
    let mut back = Vec::new();
    c.read_to_end(&mut back)?;
    Ok(back)
}

#[test]
fn tcp_sequential_and_concurrent_connections() {
    if !have_root("tcp_sequential_and_concurrent_connections") {
        return;
    }
    let ns = TestNetns::new();
    echo_server(&ns, 7000);
    let fwd = PortForwarder::start(&[spec(Protocol::Tcp, 7000)], dialer(&ns)).unwrap();
    let addr = fwd.ports()[0].bound;
    for i in 0..1000 {
        let msg = format!("hello {i}");
        assert_eq!(
            round_trip(addr, msg.as_bytes()).unwrap(),
            msg.as_bytes(),
            "connection {i}"
        );
    }
    let clients: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let msg = format!("concurrent {i}").repeat(100);
                round_trip(addr, msg.as_bytes()).map(|b| b == msg.as_bytes())
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert!(c.join().unwrap().unwrap(), "concurrent connection {i}");
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can compute the same stream.
fn pattern(len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(1 << 16);
        left -= n;
        let mut chunk = Vec::with_capacity(n);
        while chunk.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        chunk.truncate(n);
        Some(chunk)
    })
}

#[test]
fn hundred_megabytes_arrive_intact_both_ways() {
    if !have_root("hundred_megabytes_arrive_intact_both_ways") {
        return;
    }
    const SIZE: usize = 100 << 20;
    let ns = TestNetns::new();
    // The server hashes what it receives until end of stream, answers with the digest, then
    // sends the pattern back.
    let l = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 7001)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        s.write_all(&h.finalize()).unwrap();
        for chunk in pattern(SIZE) {
            s.write_all(&chunk).unwrap();
        }
    });
    let fwd = PortForwarder::start(&[spec(Protocol::Tcp, 7001)], dialer(&ns)).unwrap();
    let mut c = TcpStream::connect(fwd.ports()[0].bound).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut sent = Sha256::new();
    for chunk in pattern(SIZE) {
        sent.update(&chunk);
        c.write_all(&chunk).unwrap();
    }
    c.shutdown(Shutdown::Write).unwrap();
    let expected: [u8; 32] = sent.finalize().into();
    let mut digest = [0u8; 32];
    c.read_exact(&mut digest).unwrap();
    assert_eq!(digest, expected, "upload arrived changed");
    let mut got = Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = c.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        got.update(&buf[..n]);
    }
    assert_eq!(total, SIZE);
    let got: [u8; 32] = got.finalize().into();
    assert_eq!(got, expected, "download arrived changed");
    server.join().unwrap();
}

#[test]
fn guest_port_without_listener_is_refused_not_hung() {
    if !have_root("guest_port_without_listener_is_refused_not_hung") {
        return;
    }
    let ns = TestNetns::new();
    let fwd = PortForwarder::start(&[spec(Protocol::Tcp, 7002)], dialer(&ns)).unwrap();
    let mut c = TcpStream::connect(fwd.ports()[0].bound).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut buf = [0u8; 1];
    let r = c.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
}

#[test]
fn server_on_ipv6_loopback_only_is_reached() {
    if !have_root("server_on_ipv6_loopback_only_is_reached") {
        return;
    }
    let ns = TestNetns::new();
    let l = ns.run(|| TcpListener::bind("[::1]:7003").unwrap());
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"v6").unwrap();
    });
    let fwd = PortForwarder::start(&[spec(Protocol::Tcp, 7003)], dialer(&ns)).unwrap();
    let mut c = TcpStream::connect(fwd.ports()[0].bound).unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"v6");
}

#[test]
fn udp_datagrams_are_forwarded_per_client() {
    if !have_root("udp_datagrams_are_forwarded_per_client") {
        return;
    }
    let ns = TestNetns::new();
    let server = ns.run(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 7004)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // Echo with the sender's port prepended, so each client sees its own session.
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let mut reply = format!("{}:", from.port()).into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = server.send_to(&reply, from);
        }
    });
    let fwd = PortForwarder::start(&[spec(Protocol::Udp, 7004)], dialer(&ns)).unwrap();
    let addr = fwd.ports()[0].bound;
    let clients: Vec<UdpSocket> = (0..3)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(HANG)).unwrap();
            c.connect(addr).unwrap();
            c
        })
        .collect();
    let mut session_ports = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let mut first = None;
        for j in 0..100 {
            let msg = format!("c{i} m{j}");
            c.send(msg.as_bytes()).unwrap();
            let mut buf = [0u8; 2048];
            let n = c.recv(&mut buf).unwrap();
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            let (port, body) = reply.split_once(':').unwrap();
            assert_eq!(body, msg);
            // Every datagram of one client uses the same session socket inside.
            assert_eq!(*first.get_or_insert(port.to_string()), port);
        }
        session_ports.push(first.unwrap());
    }
    session_ports.dedup();
    assert_eq!(session_ports.len(), 3, "each client has its own session");
}

#[test]
fn supervisor_inside_the_namespace_serves_ports_bound_on_the_host() {
    if !have_root("supervisor_inside_the_namespace_serves_ports_bound_on_the_host") {
        return;
    }
    use berth_runtime::net::dialer::LoopbackDialer;
    use berth_runtime::net::forward::BoundPorts;
    let ns = TestNetns::new();
    echo_server(&ns, 7005);
    // Bound in the host's namespace (where a launcher runs before it unshares) ...
    let bound = BoundPorts::bind(&[spec(Protocol::Tcp, 7005), spec(Protocol::Udp, 7006)]).unwrap();
    let ports = bound.ports();
    let udp_server = ns.run(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 7006)).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_server.recv_from(&mut buf) {
            let _ = udp_server.send_to(&buf[..n], from);
        }
    });
    // ... served by threads that live inside the environment's namespace (the supervisor).
    let fwd = ns.run(move || bound.start(Arc::new(LoopbackDialer)).unwrap());
    assert_eq!(round_trip(ports[0].bound, b"inside").unwrap(), b"inside");
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(HANG)).unwrap();
    c.send_to(b"udp inside", ports[1].bound).unwrap();
    let mut buf = [0u8; 64];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"udp inside");
    drop(fwd);
}

/// Environment variable that turns `rootless_forwarding_helper` on: "FD,HOST_PORT,GUEST_PORT".
const ROOTLESS_HELPER: &str = "BERTH_TEST_ROOTLESS_FWD";

#[test]
fn rootless_supervisor_serves_ports_bound_on_the_host() {
    if !have_root("rootless_supervisor_serves_ports_bound_on_the_host") {
        return;
    }
    use berth_runtime::net::forward::BoundPorts;
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    // As a rootless container: the listening socket is made in the host's namespace, the
    // supervisor runs as an unprivileged user in its own user and network namespace.
    let bound = BoundPorts::bind(&[spec(Protocol::Tcp, 7100)]).unwrap();
    let (port, fd) = bound.into_parts().pop().unwrap();
    let raw = fd.as_raw_fd();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "--net"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "rootless_forwarding_helper",
            "--ignored",
            "--nocapture",
        ])
        .env(
            ROOTLESS_HELPER,
            format!("{raw},{},{}", port.bound.port(), 7100),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only fcntl (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(fd);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let ready =
        std::iter::from_fn(|| rx.recv_timeout(HANG).ok()).find(|l| l.contains("helper ready"));
    let result = ready.as_ref().map(|_| round_trip(port.bound, b"rootless"));
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let line = ready.expect("the unprivileged helper started");
    assert!(line.contains("uid 65534"), "{line}");
    assert_eq!(result.unwrap().unwrap(), b"rootless");
    assert!(status.success(), "helper failed: {status}");
}

#[test]
#[ignore = "helper of rootless_supervisor_serves_ports_bound_on_the_host (runs unprivileged)"]
fn rootless_forwarding_helper() {
    use berth_runtime::net::dialer::LoopbackDialer;
    use berth_runtime::net::forward::{BoundPorts, ForwardedPort};
    use berth_runtime::net::netlink::Netlink;
    use std::os::fd::{FromRawFd, OwnedFd};
    let Ok(arg) = std::env::var(ROOTLESS_HELPER) else {
        eprintln!("rootless_forwarding_helper only runs when started by its test");
        return;
    };
    let n: Vec<i32> = arg.split(',').map(|x| x.parse().unwrap()).collect();
    let (fd, host_port, guest) = (n[0], n[1] as u16, n[2] as u16);
    let mut nl = Netlink::open().unwrap();
    let lo = nl.link_index("lo").unwrap().unwrap();
    nl.set_up(lo).unwrap();
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, guest)).unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = s.write_all(&buf);
        }
    });
    // SAFETY: the test that started this process placed a listening socket at `fd` for it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let spec = ForwardSpec {
        host: SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
        ..spec(Protocol::Tcp, guest)
    };
    let part = ForwardedPort {
        spec,
        bound: spec.host,
    };
    let fwd = BoundPorts::from_parts(vec![(part, sock)])
        .unwrap()
        .start(Arc::new(LoopbackDialer))
        .unwrap();
    // The uid as the host sees it: this user namespace maps root to 65534.
    let host_uid = std::fs::read_to_string("/proc/self/uid_map")
        .ok()
        .and_then(|m| m.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    println!("helper ready, uid {host_uid}");
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    drop(fwd);
}
