//! How cgroups are mounted on this host, from `/proc/self/mountinfo` (one parser for every
//! reader): where an environment's cgroups go ([`CgroupLayout`], nested below the cgroup of
//! the calling process, recorded in the container's `state.json`), and which controllers the
//! host offers ([`HostCgroups`], for `berth doctor`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::probe::HostRoot;

/// Why the cgroup layout could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CgroupLayoutError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: io::Error,
    },
    #[error("no cgroup filesystem is mounted; mount cgroup2 at /sys/fs/cgroup")]
    NoCgroupFilesystem,
}

/// v1 controllers berth uses.
pub const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"];

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

impl CgroupLayout {
    /// The layout for the cgroup `name` (`container::cgroups::env_cgroup_name`) on this host, below the cgroup
    /// of the calling process.
    pub fn discover(name: &str) -> Result<CgroupLayout, CgroupLayoutError> {
        let read = |path: &'static str| {
            fs::read_to_string(path).map_err(|source| CgroupLayoutError::Read { path, source })
        };
        Self::from_tables(
            &read("/proc/self/mountinfo")?,
            &read("/proc/self/cgroup")?,
            name,
        )
    }

    /// Pure part of [`discover`](Self::discover): the tables as text.
    pub fn from_tables(
        mountinfo: &str,
        proc_cgroup: &str,
        env_id: &str,
    ) -> Result<CgroupLayout, CgroupLayoutError> {
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
        let m = mounts
            .iter()
            .find(|m| m.v2)
            .ok_or(CgroupLayoutError::NoCgroupFilesystem)?;
        let path = own
            .iter()
            .find(|(cs, _)| cs.is_empty())
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into());
        Ok(CgroupLayout::V2 {
            dir: join_cgroup(&m.mount_point, &m.root, &path).join(leaf),
        })
    }
}

pub fn join_cgroup(mount_point: &Path, mount_root: &str, own: &str) -> PathBuf {
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
pub struct CgroupMount {
    pub mount_point: PathBuf,
    pub root: String,
    pub v2: bool,
    pub controllers: Vec<String>,
}

pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
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
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
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

/// v1 controllers `berth doctor` reports (berth's own, and the other common ones).
const REPORTED_V1_CONTROLLERS: [&str; 11] = [
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "freezer",
    "cpuset",
    "blkio",
    "devices",
    "hugetlb",
    "net_cls",
    "perf_event",
];

/// Which cgroup controllers this host offers, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCgroups {
    /// v1 controllers mounted (`memory`, `cpu`, `pids`, ...), sorted.
    pub v1_controllers: Vec<String>,
    /// Mount point of the cgroup2 hierarchy, if any.
    pub v2_mount: Option<PathBuf>,
    /// Controllers enabled in the cgroup2 hierarchy.
    pub v2_controllers: Vec<String>,
}

impl HostCgroups {
    /// Reads the cgroup mounts of `host` from its `/proc/self/mountinfo`.
    pub fn read(host: &HostRoot) -> HostCgroups {
        let mounts = parse_cgroup_mounts(&host.read("/proc/self/mountinfo").unwrap_or_default());
        let mut v1: Vec<String> = mounts
            .iter()
            .filter(|m| !m.v2)
            .flat_map(|m| m.controllers.iter())
            .filter(|c| REPORTED_V1_CONTROLLERS.contains(&c.as_str()))
            .cloned()
            .collect();
        v1.sort();
        v1.dedup();
        let v2_mount = mounts.iter().rfind(|m| m.v2).map(|m| m.mount_point.clone());
        let v2_controllers = v2_mount
            .as_ref()
            .and_then(|m| host.read(m.join("cgroup.controllers")))
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        HostCgroups {
            v1_controllers: v1,
            v2_mount,
            v2_controllers,
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
        assert!(matches!(
            CgroupLayout::from_tables("", "0::/\n", "e"),
            Err(CgroupLayoutError::NoCgroupFilesystem)
        ));
    }

    #[test]
    fn the_host_summary_reads_the_same_table() {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w("proc/self/mountinfo", HYBRID_MOUNTINFO);
        w("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb pids\n");
        let c = HostCgroups::read(&HostRoot::fake(d.path()));
        assert_eq!(c.v1_controllers, ["cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(c.v2_mount, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(c.v2_controllers, ["hugetlb", "pids"]);
        w("proc/self/mountinfo", "");
        let none = HostCgroups::read(&HostRoot::fake(d.path()));
        assert!(none.v1_controllers.is_empty() && none.v2_mount.is_none());
    }
}
