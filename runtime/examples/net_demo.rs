//! Manual check of isolated networking on this host: attaches a throw-away network namespace
//! exactly as an environment would be (bridge berth0 as root, pasta otherwise), prints what
//! the environment gets, runs a command inside (`nsenter`), then detaches.
//!
//! `cargo run -p berth-runtime --example net_demo -- [COMMAND...]`
//! (default command: `busybox nslookup deb.debian.org`). Uses a temporary BERTH_HOME.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use berth_runtime::net::{EnvNamespaces, Network, NetworkOptions};
use berth_runtime::state::BerthHome;
use envfile_spec::plan::NetworkMode;

fn main() {
    let mut cmd: Vec<String> = std::env::args().skip(1).collect();
    if cmd.is_empty() {
        cmd = ["busybox", "nslookup", "deb.debian.org"]
            .map(String::from)
            .to_vec();
    }
    let ns = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        File::open("/proc/thread-self/ns/net").expect("open netns")
    })
    .join()
    .unwrap();
    let home_dir = std::env::temp_dir().join(format!("berth-net-demo-{}", std::process::id()));
    let home = BerthHome::at(&home_dir).unwrap();
    let net = Network::new(&home, NetworkOptions::default());
    let att = match net.attach(
        "net-demo",
        EnvNamespaces {
            net: &ns,
            user: None,
        },
        NetworkMode::Isolated,
        &[],
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("attach failed: {e}");
            let _ = std::fs::remove_dir_all(&home_dir);
            std::process::exit(1);
        }
    };
    println!("address {:?}, gateway {:?}", att.address, att.gateway);
    println!(
        "resolv.conf:\n{}",
        att.resolv_conf.as_deref().unwrap_or("(host's)")
    );
    // The command sees the environment's resolv.conf through a private mount namespace.
    let resolv = home_dir.join("resolv.conf");
    std::fs::write(&resolv, att.resolv_conf.as_deref().unwrap_or("")).unwrap();
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/resolv.conf && exec nsenter --net=/proc/{}/fd/{} -- \"$@\"",
            resolv.display(),
            std::process::id(),
            ns.as_raw_fd()
        ))
        .arg("sh")
        .args(&cmd)
        .status();
    println!("command: {status:?}");
    drop(att);
    if let Err(e) = net.detach("net-demo") {
        eprintln!("detach failed: {e}");
    }
    let _ = std::fs::remove_dir_all(&home_dir);
}
