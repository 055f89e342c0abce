//! berth's NAT table through nftables' own netlink interface (`NETLINK_NETFILTER`), without
//! an `nft` process: the ruleset [`super::nat::NatRules::ruleset`] describes in nft's
//! language, encoded as the table, chain and rule messages nft itself sends for it (the
//! expressions are those `nft --debug=netlink` prints for that text), in one batch, which the
//! kernel applies as one transaction: never half-applied. A test lists the table with `nft`
//! after each way of applying it and compares.
//!
//! Per bridge this replaces three process spawns (apply, remove, list the tables to decide
//! about IPv4 forwarding) with one socket and one round trip each.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::subnet::Subnet;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const HEADER_LEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

/// `NFPROTO_INET`: the family of berth's tables.
const FAMILY_INET: u8 = 1;
/// `NFPROTO_IPV4`, as `meta nfproto` and `nat` see it.
const NFPROTO_IPV4: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;

const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
/// `IPS_DST_NAT`: the connection's destination was rewritten (conntrack status bit 5).
const IPS_DST_NAT: u32 = 0x20;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IFNAMSIZ: usize = 16;
/// Offsets of the source and destination address in the IPv4 header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

/// One nftables expression of a rule, as nft encodes it. Loads go to register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Meta(u32),
    Cmp(u32, Vec<u8>),
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    /// `reg1 = (reg1 & mask) ^ 0`.
    Mask(Vec<u8>),
    Ct(u32),
    Drop,
    /// A constant into a register.
    Immediate(u32, Vec<u8>),
    Masquerade,
    /// Destination NAT to the IPv4 address in register 1 and the port in register 2.
    Dnat,
}

/// A base chain of berth's table: name, type, hook, priority, rules.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    name: &'static str,
    kind: &'static str,
    hook: u32,
    priority: i32,
    rules: Vec<Vec<Expr>>,
}

fn iifname(bridge: &str) -> [Expr; 2] {
    [
        Expr::Meta(NFT_META_IIFNAME),
        Expr::Cmp(NFT_CMP_EQ, ifname(bridge)),
    ]
}

/// The interface name as the kernel compares it: zero-padded to `IFNAMSIZ`.
fn ifname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(IFNAMSIZ.max(v.len()), 0);
    v
}

fn ipv4() -> [Expr; 2] {
    [
        Expr::Meta(NFT_META_NFPROTO),
        Expr::Cmp(NFT_CMP_EQ, vec![NFPROTO_IPV4]),
    ]
}

/// `ip saddr|daddr [!=] network/prefix`, as nft linearizes it: a prefix of whole bytes loads
/// and compares only those bytes; any other loads the address and masks it.
fn ip_prefix(offset: u32, network: Ipv4Addr, prefix: u8, op: u32) -> Vec<Expr> {
    let octets = network.octets();
    if prefix.is_multiple_of(8) {
        let n = usize::from(prefix / 8).max(1);
        return vec![
            Expr::Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                offset,
                len: n as u32,
            },
            Expr::Cmp(op, octets[..n].to_vec()),
        ];
    }
    let mask = (u32::MAX << (32 - u32::from(prefix))).to_be_bytes();
    let masked: Vec<u8> = octets.iter().zip(mask).map(|(a, m)| a & m).collect();
    vec![
        Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: 4,
        },
        Expr::Mask(mask.to_vec()),
        Expr::Cmp(op, masked),
    ]
}

/// The chains and rules of berth's table for `bridge` on `subnet` (see `NatRules::ruleset`
/// for the same in nft's language).
fn chains(bridge: &str, subnet: &Subnet, dns_stub: Option<Ipv4Addr>) -> Vec<Chain> {
    let (network, prefix) = (subnet.network(), subnet.prefix());
    let masquerade = [
        ipv4().to_vec(),
        ip_prefix(IPV4_SADDR, network, prefix, NFT_CMP_EQ),
        ip_prefix(IPV4_DADDR, network, prefix, NFT_CMP_NEQ),
        vec![Expr::Masquerade],
    ]
    .concat();
    let no_forwarding = [
        iifname(bridge).to_vec(),
        vec![
            Expr::Meta(NFT_META_OIFNAME),
            Expr::Cmp(NFT_CMP_EQ, ifname(bridge)),
            Expr::Drop,
        ],
    ]
    .concat();
    let no_loopback = [
        iifname(bridge).to_vec(),
        ipv4().to_vec(),
        ip_prefix(IPV4_DADDR, Ipv4Addr::new(127, 0, 0, 0), 8, NFT_CMP_EQ),
        vec![
            Expr::Ct(NFT_CT_STATUS),
            Expr::Mask(IPS_DST_NAT.to_ne_bytes().to_vec()),
            Expr::Cmp(NFT_CMP_EQ, 0u32.to_ne_bytes().to_vec()),
            Expr::Drop,
        ],
    ]
    .concat();
    let mut chains = vec![
        Chain {
            name: "postrouting",
            kind: "nat",
            hook: NF_INET_POST_ROUTING,
            priority: 100,
            rules: vec![masquerade],
        },
        Chain {
            name: "forward",
            kind: "filter",
            hook: NF_INET_FORWARD,
            priority: 0,
            rules: vec![no_forwarding],
        },
        Chain {
            name: "input",
            kind: "filter",
            hook: NF_INET_LOCAL_IN,
            priority: 0,
            rules: vec![no_loopback],
        },
    ];
    if let Some(stub) = dns_stub {
        let dns = |l4: u8| {
            [
                iifname(bridge).to_vec(),
                ipv4().to_vec(),
                ip_prefix(IPV4_DADDR, subnet.gateway(), 32, NFT_CMP_EQ),
                vec![
                    Expr::Meta(NFT_META_L4PROTO),
                    Expr::Cmp(NFT_CMP_EQ, vec![l4]),
                    Expr::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset: 2,
                        len: 2,
                    },
                    Expr::Cmp(NFT_CMP_EQ, 53u16.to_be_bytes().to_vec()),
                    Expr::Immediate(NFT_REG_1, stub.octets().to_vec()),
                    Expr::Immediate(NFT_REG_2, 53u16.to_be_bytes().to_vec()),
                    Expr::Dnat,
                ],
            ]
            .concat()
        };
        chains.push(Chain {
            name: "prerouting",
            kind: "nat",
            hook: NF_INET_PRE_ROUTING,
            priority: -100,
            rules: vec![dns(IPPROTO_UDP), dns(IPPROTO_TCP)],
        });
    }
    chains
}

/// A batch of nftables messages being assembled (one `sendmsg`, one transaction).
struct Batch {
    buf: Vec<u8>,
    /// Start of the message being written, and of each open nested attribute.
    start: usize,
    nests: Vec<usize>,
    seq: u32,
    /// Messages that ask for an acknowledgement.
    acked: u32,
}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(2048),
            start: 0,
            nests: Vec::new(),
            seq: 0,
            acked: 0,
        };
        b.begin(NFNL_MSG_BATCH_BEGIN, 0, 0);
        b.end_message();
        b
    }

    /// Starts a message: netlink header and `struct nfgenmsg` (family, version 0, resource id).
    fn begin(&mut self, ty: u16, flags: u16, family: u8) {
        self.seq += 1;
        self.start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        let res_id = if ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        };
        self.buf.extend_from_slice(&[family, 0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Starts an nftables command that the kernel acknowledges.
    fn command(&mut self, cmd: u16, flags: u16) {
        self.acked += 1;
        self.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | cmd,
            flags | NLM_F_ACK,
            FAMILY_INET,
        );
    }

    fn end_message(&mut self) {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data);
    }

    /// nftables' integers are big-endian.
    fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// `add table inet NAME` (nothing happens to a table that exists).
    fn add_table(&mut self, table: &str) {
        self.command(NFT_MSG_NEWTABLE, NLM_F_CREATE);
        self.str(NFTA_TABLE_NAME, table);
        self.end_message();
    }

    fn delete_table(&mut self, table: &str) {
        self.command(NFT_MSG_DELTABLE, 0);
        self.str(NFTA_TABLE_NAME, table);
        self.end_message();
    }

    /// `flush table inet NAME`: every rule of the table goes, its chains stay.
    fn flush_table(&mut self, table: &str) {
        self.command(NFT_MSG_DELRULE, 0);
        self.str(NFTA_RULE_TABLE, table);
        self.end_message();
    }

    fn add_chain(&mut self, table: &str, chain: &Chain) {
        self.command(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        self.str(NFTA_CHAIN_TABLE, table);
        self.str(NFTA_CHAIN_NAME, chain.name);
        self.nest(NFTA_CHAIN_HOOK);
        self.be32(NFTA_HOOK_HOOKNUM, chain.hook);
        self.be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
        self.end();
        self.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        self.str(NFTA_CHAIN_TYPE, chain.kind);
        self.end_message();
    }

    fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        self.command(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        self.str(NFTA_RULE_TABLE, table);
        self.str(NFTA_RULE_CHAIN, chain);
        self.nest(NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            self.nest(NFTA_LIST_ELEM);
            self.expr(e);
            self.end();
        }
        self.end();
        self.end_message();
    }

    /// A value (`NFTA_DATA_VALUE`) nested in attribute `ty`.
    fn data(&mut self, ty: u16, value: &[u8]) {
        self.nest(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.end();
    }

    fn expr(&mut self, e: &Expr) {
        let name = match e {
            Expr::Meta(_) => "meta",
            Expr::Cmp(..) => "cmp",
            Expr::Payload { .. } => "payload",
            Expr::Mask(_) => "bitwise",
            Expr::Ct(_) => "ct",
            Expr::Drop | Expr::Immediate(..) => "immediate",
            Expr::Masquerade => "masq",
            Expr::Dnat => "nat",
        };
        self.str(NFTA_EXPR_NAME, name);
        self.nest(NFTA_EXPR_DATA);
        // Attribute numbers per expression (`NFTA_META_*`, `NFTA_CMP_*`, ...).
        match e {
            Expr::Meta(key) => {
                self.be32(2, *key); // KEY
                self.be32(1, NFT_REG_1); // DREG
            }
            Expr::Cmp(op, value) => {
                self.be32(1, NFT_REG_1); // SREG
                self.be32(2, *op); // OP
                self.data(3, value); // DATA
            }
            Expr::Payload { base, offset, len } => {
                self.be32(1, NFT_REG_1); // DREG
                self.be32(2, *base); // BASE
                self.be32(3, *offset); // OFFSET
                self.be32(4, *len); // LEN
            }
            Expr::Mask(mask) => {
                self.be32(1, NFT_REG_1); // SREG
                self.be32(2, NFT_REG_1); // DREG
                self.be32(3, mask.len() as u32); // LEN
                self.data(4, mask); // MASK
                self.data(5, &vec![0; mask.len()]); // XOR
            }
            Expr::Ct(key) => {
                self.be32(1, NFT_REG_1); // DREG
                self.be32(2, *key); // KEY
            }
            Expr::Drop => {
                self.be32(1, NFT_REG_VERDICT); // DREG
                self.nest(2); // DATA
                self.nest(NFTA_DATA_VERDICT);
                self.be32(NFTA_VERDICT_CODE, NF_DROP);
                self.end();
                self.end();
            }
            Expr::Immediate(reg, value) => {
                self.be32(1, *reg); // DREG
                self.data(2, value); // DATA
            }
            Expr::Masquerade => {}
            Expr::Dnat => {
                self.be32(1, NFT_NAT_DNAT); // TYPE
                self.be32(2, u32::from(NFPROTO_IPV4)); // FAMILY
                self.be32(3, NFT_REG_1); // REG_ADDR_MIN
                self.be32(5, NFT_REG_2); // REG_PROTO_MIN
                self.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // FLAGS
            }
        }
        self.end();
    }

    fn finish(mut self) -> (Vec<u8>, u32) {
        self.begin(NFNL_MSG_BATCH_END, 0, 0);
        self.end_message();
        (self.buf, self.acked)
    }
}

/// The batch that creates berth's table `table` (or empties the one there) and fills it:
/// what `nft -f` does with `NatRules::ruleset`.
fn apply_batch(
    table: &str,
    bridge: &str,
    subnet: &Subnet,
    dns_stub: Option<Ipv4Addr>,
) -> (Vec<u8>, u32) {
    let mut b = Batch::new();
    b.add_table(table);
    b.flush_table(table);
    let chains = chains(bridge, subnet, dns_stub);
    for c in &chains {
        b.add_chain(table, c);
    }
    for c in &chains {
        for r in &c.rules {
            b.add_rule(table, c.name, r);
        }
    }
    b.finish()
}

/// Creates or refills berth's table in the calling thread's network namespace, in one
/// transaction.
pub fn apply(
    table: &str,
    bridge: &str,
    subnet: &Subnet,
    dns_stub: Option<Ipv4Addr>,
) -> io::Result<()> {
    let (batch, acked) = apply_batch(table, bridge, subnet, dns_stub);
    Socket::open()?.transact(&batch, acked)
}

/// Deletes the `inet` table `table`; one that is not there is fine (it is added and deleted
/// in the same transaction, as `nft` scripts do).
pub fn delete_table(table: &str) -> io::Result<()> {
    let mut b = Batch::new();
    b.add_table(table);
    b.delete_table(table);
    let (batch, acked) = b.finish();
    Socket::open()?.transact(&batch, acked)
}

/// The names of the `inet` tables of the calling thread's network namespace.
pub fn inet_tables() -> io::Result<Vec<String>> {
    let mut b = Batch {
        buf: Vec::new(),
        start: 0,
        nests: Vec::new(),
        seq: 0,
        acked: 0,
    };
    b.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_DUMP,
        FAMILY_INET,
    );
    b.end_message();
    let sock = Socket::open()?;
    sock.send(&b.buf)?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = sock.recv(&mut buf, 0)?;
        for (ty, flags, _seq, body) in messages(&buf[..n])? {
            match ty {
                NLMSG_DONE => return Ok(names),
                NLMSG_ERROR => {
                    let code = error_code(body)?;
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(names);
                }
                _ => {
                    if let Some(name) = body
                        .get(NFGENMSG_LEN..)
                        .and_then(|attrs| find_attr(attrs, NFTA_TABLE_NAME))
                    {
                        let name = name.split(|&b| b == 0).next().unwrap_or_default();
                        names.push(String::from_utf8_lossy(name).into_owned());
                    }
                    if flags & NLM_F_MULTI == 0 {
                        return Ok(names);
                    }
                }
            }
        }
    }
}

pub(super) fn malformed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "malformed nftables netlink reply",
    )
}

/// One netlink message of a reply: type, flags, sequence number, payload.
pub(super) type Reply<'a> = (u16, u16, u32, &'a [u8]);

/// The messages in one datagram.
pub(super) fn messages(buf: &[u8]) -> io::Result<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEADER_LEN <= buf.len() {
        let len =
            u32::from_ne_bytes(buf[off..off + 4].try_into().map_err(|_| malformed())?) as usize;
        if len < HEADER_LEN || off + len > buf.len() {
            return Err(malformed());
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().map_err(|_| malformed())?);
        out.push((ty, flags, seq, &buf[off + HEADER_LEN..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The (negative) errno of an `NLMSG_ERROR` payload; 0 is an acknowledgement.
pub(super) fn error_code(body: &[u8]) -> io::Result<i32> {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(malformed)
}

/// The payload of the first attribute of type `ty` in `attrs`.
pub(super) fn find_attr(attrs: &[u8], ty: u16) -> Option<&[u8]> {
    let mut off = 0;
    while off + 4 <= attrs.len() {
        let len = usize::from(u16::from_ne_bytes([attrs[off], attrs[off + 1]]));
        let aty = u16::from_ne_bytes([attrs[off + 2], attrs[off + 3]]) & 0x3fff;
        if len < 4 || off + len > attrs.len() {
            return None;
        }
        if aty == ty {
            return Some(&attrs[off + 4..off + len]);
        }
        off += (len + 3) & !3;
    }
    None
}

/// A `NETLINK_NETFILTER` socket.
pub(super) struct Socket(OwnedFd);

impl Socket {
    pub(super) fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(super) fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: `bytes` is a valid buffer of the given length; the kernel is the
        // destination of an unconnected netlink socket's send.
        let rc = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for `buf.len()` writable bytes.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends a batch and collects the kernel's verdicts on its `acked` commands. The kernel
    /// processes a batch within the `send` (it loads missing modules and replays it itself),
    /// so every answer is queued when `send` returns; the first error is the batch's.
    fn transact(&self, batch: &[u8], acked: u32) -> io::Result<()> {
        self.send(batch)?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut answers = 0;
        let mut first_error = None;
        while answers < acked {
            let n = match self.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            for (ty, _flags, _seq, body) in messages(&buf[..n])? {
                if ty == NLMSG_ERROR {
                    answers += 1;
                    let code = error_code(body)?;
                    if code != 0 && first_error.is_none() {
                        first_error = Some(io::Error::from_raw_os_error(-code));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if answers < acked => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the kernel answered {answers} of {acked} nftables commands"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_whole_bytes_compare_only_those_bytes_others_are_masked() {
        let net = Ipv4Addr::new(10, 88, 0, 0);
        assert_eq!(
            ip_prefix(IPV4_SADDR, net, 16, NFT_CMP_EQ),
            vec![
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 12,
                    len: 2
                },
                Expr::Cmp(NFT_CMP_EQ, vec![10, 88]),
            ]
        );
        assert_eq!(
            ip_prefix(IPV4_DADDR, Ipv4Addr::new(172, 20, 16, 0), 20, NFT_CMP_NEQ),
            vec![
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: 16,
                    len: 4
                },
                Expr::Mask(vec![255, 255, 240, 0]),
                Expr::Cmp(NFT_CMP_NEQ, vec![172, 20, 16, 0]),
            ]
        );
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_and_every_command_asks_for_an_answer() {
        let subnet: Subnet = "10.88.0.0/16".parse().unwrap();
        let (batch, acked) = apply_batch("berth", "berth0", &subnet, None);
        let msgs = messages(&batch).unwrap();
        // begin, add table, flush, 3 chains, 3 rules, end
        assert_eq!(msgs.len(), 10);
        assert_eq!(acked, 8);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[9].0, NFNL_MSG_BATCH_END);
        for m in &msgs[1..9] {
            assert_eq!(m.0 >> 8, NFNL_SUBSYS_NFTABLES);
            assert_ne!(m.1 & NLM_F_ACK, 0);
            assert_eq!(m.3[0], FAMILY_INET);
        }
        let seqs: Vec<u32> = msgs.iter().map(|m| m.2).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    }

    /// Deletes the test's tables when dropped.
    struct Tables(Vec<String>);

    impl Drop for Tables {
        fn drop(&mut self) {
            for t in &self.0 {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", "inet", t])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }

    /// `nft --debug=netlink list table inet TABLE`: the rules' expressions as the kernel
    /// holds them, then nft's text, with the table's name (and its handle) made neutral.
    fn listing(table: &str) -> String {
        let o = std::process::Command::new("nft")
            .args(["--debug=netlink", "list", "table", "inet", table])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // A rule's line in the expression dump ends with its handle (and the handle of the
        // rule before it), which count on: "inet TABLE CHAIN HANDLE [POSITION]".
        String::from_utf8_lossy(&o.stdout)
            .replace(table, "TABLE")
            .lines()
            .map(|l| {
                if l.starts_with("inet TABLE ") {
                    l.split(' ').take(3).collect::<Vec<_>>().join(" ")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn nft_script(script: &str) {
        let mut c = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "{script}");
    }

    /// Live, as root: the table berth sends over netlink is, rule by rule and expression by
    /// expression, the one `nft -f` makes of `NatRules::ruleset` (with and without the DNS
    /// redirect, for prefixes of whole bytes and others); applying it again over a table
    /// someone added a rule to leaves exactly it; removing it twice is fine; the listing of
    /// inet tables names it while it exists.
    #[test]
    fn the_table_sent_over_netlink_is_the_one_nft_makes_of_the_ruleset_text() {
        use crate::net::nat::NatRules;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (nftables)");
            return;
        }
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: nft (nftables) is not installed, nothing to compare with");
            return;
        }
        let pid = std::process::id();
        let by_nft = format!("berthnla{pid}");
        let by_netlink = format!("berthnlb{pid}");
        let _tables = Tables(vec![by_nft.clone(), by_netlink.clone()]);
        let cases: [(&str, Option<Ipv4Addr>); 4] = [
            ("10.88.0.0/16", None),
            ("10.88.0.0/16", Some(Ipv4Addr::new(127, 0, 0, 53))),
            ("10.231.7.0/24", Some(Ipv4Addr::new(127, 0, 0, 1))),
            ("172.20.16.0/20", None),
        ];
        for (subnet, dns_stub) in cases {
            let rules = |table: &str| NatRules {
                table: table.into(),
                bridge: "berth0".into(),
                subnet: subnet.parse().unwrap(),
                dns_stub,
            };
            // Fresh tables each time: a table nft refilled keeps chains of an earlier case.
            let _ = delete_table(&by_nft);
            let _ = delete_table(&by_netlink);
            nft_script(&rules(&by_nft).ruleset());
            rules(&by_netlink).apply().unwrap();
            let want = listing(&by_nft);
            assert!(want.contains("masquerade"), "{want}");
            assert_eq!(listing(&by_netlink), want, "{subnet} {dns_stub:?}");

            // Refreshing over a changed table leaves exactly berth's rules again.
            nft_script(&format!(
                "add rule inet {by_netlink} input ip saddr 1.2.3.4 accept\n"
            ));
            assert_ne!(listing(&by_netlink), want);
            rules(&by_netlink).apply().unwrap();
            assert_eq!(listing(&by_netlink), want, "refreshed: {subnet}");
        }
        let tables = inet_tables().unwrap();
        assert!(tables.contains(&by_netlink), "{tables:?}");
        assert!(tables.contains(&by_nft), "{tables:?}");
        NatRules::remove(&by_netlink).unwrap();
        NatRules::remove(&by_netlink).unwrap();
        assert!(!NatRules::exists(&by_netlink));
        assert!(!inet_tables().unwrap().contains(&by_netlink));
    }

    /// Live, as root: a rule the kernel refuses fails the whole batch with its errno and
    /// leaves nothing of it behind.
    #[test]
    fn a_refused_batch_changes_nothing_and_says_why() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (nftables)");
            return;
        }
        let table = format!("berthnlc{}", std::process::id());
        let _tables = Tables(vec![table.clone()]);
        let mut b = Batch::new();
        b.add_table(&table);
        b.add_rule(&table, "no_such_chain", &[Expr::Drop]);
        let (batch, acked) = b.finish();
        let e = Socket::open().unwrap().transact(&batch, acked).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        assert!(!inet_tables().unwrap().contains(&table));
    }
}
