//! Calls relative to a folder's descriptor, none of which follows a symbolic link: `openat2`
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, and `lstat`, `mkdir`, `chown`, `unlink`,
//! `rename` of a final component through the `*at` calls.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::tree::{Entry, EntryKind};

pub(super) fn fd_path(fd: &OwnedFd, name: &str) -> PathBuf {
    if name.is_empty() {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    } else {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd()))
    }
}

/// `lstat` of `name` in the folder `dir`.
pub(super) fn lstat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<Entry>> {
    use nix::fcntl::AtFlags;
    let st =
        match nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        _ => return Ok(None),
    };
    let target = if kind == EntryKind::Symlink {
        match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
            Ok(t) => match t.into_string() {
                Ok(t) => Some(t),
                Err(_) => return Ok(None),
            },
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    Ok(Some(Entry {
        kind,
        mode: if kind == EntryKind::Symlink {
            0
        } else {
            st.st_mode & 0o7777
        },
        size: if kind == EntryKind::File {
            st.st_size as u64
        } else {
            0
        },
        mtime_ns: st.st_mtime.saturating_mul(1_000_000_000) + st.st_mtime_nsec,
        target,
        hash: None,
    }))
}

/// The names in a folder (without `.` and `..`).
pub(super) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    // Dir takes its own descriptor: duplicate ours.
    let dup = dir.try_clone()?;
    let mut d = nix::dir::Dir::from_fd(dup.into_raw_fd())?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

pub(super) fn mkdir_at(
    dir: &OwnedFd,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    nix::sys::stat::mkdirat(
        Some(dir.as_raw_fd()),
        name,
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )?;
    if let Some(owner) = owner {
        chown_at(dir, name, owner)?;
    }
    // mkdir applies the umask; set the exact bits through a descriptor of the new folder.
    let fd = openat2_beneath(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
    File::from(fd).set_permissions(fs::Permissions::from_mode(mode & 0o7777))
}

pub(super) fn chown_at(dir: &OwnedFd, name: &str, (uid, gid): (u32, u32)) -> io::Result<()> {
    nix::unistd::fchownat(
        Some(dir.as_raw_fd()),
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

pub(super) fn unlink_at(dir: &OwnedFd, name: &str, is_dir: bool) -> io::Result<()> {
    let flag = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(Some(dir.as_raw_fd()), name, flag).map_err(io::Error::from)
}

pub(super) fn rename_at(a: &OwnedFd, from: &str, b: &OwnedFd, to: &str) -> io::Result<()> {
    nix::fcntl::renameat(Some(a.as_raw_fd()), from, Some(b.as_raw_fd()), to)
        .map_err(io::Error::from)
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`: fails with `EEXIST` when `to` exists
/// (whatever it is), with `EINVAL` on a filesystem without the flag.
pub(super) fn rename_noreplace_at(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    nix::fcntl::renameat2(
        Some(dir.as_raw_fd()),
        from,
        Some(dir.as_raw_fd()),
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// `renameat2(dir, a, dir, b, RENAME_EXCHANGE)`: swaps the two names (both must exist); fails
/// with `EINVAL` on a filesystem without the flag.
fn rename_exchange_at(dir: &OwnedFd, a: &str, b: &str) -> io::Result<()> {
    nix::fcntl::renameat2(
        Some(dir.as_raw_fd()),
        a,
        Some(dir.as_raw_fd()),
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(io::Error::from)
}

/// Puts the file at `temp` in place of `target` by exchanging the two names (the target
/// first: watchers see it leave, then the new file arrive), leaving the old file at `temp`.
/// Returns `false` when what left `target` was a folder (one that replaced the target
/// since the caller looked): it is exchanged back, as a rename over it would have refused to
/// replace it (`EISDIR`). `EINVAL`: a filesystem without the flag.
pub(super) fn exchange_file_into_place(
    dir: &OwnedFd,
    target: &str,
    temp: &str,
) -> io::Result<bool> {
    use nix::fcntl::AtFlags;
    rename_exchange_at(dir, target, temp)?;
    let left = nix::sys::stat::fstatat(Some(dir.as_raw_fd()), temp, AtFlags::AT_SYMLINK_NOFOLLOW);
    if left.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
        rename_exchange_at(dir, target, temp)?;
        return Ok(false);
    }
    Ok(true)
}

/// `openat2(dir, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: opens `rel` below `dir`
/// refusing `..` escapes and every symlink (including the last component, unless `O_PATH |
/// O_NOFOLLOW` is given).
pub(super) fn openat2_beneath(dir: &OwnedFd, rel: &str, flags: i32) -> io::Result<OwnedFd> {
    openat2_beneath_mode(dir, rel, flags, 0)
}

/// [`openat2_beneath`] with the mode for a file created by `O_CREAT`.
pub(super) fn openat2_beneath_mode(
    dir: &OwnedFd,
    rel: &str,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is a plain C struct of integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: openat2 reads `c` (NUL-terminated, alive for the call) and `how` (a valid
        // struct whose size we pass); it returns a new descriptor we take ownership of.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if rc >= 0 {
            // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(p: &std::path::Path) -> OwnedFd {
        OwnedFd::from(File::open(p).unwrap())
    }

    #[test]
    fn a_file_is_exchanged_into_place_and_a_folder_in_its_place_is_put_back() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("target"), "old").unwrap();
        fs::write(d.path().join(".tmp"), "new").unwrap();
        let dir = dir_fd(d.path());
        assert!(exchange_file_into_place(&dir, "target", ".tmp").unwrap());
        assert_eq!(fs::read_to_string(d.path().join("target")).unwrap(), "new");
        assert_eq!(fs::read_to_string(d.path().join(".tmp")).unwrap(), "old");
        // A folder that took the target's place since the caller's look: it stays where it
        // is, with what it holds.
        fs::remove_file(d.path().join("target")).unwrap();
        fs::create_dir(d.path().join("target")).unwrap();
        fs::write(d.path().join("target/kept"), "mine").unwrap();
        assert!(!exchange_file_into_place(&dir, "target", ".tmp").unwrap());
        assert_eq!(
            fs::read_to_string(d.path().join("target/kept")).unwrap(),
            "mine"
        );
        assert_eq!(fs::read_to_string(d.path().join(".tmp")).unwrap(), "old");
    }
}
