//! The nftables ruleset generation: a counter the kernel bumps on every committed change to
//! any table of the network namespace (`NFT_MSG_GETGEN` over `NETLINK_NETFILTER`). When it
//! still has the value it had right after berth applied its table, nobody changed the
//! ruleset since, so berth's table is still exactly as applied and need not be re-applied
//! (which costs an `nft` process). One netlink round trip, no process.

use std::io;

use super::nft_netlink::{error_code, find_attr, malformed, messages, Socket};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const HEADER_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// The current ruleset generation of the calling thread's network namespace.
pub fn current() -> io::Result<u32> {
    let socket = Socket::open()?;
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    let len = HEADER_LEN + NFGENMSG_LEN;
    let mut msg = vec![0u8; len];
    msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&ty.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, resource id 0.
    socket.send(&msg)?;
    let mut buf = vec![0u8; 8192];
    let n = socket.recv(&mut buf, 0)?;
    parse_reply(&buf[..n])
}

/// The generation id in a reply to `NFT_MSG_GETGEN`.
fn parse_reply(buf: &[u8]) -> io::Result<u32> {
    let Some(&(ty, _, _, body)) = messages(buf)?.first() else {
        return Err(malformed());
    };
    if ty == NLMSG_ERROR {
        return Err(io::Error::from_raw_os_error(-error_code(body)?));
    }
    if ty != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
        return Err(malformed());
    }
    let id = body
        .get(NFGENMSG_LEN..)
        .and_then(|attrs| find_attr(attrs, NFTA_GEN_ID))
        .and_then(|v| v.get(..4))
        .ok_or_else(malformed)?;
    // nftables attributes are in network byte order.
    Ok(u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newgen_reply_gives_its_id() {
        let mut m = vec![0u8; HEADER_LEN + NFGENMSG_LEN];
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_GEN_ID.to_ne_bytes());
        m.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN).to_ne_bytes());
        assert_eq!(parse_reply(&m).unwrap(), 0x0102_0304);
        m.truncate(HEADER_LEN + NFGENMSG_LEN + 2);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert!(parse_reply(&m).is_err());
    }

    /// Live, as root: a change to any table moves the generation; reading it changes nothing.
    #[test]
    fn the_generation_moves_with_every_ruleset_change() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (nftables)");
            return;
        }
        let Ok(a) = current() else {
            eprintln!("skipped: no nf_tables in this kernel");
            return;
        };
        let table = format!("berthgentest{}", std::process::id());
        let nft = |script: String| {
            let mut c = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        };
        nft(format!("table inet {table} {{}}\n"));
        let b = current().unwrap();
        nft(format!("delete table inet {table}\n"));
        let c = current().unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
    }
}
