//! Live tests of device control on this host's real cgroups (root only): v1's devices
//! controller and a v2 eBPF device program in the unified hierarchy (on a hybrid host too:
//! the kernel runs the program of a process's v2 cgroup whatever the v1 controllers say).
//! A child process joins the test cgroup and opens a device that is not allowed (`/dev/fuse`,
//! opened and closed, nothing mounted) and one that is (`/dev/null`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::v2::CgroupV2;
use super::{Cgroup, CgroupLayout};
use crate::container::devices::DEFAULT_RULES;

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create cgroups and load device programs");
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs /bin/busybox (busybox-static)");
    }
    None
}

/// A device the default rules do not allow, present on this host.
fn forbidden_device() -> Option<&'static str> {
    ["/dev/fuse", "/dev/net/tun"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Opens `dev` from a child that first moves itself into the cgroup through `join_file`;
/// returns (success, stderr).
fn open_from_cgroup(join_file: &Path, dev: &str) -> (bool, String) {
    let join = CString::new(join_file.as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["head", "-c", "0", dev]);
    // SAFETY: between fork and exec only async-signal-safe calls (open, write, close) on a
    // path allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(join.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("spawn busybox in the test cgroup");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Removes the test cgroup(s) even when an assertion fails.
struct Cleanup(Box<dyn Cgroup>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = super::kill_and_remove(self.0.as_ref(), std::time::Duration::from_secs(5));
    }
}

#[test]
fn v1_devices_controller_denies_what_is_not_allowed() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(forbidden) = forbidden_device() else {
        eprintln!("skipped: neither /dev/fuse nor /dev/net/tun exists here");
        return;
    };
    let layout = CgroupLayout::discover(&format!("devtest-v1-{}", std::process::id())).unwrap();
    let CgroupLayout::V1 { dirs } = &layout else {
        eprintln!("skipped: this host has no cgroup v1 hierarchies");
        return;
    };
    let Some(dev_dir) = dirs.get("devices").cloned() else {
        eprintln!("skipped: the v1 devices controller is not mounted here");
        return;
    };
    let cg = Cleanup(layout.driver());
    cg.0.create().unwrap();
    cg.0.restrict_devices(&DEFAULT_RULES).unwrap();
    let list = std::fs::read_to_string(dev_dir.join("devices.list")).unwrap();
    assert!(
        list.contains("c 1:3 rwm") && !list.contains("a *:* rwm"),
        "{list}"
    );
    let tasks = dev_dir.join("tasks");
    let (ok, err) = open_from_cgroup(&tasks, forbidden);
    assert!(
        !ok && err.contains("Operation not permitted"),
        "{forbidden}: {err}"
    );
    let (ok, err) = open_from_cgroup(&tasks, "/dev/null");
    assert!(ok, "/dev/null: {err}");
}

/// The calling process's cgroup in the v2 hierarchy, or `None` when none is mounted.
fn own_v2_dir() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let m = super::parse_cgroup_mounts(&mountinfo)
        .into_iter()
        .find(|m| m.v2)?;
    let path = super::parse_proc_cgroup(&own)
        .into_iter()
        .find(|(cs, _)| cs.is_empty())
        .map(|(_, p)| p)?;
    Some(super::join_cgroup(&m.mount_point, &m.root, &path))
}

#[test]
fn v2_device_program_denies_what_is_not_allowed_even_on_a_hybrid_host() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(forbidden) = forbidden_device() else {
        eprintln!("skipped: neither /dev/fuse nor /dev/net/tun exists here");
        return;
    };
    let Some(own) = own_v2_dir() else {
        eprintln!("skipped: no cgroup v2 hierarchy is mounted here");
        return;
    };
    let dir = own
        .join("berth")
        .join(format!("devtest-v2-{}", std::process::id()));
    let cg = Cleanup(Box::new(CgroupV2::new(dir.clone())));
    cg.0.create().unwrap();
    cg.0.restrict_devices(&DEFAULT_RULES).unwrap();
    let procs = dir.join("cgroup.procs");
    let (ok, err) = open_from_cgroup(&procs, forbidden);
    assert!(
        !ok && err.contains("Operation not permitted"),
        "{forbidden}: {err}"
    );
    for allowed in ["/dev/null", "/dev/zero", "/dev/urandom"] {
        let (ok, err) = open_from_cgroup(&procs, allowed);
        assert!(ok, "{allowed}: {err}");
    }
    // Outside the cgroup the same device opens: the program is what denied it.
    let o = Command::new("/bin/busybox")
        .args(["head", "-c", "0", forbidden])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", o);
}
