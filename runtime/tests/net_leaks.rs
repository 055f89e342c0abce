//! The forwarder leaks nothing: after many connections (completed, refused, reset by the
//! client), the process has as many descriptors open as before. Alone in its own test binary
//! so no other test opens descriptors meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::net::dialer::NetnsDialer;
use berth_runtime::net::forward::{ForwardSpec, PortForwarder};
use common::{have_root, TestNetns};
use envfile_spec::plan::Protocol;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn spec(guest_port: u16) -> ForwardSpec {
    ForwardSpec {
        protocol: Protocol::Tcp,
        host: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        guest_port,
        shared: false,
    }
}

#[test]
fn connections_leave_no_descriptors_behind() {
    if !have_root("connections_leave_no_descriptors_behind") {
        return;
    }
    let ns = TestNetns::new();
    let l = ns.run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 7200)).unwrap());
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let _ = s.write_all(&buf);
        }
    });
    let dialer = Arc::new(NetnsDialer::new(&ns.file, "leak test").unwrap());
    let fwd = PortForwarder::start(&[spec(7200), spec(7201)], dialer).unwrap();
    let (ok, refused) = (fwd.ports()[0].bound, fwd.ports()[1].bound);
    let round = |n: usize| {
        for i in 0..n {
            // Completed exchange.
            let mut c = TcpStream::connect(ok).unwrap();
            c.write_all(b"x").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut b = Vec::new();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c.read_to_end(&mut b).unwrap();
            // Client that goes away mid-conversation.
            let c = TcpStream::connect(ok).unwrap();
            if i % 2 == 0 {
                let _ = (&c).write_all(b"half");
            }
            drop(c);
            // Nobody listens on the guest port.
            let mut r = TcpStream::connect(refused).unwrap();
            r.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let _ = r.read(&mut [0u8; 1]);
        }
    };
    // Warm up: spare sockets in the namespace helper, thread stacks, the server's threads.
    round(20);
    let settle = || {
        let mut last = open_fds();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(25));
            let now = open_fds();
            if now == last {
                return now;
            }
            last = now;
        }
        last
    };
    let before = settle();
    round(300);
    // The forwarder closes its side as soon as each conversation ends; wait for that. The
    // dialer's pool of ready sockets refills in the background, so it may hold up to
    // `SPARE` more (or fewer) than when `before` was counted; a leak of 900 connections'
    // sockets is far beyond that.
    let bound = before + berth_runtime::net::netns::SPARE;
    let after = (0..400)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(25));
            open_fds()
        })
        .find(|&n| n <= before)
        .unwrap_or_else(open_fds);
    assert!(
        after <= bound,
        "descriptors: {before} before, {after} after 900 connections (the dialer's spare pool accounts for at most {})",
        berth_runtime::net::netns::SPARE
    );
    drop(fwd);
}
