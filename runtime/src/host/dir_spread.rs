//! Where a filesystem puts the folders made under a folder: on ext4 one flagged as the top of
//! a directory hierarchy (`FS_TOPDIR_FL`, `chattr +T`) has each new subfolder placed in a
//! block group of its own choosing (the Orlov allocator's spread, as for home folders) instead
//! of its parent's. Without a journal, ext4 skips, one by one, every inode of a group freed
//! recently before it reuses one (5 s, or 5 min while that part of the inode table waits to be
//! written, which files created beside it keep it doing): files created where thousands were
//! just deleted (a layer unpacked after a prune, an environment made after another's removal)
//! cost a scan each. A spread folder rarely lands in such a group.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `FS_TOPDIR_FL` of `<linux/fs.h>` (not in the libc crate).
const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;

/// Flags `dir` (a folder, never followed if it is a symbolic link) so its new subfolders are
/// spread over the filesystem. `Ok(false)` when the filesystem has no such flag (tmpfs, xfs,
/// btrfs, overlayfs): a placement hint only, nothing to fix.
pub fn spread_subfolders(dir: &Path) -> io::Result<bool> {
    let Some((d, flags)) = flags_of(dir)? else {
        return Ok(false);
    };
    if flags & FS_TOPDIR_FL != 0 {
        return Ok(true);
    }
    let flags = flags | FS_TOPDIR_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer, which is valid for that.
    if unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        return unsupported(io::Error::last_os_error()).map(|_| false);
    }
    Ok(true)
}

/// Whether `dir` carries the flag (`None` where the filesystem has no such flags).
pub fn spreads_subfolders(dir: &Path) -> io::Result<Option<bool>> {
    Ok(flags_of(dir)?.map(|(_, flags)| flags & FS_TOPDIR_FL != 0))
}

/// The folder `dir` open (never through a symbolic link) and its inode flags; `None` where
/// the filesystem has none.
fn flags_of(dir: &Path) -> io::Result<Option<(File, libc::c_int)>> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which is valid for that.
    if unsafe { libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return unsupported(io::Error::last_os_error()).map(|()| None);
    }
    Ok(Some((d, flags)))
}

/// `Ok(())` for the errors of a filesystem without the flags, the error otherwise.
fn unsupported(e: io::Error) -> io::Result<()> {
    match e.raw_os_error() {
        Some(libc::ENOTTY | libc::EOPNOTSUPP | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_flagged_once_and_a_symlink_is_not_followed() {
        // /var/tmp: a disk filesystem here (ext4); /tmp may be tmpfs, which has no flags.
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let dir = d.path().join("staging");
        std::fs::create_dir(&dir).unwrap();
        if !spread_subfolders(&dir).unwrap() {
            eprintln!("skipped: the filesystem of /var/tmp has no FS_TOPDIR_FL (not ext2/3/4)");
            return;
        }
        assert_eq!(spreads_subfolders(&dir).unwrap(), Some(true));
        assert!(
            spread_subfolders(&dir).unwrap(),
            "already flagged: still fine"
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(
            spread_subfolders(&link).is_err(),
            "a symbolic link is refused"
        );
        let plain = d.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        assert_eq!(spreads_subfolders(&plain).unwrap(), Some(false));
    }
}
