//! Control groups of one environment: memory, cpu quota/period and pids limits, the device
//! allowlist, live usage, the process list for a complete kill, removal. One trait, [`Cgroup`], with a v1 ([`v1::CgroupV1`])
//! and a v2 ([`v2::CgroupV2`]) implementation. Environments are created nested under the cgroup
//! berth itself runs in (from `/proc/self/cgroup`), as `<that>/berth/<env-id>`.

pub mod device_bpf;
pub mod v1;
pub mod v2;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envfile_spec::plan::Resources;
use serde::{Deserialize, Serialize};

use super::devices::DeviceRule;
use super::error::{ContainerError, Context, Result};

use crate::backend::Usage;

/// The operations the backend needs on an environment's cgroup(s).
pub trait Cgroup {
    /// Creates the directories (idempotent).
    fn create(&self) -> Result<()>;
    /// Writes the limits; a `None` limit is left unlimited.
    fn apply(&self, resources: &Resources) -> Result<()>;
    /// Denies every device except `rules` (v1 `devices.deny`/`devices.allow`, v2 an eBPF
    /// device program). Called once, on the fresh cgroup, before any process joins.
    fn restrict_devices(&self, rules: &[DeviceRule]) -> Result<()>;
    /// Moves a process (and so all its future children) in.
    fn join(&self, pid: i32) -> Result<()>;
    /// Processes currently inside.
    fn procs(&self) -> Vec<i32>;
    fn usage(&self) -> Usage;
    /// Removes the directories; fails with EBUSY while processes remain.
    fn remove(&self) -> Result<()>;
    /// Every directory this cgroup owns (for state files and leak checks).
    fn dirs(&self) -> Vec<PathBuf>;
    /// Files a single-threaded process writes "0" to in order to move itself in, cheaply.
    fn self_join_files(&self) -> Vec<PathBuf>;
    /// Freezes (or thaws) every process inside and returns once the kernel reports the new
    /// state, so a snapshot sees a writable layer nobody is changing.
    fn set_frozen(&self, frozen: bool) -> Result<()>;
}

/// Polls `read` until it returns true (a freezer state change), for at most `limit`.
pub(crate) fn wait_until(limit: std::time::Duration, mut read: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    loop {
        if read() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Where an environment's cgroups live; recorded in state.json before they are created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version", rename_all = "lowercase")]
pub enum CgroupLayout {
    /// One directory per v1 hierarchy, keyed by controller name.
    V1 {
        dirs: BTreeMap<String, PathBuf>,
    },
    V2 {
        dir: PathBuf,
    },
}

/// v1 controllers berth uses.
pub const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

/// The name of an environment's cgroup (below `berth/`): its id plus a digest of its state
/// folder, because environments of different berth homes (two CI jobs running one project)
/// share an id, and commands run from one shell share the cgroup they nest under: a `down`
/// in one home must never kill the other home's processes.
pub fn env_cgroup_name(env_id: &str, state_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("{env_id}-{}", &hex::encode(d)[..8])
}

impl CgroupLayout {
    /// The layout for the cgroup `name` ([`env_cgroup_name`]) on this host, below the cgroup
    /// of the calling process.
    pub fn discover(name: &str) -> Result<CgroupLayout> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .context(|| "cannot read /proc/self/mountinfo".to_string())?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .context(|| "cannot read /proc/self/cgroup".to_string())?;
        Self::from_tables(&mountinfo, &own, name)
    }

    /// Pure part of [`discover`](Self::discover): the tables as text.
    pub fn from_tables(mountinfo: &str, proc_cgroup: &str, env_id: &str) -> Result<CgroupLayout> {
        let mounts = parse_cgroup_mounts(mountinfo);
        let own = parse_proc_cgroup(proc_cgroup);
        let leaf = Path::new("berth").join(env_id);
        let has_v1_memory = mounts
            .iter()
            .any(|m| m.controllers.iter().any(|c| c == "memory"));
        if has_v1_memory {
            let mut dirs = BTreeMap::new();
            for ctrl in V1_CONTROLLERS {
                let Some(m) = mounts
                    .iter()
                    .find(|m| m.controllers.iter().any(|c| c == ctrl))
                else {
                    continue;
                };
                let Some(path) = own
                    .iter()
                    .find(|(cs, _)| cs.iter().any(|c| c == ctrl))
                    .map(|(_, p)| p)
                else {
                    continue;
                };
                dirs.insert(
                    ctrl.to_string(),
                    join_cgroup(&m.mount_point, &m.root, path).join(&leaf),
                );
            }
            return Ok(CgroupLayout::V1 { dirs });
        }
        let m = mounts.iter().find(|m| m.v2).ok_or_else(|| {
            ContainerError::Setup(
                "no cgroup filesystem is mounted; mount cgroup2 at /sys/fs/cgroup".into(),
            )
        })?;
        let path = own
            .iter()
            .find(|(cs, _)| cs.is_empty())
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into());
        Ok(CgroupLayout::V2 {
            dir: join_cgroup(&m.mount_point, &m.root, &path).join(leaf),
        })
    }

    pub fn driver(&self) -> Box<dyn Cgroup> {
        match self {
            CgroupLayout::V1 { dirs } => Box::new(v1::CgroupV1::new(dirs.clone())),
            CgroupLayout::V2 { dir } => Box::new(v2::CgroupV2::new(dir.clone())),
        }
    }
}

pub(crate) fn join_cgroup(mount_point: &Path, mount_root: &str, own: &str) -> PathBuf {
    let rel = own
        .strip_prefix(mount_root)
        .unwrap_or(own)
        .trim_start_matches('/');
    if rel.is_empty() {
        mount_point.to_path_buf()
    } else {
        mount_point.join(rel)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    pub mount_point: PathBuf,
    pub root: String,
    pub v2: bool,
    pub controllers: Vec<String>,
}

pub(crate) fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let controllers = if fstype == "cgroup" {
            post[2]
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape_mountinfo(pre[4])),
            root: unescape_mountinfo(pre[3]),
            v2: fstype == "cgroup2",
            controllers,
        });
    }
    out
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `(controllers, path)` per line of /proc/<pid>/cgroup; v2's line has no controllers.
pub(crate) fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let cs = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| c.trim_start_matches("name=").to_string())
                .collect();
            Some((cs, path.to_string()))
        })
        .collect()
}

/// Kills every process in the cgroup with SIGKILL until it is empty (or `timeout` passes),
/// then removes it. Returns the processes that would not die, if any.
pub fn kill_and_remove(cg: &dyn Cgroup, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let procs = cg.procs();
        if procs.is_empty() {
            break;
        }
        for p in &procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if Instant::now() > deadline {
            return Err(ContainerError::Setup(format!(
                "processes {procs:?} of the environment survive SIGKILL; they may be stuck in the kernel (D state); try `berth down` again later"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    loop {
        match cg.remove() {
            Ok(()) => return Ok(()),
            Err(ContainerError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// `create_dir_all` that tolerates another environment removing the shared `berth/` parent
/// between its steps (each environment removes that parent when it looks empty).
pub(crate) fn create_cgroup_dir(dir: &Path) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        match fs::create_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 10 => attempt += 1,
            r => return r,
        }
    }
}

pub(crate) fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    fs::write(&p, value).context(|| format!("cannot write {value:?} to {}", p.display()))
}

pub(crate) fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

/// A `key value` line of a flat-keyed cgroup file (memory.events, cpu.stat, memory.oom_control).
pub(crate) fn read_keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

pub(crate) fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

pub(crate) fn rmdir(dir: &Path) -> Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ContainerError::path_io("cannot remove cgroup", dir, e)),
    }
}

/// Removes `berth/` below the parent when no other environment uses it (best effort).
pub(crate) fn remove_empty_parent(dir: &Path) {
    if let Some(parent) = dir.parent() {
        if parent.file_name().is_some_and(|n| n == "berth") {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
34 25 0:29 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
35 34 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
36 34 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
39 34 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 34 0:35 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
41 34 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
";

    #[test]
    fn hybrid_host_gets_v1_dirs_nested_under_own_cgroup() {
        let l = CgroupLayout::from_tables(HYBRID_MOUNTINFO, HYBRID_SELF, "web-1").unwrap();
        let CgroupLayout::V1 { dirs } = l else {
            panic!("expected v1: {l:?}")
        };
        assert_eq!(
            dirs["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc/berth/web-1")
        );
        assert_eq!(
            dirs["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/web-1")
        );
        assert_eq!(dirs["cpuacct"], dirs["cpu"]);
        assert_eq!(
            dirs["pids"],
            PathBuf::from("/sys/fs/cgroup/pids/berth/web-1")
        );
        assert!(!dirs.contains_key("freezer"));
    }

    #[test]
    fn pure_v2_host_and_namespaced_root() {
        let mi = "30 1 0:26 /ns /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = CgroupLayout::from_tables(mi, "0::/ns/user.slice/x.scope\n", "e").unwrap();
        assert_eq!(
            l,
            CgroupLayout::V2 {
                dir: PathBuf::from("/sys/fs/cgroup/user.slice/x.scope/berth/e")
            }
        );
        assert!(CgroupLayout::from_tables("", "0::/\n", "e").is_err());
        let a = env_cgroup_name("web-1", Path::new("/ci/job1/envs/web-1"));
        let b = env_cgroup_name("web-1", Path::new("/ci/job2/envs/web-1"));
        assert!(a.starts_with("web-1-") && b.starts_with("web-1-"));
        assert_ne!(a, b, "one project in two homes gets two cgroups");
    }

    #[test]
    fn keyed_files_are_parsed() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(read_keyed(d.path(), "memory.events", "oom_kill"), Some(2));
        assert_eq!(read_keyed(d.path(), "memory.events", "nope"), None);
        assert_eq!(read_keyed(d.path(), "missing", "oom"), None);
    }
}

#[cfg(test)]
mod device_tests;
