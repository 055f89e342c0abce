//! A small rtnetlink client over a raw `NETLINK_ROUTE` socket: just the link, address and
//! route requests berth needs (bridge, veth pair, bridge-port isolation, addresses, default
//! route, link up, delete). Every request asks for an acknowledgement, so each call returns
//! the kernel's verdict as an `io::Error` with the real errno.
//!
//! A netlink socket talks to the network namespace it was created in; [`Netlink::open_in`]
//! opens one inside an environment's namespace.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::netns::run_in_netns;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_GSO_MAX_SEGS: u16 = 40;
const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
const IFLA_GRO_IPV4_MAX_SIZE: u16 = 64;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const RTA_METRICS: u16 = 8;
const RTAX_MTU: u16 = 2;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const IFF_UP: u32 = 1;
const HEADER_LEN: usize = 16;

/// The packets the stack builds (GSO) and merges (GRO) on an interface at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketLimits {
    /// Largest IPv4 packet, bytes ([`Message::ipv4_packet_size`]).
    pub ipv4_bytes: u32,
    /// Most TCP segments (or UDP datagrams) in one packet built (`gso_max_segs`); `None`:
    /// the kernel's (65,535).
    pub segments: Option<u32>,
}

/// One request being assembled: header, fixed part, attributes.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(ty: u16, flags: u16) -> Message {
        let mut buf = vec![0u8; HEADER_LEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    /// `struct ifinfomsg`.
    fn ifinfo(mut self, family: u8, index: u32, flags: u32, change: u32) -> Message {
        self.ifinfo_raw(family, index, flags, change);
        self
    }

    fn ifinfo_raw(&mut self, family: u8, index: u32, flags: u32, change: u32) {
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self.buf.extend_from_slice(&(index as i32).to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Message {
        self.attr_raw(ty, data);
        self
    }

    fn attr_raw(&mut self, ty: u16, data: &[u8]) {
        self.align();
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }

    fn str_attr(self, ty: u16, s: &str) -> Message {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    fn u32_attr(self, ty: u16, v: u32) -> Message {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// The largest IPv4 packet the stack builds for (GSO) and merges on (GRO) an interface:
    /// above 64 KiB is "BIG TCP" (Linux 6.3+). The kernel refuses (`EINVAL`) a value above the
    /// device's `tso_max_size`: 524,280 for a veth; a bridge has the smallest of its ports'
    /// (64 KiB while it has none, or has a tap). `None`: the kernel's default (64 KiB). A
    /// kernel without these attributes ignores them (link messages are parsed liberally), and
    /// the interface works at 64 KiB.
    fn ipv4_packet_size(self, bytes: Option<u32>) -> Message {
        match bytes {
            Some(b) => self
                .u32_attr(IFLA_GSO_IPV4_MAX_SIZE, b)
                .u32_attr(IFLA_GRO_IPV4_MAX_SIZE, b),
            None => self,
        }
    }

    /// One transmit and one receive queue, asked for at creation. A veth made without them
    /// gets a queue per possible CPU and is cut down to one right after it is registered,
    /// which waits for an RCU grace period (`synchronize_net` in
    /// `netif_set_real_num_tx_queues`), once per end: milliseconds of every start on a busy
    /// machine, for the same single queue.
    fn single_queue(self) -> Message {
        self.u32_attr(IFLA_NUM_TX_QUEUES, 1)
            .u32_attr(IFLA_NUM_RX_QUEUES, 1)
    }

    /// [`ipv4_packet_size`](Self::ipv4_packet_size) and, when given, the most segments the
    /// stack puts in one packet it builds (`gso_max_segs`; at most 65,535, the kernel's).
    fn packet_limits(self, limits: Option<PacketLimits>) -> Message {
        let Some(limits) = limits else {
            return self;
        };
        let msg = self.ipv4_packet_size(Some(limits.ipv4_bytes));
        match limits.segments {
            Some(segs) => msg.u32_attr(IFLA_GSO_MAX_SEGS, segs),
            None => msg,
        }
    }

    fn nest(mut self, ty: u16) -> Message {
        self.align();
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(mut self) -> Message {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        self.align();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// An rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket for the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zero means "kernel assigns the port id".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `addr` is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// A socket for the network namespace `netns` refers to.
    pub fn open_in(netns: &File) -> io::Result<Netlink> {
        run_in_netns(netns, Netlink::open)?
    }

    /// Sends `msg` and waits for its acknowledgement; a reply message (for GET requests) is
    /// returned.
    fn request(&mut self, msg: Message) -> io::Result<Option<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = msg.finish(seq);
        // SAFETY: `bytes` is a valid buffer of the given length.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = None;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: `buf` is valid for `buf.len()` writable bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + HEADER_LEN <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < HEADER_LEN || off + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink reply",
                    ));
                }
                if mseq == seq {
                    match ty {
                        NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(
                                buf[off + HEADER_LEN..off + HEADER_LEN + 4]
                                    .try_into()
                                    .unwrap_or_default(),
                            );
                            return if code == 0 {
                                Ok(reply)
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        NLMSG_DONE => return Ok(reply),
                        _ => reply = Some(buf[off..off + len].to_vec()),
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// The index of the interface called `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let msg = Message::new(RTM_GETLINK, 0)
            .ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0)
            .str_attr(IFLA_IFNAME, name);
        match self.request(msg) {
            Ok(Some(reply)) if reply.len() >= HEADER_LEN + 8 => Ok(Some(i32::from_ne_bytes(
                reply[HEADER_LEN + 4..HEADER_LEN + 8]
                    .try_into()
                    .unwrap_or_default(),
            ) as u32)),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "netlink: no link in reply",
            )),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge interface (down, no address) with the hardware address `mac`. A
    /// bridge without one of its own takes the lowest of its ports' and changes it when that
    /// port goes, which strands every other port's neighbour entry for the bridge's IP.
    pub fn create_bridge(&mut self, name: &str, mac: [u8; 6]) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0)
            .str_attr(IFLA_IFNAME, name)
            .attr(IFLA_ADDRESS, &mac)
            .nest(IFLA_LINKINFO)
            .str_attr(IFLA_INFO_KIND, "bridge")
            .end();
        self.request(msg).map(drop)
    }

    /// Creates a veth pair: `host_name` here, attached to bridge `master` (0: none);
    /// `peer_name` created directly inside the network namespace `peer_netns`. Both ends get
    /// `mtu`; the host's end `host_ipv4_packets` ([`Message::ipv4_packet_size`]), the peer
    /// `peer_packets` (`None`: the kernel's defaults).
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host_name: &str,
        master: u32,
        peer_name: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: u32,
        host_ipv4_packets: Option<u32>,
        peer_packets: Option<PacketLimits>,
    ) -> io::Result<()> {
        let mut msg = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
            .ifinfo(libc::AF_UNSPEC as u8, 0, 0, 0)
            .str_attr(IFLA_IFNAME, host_name)
            .single_queue()
            .u32_attr(IFLA_MTU, mtu)
            .ipv4_packet_size(host_ipv4_packets);
        if master != 0 {
            msg = msg.u32_attr(IFLA_MASTER, master);
        }
        let mut msg = msg
            .nest(IFLA_LINKINFO)
            .str_attr(IFLA_INFO_KIND, "veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER);
        msg.ifinfo_raw(libc::AF_UNSPEC as u8, 0, 0, 0);
        let msg = msg
            .str_attr(IFLA_IFNAME, peer_name)
            .single_queue()
            .u32_attr(IFLA_MTU, mtu)
            .u32_attr(IFLA_NET_NS_FD, peer_netns.as_raw_fd() as u32)
            .packet_limits(peer_packets)
            .end()
            .end()
            .end();
        self.request(msg).map(drop)
    }

    /// Makes interface `index` a port of bridge `master`.
    pub fn set_master(&mut self, index: u32, master: u32) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, 0)
            .ifinfo(libc::AF_UNSPEC as u8, index, 0, 0)
            .u32_attr(IFLA_MASTER, master);
        self.request(msg).map(drop)
    }

    /// Sets an interface's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, 0)
            .ifinfo(libc::AF_UNSPEC as u8, index, 0, 0)
            .u32_attr(IFLA_MTU, mtu);
        self.request(msg).map(drop)
    }

    /// Sets the largest IPv4 packet the stack builds and merges on an existing interface
    /// ([`Message::ipv4_packet_size`]; `EINVAL` above the device's `tso_max_size`).
    pub fn set_ipv4_packet_size(&mut self, index: u32, bytes: u32) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, 0)
            .ifinfo(libc::AF_UNSPEC as u8, index, 0, 0)
            .ipv4_packet_size(Some(bytes));
        self.request(msg).map(drop)
    }

    /// Brings an interface up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let msg = Message::new(RTM_NEWLINK, 0).ifinfo(libc::AF_UNSPEC as u8, index, IFF_UP, IFF_UP);
        self.request(msg).map(drop)
    }

    /// Marks a bridge port isolated: it can talk to non-isolated ports (the bridge itself)
    /// but not to other isolated ports, so environments cannot reach each other at layer 2.
    pub fn set_bridge_port_isolated(&mut self, index: u32) -> io::Result<()> {
        let msg = Message::new(RTM_SETLINK, 0)
            .ifinfo(libc::AF_BRIDGE as u8, index, 0, 0)
            .nest(IFLA_PROTINFO)
            .attr(IFLA_BRPORT_ISOLATED, &[1])
            .end();
        self.request(msg).map(drop)
    }

    /// Adds `ip/prefix` to an interface.
    pub fn add_address(&mut self, index: u32, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut msg = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
        msg.buf
            .extend_from_slice(&[libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE]);
        msg.buf.extend_from_slice(&index.to_ne_bytes());
        let msg = msg
            .attr(IFA_LOCAL, &ip.octets())
            .attr(IFA_ADDRESS, &ip.octets());
        self.request(msg).map(drop)
    }

    /// Adds the IPv4 default route via `gateway` on interface `index`; `mtu`: the largest
    /// packet sent along it (the route's `mtu` metric), when smaller than the interface's.
    pub fn add_default_route(
        &mut self,
        gateway: Ipv4Addr,
        index: u32,
        mtu: Option<u32>,
    ) -> io::Result<()> {
        let mut msg = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        msg.buf.extend_from_slice(&[
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        msg.buf.extend_from_slice(&0u32.to_ne_bytes());
        let mut msg = msg
            .attr(RTA_GATEWAY, &gateway.octets())
            .u32_attr(RTA_OIF, index);
        if let Some(mtu) = mtu {
            // RTA_METRICS holds `struct rtattr`s: RTAX_MTU and its value.
            let mut metrics = Vec::with_capacity(8);
            metrics.extend_from_slice(&8u16.to_ne_bytes());
            metrics.extend_from_slice(&RTAX_MTU.to_ne_bytes());
            metrics.extend_from_slice(&mtu.to_ne_bytes());
            msg = msg.attr(RTA_METRICS, &metrics);
        }
        self.request(msg).map(drop)
    }

    /// Deletes an interface (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let msg = Message::new(RTM_DELLINK, 0).ifinfo(libc::AF_UNSPEC as u8, index, 0, 0);
        self.request(msg).map(drop)
    }

    /// Deletes the interface called `name`; `Ok(false)` when there was none.
    pub fn delete_link_named(&mut self, name: &str) -> io::Result<bool> {
        match self.link_index(name)? {
            Some(i) => match self.delete_link(i) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
                Err(e) => Err(e),
            },
            None => Ok(false),
        }
    }
}
