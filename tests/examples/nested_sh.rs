//! Boots the nested guest L1 (`berth_e2e::nested`: qemu TCG with emulated KVM, the host's
//! root shared read-only) and runs a shell command line in it; prints its output and exits
//! with its exit code. For scripts such as `bench/vm.sh nested`.
//!
//!   nested_sh [--limit SECONDS] COMMAND...     (default limit: 1800 s)

use std::time::Duration;

use berth_e2e::nested::{Options, L1};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut limit = Duration::from_secs(1800);
    if args.first().map(String::as_str) == Some("--limit") {
        let secs = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage("--limit needs a number of seconds"));
        limit = Duration::from_secs(secs);
        args.drain(..2);
    }
    if args.is_empty() {
        usage("no command");
    }
    if let Some(why) = L1::unavailable() {
        eprintln!("nested_sh: cannot boot L1: {why}");
        std::process::exit(2);
    }
    let code = {
        let mut l1 = L1::boot(&Options::default());
        let o = l1.sh(&args.join(" "), limit);
        print!("{}", o.output);
        if !o.success() {
            eprintln!("{}", l1.failure(&args.join(" "), &o));
        }
        o.code
        // L1 is dropped here: qemu and virtiofsd stopped, its files removed.
    };
    std::process::exit(code);
}

fn usage(why: &str) -> ! {
    eprintln!("nested_sh: {why}\nusage: nested_sh [--limit SECONDS] COMMAND...");
    std::process::exit(2);
}
