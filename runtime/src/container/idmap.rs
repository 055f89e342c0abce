//! User and group id mappings of the environment's user namespace and writing them (directly
//! or through newuidmap/newgidmap), plus the mappings derived from them for bind mounts and
//! shared folders. Choosing a mapping is [`idmap_choice`](super::idmap_choice); the id-mapped
//! mounts themselves are [`mount_api`](super::mount_api).

use std::fs;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::error::{ContainerError, Context, Result};

pub use super::idmap_choice::{
    all_subid_ranges, choose, parse_subid, root_fallback_start, Invoker, ROOT_FALLBACK_COUNT,
    ROOT_FALLBACK_START,
};
pub use super::mount_api::{attach_clone, idmapped_bind, user_namespace_with, CloneFlags};
pub(crate) use super::mount_api::{
    MountAttr, AT_RECURSIVE, MOUNT_ATTR_RDONLY, MOVE_MOUNT_F_EMPTY_PATH, OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
};

/// `count` ids starting at `inside` in the namespace are `outside`.. on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the maps get written into `/proc/<pid>/{uid,gid}_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapWriter {
    /// Written by berth itself: host root, or a single-id map of the caller's own ids.
    Direct,
    /// Through the setuid helpers newuidmap/newgidmap (rootless with /etc/subuid ranges).
    NewIdMap,
}

/// A complete mapping for one user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    pub writer: MapWriter,
    /// setgroups(2) must be denied before a single-id map can be written by an unprivileged
    /// user, and stays denied inside.
    #[serde(default)]
    pub deny_setgroups: bool,
}

impl IdMapping {
    /// The host id that an id inside maps to.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        map_one(&self.uids, inside)
    }
    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        map_one(&self.gids, inside)
    }
    /// The id inside that host uid `host` appears as, if the mapping covers it.
    pub fn inside_uid(&self, host: u32) -> Option<u32> {
        map_back(&self.uids, host)
    }
    pub fn inside_gid(&self, host: u32) -> Option<u32> {
        map_back(&self.gids, host)
    }
    /// Whether a gid inside has a host counterpart (e.g. gid 5 `tty` for devpts).
    pub fn has_gid(&self, inside: u32) -> bool {
        self.host_gid(inside).is_some()
    }
    /// A single-id map cannot call setgroups(2): "deny" must be written first.
    pub fn needs_setgroups_deny(&self) -> bool {
        self.deny_setgroups
    }

    /// The text for `/proc/<pid>/uid_map`.
    pub fn uid_map_text(&self) -> String {
        map_text(&self.uids)
    }
    pub fn gid_map_text(&self) -> String {
        map_text(&self.gids)
    }

    /// Writes the maps of process `pid` (which has just unshared its user namespace).
    pub fn write_for(&self, pid: i32) -> Result<()> {
        match self.writer {
            MapWriter::Direct => {
                if self.needs_setgroups_deny() {
                    let p = format!("/proc/{pid}/setgroups");
                    fs::write(&p, "deny").context(|| format!("cannot write {p}"))?;
                }
                for (file, text) in [
                    ("uid_map", self.uid_map_text()),
                    ("gid_map", self.gid_map_text()),
                ] {
                    let p = format!("/proc/{pid}/{file}");
                    fs::write(&p, text.as_bytes()).context(|| {
                        format!(
                            "cannot write the user namespace map {p} ({})",
                            text.trim().replace('\n', "; ")
                        )
                    })?;
                }
                Ok(())
            }
            MapWriter::NewIdMap => {
                run_map_helper("newuidmap", pid, &self.uids)?;
                run_map_helper("newgidmap", pid, &self.gids)
            }
        }
    }
}

#[cfg(test)]
impl IdMapping {
    /// Ids 0..65536 inside mapped to `outside..outside+65536` on the host, for both users and
    /// groups, written directly (a root-range environment's mapping, for tests).
    pub(crate) fn root_range(outside: u32) -> IdMapping {
        let r = vec![IdRange {
            inside: 0,
            outside,
            count: 65536,
        }];
        IdMapping {
            uids: r.clone(),
            gids: r,
            writer: MapWriter::Direct,
            deny_setgroups: false,
        }
    }
}

impl IdMapping {
    /// The mapping of an id-mapped bind mount of a host folder owned by `owner_uid` /
    /// `owner_gid` (a user's, or root's when no other local user can reach the folder: see
    /// `root_bind`): the environment's root reads and writes it as that owner,
    /// and every other id of the environment as its own host id (the environment's
    /// unprivileged range). No other host id is mapped, so files of other host users (root
    /// included) appear as the overflow id, and nothing inside can create a file, change an
    /// owner or set a setuid/setgid bit for a host id outside {owner, the environment's range}.
    ///
    /// An id-mapped mount translates an on-disk id `d` to the kernel id the mount's user
    /// namespace maps `d` to, so the namespace returned here has `inside` = the on-disk id and
    /// `outside` = the environment's host id.
    pub fn for_bind_owner(&self, owner_uid: u32, owner_gid: u32) -> IdMapping {
        IdMapping {
            uids: owner_ranges(&self.uids, owner_uid),
            gids: with_root_group_alias(owner_ranges(&self.gids, owner_gid)),
            writer: MapWriter::Direct,
            deny_setgroups: false,
        }
    }
}

/// The host group the environment's root gets on a bind mount of a folder owned by
/// `uid`:`gid` (a container's id-mapped mount, a VM's virtio-fs share): the folder's group, or
/// the owner's primary group when the folder belongs to group root (so nothing inside can
/// create a setgid-root file), or the owner's uid as a private group id when that is root too.
pub fn owner_group(uid: u32, gid: u32) -> u32 {
    if gid != 0 {
        return gid;
    }
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.gid.as_raw())
        .filter(|g| *g != 0)
        .unwrap_or(uid)
}

impl IdMapping {
    /// The user namespace of a process that serves a host folder owned by `owner_uid` /
    /// `owner_gid` (both non-zero) for the environment (a VM's virtiofsd): its root is the
    /// owner, so what the environment's root creates belongs to the owner on the host and a
    /// setuid bit it sets gives at most the owner's rights; every other id keeps its host id of
    /// this (the environment's) mapping, minus the owner's. Host root and every other host
    /// user are not mapped: the process has no capability over their files, which it sees as
    /// the overflow id.
    ///
    /// Unlike [`for_bind_owner`](Self::for_bind_owner) (an id-mapped mount: `inside` is the
    /// on-disk id), this is a process's namespace: `inside` is the id the process acts as.
    pub fn for_share_owner(&self, owner_uid: u32, owner_gid: u32) -> IdMapping {
        let swap_root = |ranges: &[IdRange], owner: u32| {
            let mut out = vec![IdRange {
                inside: 0,
                outside: owner,
                count: 1,
            }];
            for r in ranges {
                // This range's ids but 0 (now the owner) and whichever maps to the owner.
                let mut cuts: Vec<u32> = [0u32]
                    .into_iter()
                    .chain(map_back(std::slice::from_ref(r), owner))
                    .filter(|c| *c >= r.inside && *c - r.inside < r.count)
                    .collect();
                cuts.sort_unstable();
                cuts.dedup();
                let mut start = u64::from(r.inside);
                let end = start + u64::from(r.count);
                for cut in cuts.into_iter().map(u64::from).chain([end]) {
                    if cut > start {
                        out.push(IdRange {
                            inside: start as u32,
                            outside: r.outside + (start - u64::from(r.inside)) as u32,
                            count: (cut - start) as u32,
                        });
                    }
                    start = cut + 1;
                }
            }
            out
        };
        IdMapping {
            uids: swap_root(&self.uids, owner_uid),
            gids: swap_root(&self.gids, owner_gid),
            writer: MapWriter::Direct,
            deny_setgroups: false,
        }
    }
}

/// The overflow group: the host kernel id that the on-disk group 0 is shown as on an
/// owner-mapped bind mount. It is not mapped in the environment's namespace, so the
/// environment can neither chown a file to it nor keep a setgid bit on it (the kernel drops
/// S_ISGID for a group the caller is neither in nor privileged over), while files of the
/// owner that happen to have group root stay writable (an unmapped group would make the
/// kernel refuse every write to them).
const ROOT_GROUP_ALIAS: u32 = 65534;

fn with_root_group_alias(mut ranges: Vec<IdRange>) -> Vec<IdRange> {
    let taken = |id: u32, inside: bool| {
        ranges.iter().any(|r| {
            let first = if inside { r.inside } else { r.outside };
            id >= first && id - first < r.count
        })
    };
    if !taken(0, true) && !taken(ROOT_GROUP_ALIAS, false) {
        ranges.push(IdRange {
            inside: 0,
            outside: ROOT_GROUP_ALIAS,
            count: 1,
        });
    }
    ranges
}

/// `owner` (on disk) is the environment's root; each other host id of `env` maps to itself.
fn owner_ranges(env: &[IdRange], owner: u32) -> Vec<IdRange> {
    let root = map_one(env, 0);
    let mut out: Vec<IdRange> = Vec::new();
    if let Some(root) = root {
        out.push(IdRange {
            inside: owner,
            outside: root,
            count: 1,
        });
    }
    for r in env {
        // The host ids of this range, minus the environment's root and the owner.
        let mut start = u64::from(r.outside);
        let end = u64::from(r.outside) + u64::from(r.count);
        let mut cuts: Vec<u64> = [root, Some(owner)]
            .into_iter()
            .flatten()
            .map(u64::from)
            .filter(|c| *c >= start && *c < end)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts.push(end);
        for cut in cuts {
            if cut > start {
                let (Ok(first), Ok(count)) = (u32::try_from(start), u32::try_from(cut - start))
                else {
                    break;
                };
                out.push(IdRange {
                    inside: first,
                    outside: first,
                    count,
                });
            }
            start = cut + 1;
        }
    }
    out
}

fn map_one(ranges: &[IdRange], inside: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| inside >= r.inside && inside - r.inside < r.count)
        .map(|r| r.outside + (inside - r.inside))
}

fn map_back(ranges: &[IdRange], host: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| host >= r.outside && host - r.outside < r.count)
        .map(|r| r.inside + (host - r.outside))
}

fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

fn run_map_helper(helper: &str, pid: i32, ranges: &[IdRange]) -> Result<()> {
    let mut cmd = Command::new(helper);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let out = cmd.output().context(|| {
        format!("cannot run {helper}; install Debian's `uidmap` package or set the user mapping to single-id")
    })?;
    if !out.status.success() {
        return Err(ContainerError::Setup(format!(
            "{helper} failed ({}): {}; check /etc/subuid and /etc/subgid",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (200000+), so a test tells them apart.
    fn env_ids() -> IdMapping {
        let range = |outside| {
            vec![IdRange {
                inside: 0,
                outside,
                count: 65536,
            }]
        };
        IdMapping {
            uids: range(100000),
            gids: range(200000),
            writer: MapWriter::Direct,
            deny_setgroups: false,
        }
    }

    #[test]
    fn a_bind_owner_is_the_environments_root_and_no_other_host_user_is_mapped() {
        let env = env_ids();
        let m = env.for_bind_owner(1000, 1000);
        // On-disk 1000 (inside the mount's namespace) is the environment's root (100000).
        assert_eq!(m.host_uid(1000), Some(100000));
        assert_eq!(m.host_gid(1000), Some(200000));
        // The environment's other ids are their own host ids; host root and other host
        // users are not mapped (no file can be created or chowned to them).
        assert_eq!(m.host_uid(100005), Some(100005));
        assert_eq!(m.host_uid(0), None);
        assert_eq!(m.host_uid(1001), None);
        assert_eq!(m.host_uid(5), None);
        assert_eq!(
            m.host_uid(100000),
            None,
            "the environment's root is the owner"
        );
        // Group root shows as the overflow group, which the environment does not map.
        assert_eq!(m.host_gid(0), Some(ROOT_GROUP_ALIAS));
        assert!(env
            .gids
            .iter()
            .all(|r| !(r.outside..r.outside + r.count).contains(&ROOT_GROUP_ALIAS)));
        assert_eq!(m.uid_map_text(), "1000 100000 1\n100001 100001 65535\n");
        // An owner inside the environment's own range is cut out of the identity part.
        let m = env.for_bind_owner(100010, 5);
        assert_eq!(
            m.uids,
            vec![
                IdRange {
                    inside: 100010,
                    outside: 100000,
                    count: 1
                },
                IdRange {
                    inside: 100001,
                    outside: 100001,
                    count: 9
                },
                IdRange {
                    inside: 100011,
                    outside: 100011,
                    count: 65525
                },
            ]
        );
    }

    #[test]
    fn a_share_owner_is_the_serving_processs_root_and_host_root_is_not_mapped() {
        let env = env_ids();
        let m = env.for_share_owner(1000, 1001);
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_gid(0), Some(1001));
        assert_eq!(m.host_uid(1000), Some(101000));
        assert_eq!(m.inside_uid(0), None, "host root is mapped");
        assert_eq!(m.inside_gid(0), None, "host group root is mapped");
        assert_eq!(
            m.inside_uid(100000),
            None,
            "the environment's root stays unmapped"
        );
        assert_eq!(m.uid_map_text(), "0 1000 1\n1 100001 65535\n");
        // An owner inside the environment's range is cut out of it (no id maps twice).
        let m = env.for_share_owner(100010, 5);
        assert_eq!(
            m.uid_map_text(),
            "0 100010 1\n1 100001 9\n11 100011 65525\n"
        );
        assert_eq!(m.inside_uid(100010), Some(0));
        assert_eq!(m.host_uid(10), None);
    }
}
