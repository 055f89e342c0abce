//! A cheap fingerprint of a folder tree's metadata, so that a `rootfs:` base is not read and
//! hashed in full on every `berth up` / `berth run` only to find it unchanged.
//!
//! [`TreeStamp::take`] walks the tree with `readdir` + `fstatat` (no file is opened) and
//! hashes, for every entry in name order, its name and the stat data a change of any kind
//! moves: device and inode (a replaced file or folder, a retargeted symlink), type and mode,
//! owner, link count, size, device number, modification time and **change time**. The change
//! time (`ctime`) is the one the kernel sets to "now" on every write, truncate, chmod, chown,
//! xattr change, rename and link, and that no user can set back (`touch -d` and `utimensat`
//! move the mtime, and the ctime to now). So an equal stamp means the tree has the content it
//! had when the stamp was taken, with two exceptions handled here:
//!
//! - **Racy entries**: timestamps are kept at the kernel's clock granularity, so a file
//!   changed twice within one tick, once just before and once just after the stamp was
//!   taken, could keep its ctime and size. A stamp in which any entry changed less than
//!   [`RACY_MARGIN`] before the walk began (or claims a ctime in the future: a skewed network
//!   filesystem) is [`racy`](TreeStamp::racy) and must not be trusted later; the caller
//!   hashes the content and stores no stamp, as git does for its index ("racy git").
//! - **Changes while hashing**: the caller takes a stamp, hashes the content, and keeps the
//!   pair only when a second stamp taken after hashing is equal (nothing changed meanwhile).
//!
//! What this cannot see is a change made by someone who can set the clock back or write the
//! block device underneath: the host's root, who owns the store anyway.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use crate::state::{read_json, write_json_volatile};

/// How long before the walk an entry must last have changed for the stamp to be trusted.
/// Far above any kernel's timestamp granularity (a jiffy, at most 10 ms; FAT's 2 s mtime is
/// not a ctime), and covers small clock skews of network filesystems.
pub const RACY_MARGIN: Duration = Duration::from_secs(3);

/// The fingerprint of a tree's metadata (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeStamp {
    /// Hex SHA-256 over every entry's name and stat data.
    pub digest: String,
    /// Some entry changed within [`RACY_MARGIN`] of the walk (or in the future): the stamp
    /// may miss a change made in the same clock tick, so it must not be stored.
    pub racy: bool,
    /// Number of entries walked (the root included).
    pub entries: u64,
}

impl TreeStamp {
    /// Walks `dir` (followed if it is a symlink, as importing it does; nothing below it is
    /// followed) and fingerprints it.
    pub fn take(dir: &Path) -> io::Result<TreeStamp> {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let limit = started.saturating_sub(RACY_MARGIN);
        let mut walk = Walk {
            hash: Sha256::new(),
            racy: false,
            entries: 0,
            limit: (limit.as_secs() as i64, limit.subsec_nanos() as i64),
        };
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: `open` returned a new descriptor that nothing else owns.
        let root = unsafe { OwnedFd::from_raw_fd(root) };
        let st = nix::sys::stat::fstat(root.as_raw_fd())?;
        walk.entry(b"", &st);
        walk.dir(root.as_fd())?;
        Ok(TreeStamp {
            digest: hex::encode(walk.hash.finalize()),
            racy: walk.racy,
            entries: walk.entries,
        })
    }
}

struct Walk {
    hash: Sha256,
    racy: bool,
    entries: u64,
    /// (seconds, nanoseconds) since the epoch before which a change is old enough.
    limit: (i64, i64),
}

impl Walk {
    // `dev_t` and `nlink_t` are 32 bits wide on some architectures, 64 on x86_64.
    #[allow(clippy::unnecessary_cast)]
    fn entry(&mut self, name: &[u8], st: &FileStat) {
        self.entries += 1;
        if (st.st_ctime, st.st_ctime_nsec) >= self.limit {
            self.racy = true;
        }
        let h = &mut self.hash;
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        for v in [
            st.st_dev as u64,
            st.st_ino as u64,
            u64::from(st.st_mode),
            u64::from(st.st_uid),
            u64::from(st.st_gid),
            st.st_nlink as u64,
            st.st_size as u64,
            st.st_rdev as u64,
            st.st_mtime as u64,
            st.st_mtime_nsec as u64,
            st.st_ctime as u64,
            st.st_ctime_nsec as u64,
        ] {
            h.update(v.to_le_bytes());
        }
    }

    /// Every entry below the open folder `dir`, depth first, in name order; the end of a
    /// folder's entries is marked so that moving an entry up a level changes the stamp.
    fn dir(&mut self, dir: BorrowedFd<'_>) -> io::Result<()> {
        let mut names: Vec<OsString> = Vec::new();
        {
            // A duplicate: the `Dir` closes its own descriptor.
            let dup = nix::unistd::dup(dir.as_raw_fd())?;
            let mut d = nix::dir::Dir::from_fd(dup)?;
            for e in d.iter() {
                let e = e?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(std::ffi::OsStr::from_bytes(n).to_os_string());
                }
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let st = fstatat(
                Some(dir.as_raw_fd()),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            self.entry(name.as_bytes(), &st);
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                let fd = nix::fcntl::openat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                // SAFETY: `openat` returned a new descriptor that nothing else owns.
                let sub = unsafe { OwnedFd::from_raw_fd(fd) };
                self.dir(sub.as_fd())?;
            }
        }
        self.hash.update(b"\0end\0");
        Ok(())
    }
}

/// What a stamp vouches for: the folder it was taken of and the layer its content hashed
/// to, kept beside the image record as `images/<hash of the image name>.tree-stamp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampRecord {
    pub dir: PathBuf,
    pub stamp: String,
    pub diff_id: Digest,
}

impl StampRecord {
    /// Where the stamp of the image named `name` is kept.
    pub fn path(images_dir: &Path, name: &str) -> PathBuf {
        images_dir.join(format!(
            "{}.tree-stamp",
            hex::encode(Sha256::digest(name.as_bytes()))
        ))
    }

    /// The stamp kept for `name`; `None` when there is none or it cannot be read (it is only
    /// a cache: the content is hashed instead).
    pub fn load(images_dir: &Path, name: &str) -> Option<StampRecord> {
        read_json(&Self::path(images_dir, name)).ok().flatten()
    }

    /// Keeps the stamp (atomically, without fsync: a stamp lost with a power cut only costs
    /// one more hash). Best effort for the same reason.
    pub fn save(&self, images_dir: &Path, name: &str) {
        let _ = write_json_volatile(&Self::path(images_dir, name), self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A tree whose every entry changed long enough ago: ctime cannot be set back, so the
    /// test makes the files and waits out the margin once.
    fn settled_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("bin/sub")).unwrap();
        fs::write(d.path().join("bin/tool"), b"1234").unwrap();
        fs::write(d.path().join("bin/sub/data"), b"abcd").unwrap();
        std::os::unix::fs::symlink("tool", d.path().join("bin/link")).unwrap();
        d
    }

    #[test]
    fn a_fresh_tree_is_racy_and_a_settled_one_is_not() {
        let d = settled_tree();
        let s = TreeStamp::take(d.path()).unwrap();
        assert!(s.racy, "just written");
        assert_eq!(s.entries, 6);
        std::thread::sleep(RACY_MARGIN + Duration::from_millis(100));
        let a = TreeStamp::take(d.path()).unwrap();
        assert!(!a.racy);
        assert_eq!(a, TreeStamp::take(d.path()).unwrap(), "stable");
        assert_eq!(a.digest, s.digest, "racy or not, the same data");
    }

    /// Every kind of change moves the stamp, including a content change that keeps size and
    /// mtime (`touch -d` back to the old time): the ctime moves.
    #[test]
    fn every_change_moves_the_stamp() {
        let d = settled_tree();
        let p = d.path();
        let take = || TreeStamp::take(p).unwrap().digest;
        let mut seen = vec![take()];
        let changed = |what: &str, seen: &mut Vec<String>| {
            let now = take();
            assert!(!seen.contains(&now), "{what} did not change the stamp");
            seen.push(now);
        };
        let f = p.join("bin/sub/data");
        let old = fs::metadata(&f).unwrap();
        let mtime = nix::sys::time::TimeSpec::new(
            std::os::unix::fs::MetadataExt::mtime(&old),
            std::os::unix::fs::MetadataExt::mtime_nsec(&old),
        );
        // Same size, mtime put back: only the ctime tells.
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&f, b"ABCD").unwrap();
        nix::sys::stat::utimensat(
            None,
            &f,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::mtime_nsec(&fs::metadata(&f).unwrap()),
            std::os::unix::fs::MetadataExt::mtime_nsec(&old)
        );
        changed("same-size write with the mtime put back", &mut seen);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        changed("chmod", &mut seen);
        fs::remove_file(p.join("bin/link")).unwrap();
        std::os::unix::fs::symlink("sub/data", p.join("bin/link")).unwrap();
        changed("retargeted symlink", &mut seen);
        fs::rename(p.join("bin/sub/data"), p.join("bin/data")).unwrap();
        changed("moved up a level", &mut seen);
        // A replaced folder with identical content and times.
        fs::rename(p.join("bin"), p.join("old")).unwrap();
        fs::create_dir(p.join("bin")).unwrap();
        for e in fs::read_dir(p.join("old")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), p.join("bin").join(e.file_name())).unwrap();
            }
        }
        fs::remove_dir_all(p.join("old")).unwrap();
        changed("replaced folder", &mut seen);
        fs::write(p.join("new"), b"").unwrap();
        changed("new empty file", &mut seen);
    }

    #[test]
    fn a_missing_or_unreadable_tree_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(TreeStamp::take(&d.path().join("nope")).is_err());
        fs::write(d.path().join("file"), b"").unwrap();
        assert!(TreeStamp::take(&d.path().join("file")).is_err());
    }
}
