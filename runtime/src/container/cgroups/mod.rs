//! Control groups of one environment: memory, cpu quota/period and pids limits, the device
//! allowlist, live usage, the process list for a complete kill, removal. One trait, [`Cgroup`], with a v1 ([`v1::CgroupV1`])
//! and a v2 ([`v2::CgroupV2`]) implementation. Environments are created nested under the cgroup
//! berth itself runs in (from `/proc/self/cgroup`), as `<that>/berth/<env-id>`.

pub mod device_bpf;
pub mod v1;
pub mod v2;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envfile_spec::plan::Resources;

use super::devices::DeviceRule;
use super::error::{ContainerError, Context, Result};
/// Where an environment's cgroups live: the layout is a host probe, read by one parser.
pub use crate::host::cgroup_layout::CgroupLayout;
use crate::host::cgroup_layout::CgroupLayoutError;
#[cfg(test)]
use crate::host::cgroup_layout::{join_cgroup, parse_cgroup_mounts, parse_proc_cgroup};

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

/// The name of an environment's cgroup (below `berth/`): its id plus a digest of its state
/// folder, because environments of different berth homes (two CI jobs running one project)
/// share an id, and commands run from one shell share the cgroup they nest under: a `down`
/// in one home must never kill the other home's processes.
pub fn env_cgroup_name(env_id: &str, state_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    format!("{env_id}-{}", &hex::encode(d)[..8])
}

impl From<CgroupLayoutError> for ContainerError {
    fn from(e: CgroupLayoutError) -> Self {
        match e {
            CgroupLayoutError::Read { path, source } => {
                ContainerError::io(format!("cannot read {path}"), source)
            }
            e @ CgroupLayoutError::NoCgroupFilesystem => ContainerError::Setup(e.to_string()),
        }
    }
}

/// The controller code for a recorded layout (an inherent method of the host type, defined
/// here beside the drivers it picks).
impl CgroupLayout {
    pub fn driver(&self) -> Box<dyn Cgroup> {
        match self {
            CgroupLayout::V1 { dirs } => Box::new(v1::CgroupV1::new(dirs.clone())),
            CgroupLayout::V2 { dir } => Box::new(v2::CgroupV2::new(dir.clone())),
        }
    }
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

    #[test]
    fn one_project_in_two_homes_gets_two_cgroups() {
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
