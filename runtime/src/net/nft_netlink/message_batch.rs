//! A batch of nftables netlink messages (one `sendmsg`, one transaction): the table, chain
//! and rule commands and the encoding of each expression as nft sends it.

use super::nat_chains::{Chain, Expr, NFPROTO_IPV4, NFT_REG_1, NFT_REG_2};

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(super) const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
pub(super) const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;

const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_MULTI: u16 = 0x2;
pub(super) const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NFGENMSG_LEN: usize = 4;
/// `NFPROTO_INET`: the family of berth's tables.
pub(super) const FAMILY_INET: u8 = 1;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;

pub(super) const NFTA_TABLE_NAME: u16 = 1;
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

/// One plain request outside any batch: a dump of the objects `cmd` lists (`NFT_MSG_GET*`)
/// of `family`.
pub(super) fn dump_request(cmd: u16, family: u8) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::new(),
        start: 0,
        nests: Vec::new(),
        seq: 0,
        acked: 0,
    };
    b.begin((NFNL_SUBSYS_NFTABLES << 8) | cmd, NLM_F_DUMP, family);
    b.end_message();
    b.buf
}

/// A batch of nftables messages being assembled (one `sendmsg`, one transaction).
pub(super) struct Batch {
    buf: Vec<u8>,
    /// Start of the message being written, and of each open nested attribute.
    start: usize,
    nests: Vec<usize>,
    seq: u32,
    /// Messages that ask for an acknowledgement.
    acked: u32,
}

impl Batch {
    pub(super) fn new() -> Batch {
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
    pub(super) fn add_table(&mut self, table: &str) {
        self.command(NFT_MSG_NEWTABLE, NLM_F_CREATE);
        self.str(NFTA_TABLE_NAME, table);
        self.end_message();
    }

    pub(super) fn delete_table(&mut self, table: &str) {
        self.command(NFT_MSG_DELTABLE, 0);
        self.str(NFTA_TABLE_NAME, table);
        self.end_message();
    }

    /// `flush table inet NAME`: every rule of the table goes, its chains stay.
    pub(super) fn flush_table(&mut self, table: &str) {
        self.command(NFT_MSG_DELRULE, 0);
        self.str(NFTA_RULE_TABLE, table);
        self.end_message();
    }

    pub(super) fn add_chain(&mut self, table: &str, chain: &Chain) {
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

    pub(super) fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
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

    pub(super) fn finish(mut self) -> (Vec<u8>, u32) {
        self.begin(NFNL_MSG_BATCH_END, 0, 0);
        self.end_message();
        (self.buf, self.acked)
    }
}
