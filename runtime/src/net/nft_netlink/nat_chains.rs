//! The chains and rules of berth's NAT table as nftables expressions: what nft makes of
//! the ruleset text `NatRules::ruleset` describes (the expressions `nft --debug=netlink`
//! prints for it).

use std::net::Ipv4Addr;

use crate::net::subnet::Subnet;

/// `NFPROTO_IPV4`, as `meta nfproto` and `nat` see it.
pub(super) const NFPROTO_IPV4: u8 = 2;

pub(super) const NFT_REG_1: u32 = 1;
pub(super) const NFT_REG_2: u32 = 2;

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
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IFNAMSIZ: usize = 16;
/// Offsets of the source and destination address in the IPv4 header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

/// One nftables expression of a rule, as nft encodes it. Loads go to register 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
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
pub(super) struct Chain {
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) hook: u32,
    pub(super) priority: i32,
    pub(super) rules: Vec<Vec<Expr>>,
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
pub(super) fn chains(bridge: &str, subnet: &Subnet, dns_stub: Option<Ipv4Addr>) -> Vec<Chain> {
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
}
