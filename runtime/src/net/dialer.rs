//! How the port forwarder reaches a port inside an environment.
//!
//! The forwarder always listens in the host's network namespace; for each client it asks a
//! [`Dialer`] for a socket that is connected to the guest port. Backends differ only in how
//! that socket is obtained:
//!
//! - [`NetnsDialer`]: a helper thread inside the environment's network namespace creates the
//!   socket there (works without any bridge or address: it connects to the guest's loopback).
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

impl Dialer for NetnsDialer {
    fn dial_tcp(&self, port: u16) -> io::Result<OwnedFd> {
        // A server bound to 127.0.0.1 only, to [::] or to ::1 only: try IPv4 loopback, then
        // IPv6 loopback when nothing answered on IPv4.
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let sock = self.factory.socket(SocketKind {
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
        let Ok(sock6) = self.factory.socket(SocketKind {
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

    fn dial_udp(&self, port: u16) -> io::Result<UdpSocket> {
        let sock = self.factory.socket(SocketKind {
            family: libc::AF_INET,
            ty: libc::SOCK_DGRAM,
        })?;
        let udp = UdpSocket::from(sock);
        udp.connect((Ipv4Addr::LOCALHOST, port))?;
        Ok(udp)
    }

    fn describe(&self) -> String {
        self.what.clone()
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
