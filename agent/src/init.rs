//! PID 1 duties: early mounts, kernel modules, root disk and switch_root, then serving; on
//! poweroff (or a fatal error) the VM is stopped so the VMM exits.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::channel::open_control_channels;
use crate::serve::Server;
use crate::sys;

const MODULE_LIST: &str = "/berth/modules";
const NEW_ROOT: &str = "/newroot";

fn log(msg: &str) {
    // The kernel console (serial) is the only log before the control channel exists.
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        // Level 3 (error): shown on the console even with `quiet`.
        let _ = sys::write_all(f.as_raw_fd(), format!("<3>berth-agent: {msg}\n").as_bytes());
    } else {
        eprintln!("berth-agent: {msg}");
    }
}

fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|a| {
        a.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(str::to_string)
    })
}

fn mount_basics(root: &str) {
    let m = |src: &str, dst: &str, fs: &str, flags: libc::c_ulong, data: &str| {
        let target = format!("{root}{dst}");
        let _ = std::fs::create_dir_all(&target);
        if let Err(e) = sys::mount(src, &target, fs, flags, data) {
            if e.raw_os_error() != Some(libc::EBUSY) {
                log(&format!("cannot mount {fs} on {target}: {e}"));
            }
        }
    };
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    m("proc", "/proc", "proc", nosuid, "");
    m("sysfs", "/sys", "sysfs", nosuid, "");
    m("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    );
    m(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
    m(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    );
    m(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    );
}

/// `module.param=value` words of the kernel command line for `module`, as the parameter string
/// finit_module takes (modprobe does this for loadable modules; the kernel only applies them
/// to built-in ones). `virtio_mmio.device=` is how the VMM announces its devices.
fn module_params(cmdline: &str, module: &str) -> String {
    let prefix = format!("{module}.");
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `/lib/modules/02-virtio_mmio.ko` → `virtio_mmio`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    let file = file.strip_suffix(".ko").unwrap_or(file);
    file.split_once('-').map_or(file, |(_, n)| n)
}

fn load_modules() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return;
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("cannot open module {path}: {e}"));
                continue;
            }
        };
        let Ok(params) = sys::cstr(&module_params(&cmdline, module_name(path))) else {
            continue;
        };
        // SAFETY: finit_module on an open module file with a NUL-terminated parameter string.
        let r =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                log(&format!("cannot load module {path}: {e}"));
            }
        }
    }
}

fn wait_for(path: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::path::Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Mounts `device` and makes it the root, moving the early mounts along.
fn switch_root(device: &str, fstype: &str) -> io::Result<()> {
    std::fs::create_dir_all(NEW_ROOT)?;
    sys::mount(device, NEW_ROOT, fstype, 0, "")?;
    for m in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
        let target = format!("{NEW_ROOT}{m}");
        let _ = std::fs::create_dir_all(&target);
        if sys::mount(m, &target, "", libc::MS_MOVE, "").is_err() {
            if let Ok(c) = sys::cstr(m) {
                // SAFETY: umount2 with a valid path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
    std::env::set_current_dir(NEW_ROOT)?;
    sys::mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot = sys::cstr(".")?;
    // SAFETY: chroot to the current directory with a valid path.
    sys::check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")?;
    Ok(())
}

fn stop_vm() -> ! {
    // SAFETY: sync and reboot have no memory arguments. With `reboot=k` the kernel resets the
    // machine through the keyboard controller, which ends berth's VMM and qemu `-no-reboot`.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn run_as_init() -> ! {
    mount_basics("");
    load_modules();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let root = cmdline_value(&cmdline, "berth.root").unwrap_or_else(|| "/dev/vda".into());
    if root != "none" {
        let fstype = cmdline_value(&cmdline, "berth.rootfstype").unwrap_or_else(|| "ext4".into());
        if !wait_for(&root, Duration::from_secs(10)) {
            log(&format!(
                "root disk {root} did not appear (is virtio_blk loaded? CONFIG_VIRTIO_BLK)"
            ));
            stop_vm();
        }
        if let Err(e) = switch_root(&root, &fstype) {
            log(&format!("cannot switch to the root disk {root}: {e}"));
            stop_vm();
        }
        mount_basics("");
    }
    if let Some(h) = cmdline_value(&cmdline, "berth.hostname") {
        // SAFETY: pointer and length of a valid byte string.
        unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) };
    }
    if let Err(e) = crate::net::configure(&cmdline) {
        log(&format!("network setup failed: {e}"));
    }
    let channels = match open_control_channels(Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            log(&e.to_string());
            stop_vm();
        }
    };
    log(&format!("ready after {} ms", sys::uptime_ms()));
    let mut server = Server::new();
    if let Err(e) = server.run(channels) {
        log(&format!("control channel failed: {e}"));
    }
    stop_vm();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cmdline_values() {
        let c = "console=ttyS0 berth.root=/dev/vdb berth.hostname=web quiet";
        assert_eq!(cmdline_value(c, "berth.root").as_deref(), Some("/dev/vdb"));
        assert_eq!(cmdline_value(c, "berth.hostname").as_deref(), Some("web"));
        assert_eq!(cmdline_value(c, "berth.rootfstype"), None);
    }

    #[test]
    fn module_parameters_from_cmdline() {
        let c = "quiet virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0000000:5 virtio_blk.x=1";
        assert_eq!(
            module_params(c, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=4K@0xd0000000:5"
        );
        assert_eq!(module_params(c, "ext4"), "");
        assert_eq!(module_name("/lib/modules/02-virtio_mmio.ko"), "virtio_mmio");
        assert_eq!(
            module_name("/lib/modules/10-vmw_vsock_virtio_transport.ko"),
            "vmw_vsock_virtio_transport"
        );
    }
}
