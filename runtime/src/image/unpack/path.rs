//! Resolving an entry's path inside the layer without ever leaving it: `..` is refused, every
//! component is opened with `O_NOFOLLOW` from the layer's root, so nothing is written through
//! a symbolic link (a link may be created, never followed), and what an entry replaces is
//! removed first.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{self, Mode};
use nix::unistd;

use super::Unpacker;
use crate::image::error::ImageError;

/// Opens a directory of the host (the staging folder) as the root of resolution.
pub(super) fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    let fd = openat(
        None,
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn open_child_dir(parent: RawFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let fd = openat(
        Some(parent),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Splits an entry path into normal components; `Err` when it contains `..`.
pub fn clean_components(path: &Path) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err("contains a `..` component, which would leave the layer".into())
            }
            Component::Prefix(_) => return Err("has a path prefix".into()),
        }
    }
    Ok(out)
}

pub(super) fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

pub(super) enum WalkError {
    Unsafe(String),
    Io(io::Error),
}

impl Unpacker<'_> {
    /// Opens the directory `comps` below the root without following any symlink, creating
    /// missing directories when `create`.
    pub(super) fn walk(&self, comps: &[OsString], create: bool) -> Result<OwnedFd, WalkError> {
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in comps.iter().enumerate() {
            let parent = cur
                .as_ref()
                .map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
            let next = match open_child_dir(parent, c) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match stat::mkdirat(
                        Some(parent),
                        c.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(WalkError::Io(e.into())),
                    }
                    open_child_dir(parent, c).map_err(|e| WalkError::Io(e.into()))?
                }
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    let here = join(&comps[..=i]);
                    let is_link = stat::fstatat(
                        Some(parent),
                        c.as_os_str(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK)
                    .unwrap_or(false);
                    return Err(if is_link {
                        WalkError::Unsafe(format!(
                            "would be written through the symbolic link `{}`, which can point outside the layer",
                            here.display()
                        ))
                    } else {
                        WalkError::Io(io::Error::new(
                            io::Error::from(e).kind(),
                            format!("`{}` is not a directory", here.display()),
                        ))
                    });
                }
                Err(e) => return Err(WalkError::Io(e.into())),
            };
            cur = Some(next);
        }
        match cur {
            Some(fd) => Ok(fd),
            None => unistd::dup(self.root.as_raw_fd())
                // SAFETY: dup returned a fresh descriptor that nothing else owns.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .map_err(|e| WalkError::Io(e.into())),
        }
    }

    pub(super) fn parent(&mut self, entry: &Path, comps: &[OsString]) -> Result<RawFd, ImageError> {
        if let Some((c, fd)) = &self.cache {
            if c.as_slice() == comps {
                return Ok(fd.as_raw_fd());
            }
        }
        let fd = self.walk(comps, true).map_err(|e| match e {
            WalkError::Unsafe(r) => self.unsafe_entry(entry, r),
            WalkError::Io(e) => self.io_entry(entry, e),
        })?;
        let raw = fd.as_raw_fd();
        self.cache = Some((comps.to_vec(), fd));
        Ok(raw)
    }

    /// Removes whatever is at `parent/name` (but keeps a directory when `keep_dir`).
    /// Returns whether a directory is (still) there.
    pub(super) fn clear(
        &mut self,
        parent: RawFd,
        name: &OsStr,
        keep_dir: bool,
    ) -> io::Result<bool> {
        let st = match stat::fstatat(Some(parent), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if keep_dir {
                return Ok(true);
            }
            let p = Path::new(&format!("/proc/self/fd/{parent}")).join(name);
            crate::state::remove_tree(&p)?;
            // A cached parent may have been inside the removed tree.
            self.cache = None;
            return Ok(false);
        }
        unistd::unlinkat(Some(parent), name, unistd::UnlinkatFlags::NoRemoveDir)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::tests::{canary_empty, finish, raw_entry, run};
    use crate::image::error::ImageError;

    #[test]
    fn rejects_parent_traversal() {
        let tar = finish(raw_entry("../canary/evil", b'0', "", b"x"));
        let (d, r) = run(&tar);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("../canary/evil") && e.contains(".."), "{e}");
        canary_empty(&d);
    }

    #[test]
    fn rejects_write_through_symlink() {
        let d0 = tempfile::tempdir().unwrap();
        let target = d0.path().to_string_lossy().into_owned();
        let mut t = raw_entry("escape", b'2', &target, b"");
        t.extend(raw_entry("escape/evil", b'0', "", b"x"));
        let (d, r) = run(&finish(t));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("escape/evil") && e.contains("symbolic link"),
            "{e}"
        );
        assert_eq!(fs::read_dir(d0.path()).unwrap().count(), 0);
        canary_empty(&d);
        // Relative form, aimed at the sibling canary folder.
        let mut t = raw_entry("up", b'2', "../canary", b"");
        t.extend(raw_entry("up/evil", b'0', "", b"x"));
        let (d, r) = run(&finish(t));
        assert!(matches!(r, Err(ImageError::UnsafeEntry { .. })));
        canary_empty(&d);
    }

    #[test]
    fn replacing_a_symlink_with_a_file_does_not_write_through_it() {
        let d0 = tempfile::tempdir().unwrap();
        let victim = d0.path().join("victim");
        fs::write(&victim, b"original").unwrap();
        let mut t = raw_entry("f", b'2', &victim.to_string_lossy(), b"");
        t.extend(raw_entry("f", b'0', "", b"new"));
        let (d, r) = run(&finish(t));
        r.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read(d.path().join("layer/f")).unwrap(), b"new");
    }
}
