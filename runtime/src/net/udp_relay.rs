//! UDP forwarding: one host socket, one session per client address.
//!
//! Each client address that sends to the host port gets its own socket into the environment
//! (from the [`Dialer`]), so replies find their way back to the right client. A session
//! whose client and server have both been silent for the idle timeout is closed.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dialer::Dialer;
use super::sys::{self, Interest, StopSignal};

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;
/// Sessions beyond this are not opened (their datagrams are dropped) until others expire.
const MAX_SESSIONS: usize = 4096;

struct Session {
    guest: UdpSocket,
    last_active: Mutex<Instant>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

/// Serves one forwarded UDP port until `stop` is raised. `host` must be non-blocking.
pub fn serve_udp(
    host: UdpSocket,
    guest_port: u16,
    dialer: Arc<dyn Dialer>,
    stop: Arc<StopSignal>,
    idle: Duration,
) {
    let host = Arc::new(host);
    let sessions: Sessions = Arc::new(Mutex::new(HashMap::new()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let interests = [
            Interest {
                fd: host.as_raw_fd(),
                read: true,
                write: false,
            },
            stop.interest(),
        ];
        match sys::poll(&interests, -1) {
            Ok(r) if r[1].readable => return,
            Ok(_) => {}
            Err(_) => return,
        }
        loop {
            let (n, client) = match host.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier reply to a client that went away.
                Err(_) => continue,
            };
            let Some(session) =
                session_for(&sessions, client, &host, guest_port, &dialer, &stop, idle)
            else {
                continue;
            };
            if let Ok(mut t) = session.last_active.lock() {
                *t = Instant::now();
            }
            // A datagram the environment cannot take is dropped, as the network would.
            let _ = session.guest.send(&buf[..n]);
        }
    }
}

fn session_for(
    sessions: &Sessions,
    client: SocketAddr,
    host: &Arc<UdpSocket>,
    guest_port: u16,
    dialer: &Arc<dyn Dialer>,
    stop: &Arc<StopSignal>,
    idle: Duration,
) -> Option<Arc<Session>> {
    let mut map = sessions.lock().ok()?;
    if let Some(s) = map.get(&client) {
        return Some(s.clone());
    }
    if map.len() >= MAX_SESSIONS {
        return None;
    }
    let guest = dialer.dial_udp(guest_port).ok()?;
    guest.set_nonblocking(true).ok()?;
    let session = Arc::new(Session {
        guest,
        last_active: Mutex::new(Instant::now()),
    });
    let (s, h, st, all) = (
        session.clone(),
        host.clone(),
        stop.clone(),
        sessions.clone(),
    );
    std::thread::Builder::new()
        .name("berth-udp".into())
        .stack_size(256 * 1024)
        .spawn(move || replies(s, client, h, st, all, idle))
        .ok()?;
    map.insert(client, session.clone());
    Some(session)
}

/// Sends what the environment answers back to `client`, until the session idles out.
fn replies(
    session: Arc<Session>,
    client: SocketAddr,
    host: Arc<UdpSocket>,
    stop: Arc<StopSignal>,
    sessions: Sessions,
    idle: Duration,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let timeout_ms = idle.as_millis().clamp(1, i32::MAX as u128) as i32;
    loop {
        let interests = [
            Interest {
                fd: session.guest.as_raw_fd(),
                read: true,
                write: false,
            },
            stop.interest(),
        ];
        match sys::poll(&interests, timeout_ms) {
            Ok(r) if r[1].readable => break,
            Ok(r) if r[0].readable || r[0].closed => loop {
                match session.guest.recv(&mut buf) {
                    Ok(n) => {
                        let _ = host.send_to(&buf[..n], client);
                        if let Ok(mut t) = session.last_active.lock() {
                            *t = Instant::now();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ECONNREFUSED: nothing listens on the guest port (ICMP unreachable).
                    Err(_) => break,
                }
            },
            Ok(_) => {
                // Timed out: close the session when it has really been idle for `idle`.
                let Ok(mut map) = sessions.lock() else {
                    break;
                };
                let quiet = session
                    .last_active
                    .lock()
                    .map(|t| t.elapsed() >= idle)
                    .unwrap_or(true);
                if quiet {
                    map.remove(&client);
                    return;
                }
            }
            Err(_) => break,
        }
    }
    if let Ok(mut map) = sessions.lock() {
        map.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dialer::AddressDialer;
    use std::net::{IpAddr, Ipv4Addr};

    /// Echoes each datagram prefixed with the sender's port.
    fn port_echo() -> u16 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut r = from.port().to_string().into_bytes();
                r.push(b':');
                r.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&r, from);
            }
        });
        port
    }

    fn session_port(c: &UdpSocket) -> String {
        c.send(b"x").unwrap();
        let mut buf = [0u8; 64];
        let n = c.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split(':')
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn idle_sessions_are_closed_and_reopened_on_demand() {
        let guest = port_echo();
        let host = UdpSocket::bind("127.0.0.1:0").unwrap();
        host.set_nonblocking(true).unwrap();
        let addr = host.local_addr().unwrap();
        let stop = Arc::new(StopSignal::new().unwrap());
        let dialer: Arc<dyn Dialer> = Arc::new(AddressDialer {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        });
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            serve_udp(host, guest, dialer, s2, Duration::from_millis(100))
        });
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.connect(addr).unwrap();
        let first = session_port(&c);
        assert_eq!(session_port(&c), first, "one session while traffic flows");
        // Well past the idle timeout the session is gone; the next datagram opens a new one.
        std::thread::sleep(Duration::from_millis(1000));
        assert_ne!(session_port(&c), first);
        stop.raise();
        t.join().unwrap();
    }
}
