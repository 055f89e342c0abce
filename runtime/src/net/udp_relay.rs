//! UDP forwarding: one host socket, one session per client address, all on one thread.
//!
//! Each client address that sends to the host port gets its own socket into the environment
//! (from the [`Dialer`]), so replies find their way back to the right client. A session
//! whose client and server have both been silent for the idle timeout is closed.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dialer::Dialer;
use super::sys::{Epoll, StopSignal};

/// Largest datagram relayed (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;
/// Sessions beyond this are not opened (their datagrams are dropped) until others expire.
const MAX_SESSIONS: usize = 4096;

const HOST: u64 = 0;
const STOP: u64 = 1;
const FIRST_SESSION: u64 = 2;

struct Session {
    guest: UdpSocket,
    client: SocketAddr,
    last_active: Instant,
}

/// The sessions of one forwarded port.
struct Sessions {
    by_client: HashMap<SocketAddr, u64>,
    by_token: HashMap<u64, Session>,
    next: u64,
}

impl Sessions {
    /// The session of `client`, opened (and watched) when new.
    fn get_or_open(
        &mut self,
        client: SocketAddr,
        guest_port: u16,
        dialer: &dyn Dialer,
        epoll: &Epoll,
    ) -> Option<&mut Session> {
        let token = match self.by_client.get(&client) {
            Some(t) => *t,
            None => {
                if self.by_token.len() >= MAX_SESSIONS {
                    return None;
                }
                let guest = dialer.dial_udp(guest_port).ok()?;
                guest.set_nonblocking(true).ok()?;
                let token = self.next;
                epoll.add(guest.as_raw_fd(), token, true, false).ok()?;
                self.next += 1;
                self.by_client.insert(client, token);
                self.by_token.insert(
                    token,
                    Session {
                        guest,
                        client,
                        last_active: Instant::now(),
                    },
                );
                token
            }
        };
        self.by_token.get_mut(&token)
    }

    /// Closes the sessions idle for `idle` or longer.
    fn expire(&mut self, idle: Duration, epoll: &Epoll) {
        let stale: Vec<u64> = self
            .by_token
            .iter()
            .filter(|(_, s)| s.last_active.elapsed() >= idle)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some(s) = self.by_token.remove(&t) {
                epoll.delete(s.guest.as_raw_fd());
                self.by_client.remove(&s.client);
            }
        }
    }
}

/// Serves one forwarded UDP port until `stop` is raised. `host` must be non-blocking.
pub fn serve_udp(
    host: UdpSocket,
    guest_port: u16,
    dialer: Arc<dyn Dialer>,
    stop: Arc<StopSignal>,
    idle: Duration,
) {
    let Ok(epoll) = Epoll::new() else { return };
    if epoll.add(host.as_raw_fd(), HOST, true, false).is_err()
        || epoll
            .add(stop.as_fd().as_raw_fd(), STOP, true, false)
            .is_err()
    {
        return;
    }
    let mut sessions = Sessions {
        by_client: HashMap::new(),
        by_token: HashMap::new(),
        next: FIRST_SESSION,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut events = Vec::with_capacity(64);
    // Idle sessions are swept a few times per idle period.
    let sweep_ms = (idle.as_millis() / 4).clamp(1, 1000) as i32;
    let mut last_sweep = Instant::now();
    loop {
        events.clear();
        if epoll.wait(&mut events, sweep_ms).is_err() {
            return;
        }
        for ev in &events {
            match ev.token {
                STOP => return,
                HOST => loop {
                    let (n, client) = match host.recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // An ICMP error for an earlier reply to a client that went away.
                        Err(_) => continue,
                    };
                    if let Some(s) = sessions.get_or_open(client, guest_port, &*dialer, &epoll) {
                        s.last_active = Instant::now();
                        // A datagram the environment cannot take is dropped, as a network would.
                        let _ = s.guest.send(&buf[..n]);
                    }
                },
                token => {
                    let Some(s) = sessions.by_token.get_mut(&token) else {
                        continue;
                    };
                    loop {
                        match s.guest.recv(&mut buf) {
                            Ok(n) => {
                                let _ = host.send_to(&buf[..n], s.client);
                                s.last_active = Instant::now();
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // ECONNREFUSED: nothing listens on the guest port (ICMP unreachable).
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        if last_sweep.elapsed().as_millis() >= sweep_ms as u128 {
            sessions.expire(idle, &epoll);
            last_sweep = Instant::now();
        }
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
