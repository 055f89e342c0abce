//! The port forwarder: listens on host addresses and relays every TCP connection and UDP
//! datagram to a port inside an environment, through a [`Dialer`].
//!
//! It runs in the host's network namespace, inside the environment's supervisor process, so
//! it works the same for root and rootless containers and for VMs; only the dialer differs.
//! [`PortForwarder::start`] binds every port before it starts anything, so a port that is
//! already taken fails the whole start with an error naming the process holding it, and
//! nothing is left half-running.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use envfile_spec::plan::{PortPlan, Protocol};
use serde::{Deserialize, Serialize};

use super::dialer::Dialer;
use super::port_owner::{find_port_holder, PortHolder};
use super::sys::{self, StopSignal};
use super::tcp_loop::serve_tcp;
use super::udp_relay::serve_udp;

/// A UDP session with no traffic in either direction for this long is closed.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One forwarded port: host address and port → guest port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardSpec {
    pub protocol: Protocol,
    /// Host address and port to listen on (port 0: any free port, see [`PortForwarder::ports`]).
    pub host: SocketAddr,
    pub guest_port: u16,
    /// Let several processes listen on the same address (`SO_REUSEPORT`); the kernel spreads
    /// clients among them. Used by the DNS forwarder that every environment's supervisor runs.
    pub shared: bool,
}

impl From<&PortPlan> for ForwardSpec {
    fn from(p: &PortPlan) -> Self {
        ForwardSpec {
            protocol: p.protocol,
            host: SocketAddr::new(p.address, p.host),
            guest_port: p.guest,
            shared: false,
        }
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Why forwarding could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot forward {} {addr}: the port is already in use{}; {}, choose another host port in [[ports]], or run `berth up --publish-auto` to publish on a free port instead",
        proto(*protocol),
        holder.as_ref().map(|h| match &h.environment {
            Some(_) => format!(" by {h} (pid {})", h.pid),
            None => format!(" by {h}"),
        }).unwrap_or_default(),
        match holder.as_ref().and_then(|h| h.environment.as_ref()) {
            Some(_) => "stop that environment (`berth down` in its project)".to_string(),
            None => "stop that process".to_string(),
        })]
    PortInUse {
        protocol: Protocol,
        addr: SocketAddr,
        holder: Option<PortHolder>,
    },
    #[error("cannot listen on {} {addr}: {source}; check that the address belongs to this host (`address` in [[ports]]) and that ports below 1024 are only used as root", proto(*protocol))]
    Bind {
        protocol: Protocol,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start the port forwarding thread: {0}")]
    Thread(io::Error),
}

/// A port that is being forwarded, with the address actually bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedPort {
    pub spec: ForwardSpec,
    pub bound: SocketAddr,
}

impl fmt::Display for ForwardedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} → {}/{}",
            self.bound,
            self.spec.guest_port,
            proto(self.spec.protocol)
        )
    }
}

/// Running forwarders of one environment. Dropping it (or [`PortForwarder::stop`]) closes
/// the listening sockets and resets the connections in flight.
pub struct PortForwarder {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<ForwardedPort>,
}

impl fmt::Debug for PortForwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortForwarder")
            .field("ports", &self.ports)
            .finish()
    }
}

#[derive(Debug)]
enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// What to do when a declared host port is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnPortInUse {
    /// Fail, naming the process holding the port.
    #[default]
    Fail,
    /// Use any free port on the same address instead.
    PickFree,
}

/// Host ports bound but not yet served: the first half of [`PortForwarder::start`].
///
/// Binding and serving can happen in different places. A container supervisor that lives
/// inside the environment's network namespace binds the host ports while its process is
/// still in the host's namespace (the sockets keep that namespace, also across `fork`), and
/// serves them later from inside with a [`super::dialer::LoopbackDialer`].
#[derive(Debug)]
pub struct BoundPorts {
    ports: Vec<(ForwardedPort, Bound)>,
}

impl BoundPorts {
    /// Binds every host port of `specs`; fails, releasing what was bound, when any port
    /// cannot be bound (a port in use names the process holding it).
    pub fn bind(specs: &[ForwardSpec]) -> Result<BoundPorts, ForwardError> {
        BoundPorts::bind_with(specs, OnPortInUse::Fail)
    }

    /// Like [`BoundPorts::bind`]; with [`OnPortInUse::PickFree`] a host port that is taken
    /// is replaced by a free one on the same address (`berth run --publish-auto`);
    /// [`BoundPorts::ports`] tells which.
    pub fn bind_with(
        specs: &[ForwardSpec],
        in_use: OnPortInUse,
    ) -> Result<BoundPorts, ForwardError> {
        let mut ports = Vec::with_capacity(specs.len());
        for spec in specs {
            let sock = match (bind(spec), in_use) {
                (Err(ForwardError::PortInUse { .. }), OnPortInUse::PickFree) => {
                    bind(&ForwardSpec {
                        host: SocketAddr::new(spec.host.ip(), 0),
                        ..*spec
                    })?
                }
                (r, _) => r?,
            };
            let local = match &sock {
                Bound::Tcp(l) => l.local_addr(),
                Bound::Udp(u) => u.local_addr(),
            }
            .map_err(|source| ForwardError::Bind {
                protocol: spec.protocol,
                addr: spec.host,
                source,
            })?;
            ports.push((
                ForwardedPort {
                    spec: *spec,
                    bound: local,
                },
                sock,
            ));
        }
        Ok(BoundPorts { ports })
    }

    /// The ports with the addresses actually bound.
    pub fn ports(&self) -> Vec<ForwardedPort> {
        self.ports.iter().map(|(p, _)| *p).collect()
    }

    /// The listening sockets, for handing to another process (across `exec` they need
    /// `FD_CLOEXEC` cleared; the receiver rebuilds them with [`BoundPorts::from_parts`]).
    pub fn into_parts(self) -> Vec<(ForwardedPort, OwnedFd)> {
        self.ports
            .into_iter()
            .map(|(p, b)| {
                let fd = match b {
                    Bound::Tcp(l) => OwnedFd::from(l),
                    Bound::Udp(u) => OwnedFd::from(u),
                };
                (p, fd)
            })
            .collect()
    }

    /// Rebuilds bound ports from [`BoundPorts::into_parts`]. The sockets are made
    /// non-blocking again (a descriptor passed between processes keeps its flags, but not
    /// every hand-over preserves them).
    pub fn from_parts(parts: Vec<(ForwardedPort, OwnedFd)>) -> io::Result<BoundPorts> {
        let ports = parts
            .into_iter()
            .map(|(p, fd)| {
                sys::set_nonblocking(fd.as_fd(), true)?;
                let b = match p.spec.protocol {
                    Protocol::Tcp => Bound::Tcp(TcpListener::from(fd)),
                    Protocol::Udp => Bound::Udp(UdpSocket::from(fd)),
                };
                Ok((p, b))
            })
            .collect::<io::Result<_>>()?;
        Ok(BoundPorts { ports })
    }

    /// Starts serving every port through `dialer`: one thread per port.
    pub fn start(self, dialer: Arc<dyn Dialer>) -> Result<PortForwarder, ForwardError> {
        let stop = Arc::new(StopSignal::new().map_err(ForwardError::Thread)?);
        let mut forwarder = PortForwarder {
            stop: stop.clone(),
            threads: Vec::new(),
            ports: Vec::new(),
        };
        for (port, sock) in self.ports {
            let (dialer, stop) = (dialer.clone(), stop.clone());
            let guest = port.spec.guest_port;
            let handle = std::thread::Builder::new()
                .name(format!("berth-fwd-{}", port.bound.port()))
                .spawn(move || match sock {
                    Bound::Tcp(l) => serve_tcp(l, guest, dialer, stop),
                    Bound::Udp(u) => serve_udp(u, guest, dialer, stop, UDP_IDLE_TIMEOUT),
                })
                .map_err(ForwardError::Thread)?; // `forwarder` drops here: threads stop.
            forwarder.threads.push(handle);
            forwarder.ports.push(port);
        }
        Ok(forwarder)
    }
}

impl PortForwarder {
    /// Binds every host port of `specs`, then starts forwarding them through `dialer`.
    /// Fails without starting anything when any port cannot be bound.
    pub fn start(specs: &[ForwardSpec], dialer: Arc<dyn Dialer>) -> Result<Self, ForwardError> {
        BoundPorts::bind(specs)?.start(dialer)
    }

    /// The forwarded ports with the addresses actually bound.
    pub fn ports(&self) -> &[ForwardedPort] {
        &self.ports
    }

    /// Stops forwarding and waits for the threads to end.
    pub fn stop(self) {
        drop(self)
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop.raise();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind(spec: &ForwardSpec) -> Result<Bound, ForwardError> {
    let err = |source: io::Error| {
        if source.raw_os_error() == Some(libc::EADDRINUSE) {
            ForwardError::PortInUse {
                protocol: spec.protocol,
                addr: spec.host,
                holder: find_port_holder(spec.protocol, spec.host),
            }
        } else {
            ForwardError::Bind {
                protocol: spec.protocol,
                addr: spec.host,
                source,
            }
        }
    };
    let family = if spec.host.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let ty = match spec.protocol {
        Protocol::Tcp => libc::SOCK_STREAM,
        Protocol::Udp => libc::SOCK_DGRAM,
    };
    let sock = sys::socket(family, ty | libc::SOCK_NONBLOCK, 0).map_err(err)?;
    if spec.protocol == Protocol::Tcp {
        sys::set_int_option(sock.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(err)?;
    }
    if spec.shared {
        sys::set_int_option(sock.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(err)?;
    }
    sys::bind(sock.as_fd(), &spec.host).map_err(err)?;
    Ok(match spec.protocol {
        Protocol::Tcp => {
            sys::listen(sock.as_fd(), 1024).map_err(err)?;
            Bound::Tcp(TcpListener::from(sock))
        }
        Protocol::Udp => Bound::Udp(UdpSocket::from(sock)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dialer::AddressDialer;
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, TcpStream};

    fn loopback(port: u16, protocol: Protocol) -> ForwardSpec {
        ForwardSpec {
            protocol,
            host: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            guest_port: port,
            shared: false,
        }
    }

    fn host_dialer() -> Arc<dyn Dialer> {
        Arc::new(AddressDialer {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        })
    }

    #[test]
    fn forwards_tcp_on_loopback() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let fwd = PortForwarder::start(&[loopback(port, Protocol::Tcp)], host_dialer()).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        });
        let mut c = TcpStream::connect(fwd.ports()[0].bound).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        t.join().unwrap();
    }

    #[test]
    fn port_in_use_names_the_holder_and_starts_nothing() {
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let free_addr = free.local_addr().unwrap();
        drop(free);
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let specs = [
            ForwardSpec {
                host: free_addr,
                ..loopback(1, Protocol::Tcp)
            },
            ForwardSpec {
                host: held.local_addr().unwrap(),
                ..loopback(1, Protocol::Tcp)
            },
        ];
        let err = PortForwarder::start(&specs, host_dialer()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("already in use"), "{msg}");
        // The first port, bound before the failure, was released again.
        TcpListener::bind(free_addr).unwrap();
    }

    #[test]
    fn a_taken_port_is_replaced_when_asked_to_pick_a_free_one() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ForwardSpec {
            host: held.local_addr().unwrap(),
            ..loopback(80, Protocol::Tcp)
        };
        assert!(matches!(
            BoundPorts::bind_with(&[spec], OnPortInUse::Fail),
            Err(ForwardError::PortInUse { .. })
        ));
        let bound = BoundPorts::bind_with(&[spec], OnPortInUse::PickFree).unwrap();
        let got = bound.ports()[0];
        assert_eq!(got.spec, spec, "the declared port is kept for messages");
        assert_ne!(got.bound.port(), spec.host.port());
        assert_ne!(got.bound.port(), 0);
    }

    #[test]
    fn refused_guest_port_resets_the_client_promptly() {
        let unused = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let fwd = PortForwarder::start(&[loopback(port, Protocol::Tcp)], host_dialer()).unwrap();
        let mut c = TcpStream::connect(fwd.ports()[0].bound).unwrap();
        // The timeout only detects a hang; it is not a speed assertion.
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1];
        let r = c.read(&mut buf);
        assert!(
            matches!(&r, Ok(0))
                || matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
}
