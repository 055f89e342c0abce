//! Whether the kernel makes id-mapped mounts of a filesystem (`mount_setattr(MOUNT_ATTR_IDMAP)`).
//!
//! Refused on filesystems that do not opt in (overlayfs and tmpfs on 6.1 kernels, FUSE file
//! systems such as bindfs, ramfs), on kernels before 5.12, and where berth's root does not own
//! the filesystem (berth inside a container-based CI runner). Asked once per filesystem: the
//! answer is kept in the berth home (`idmap-probe.json`), keyed by the filesystem's device, its
//! type and the kernel release, so every layer and bind source on it shares one probe.
//!
//! The probe clones the mount of the path (`open_tree`, detached: nothing is attached anywhere)
//! and asks for an id-mapping of the clone into a throw-away user namespace; closing the clone
//! frees it. Needs host root, as the id-mapped mounts themselves do.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ContainerError, Result};
use super::idmap::{IdMapping, IdRange, MapWriter};
use super::mount_api::{
    cstr, user_namespace_with, MountAttr, AT_RECURSIVE, MOUNT_ATTR_IDMAP, OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
};

/// The probe cache's file in a berth home.
pub const CACHE_FILE: &str = "idmap-probe.json";
/// Filesystems remembered per home (FUSE and overlay mounts get a new device number each time).
const CACHE_ENTRIES: usize = 32;

/// What the kernel said about id-mapped mounts of one filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdmapSupport {
    /// `mount_setattr(MOUNT_ATTR_IDMAP)` worked.
    pub supported: bool,
    /// The filesystem's type as the mount table names it (`ext4`, `fuse.bindfs`, `overlay`).
    pub fs: String,
    /// The refusal (`EINVAL: Invalid argument`), when not supported.
    #[serde(default)]
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    dev: u64,
    fs_magic: i64,
    kernel: String,
    support: IdmapSupport,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    entries: Vec<Entry>,
}

/// Whether id-mapped mounts of the filesystem holding `path` work, from `home`'s cache when it
/// knows the filesystem, else probed (and remembered there when `home` is given).
pub fn probe(path: &Path, home: Option<&Path>) -> Result<IdmapSupport> {
    let meta =
        fs::metadata(path).map_err(|e| ContainerError::path_io("cannot inspect", path, e))?;
    let magic = nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0)
        .map_err(|e| ContainerError::sys(format!("cannot statfs {}", path.display()), e))?;
    let kernel = kernel_release();
    let cache_path = home.map(|h| h.join(CACHE_FILE));
    let mut cache: Cache = cache_path
        .as_deref()
        .and_then(|p| crate::state::read_json(p).ok().flatten())
        .unwrap_or_default();
    let key = |e: &Entry| e.dev == meta.dev() && e.fs_magic == magic && e.kernel == kernel;
    if let Some(e) = cache.entries.iter().find(|e| key(e)) {
        return Ok(e.support.clone());
    }
    let support = probe_now(path)?;
    if let Some(p) = cache_path {
        cache.entries.retain(|e| e.kernel == kernel);
        cache.entries.push(Entry {
            dev: meta.dev(),
            fs_magic: magic,
            kernel,
            support: support.clone(),
        });
        let drop_n = cache.entries.len().saturating_sub(CACHE_ENTRIES);
        cache.entries.drain(..drop_n);
        // A cache that cannot be written only costs another probe next time.
        if p.parent().is_some_and(Path::is_dir) {
            let _ = crate::state::write_json(&p, &cache);
        }
    }
    Ok(support)
}

/// Asks the kernel, without a cache.
pub fn probe_now(path: &Path) -> Result<IdmapSupport> {
    let fs = fs_type(path).unwrap_or_else(|| "an unknown filesystem".into());
    let refused = |e: std::io::Error| IdmapSupport {
        supported: false,
        fs: fs.clone(),
        refusal: Some(errno_text(&e)),
    };
    let src = cstr(path)?;
    // SAFETY: open_tree with a valid NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if is_refusal(&e) {
            Ok(refused(e))
        } else {
            Err(ContainerError::io(
                format!("cannot clone the mount of {} (open_tree)", path.display()),
                e,
            ))
        };
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let one = vec![IdRange {
        inside: 0,
        outside: 65534,
        count: 1,
    }];
    let userns = user_namespace_with(&IdMapping {
        uids: one.clone(),
        gids: one,
        writer: MapWriter::Direct,
        deny_setgroups: false,
    })?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on our detached tree fd with a correctly sized mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if is_refusal(&e) {
            Ok(refused(e))
        } else {
            Err(ContainerError::io(
                format!(
                    "cannot ask whether {} supports id-mapped mounts (mount_setattr)",
                    path.display()
                ),
                e,
            ))
        };
    }
    Ok(IdmapSupport {
        supported: true,
        fs,
        refusal: None,
    })
}

/// The errors with which the kernel refuses id-mapped mounts (as opposed to a missing path).
pub fn is_refusal(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EPERM | libc::ENOSYS | libc::EOPNOTSUPP | libc::EACCES)
    )
}

fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{errno:?}: {}", errno.desc())
        }
        None => e.to_string(),
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The type of the filesystem holding `path`, as `/proc/self/mountinfo` names it (with the
/// FUSE subtype: `fuse.bindfs`): the entry of the mount the path is on (`statx` mount id).
pub fn fs_type(path: &Path) -> Option<String> {
    let id = mount_id(path)?;
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|l| {
        let (fields, rest) = l.split_once(" - ")?;
        if fields.split(' ').next()?.parse::<u64>().ok()? != id {
            return None;
        }
        rest.split(' ').next().map(str::to_string)
    })
}

fn mount_id(path: &Path) -> Option<u64> {
    let p = cstr(path).ok()?;
    // SAFETY: a zeroed statx buffer is a valid out-parameter.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx with a valid NUL-terminated path and our buffer.
    let rc = unsafe { libc::statx(libc::AT_FDCWD, p.as_ptr(), 0, libc::STATX_MNT_ID, &mut stx) };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// The folder to probe for `path` when it may not exist yet: its nearest existing ancestor.
pub fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// For `berth doctor`: whether the layer store of the home at `home` gets id-mapped mounts
/// (`Ok`: a description) or not (`Err`: what happens instead, and the fix).
pub fn home_report(home: &Path) -> std::result::Result<String, (String, String)> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(
            "not needed rootless: the layers are mounted inside the environment's user namespace"
                .into(),
        );
    }
    let layers = home.join("layers");
    let at = existing_ancestor(&layers);
    let cache = home.is_dir().then_some(home);
    match probe(&at, cache) {
        Ok(s) if s.supported => Ok(format!(
            "available on {} at {}: environments share the image layers",
            s.fs,
            at.display()
        )),
        Ok(s) => Err((
            format!(
                "not available on {} at {} ({}): berth uses copies of the image layers owned by each environment id range (more disk, slower first start)",
                s.fs,
                at.display(),
                s.refusal.as_deref().unwrap_or("refused")
            ),
            "put BERTH_HOME on a filesystem with id-mapped mounts (ext4, xfs, btrfs; tmpfs from Linux 6.3) to share the layers".into(),
        )),
        Err(e) => Err((
            format!("cannot tell for {}: {e}", at.display()),
            "check that BERTH_HOME is a readable folder".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_cached_per_filesystem_in_the_home() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: id-mapped mounts need root");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let a = home.path().join("a");
        let b = home.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        let first = probe(&a, Some(home.path())).unwrap();
        assert_eq!(first, probe_now(&a).unwrap());
        let cache: Cache = crate::state::read_json(&home.path().join(CACHE_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(cache.entries.len(), 1);
        // A second folder on the same filesystem is answered from the cache: a planted
        // answer shows it was not probed again.
        let mut planted = cache;
        planted.entries[0].support.fs = "planted".into();
        crate::state::write_json(&home.path().join(CACHE_FILE), &planted).unwrap();
        assert_eq!(probe(&b, Some(home.path())).unwrap().fs, "planted");
        // Another kernel release probes again.
        planted.entries[0].kernel = "0.0-other".into();
        crate::state::write_json(&home.path().join(CACHE_FILE), &planted).unwrap();
        assert_eq!(probe(&b, Some(home.path())).unwrap(), first);
    }

    #[test]
    fn ramfs_refuses_id_mapped_mounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting ramfs needs root");
            return;
        }
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let d = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("none"),
            d.path(),
            Some("ramfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let _guard = Unmount(d.path().to_path_buf());
        let s = probe_now(d.path()).unwrap();
        assert!(!s.supported, "{s:?}");
        assert_eq!(s.fs, "ramfs");
        assert!(s.refusal.as_deref().unwrap().starts_with("EINVAL"), "{s:?}");
        assert!(!is_refusal(&std::io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(probe_now(&d.path().join("missing")).is_err());
    }
}
