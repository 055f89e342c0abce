//! cgroup v1: one directory per hierarchy (memory, cpu, cpuacct, pids, freezer, devices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envfile_spec::plan::Resources;

use super::{
    read_keyed, read_procs, read_u64, remove_empty_parent, rmdir, write_file, Cgroup, Usage,
};
use crate::container::devices::DeviceRule;
use crate::container::error::{Context, Result};

/// CFS period berth uses for CPU quotas, microseconds.
pub const CFS_PERIOD_US: u64 = 100_000;

pub struct CgroupV1 {
    dirs: BTreeMap<String, PathBuf>,
}

impl CgroupV1 {
    pub fn new(dirs: BTreeMap<String, PathBuf>) -> Self {
        CgroupV1 { dirs }
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(PathBuf::as_path)
    }

    /// Distinct directories (co-mounted controllers share one).
    fn unique_dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.dirs.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// `cpu.cfs_quota_us` for a CPU limit in cores.
pub fn cfs_quota_us(cpus: f64) -> u64 {
    ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000)
}

impl Cgroup for CgroupV1 {
    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let d = self.dir("freezer").ok_or_else(|| missing("freezer"))?;
        let want = if frozen { "FROZEN" } else { "THAWED" };
        write_file(d, "freezer.state", want)?;
        let state = d.join("freezer.state");
        let done = super::wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&state).is_ok_and(|s| s.trim() == want)
        });
        if done {
            Ok(())
        } else {
            Err(crate::container::error::ContainerError::Invalid(format!(
                "the freezer cgroup {} did not reach {want} within 10 s; try again, or stop the environment first",
                d.display()
            )))
        }
    }

    fn create(&self) -> Result<()> {
        for d in self.unique_dirs() {
            super::create_cgroup_dir(&d).context(|| {
                format!("cannot create cgroup {}; berth needs root (or a delegated cgroup) for resource limits", d.display())
            })?;
        }
        Ok(())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        if let Some(mem) = r.memory {
            let d = self.dir("memory").ok_or_else(|| missing("memory"))?;
            write_file(d, "memory.limit_in_bytes", &mem.to_string())?;
            // Without this the limit only bounds RAM and the workload swaps instead of dying.
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write_file(d, "memory.memsw.limit_in_bytes", &mem.to_string())?;
            }
        }
        if let Some(cpus) = r.cpus {
            let d = self.dir("cpu").ok_or_else(|| missing("cpu"))?;
            write_file(d, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
            write_file(d, "cpu.cfs_quota_us", &cfs_quota_us(cpus).to_string())?;
        }
        if let Some(pids) = r.pids {
            let d = self.dir("pids").ok_or_else(|| missing("pids"))?;
            write_file(d, "pids.max", &pids.to_string())?;
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: &[DeviceRule]) -> Result<()> {
        let d = self.dir("devices").ok_or_else(|| {
            crate::container::error::ContainerError::Setup(
                "the devices cgroup controller is not mounted on this host, so berth cannot keep environments from opening host devices; mount it (`mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices`) or use cgroup v2".into(),
            )
        })?;
        write_file(d, "devices.deny", "a")?;
        for r in rules {
            write_file(d, "devices.allow", &r.v1_line())?;
        }
        Ok(())
    }

    fn join(&self, pid: i32) -> Result<()> {
        for d in self.unique_dirs() {
            write_file(&d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn procs(&self) -> Vec<i32> {
        let mut all: Vec<i32> = self
            .unique_dirs()
            .iter()
            .flat_map(|d| read_procs(d))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn usage(&self) -> Usage {
        let mem = self.dir("memory");
        Usage {
            memory_current: mem.and_then(|d| read_u64(d, "memory.usage_in_bytes")),
            memory_peak: mem.and_then(|d| read_u64(d, "memory.max_usage_in_bytes")),
            cpu_usage_ns: self
                .dir("cpuacct")
                .and_then(|d| read_u64(d, "cpuacct.usage")),
            pids_current: self.dir("pids").and_then(|d| read_u64(d, "pids.current")),
            oom_kills: mem.and_then(|d| read_keyed(d, "memory.oom_control", "oom_kill")),
        }
    }

    fn remove(&self) -> Result<()> {
        for d in self.unique_dirs() {
            rmdir(&d)?;
            remove_empty_parent(&d);
        }
        Ok(())
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.unique_dirs()
    }

    /// `tasks`, not `cgroup.procs`: moving only the calling thread ("0") skips the global
    /// threadgroup lock, whose RCU grace period costs 5-20 ms per start otherwise. For a
    /// single-threaded process (a freshly forked child) that moves the whole process.
    fn self_join_files(&self) -> Vec<PathBuf> {
        self.unique_dirs().iter().map(|d| d.join("tasks")).collect()
    }
}

fn missing(ctrl: &str) -> crate::container::error::ContainerError {
    crate::container::error::ContainerError::Setup(format!(
        "the {ctrl} cgroup controller is not mounted on this host; remove the limit from [resources] or enable the controller"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake() -> (tempfile::TempDir, CgroupV1) {
        let t = tempfile::tempdir().unwrap();
        let mut dirs = BTreeMap::new();
        for c in ["memory", "cpu", "pids"] {
            dirs.insert(c.to_string(), t.path().join(c).join("berth/e"));
        }
        dirs.insert("cpuacct".into(), t.path().join("cpu/berth/e"));
        (t, CgroupV1::new(dirs))
    }

    #[test]
    fn limits_are_written_to_v1_files() {
        let (t, cg) = fake();
        cg.create().unwrap();
        fs::write(
            t.path().join("memory/berth/e/memory.memsw.limit_in_bytes"),
            "",
        )
        .unwrap();
        cg.apply(&Resources {
            memory: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(50),
        })
        .unwrap();
        let rd = |p: &str| fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(rd("memory/berth/e/memory.limit_in_bytes"), "67108864");
        assert_eq!(rd("memory/berth/e/memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(rd("cpu/berth/e/cpu.cfs_quota_us"), "150000");
        assert_eq!(rd("cpu/berth/e/cpu.cfs_period_us"), "100000");
        assert_eq!(rd("pids/berth/e/pids.max"), "50");
        assert_eq!(cg.dirs().len(), 3, "cpu and cpuacct share a dir");
    }

    #[test]
    fn unlimited_writes_nothing_and_usage_reads_files() {
        let (t, cg) = fake();
        cg.create().unwrap();
        cg.apply(&Resources::default()).unwrap();
        assert!(!t
            .path()
            .join("memory/berth/e/memory.limit_in_bytes")
            .exists());
        fs::write(
            t.path().join("memory/berth/e/memory.usage_in_bytes"),
            "4096\n",
        )
        .unwrap();
        fs::write(
            t.path().join("memory/berth/e/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        )
        .unwrap();
        fs::write(t.path().join("pids/berth/e/pids.current"), "7\n").unwrap();
        fs::write(t.path().join("pids/berth/e/cgroup.procs"), "12\n13\n").unwrap();
        let u = cg.usage();
        assert_eq!(u.memory_current, Some(4096));
        assert_eq!(u.oom_kills, Some(3));
        assert_eq!(u.pids_current, Some(7));
        assert_eq!(u.cpu_usage_ns, None);
        assert_eq!(cg.procs(), vec![12, 13]);
    }

    #[test]
    fn quota_has_a_floor() {
        assert_eq!(cfs_quota_us(0.001), 1000);
        assert_eq!(cfs_quota_us(2.0), 200_000);
    }
}
