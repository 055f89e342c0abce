//! Helpers shared by the networking tests: root detection and throw-away network namespaces.
#![allow(dead_code)]

use std::fs::File;

use berth_runtime::net::netlink::Netlink;
use berth_runtime::net::netns::run_in_netns;

/// Whether the test can run; prints why it skips otherwise.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping {test}: needs root (network namespaces, veth, nftables)");
        false
    }
}

/// A network namespace that exists only as long as this value: it is held by an open file
/// descriptor, never mounted or named, so the kernel removes it (and every interface inside)
/// when the test drops it, whatever the outcome.
pub struct TestNetns {
    pub file: File,
}

impl TestNetns {
    /// A fresh namespace with its loopback up.
    pub fn new() -> TestNetns {
        let file = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            File::open("/proc/thread-self/ns/net").expect("open own netns")
        })
        .join()
        .unwrap();
        run_in_netns(&file, || {
            let mut nl = Netlink::open().unwrap();
            let lo = nl.link_index("lo").unwrap().unwrap();
            nl.set_up(lo).unwrap();
        })
        .unwrap();
        TestNetns { file }
    }

    /// Runs `f` inside the namespace (sockets it creates stay there).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.file, f).unwrap()
    }
}

/// A short random suffix for names of host-visible objects (interfaces, tables).
pub fn random_suffix() -> String {
    let mut b = [0u8; 3];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
