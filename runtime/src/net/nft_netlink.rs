//! berth's NAT table through nftables' own netlink interface (`NETLINK_NETFILTER`), without
//! an `nft` process: the ruleset [`super::nat::NatRules::ruleset`] describes in nft's
//! language, encoded as the table, chain and rule messages nft itself sends for it (the
//! expressions are those `nft --debug=netlink` prints for that text), in one batch, which the
//! kernel applies as one transaction: never half-applied. A test lists the table with `nft`
//! after each way of applying it and compares.
//!
//! Per bridge this replaces three process spawns (apply, remove, list the tables to decide
//! about IPv4 forwarding) with one socket and one round trip each.
//!
//! Its parts: [`nat_chains`] (the table's chains and rules as expressions), [`message_batch`]
//! (their encoding as one batch of messages) and [`netfilter_socket`] (the socket and the
//! parsing of the kernel's replies, which `nft_generation` uses too).

mod message_batch;
mod nat_chains;
mod netfilter_socket;

use std::io;
use std::net::Ipv4Addr;

use super::subnet::Subnet;
use message_batch::{
    dump_request, Batch, FAMILY_INET, NFGENMSG_LEN, NFTA_TABLE_NAME, NFT_MSG_GETTABLE, NLM_F_MULTI,
};
use nat_chains::chains;
pub(super) use netfilter_socket::{error_code, find_attr, malformed, messages, Socket};
use netfilter_socket::{NLMSG_DONE, NLMSG_ERROR};

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
    let request = dump_request(NFT_MSG_GETTABLE, FAMILY_INET);
    let sock = Socket::open()?;
    sock.send(&request)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use message_batch::{
        NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK,
    };
    use nat_chains::Expr;

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
