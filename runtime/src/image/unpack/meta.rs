//! Ownership, extended attributes, modes and times: restored as far as berth's rights go
//! (ownership and every attribute as root, `user.*` attributes otherwise); directories get
//! theirs last.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::sys::stat::{self, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid};

use super::path::join;
use super::Unpacker;
use crate::image::error::ImageError;
use crate::image::xattrs;

pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: i64,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

pub(super) struct DirMeta {
    pub(super) comps: Vec<OsString>,
    pub(super) mode: u32,
    pub(super) mtime: i64,
}

impl Unpacker<'_> {
    /// Ownership (root only) and xattrs, on `fd` itself or on `fd/name` without following.
    pub(super) fn set_owner_xattrs(
        &self,
        fd: RawFd,
        name: Option<&OsStr>,
        meta: &Meta,
        path: &Path,
    ) -> Result<(), ImageError> {
        if self.opts.privileged {
            let (u, g) = (
                Some(Uid::from_raw(meta.uid as u32)),
                Some(Gid::from_raw(meta.gid as u32)),
            );
            let r = match name {
                None => unistd::fchown(fd, u, g),
                Some(n) => {
                    unistd::fchownat(Some(fd), n, u, g, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                }
            };
            r.map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        }
        for (k, v) in &meta.xattrs {
            let r = match name {
                None => xattrs::set_fd(fd, k, v),
                Some(n) => xattrs::set_at(fd, n, k, v),
            };
            if let Err(e) = r {
                // Filesystems without xattrs, or attributes only root may set: skipped.
                if !matches!(e.raw_os_error(), Some(libc::ENOTSUP | libc::EPERM)) {
                    return Err(self.io_entry(path, e));
                }
            }
        }
        Ok(())
    }

    pub(super) fn set_mtime_at(
        &self,
        parent: RawFd,
        name: &OsStr,
        mtime: i64,
        path: &Path,
    ) -> Result<(), ImageError> {
        let t = TimeSpec::new(mtime, 0);
        stat::utimensat(
            Some(parent),
            name,
            &t,
            &t,
            stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_entry(path, io::Error::from(e)))
    }

    /// Directory modes and mtimes are applied last: creating children changes a directory's
    /// mtime, and a read-only directory could not receive its children.
    pub(super) fn finish_dirs(&mut self) -> Result<(), ImageError> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let path = join(&d.comps);
            let Ok(fd) = self.walk(&d.comps, false) else {
                // Removed or replaced by a later entry of the same layer.
                continue;
            };
            self.dir_meta(fd.as_raw_fd(), d.mode, d.mtime, &path)?;
        }
        if let Some((mode, mtime)) = self.root_meta {
            self.dir_meta(self.root.as_raw_fd(), mode, mtime, Path::new("."))?;
        }
        Ok(())
    }

    pub(super) fn dir_meta(
        &self,
        fd: RawFd,
        mode: u32,
        mtime: i64,
        path: &Path,
    ) -> Result<(), ImageError> {
        stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        let t = TimeSpec::new(mtime, 0);
        stat::futimens(fd, &t, &t).map_err(|e| self.io_entry(path, io::Error::from(e)))
    }
}
