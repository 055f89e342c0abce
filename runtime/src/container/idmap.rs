//! User and group id mappings of the environment's user namespace: choosing them (root's or the
//! user's subordinate range, or a single id), writing them (directly or through
//! newuidmap/newgidmap), and id-mapped mounts (`open_tree` + `mount_setattr` + `move_mount`).

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::error::{ContainerError, Context, Result};
use super::spec::UserMappingChoice;

/// Host range used for root when /etc/subuid has no entry for root.
pub const ROOT_FALLBACK_START: u32 = 100000;
pub const ROOT_FALLBACK_COUNT: u32 = 65536;

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

/// A user namespace with `mapping` (written directly: only host root may call this), as a
/// descriptor for `mount_setattr(MOUNT_ATTR_IDMAP)`. A short-lived child process creates the
/// namespace; it is gone when this returns, the descriptor keeps the namespace alive.
/// The caller must be single-threaded (it forks).
pub fn user_namespace_with(mapping: &IdMapping) -> Result<OwnedFd> {
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, pipe, read, write, ForkResult};
    let (ready_r, ready_w) = pipe().context(|| "cannot create a pipe".to_string())?;
    let (go_r, go_w) = pipe().context(|| "cannot create a pipe".to_string())?;
    // SAFETY: the child only calls async-signal-safe functions (unshare, write, read, _exit).
    match unsafe { fork() }.context(|| "cannot fork".to_string())? {
        ForkResult::Child => {
            drop((ready_r, go_w));
            // SAFETY: raw syscalls on descriptors this child owns, then _exit.
            unsafe {
                let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
                libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop((ready_w, go_r));
            let mut b = [0u8; 1];
            let unshared = read(ready_r.as_raw_fd(), &mut b).is_ok_and(|n| n == 1) && b[0] == 1;
            let result = if unshared {
                mapping.write_for(child.as_raw()).and_then(|()| {
                    fs::File::open(format!("/proc/{child}/ns/user"))
                        .map(OwnedFd::from)
                        .context(|| "cannot open the mount's user namespace".to_string())
                })
            } else {
                Err(ContainerError::Setup(
                    "cannot create a user namespace for an id-mapped bind mount".into(),
                ))
            };
            let _ = write(&go_w, &[1]);
            drop(go_w);
            let _ = waitpid(child, None);
            result
        }
    }
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

/// Ranges of `user` (name or numeric uid) in a /etc/subuid-style file.
pub fn parse_subid(content: &str, user: &str, id: u32) -> Vec<(u32, u32)> {
    content
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut it = l.split(':');
            let (who, start, count) = (it.next()?, it.next()?, it.next()?);
            if who != user && who != id.to_string() {
                return None;
            }
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .filter(|&(_, c)| c > 0)
        .collect()
}

/// Every `(start, count)` in a /etc/subuid-style file.
pub fn all_subid_ranges(content: &str) -> Vec<(u32, u32)> {
    content
        .lines()
        .filter_map(|l| {
            let mut it = l.trim().split(':');
            let (_, start, count) = (it.next()?, it.next()?, it.next()?);
            Some((start.trim().parse().ok()?, count.trim().parse().ok()?))
        })
        .collect()
}

/// Root's range when /etc/subuid has none for root: 100000+65536 unless a user's
/// subordinate ids overlap it, else the first free 65536-aligned block above all of them.
pub fn root_fallback_start(taken: &[(u32, u32)]) -> u32 {
    let overlaps = |s: u64| {
        taken.iter().any(|&(ts, tc)| {
            let (ts, te) = (ts as u64, ts as u64 + tc as u64);
            s < te && ts < s + ROOT_FALLBACK_COUNT as u64
        })
    };
    let mut start = ROOT_FALLBACK_START as u64;
    while overlaps(start) {
        let end = taken
            .iter()
            .map(|&(s, c)| s as u64 + c as u64)
            .filter(|&e| e > start)
            .min()
            .unwrap_or(start + 1);
        start = end.div_ceil(ROOT_FALLBACK_COUNT as u64) * ROOT_FALLBACK_COUNT as u64;
    }
    start.min((u32::MAX - ROOT_FALLBACK_COUNT) as u64) as u32
}

/// Facts about the invoking user, so the choice logic is testable without touching the host.
#[derive(Debug, Clone)]
pub struct Invoker {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub subuid: Vec<(u32, u32)>,
    pub subgid: Vec<(u32, u32)>,
    pub have_newidmap: bool,
    /// Every range in /etc/subuid and /etc/subgid (of any user), so root's fallback range
    /// never overlaps a rootless user's subordinate ids.
    pub taken: Vec<(u32, u32)>,
}

impl Invoker {
    /// The current process's user, /etc/subuid and /etc/subgid, and whether newuidmap exists.
    pub fn current() -> Invoker {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let have = |tool: &str| {
            ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists())
        };
        let taken = [read("/etc/subuid"), read("/etc/subgid")]
            .iter()
            .flat_map(|t| all_subid_ranges(t))
            .collect();
        Invoker {
            uid,
            gid,
            taken,
            subuid: parse_subid(&read("/etc/subuid"), &name, uid),
            subgid: parse_subid(&read("/etc/subgid"), &name, uid),
            name,
            have_newidmap: have("newuidmap") && have("newgidmap"),
        }
    }
}

/// The mapping for a choice; `None` when privileged (no user namespace at all).
pub fn choose(
    choice: UserMappingChoice,
    privileged: bool,
    who: &Invoker,
) -> Result<Option<IdMapping>> {
    if privileged {
        if who.uid != 0 {
            return Err(ContainerError::Invalid(
                "privileged environments need host root; run berth as root or drop --privileged"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let single = |uid: u32, gid: u32| IdMapping {
        uids: vec![IdRange {
            inside: 0,
            outside: uid,
            count: 1,
        }],
        gids: vec![IdRange {
            inside: 0,
            outside: gid,
            count: 1,
        }],
        writer: MapWriter::Direct,
        deny_setgroups: uid != 0,
    };
    let range = |start: u32, count: u32| IdMapping {
        uids: vec![IdRange {
            inside: 0,
            outside: start,
            count,
        }],
        gids: vec![IdRange {
            inside: 0,
            outside: start,
            count,
        }],
        writer: MapWriter::Direct,
        deny_setgroups: false,
    };
    Ok(Some(match choice {
        UserMappingChoice::SingleId => single(who.uid, who.gid),
        UserMappingChoice::Range { host_start, count } => {
            if who.uid != 0 {
                return Err(ContainerError::Invalid(
                    "an explicit id range needs host root; use the automatic mapping when rootless"
                        .into(),
                ));
            }
            if count == 0 || host_start == 0 {
                return Err(ContainerError::Invalid(
                    "an id range must start above 0 and hold at least one id".into(),
                ));
            }
            range(host_start, count)
        }
        UserMappingChoice::Auto if who.uid == 0 => match (who.subuid.first(), who.subgid.first()) {
            (Some(&(us, uc)), Some(&(gs, gc))) => IdMapping {
                uids: vec![IdRange {
                    inside: 0,
                    outside: us,
                    count: uc.min(ROOT_FALLBACK_COUNT),
                }],
                gids: vec![IdRange {
                    inside: 0,
                    outside: gs,
                    count: gc.min(ROOT_FALLBACK_COUNT),
                }],
                writer: MapWriter::Direct,
                deny_setgroups: false,
            },
            _ => range(root_fallback_start(&who.taken), ROOT_FALLBACK_COUNT),
        },
        UserMappingChoice::Auto => {
            match (who.subuid.first(), who.subgid.first(), who.have_newidmap) {
                (Some(&(us, uc)), Some(&(gs, gc)), true) => IdMapping {
                    uids: vec![
                        IdRange {
                            inside: 0,
                            outside: who.uid,
                            count: 1,
                        },
                        IdRange {
                            inside: 1,
                            outside: us,
                            count: uc.min(ROOT_FALLBACK_COUNT - 1),
                        },
                    ],
                    gids: vec![
                        IdRange {
                            inside: 0,
                            outside: who.gid,
                            count: 1,
                        },
                        IdRange {
                            inside: 1,
                            outside: gs,
                            count: gc.min(ROOT_FALLBACK_COUNT - 1),
                        },
                    ],
                    writer: MapWriter::NewIdMap,
                    deny_setgroups: false,
                },
                _ => single(who.uid, who.gid),
            }
        }
    }))
}

// The new mount API, not wrapped by nix 0.29.
pub(crate) const OPEN_TREE_CLONE: libc::c_uint = 1;
pub(crate) const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
pub(crate) const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub(crate) const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x0000_0010;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// Attaches an id-mapped clone of `source` at `target` (an existing, empty directory or file in
/// the current mount namespace): files owned by host ids appear as the ids that map to them in
/// the user namespace `userns`. `target` is a path the kernel resolves, e.g. `/proc/self/fd/N`.
pub fn idmapped_bind(
    source: &Path,
    target: &Path,
    userns: &OwnedFd,
    flags: CloneFlags,
) -> Result<()> {
    attach_clone(source, target, Some(userns), flags)
}

/// Attributes of an attached mount clone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneFlags {
    pub readonly: bool,
    /// Setuid/setgid bits and file capabilities are ignored on the mount.
    pub nosuid: bool,
    /// Device nodes on the mount cannot be opened.
    pub nodev: bool,
}

/// Attaches a clone of the mount at `source` on `target` (resolved by the kernel, following
/// magic links such as `/proc/self/fd/N`), optionally id-mapped into `userns` and/or
/// read-only. Without id-mapping the clone is recursive, like `mount --rbind`, and read-only
/// (and nosuid, nodev) apply to every mount in it. Setting the attributes on the detached clone
/// avoids a remount, which could not reach a mount attached on an fd path.
pub fn attach_clone(
    source: &Path,
    target: &Path,
    userns: Option<&OwnedFd>,
    flags: CloneFlags,
) -> Result<()> {
    let src = cstr(source)?;
    let recursive = if userns.is_none() { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree with a valid NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | recursive,
        )
    };
    if fd < 0 {
        return Err(ContainerError::io(
            format!("cannot clone the mount of {} (open_tree)", source.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: if userns.is_some() {
            MOUNT_ATTR_IDMAP
        } else {
            0
        } | if flags.readonly { MOUNT_ATTR_RDONLY } else { 0 }
            | if flags.nosuid { MOUNT_ATTR_NOSUID } else { 0 }
            | if flags.nodev { MOUNT_ATTR_NODEV } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let empty = c"";
    if attr.attr_set != 0 {
        // SAFETY: mount_setattr on our detached tree fd with a correctly sized mount_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            return Err(ContainerError::io(
                format!(
                    "cannot set the attributes of the mount of {} (mount_setattr); id-mapped mounts need Linux 5.12+ and a filesystem that supports them",
                    source.display()
                ),
                std::io::Error::last_os_error(),
            ));
        }
    }
    let dst = cstr(target)?;
    // SAFETY: move_mount of our tree fd onto a NUL-terminated target path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc < 0 {
        return Err(ContainerError::io(
            format!(
                "cannot attach the id-mapped mount of {} at {}",
                source.display(),
                target.display()
            ),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(crate) fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ContainerError::Invalid(format!("path {} contains a NUL byte", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(uid: u32, sub: bool, helper: bool) -> Invoker {
        Invoker {
            uid,
            gid: uid,
            name: "u".into(),
            subuid: if sub { vec![(300000, 65536)] } else { vec![] },
            subgid: if sub { vec![(400000, 65536)] } else { vec![] },
            have_newidmap: helper,
            taken: vec![],
        }
    }

    /// An environment's mapping with different host ranges for users (100000+) and groups
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

    #[test]
    fn root_fallback_avoids_users_subordinate_ids() {
        assert_eq!(root_fallback_start(&[]), 100000);
        assert_eq!(root_fallback_start(&[(165536, 65536)]), 100000);
        assert_eq!(root_fallback_start(&[(100000, 65536)]), 196608);
        assert_eq!(
            root_fallback_start(&[(100000, 65536), (165536, 65536), (231072, 10)]),
            262144
        );
        let mut w = who(0, false, false);
        w.taken = vec![(100000, 65536)];
        let m = choose(UserMappingChoice::Auto, false, &w).unwrap().unwrap();
        assert_eq!(m.host_uid(0), Some(196608));
    }

    #[test]
    fn subid_parsing_matches_name_or_uid_and_skips_junk() {
        let t = "# c\nroot:100000:65536\nu:1:0\nbad\n1000:200000:10\nu:300000:5\n";
        assert_eq!(parse_subid(t, "root", 0), vec![(100000, 65536)]);
        assert_eq!(parse_subid(t, "u", 1000), vec![(200000, 10), (300000, 5)]);
        assert!(parse_subid(t, "x", 7).is_empty());
    }

    #[test]
    fn root_uses_subuid_else_fixed_range() {
        let m = choose(UserMappingChoice::Auto, false, &who(0, false, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 100000 65536\n");
        assert_eq!(m.host_uid(0), Some(100000));
        assert_eq!(m.host_uid(65535), Some(165535));
        assert_eq!(m.host_uid(65536), None);
        let m = choose(UserMappingChoice::Auto, false, &who(0, true, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 300000 65536\n");
        assert_eq!(m.gid_map_text(), "0 400000 65536\n");
        assert_eq!(m.writer, MapWriter::Direct);
    }

    #[test]
    fn rootless_uses_helpers_only_with_ranges_and_tools() {
        let m = choose(UserMappingChoice::Auto, false, &who(1000, true, true))
            .unwrap()
            .unwrap();
        assert_eq!(m.writer, MapWriter::NewIdMap);
        assert_eq!(m.uid_map_text(), "0 1000 1\n1 300000 65535\n");
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(1), Some(300000));
        let m = choose(UserMappingChoice::Auto, false, &who(1000, true, false))
            .unwrap()
            .unwrap();
        assert_eq!(m.uid_map_text(), "0 1000 1\n");
        assert!(!m.has_gid(5));
        assert!(
            m.needs_setgroups_deny(),
            "an unprivileged single-id map needs setgroups denied"
        );
        let m = choose(UserMappingChoice::SingleId, false, &who(1000, true, true))
            .unwrap()
            .unwrap();
        assert_eq!(m.writer, MapWriter::Direct);
        assert_eq!(m.gid_map_text(), "0 1000 1\n");
    }

    #[test]
    fn privileged_and_ranges_need_root() {
        assert!(choose(UserMappingChoice::Auto, true, &who(0, false, false))
            .unwrap()
            .is_none());
        assert!(choose(UserMappingChoice::Auto, true, &who(1000, false, false)).is_err());
        let r = UserMappingChoice::Range {
            host_start: 500000,
            count: 10,
        };
        assert!(choose(r, false, &who(1000, false, false)).is_err());
        let m = choose(r, false, &who(0, false, false)).unwrap().unwrap();
        assert_eq!(m.uid_map_text(), "0 500000 10\n");
        let z = UserMappingChoice::Range {
            host_start: 0,
            count: 10,
        };
        assert!(choose(z, false, &who(0, false, false)).is_err());
    }
}
