//! berth-agent: berth's helper inside a VM guest.
//!
//! As PID 1 of the initramfs it mounts the basics, loads the kernel modules berth packed
//! (`/berth/modules`), mounts the root disk and switches into it, then serves the control
//! channel (virtio-serial port `berth.0`, else `/dev/hvc0`). With `--serve-fd N` it serves an
//! already-open stream instead (used by tests on the host). `sync-serve --root DIR` serves
//! a synced folder over stdin/stdout (started by the host as an exec session of
//! `/proc/1/exe`; see `sync_serve`).

mod channel;
mod forward;
mod hosts_file;
mod init;
mod net;
mod run_files;
mod serve;
mod spawn;
mod sync_serve;
mod sys;
mod users;

use std::os::fd::{FromRawFd, OwnedFd};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|s| s.as_str()) == Some("sync-serve") {
        std::process::exit(sync_serve::main(&args[2..]));
    }
    if let Some(pos) = args.iter().position(|a| a == "--serve-fd") {
        let fd: i32 = match args.get(pos + 1).and_then(|s| s.parse().ok()) {
            Some(fd) => fd,
            None => {
                eprintln!("berth-agent: --serve-fd needs a file descriptor number");
                std::process::exit(2);
            }
        };
        // SAFETY: the caller hands us this descriptor to own.
        let stream = unsafe { OwnedFd::from_raw_fd(fd) };
        let code = match serve::Server::new().run(vec![channel::Channel::Stream(stream)]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("berth-agent: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    if std::process::id() != 1 {
        eprintln!("berth-agent: run me as PID 1 in a berth VM, or with --serve-fd N");
        std::process::exit(2);
    }
    init::run_as_init();
}
