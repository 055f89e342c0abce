//! Whether the environment's root may act as host root on a bind mount of a ROOT-owned source
//! (berth run as root in root's own checkout, the usual CI case).
//!
//! A file created there by the environment's root belongs to host root, so a setuid file left
//! there would give root to whoever can run it. That is harmless only if no other local user
//! can reach the source: some folder above it (outside the mount, so the environment cannot
//! chmod it) belongs to root and has no search permission for group or others
//! (`mode & 0o011 == 0`, e.g. `/root` 0700 or a 0700 folder holding the checkout). A POSIX ACL
//! granting someone search is covered: the group bits of such a folder's mode are the ACL mask.
//! Then the source is mounted like a user-owned one with root as the owner
//! (`IdMapping::for_bind_owner(0, ..)`); otherwise without id-mapping, so the environment's
//! root is an unprivileged host id there and root's files are read-only to it, and `up` says
//! so ([`notices`]).
//!
//! The folders above are found from the opened source itself (`..` of open descriptors), not
//! by path, so no rename or symbolic link swapped in between can make the check look at other
//! folders than the ones the mount really sits under. A folder above that is itself inside
//! another bind or volume source of the environment does not count (the environment could
//! widen it through that mount).
//!
//! Residual risk: the decision holds while the folder stays private. An administrator who
//! later opens it (or moves the checkout out) exposes setuid files the environment left in the
//! checkout; a process of another user that already had a working folder or descriptor inside
//! before it became private keeps it.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::spec::{ContainerSpec, MountSpec};
use crate::state::fd_path;

/// A folder on the way from a bind source up to `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Folder {
    dev: u64,
    ino: u64,
    uid: u32,
    mode: u32,
}

impl Folder {
    fn of(meta: &fs::Metadata) -> Folder {
        Folder {
            dev: meta.dev(),
            ino: meta.ino(),
            uid: meta.uid(),
            mode: meta.mode(),
        }
    }

    fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// Opens `path` as an `O_PATH` descriptor (symbolic links followed, as the mount does).
pub fn open_source(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
}

fn open_dir(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// The folders above the opened `source`, nearest first, up to the root. For a folder each
/// step is `..` of the open descriptor. A file's folder is taken from its path and accepted
/// only if the file is that folder's entry and has no other hard link (else it could be
/// reachable elsewhere, and `None` is returned).
fn folders_above(source: &fs::File) -> io::Result<Option<Vec<Folder>>> {
    let meta = source.metadata()?;
    let mut cur = if meta.is_dir() {
        open_dir(&fd_path(source).join(".."))?
    } else {
        if meta.nlink() != 1 {
            return Ok(None);
        }
        let real = fs::read_link(fd_path(source))?;
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            return Ok(None);
        };
        let dir = open_dir(parent)?;
        let entry = fs::symlink_metadata(fd_path(&dir).join(name))?;
        if (entry.dev(), entry.ino()) != (meta.dev(), meta.ino()) {
            return Ok(None);
        }
        dir
    };
    let mut out: Vec<Folder> = Vec::new();
    // Far more than any real depth; a loop that never reaches the root is refused.
    for _ in 0..4096 {
        let f = Folder::of(&cur.metadata()?);
        if out.last().is_some_and(|last| last.id() == f.id()) {
            // `..` of the root is the root.
            return Ok(Some(out));
        }
        out.push(f);
        cur = open_dir(&fd_path(&cur).join(".."))?;
    }
    Ok(None)
}

/// The index in `above` (nearest first) of the folder that keeps other users out: root's,
/// no search permission for group or others, and not inside any of `mounted` (the
/// environment's bind and volume sources, as (dev, inode)), i.e. no folder from it up to the
/// root is one of them.
fn private_ancestor(above: &[Folder], mounted: &[(u64, u64)]) -> Option<usize> {
    let outside = above
        .iter()
        .rposition(|f| mounted.contains(&f.id()))
        .map_or(0, |i| i + 1);
    above[outside..]
        .iter()
        .position(|f| f.uid == 0 && f.mode & 0o011 == 0)
        .map(|i| i + outside)
}

/// Whether the opened root-owned `source` is out of every other local user's reach (see the
/// module's documentation). Any error while looking answers no (the safe rule).
pub fn reachable_only_by_root(source: &fs::File, mounted: &[(u64, u64)]) -> bool {
    match folders_above(source) {
        Ok(Some(above)) => private_ancestor(&above, mounted).is_some(),
        _ => false,
    }
}

/// (dev, inode) of every bind and volume source of `spec` that exists.
pub fn mounted_sources(spec: &ContainerSpec) -> Vec<(u64, u64)> {
    spec.mounts
        .iter()
        .filter_map(|m| match m {
            MountSpec::Bind { source, .. } | MountSpec::Volume { source, .. } => {
                fs::metadata(source).ok().map(|m| (m.dev(), m.ino()))
            }
            MountSpec::Tmpfs { .. } | MountSpec::OverlayBind { .. } => None,
        })
        .collect()
}

/// One notice per writable, id-mapped bind mount of a root-owned source that other local
/// users can reach: the environment's root cannot write root's files there, and the ways out.
/// Only meaningful when berth runs as root with a user namespace (the caller checks).
pub fn notices(spec: &ContainerSpec) -> Vec<String> {
    let mounted = mounted_sources(spec);
    let mut out = Vec::new();
    for m in &spec.mounts {
        let MountSpec::Bind {
            source,
            target,
            readonly: false,
            idmap: true,
            ..
        } = m
        else {
            continue;
        };
        let Ok(file) = open_source(source) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if meta.uid() != 0 || reachable_only_by_root(&file, &mounted) {
            continue;
        }
        out.push(notice(target, source));
    }
    out.extend(unmapped_notices(spec, &mounted));
    out
}

/// One notice per bind mount berth would id-map but whose source's filesystem refuses
/// id-mapped mounts: it is bound as it is instead, so the environment's root is an
/// unprivileged host id there (the files of the folder's owner show as the overflow id and
/// stay read-only to it unless their mode lets anyone write them). Never the insecure way out
/// (the folder is not chowned, and its owner's ids are not given to the environment).
fn unmapped_notices(spec: &ContainerSpec, mounted: &[(u64, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    for m in &spec.mounts {
        let MountSpec::Bind {
            source,
            target,
            idmap: true,
            ..
        } = m
        else {
            continue;
        };
        let Ok(file) = open_source(source) else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        if meta.uid() == 0 && !reachable_only_by_root(&file, mounted) {
            continue; // not id-mapped anyway, and noticed above
        }
        let Ok(s) = super::idmap_probe::probe(&fd_path(&file), spec.net_home.as_deref()) else {
            continue;
        };
        if s.supported {
            continue;
        }
        out.push(format!(
            "bind mount on {target}: id-mapped mounts are not available on {} at {} ({}), so the folder is mounted without id-mapping: the environment's root is an unprivileged host user there, sees the files of {} as nobody (65534) and cannot change them; to write there, use `type = \"sync\"` for this mount or keep the folder on a filesystem with id-mapped mounts (ext4, xfs, btrfs)",
            s.fs,
            source.display(),
            s.refusal.as_deref().unwrap_or("refused"),
            crate::state::user_name(meta.uid()),
        ));
    }
    out
}

fn notice(target: &str, source: &Path) -> String {
    let real = fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let private_parent = match real.parent() {
        Some(p) if p != Path::new("/") => format!(
            "make a parent folder private to root (`chmod 700 {}`; it must be root's)",
            p.display()
        ),
        _ => "move it into a folder only root may enter (`mkdir -m 700 /srv/build`)".into(),
    };
    format!(
        "bind mount on {target}: its source {} belongs to root and other local users can reach it, so the environment's root is an unprivileged host user there and cannot change root's files (a setuid file it left would run as host root); to let it write: {private_parent}, give the checkout to a build user (`chown -R USER {}`), or use `berth run --copy-source`",
        real.display(),
        real.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn folder(ino: u64, uid: u32, mode: u32) -> Folder {
        Folder {
            dev: 1,
            ino,
            uid,
            mode: 0o040000 | mode,
        }
    }

    #[test]
    fn a_root_folder_closed_to_group_and_others_keeps_the_source_private() {
        // /srv/app/proj: app 0700 root, srv 0755, / 0755.
        let above = [
            folder(3, 0, 0o700),
            folder(2, 0, 0o755),
            folder(1, 0, 0o755),
        ];
        assert_eq!(private_ancestor(&above, &[]), Some(0));
        // Readable but not searchable by others still keeps them out: only x counts.
        let above = [folder(3, 0, 0o744), folder(1, 0, 0o755)];
        assert_eq!(private_ancestor(&above, &[]), Some(0));
        // Any search bit for group or others (an ACL shows in the group bits) opens it.
        for mode in [0o710, 0o701, 0o1777, 0o751] {
            let above = [folder(3, 0, mode), folder(1, 0, 0o755)];
            assert_eq!(private_ancestor(&above, &[]), None, "mode {mode:o}");
        }
        // A private folder further up counts as well (/root/work/proj).
        let above = [
            folder(3, 0, 0o755),
            folder(2, 0, 0o700),
            folder(1, 0, 0o755),
        ];
        assert_eq!(private_ancestor(&above, &[]), Some(1));
    }

    #[test]
    fn a_folder_of_another_user_does_not_count() {
        // /home/alice (0700 alice): alice can open it again.
        let above = [
            folder(3, 1000, 0o700),
            folder(2, 0, 0o755),
            folder(1, 0, 0o755),
        ];
        assert_eq!(private_ancestor(&above, &[]), None);
    }

    #[test]
    fn a_folder_inside_another_mount_of_the_environment_does_not_count() {
        // /root/a/proj with /root/a also mounted: the environment could chmod /root/a, but
        // /root (0700, outside every mount) still keeps others out.
        let above = [
            folder(3, 0, 0o700),
            folder(2, 0, 0o700),
            folder(1, 0, 0o755),
        ];
        assert_eq!(private_ancestor(&above, &[(1, 3)]), Some(1));
        // With /root mounted too, nothing private is left outside the mounts.
        assert_eq!(private_ancestor(&above, &[(1, 3), (1, 2)]), None);
        // A folder inside a mounted one does not count either (the mounted one is above it).
        assert_eq!(private_ancestor(&above, &[(1, 2)]), None);
        assert_eq!(private_ancestor(&[], &[]), None);
    }

    #[test]
    fn the_real_folders_above_are_found_through_descriptors() {
        let root = nix::unistd::geteuid().is_root();
        let top = tempfile::tempdir().unwrap();
        let private = top.path().join("private");
        let proj = private.join("proj");
        fs::create_dir_all(&proj).unwrap();
        fs::write(proj.join("file"), "x").unwrap();
        fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        // Whatever is above the temp folder (a private TMPDIR) counts as well.
        let base = reachable_only_by_root(&open_source(top.path()).unwrap(), &[]);
        let f = open_source(&proj).unwrap();
        let above = folders_above(&f).unwrap().unwrap();
        let want = fs::metadata(&private).unwrap();
        assert_eq!(above[0].id(), (want.dev(), want.ino()));
        assert_eq!(above.last().unwrap().id(), {
            let m = fs::metadata("/").unwrap();
            (m.dev(), m.ino())
        });
        // Private only when the 0700 folder is root's.
        assert_eq!(reachable_only_by_root(&f, &[]), root || base);
        // A file source: its folder is the first one above.
        let file = open_source(&proj.join("file")).unwrap();
        let above_file = folders_above(&file).unwrap().unwrap();
        assert_eq!(above_file[1..], above[..]);
        assert_eq!(reachable_only_by_root(&file, &[]), root || base);
        // A second hard link could be anywhere: not private.
        fs::hard_link(proj.join("file"), top.path().join("link")).unwrap();
        assert_eq!(folders_above(&file).unwrap(), None);
        assert!(!reachable_only_by_root(&file, &[]));
        // Opened to others, the folder no longer keeps them out.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(reachable_only_by_root(&f, &[]), base);
        // A symbolic link to the source is followed, as the mount follows it.
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&proj, top.path().join("ln")).unwrap();
        let via_link = open_source(&top.path().join("ln")).unwrap();
        assert_eq!(reachable_only_by_root(&via_link, &[]), root || base);
    }

    #[test]
    fn on_a_private_root_source_only_the_environments_root_is_host_root() {
        use crate::container::idmap::IdMapping;
        let env = IdMapping::root_range(100000);
        let m = env.for_bind_owner(0, 0);
        // On disk root (host root) is the environment's root (host 100000) ...
        assert_eq!(m.inside_uid(100000), Some(0));
        assert_eq!(m.inside_gid(100000), Some(0));
        // ... and every other id of the environment stays its own unprivileged host id.
        assert_eq!(m.inside_uid(100042), Some(100042));
        assert_eq!(m.host_uid(100042), Some(100042));
        for other in [1, 1000, 65534, 99999, 165536] {
            assert_eq!(m.host_uid(other), None, "on-disk uid {other} is mapped");
        }
    }

    #[test]
    fn the_notice_names_the_mount_and_the_three_ways_out() {
        let n = notice("/work", Path::new("/srv/app"));
        assert!(n.contains("/work") && n.contains("/srv/app"), "{n}");
        assert!(n.contains("chmod 700 /srv"), "{n}");
        assert!(n.contains("chown -R USER /srv/app"), "{n}");
        assert!(n.contains("berth run --copy-source"), "{n}");
        let n = notice("/w", Path::new("/app"));
        assert!(!n.contains("chmod 700 /`"), "never suggests closing /: {n}");
        assert!(n.contains("mkdir -m 700"), "{n}");
    }
}
