//! cgroup v2: one directory in the unified hierarchy; controllers enabled in the parent's
//! `cgroup.subtree_control`.

use std::fs;
use std::path::PathBuf;

use envfile_spec::plan::Resources;

use super::v1::{cfs_quota_us, CFS_PERIOD_US};
use super::{
    read_keyed, read_procs, read_u64, remove_empty_parent, rmdir, write_file, Cgroup, Usage,
};
use crate::container::devices::DeviceRule;
use crate::container::error::{ContainerError, Context, Result};

pub struct CgroupV2 {
    dir: PathBuf,
}

impl CgroupV2 {
    pub fn new(dir: PathBuf) -> Self {
        CgroupV2 { dir }
    }

    /// Enables the controllers a limit needs in every ancestor between berth's own cgroup and
    /// this one (`<own>/berth/` and the leaf's parent).
    fn enable_controllers(&self, wanted: &[&str]) -> Result<()> {
        if wanted.is_empty() {
            return Ok(());
        }
        let Some(berth_dir) = self.dir.parent() else {
            return Ok(());
        };
        let Some(own) = berth_dir.parent() else {
            return Ok(());
        };
        for d in [own, berth_dir] {
            let available = fs::read_to_string(d.join("cgroup.controllers")).unwrap_or_default();
            let line: Vec<String> = wanted
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            let missing: Vec<&&str> = wanted
                .iter()
                .filter(|c| !available.split_whitespace().any(|a| a == **c))
                .collect();
            if !missing.is_empty() {
                return Err(ContainerError::Setup(format!(
                    "cgroup v2 controllers {missing:?} are not delegated to {}; remove those limits from [resources] or delegate the controllers (systemd: Delegate=yes)",
                    d.display()
                )));
            }
            write_file(d, "cgroup.subtree_control", &line.join(" ")).map_err(|e| match e {
                ContainerError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                    ContainerError::Setup(format!(
                        "cannot enable cgroup controllers in {}: it holds processes itself (cgroup v2 \"no internal processes\" rule); run berth from a cgroup of its own, e.g. `systemd-run --user --scope berth ...`",
                        d.display()
                    ))
                }
                e => e,
            })?;
        }
        Ok(())
    }
}

/// `cpu.max` for a CPU limit in cores.
pub fn cpu_max(cpus: Option<f64>) -> String {
    match cpus {
        Some(c) => format!("{} {CFS_PERIOD_US}", cfs_quota_us(c)),
        None => format!("max {CFS_PERIOD_US}"),
    }
}

impl Cgroup for CgroupV2 {
    fn set_frozen(&self, frozen: bool) -> Result<()> {
        write_file(&self.dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
        let events = self.dir.join("cgroup.events");
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let done = super::wait_until(std::time::Duration::from_secs(10), || {
            std::fs::read_to_string(&events).is_ok_and(|s| s.lines().any(|l| l.trim() == want))
        });
        if done {
            Ok(())
        } else {
            Err(crate::container::error::ContainerError::Invalid(format!(
                "cgroup {} did not reach `{want}` within 10 s; try again, or stop the environment first",
                self.dir.display()
            )))
        }
    }

    fn create(&self) -> Result<()> {
        super::create_cgroup_dir(&self.dir).context(|| {
            format!(
                "cannot create cgroup {}; berth needs root or a delegated cgroup",
                self.dir.display()
            )
        })
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        let mut wanted = Vec::new();
        if r.memory.is_some() {
            wanted.push("memory");
        }
        if r.cpus.is_some() {
            wanted.push("cpu");
        }
        if r.pids.is_some() {
            wanted.push("pids");
        }
        self.enable_controllers(&wanted)?;
        if let Some(mem) = r.memory {
            write_file(&self.dir, "memory.max", &mem.to_string())?;
            if self.dir.join("memory.swap.max").exists() {
                write_file(&self.dir, "memory.swap.max", "0")?;
            }
        }
        if r.cpus.is_some() {
            write_file(&self.dir, "cpu.max", &cpu_max(r.cpus))?;
        }
        if let Some(pids) = r.pids {
            write_file(&self.dir, "pids.max", &pids.to_string())?;
        }
        Ok(())
    }

    fn restrict_devices(&self, rules: &[DeviceRule]) -> Result<()> {
        super::device_bpf::attach(&self.dir, rules)
    }

    fn join(&self, pid: i32) -> Result<()> {
        write_file(&self.dir, "cgroup.procs", &pid.to_string())
    }

    fn procs(&self) -> Vec<i32> {
        read_procs(&self.dir)
    }

    fn usage(&self) -> Usage {
        let d = &self.dir;
        Usage {
            memory_current: read_u64(d, "memory.current"),
            memory_peak: read_u64(d, "memory.peak"),
            cpu_usage_ns: read_keyed(d, "cpu.stat", "usage_usec").map(|u| u * 1000),
            pids_current: read_u64(d, "pids.current"),
            oom_kills: read_keyed(d, "memory.events", "oom_kill"),
        }
    }

    fn remove(&self) -> Result<()> {
        rmdir(&self.dir)?;
        remove_empty_parent(&self.dir);
        Ok(())
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn self_join_files(&self) -> Vec<PathBuf> {
        vec![self.dir.join("cgroup.procs")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_enable_controllers_and_write_v2_files() {
        let t = tempfile::tempdir().unwrap();
        let own = t.path();
        fs::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let leaf = own.join("berth/e");
        let cg = CgroupV2::new(leaf.clone());
        cg.create().unwrap();
        fs::write(own.join("berth/cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(leaf.join("memory.swap.max"), "max").unwrap();
        cg.apply(&Resources {
            memory: Some(1 << 30),
            cpus: Some(0.5),
            pids: Some(9),
        })
        .unwrap();
        let rd = |p: PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(rd(own.join("cgroup.subtree_control")), "+memory +cpu +pids");
        assert_eq!(
            rd(own.join("berth/cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(rd(leaf.join("memory.max")), "1073741824");
        assert_eq!(rd(leaf.join("memory.swap.max")), "0");
        assert_eq!(rd(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(rd(leaf.join("pids.max")), "9");
    }

    #[test]
    fn undelegated_controller_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("cgroup.controllers"), "pids\n").unwrap();
        let cg = CgroupV2::new(t.path().join("berth/e"));
        cg.create().unwrap();
        let e = cg
            .apply(&Resources {
                memory: Some(1),
                cpus: None,
                pids: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("not delegated"), "{e}");
    }

    #[test]
    fn usage_from_v2_files() {
        let t = tempfile::tempdir().unwrap();
        let cg = CgroupV2::new(t.path().to_path_buf());
        fs::write(t.path().join("memory.current"), "100\n").unwrap();
        fs::write(t.path().join("memory.peak"), "200\n").unwrap();
        fs::write(t.path().join("cpu.stat"), "usage_usec 5\nuser_usec 3\n").unwrap();
        fs::write(t.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let u = cg.usage();
        assert_eq!(
            (u.memory_current, u.memory_peak, u.cpu_usage_ns, u.oom_kills),
            (Some(100), Some(200), Some(5000), Some(1))
        );
        assert_eq!(cpu_max(None), "max 100000");
    }
}
