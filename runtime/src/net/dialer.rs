//! How the port forwarder reaches a port inside an environment.
//!
//! The forwarder always listens in the host's network namespace; for each client it asks a
//! [`Dialer`] for a socket that is connected to the guest port. Backends differ only in how
//! that socket is obtained:
//!
//! - [`NetnsDialer`]: a helper thread inside the environment's network namespace creates the
//!   socket there (works without any bridge or address: it connects to the guest's loopback).
//! - [`LoopbackDialer`]: the forwarder itself runs inside the environment's namespace and
//!   serves host ports bound before it got there.
//! - [`AddressDialer`]: connects from the host to an address the environment owns (the bridge
//!   address of a container, or a stub resolver on the host for the DNS forwarder).
//! - a VM backend implements the trait with a vsock/agent connection.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use super::netns::{NetnsSocketFactory, SocketKind};
use super::sys;

/// How long a connection attempt to a guest port may take before the client is turned away.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Obtains sockets connected to ports inside one environment.
pub trait Dialer: Send + Sync {
    /// A stream socket (TCP, Unix or vsock) connected to TCP `port` in the environment.
    /// A port nobody listens on must fail promptly (`ConnectionRefused`), never hang.
    fn dial_tcp(&self, port: u16) -> io::Result<OwnedFd>;
    /// A datagram socket whose `send`/`recv` reach UDP `port` in the environment.
    fn dial_udp(&self, port: u16) -> io::Result<UdpSocket>;
    /// Where this dialer connects, for messages ("network namespace /proc/42/ns/net").
    fn describe(&self) -> String;
}

/// Dials the environment's loopback from inside its network namespace.
#[derive(Debug)]
pub struct NetnsDialer {
    factory: NetnsSocketFactory,
    what: String,
}

impl NetnsDialer {
    /// Starts the helper thread inside `netns`. Needs `CAP_SYS_ADMIN` over that namespace
    /// (root, or the owner of the environment's user namespace).
    pub fn new(netns: &File, what: impl Into<String>) -> io::Result<Self> {
        Ok(NetnsDialer {
            factory: NetnsSocketFactory::start(netns)?,
            what: what.into(),
        })
    }
}

fn timeout_ms() -> i32 {
    DIAL_TIMEOUT.as_millis() as i32
}

/// Connects a fresh socket from `make` to `port` on IPv4 loopback, then, when nothing answers
/// there, on IPv6 loopback: a server may be bound to 127.0.0.1 only, to [::] or to ::1 only.
fn dial_loopback(
    make: impl Fn(SocketKind) -> io::Result<OwnedFd>,
    port: u16,
) -> io::Result<OwnedFd> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let sock = make(SocketKind {
        family: libc::AF_INET,
        ty: libc::SOCK_STREAM,
    })?;
    let first = match sys::connect(sock.as_fd(), &v4, timeout_ms()) {
        Ok(()) => return Ok(sock),
        Err(e) => e,
    };
    if first.kind() != io::ErrorKind::ConnectionRefused {
        return Err(first);
    }
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let Ok(sock6) = make(SocketKind {
        family: libc::AF_INET6,
        ty: libc::SOCK_STREAM,
    }) else {
        return Err(first);
    };
    match sys::connect(sock6.as_fd(), &v6, timeout_ms()) {
        Ok(()) => Ok(sock6),
        Err(_) => Err(first),
    }
}

fn udp_loopback(sock: OwnedFd, port: u16) -> io::Result<UdpSocket> {
    let udp = UdpSocket::from(sock);
    udp.connect((Ipv4Addr::LOCALHOST, port))?;
    Ok(udp)
}

const UDP4: SocketKind = SocketKind {
    family: libc::AF_INET,
    ty: libc::SOCK_DGRAM,
};

impl Dialer for NetnsDialer {
    fn dial_tcp(&self, port: u16) -> io::Result<OwnedFd> {
        dial_loopback(|k| self.factory.socket(k), port)
    }

    fn dial_udp(&self, port: u16) -> io::Result<UdpSocket> {
        udp_loopback(self.factory.socket(UDP4)?, port)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// Dials loopback ports of the network namespace the forwarder's threads run in: for a
/// supervisor that lives inside the environment and serves host ports bound before it
/// entered the environment's namespace ([`super::forward::BoundPorts`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopbackDialer;

impl Dialer for LoopbackDialer {
    fn dial_tcp(&self, port: u16) -> io::Result<OwnedFd> {
        dial_loopback(|k| sys::socket(k.family, k.ty, 0), port)
    }

    fn dial_udp(&self, port: u16) -> io::Result<UdpSocket> {
        udp_loopback(sys::socket(UDP4.family, UDP4.ty, 0)?, port)
    }

    fn describe(&self) -> String {
        "the environment's loopback".into()
    }
}

/// Dials a fixed address from the host's own network namespace.
#[derive(Debug, Clone)]
pub struct AddressDialer {
    pub ip: IpAddr,
}

impl Dialer for AddressDialer {
    fn dial_tcp(&self, port: u16) -> io::Result<OwnedFd> {
        let stream = TcpStream::connect_timeout(&SocketAddr::new(self.ip, port), DIAL_TIMEOUT)?;
        Ok(OwnedFd::from(stream))
    }

    fn dial_udp(&self, port: u16) -> io::Result<UdpSocket> {
        let local: IpAddr = match self.ip {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let udp = UdpSocket::bind((local, 0))?;
        udp.connect((self.ip, port))?;
        Ok(udp)
    }

    fn describe(&self) -> String {
        format!("address {}", self.ip)
    }
}
