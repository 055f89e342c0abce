//! The veth pair of an environment is made with the one transmit and receive queue it keeps.
//! Needs root (network namespaces, netlink); everything lives in namespaces made here.

mod common;

use berth_runtime::net::netlink::Netlink;
use common::{have_root, TestNetns};

/// `numtxqueues` and `numrxqueues` of interface `name` in the calling thread's namespace.
fn queues(name: &str) -> (u32, u32) {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", name])
        .output()
        .expect("ip (iproute2) runs");
    assert!(out.status.success(), "ip link show {name} failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |key: &str| -> u32 {
        let mut words = text.split_whitespace();
        words.find(|w| *w == key);
        words
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in: {text}"))
    };
    (field("numtxqueues"), field("numrxqueues"))
}

/// Made without the counts, each end got a queue per possible CPU and was cut down to one
/// after registration, an RCU grace period per end on every start. Only meaningful where
/// more than one CPU is possible (the kernel's default is one queue per possible CPU).
#[test]
fn both_ends_of_an_environments_veth_are_made_with_one_queue() {
    if !have_root("both_ends_of_an_environments_veth_are_made_with_one_queue") {
        return;
    }
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    if possible.trim() == "0" {
        eprintln!("skipped: one possible CPU, where the kernel's default is one queue anyway");
        return;
    }
    let host_side = TestNetns::new();
    let env_side = TestNetns::new();
    host_side.run(|| {
        let mut nl = Netlink::open().unwrap();
        nl.create_veth(
            "vq-host",
            0,
            "vq-env",
            std::os::fd::AsFd::as_fd(&env_side.file),
            1500,
            None,
            None,
        )
        .unwrap();
        assert_eq!(queues("vq-host"), (1, 1), "the host's end");
    });
    env_side.run(|| assert_eq!(queues("vq-env"), (1, 1), "the environment's end"));
}
