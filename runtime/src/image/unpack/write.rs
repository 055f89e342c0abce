//! Writing what an entry is: directories, regular files (their data within the layer's
//! budget, runs of zeros and PAX sparse members as holes), symbolic and hard links, device
//! nodes and FIFOs.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd;

use super::meta::{DirMeta, Meta};
use super::path::{clean_components, open_child_dir, WalkError};
use super::Unpacker;
use crate::image::error::ImageError;
use crate::image::sparse::{self, write_sparse};

impl Unpacker<'_> {
    /// A directory entry: created unless one is there (mode and mtime come last, see
    /// [`Unpacker::finish_dirs`]).
    pub(super) fn make_dir(
        &mut self,
        parent: RawFd,
        name: &OsStr,
        comps: &[OsString],
        meta: &Meta,
        path: &Path,
    ) -> Result<(), ImageError> {
        let exists = self
            .clear(parent, name, true)
            .map_err(|e| self.io_entry(path, e))?;
        if !exists {
            stat::mkdirat(Some(parent), name, Mode::from_bits_truncate(0o700))
                .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        }
        let fd =
            open_child_dir(parent, name).map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        self.set_owner_xattrs(fd.as_raw_fd(), None, meta, path)?;
        self.dirs.push(DirMeta {
            comps: comps.to_vec(),
            mode: meta.mode,
            mtime: meta.mtime,
        });
        Ok(())
    }

    /// A regular file (sparse or not): created afresh, never written through what was there.
    pub(super) fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parent: RawFd,
        name: &OsStr,
        sparse: Option<&sparse::SparseMember>,
        meta: &Meta,
        path: &Path,
    ) -> Result<(), ImageError> {
        let create = || {
            openat(
                Some(parent),
                name,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        };
        // Created afresh (O_EXCL): what an earlier entry left under the name is cleared
        // first, looked at only when there is something (most names are new).
        let fd = match create() {
            Err(Errno::EEXIST) => {
                self.clear(parent, name, false)
                    .map_err(|e| self.io_entry(path, e))?;
                create()
            }
            other => other,
        }
        .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let allocated = self.allocated;
        let size = match sparse {
            None => self.copy_data(entry, &mut file, path, u64::MAX)?,
            Some(sp) => self.copy_pax_sparse(entry, &mut file, path, sp)?,
        };
        // Holes were skipped over, perhaps at the end: the length the entry declared.
        if self.allocated - allocated != size {
            file.set_len(size).map_err(|e| self.io_entry(path, e))?;
        }
        let fd = file.as_raw_fd();
        self.set_owner_xattrs(fd, None, meta, path)?;
        stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        let t = TimeSpec::new(meta.mtime, 0);
        stat::futimens(fd, &t, &t).map_err(|e| self.io_entry(path, io::Error::from(e)))
    }

    /// A symbolic link: created, never followed.
    pub(super) fn symlink<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parent: RawFd,
        name: &OsStr,
        meta: &Meta,
        path: &Path,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| self.unsafe_entry(path, "is a symbolic link without a target"))?
            .into_owned();
        self.clear(parent, name, false)
            .map_err(|e| self.io_entry(path, e))?;
        unistd::symlinkat(OsStr::from_bytes(&target), Some(parent), name)
            .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        self.set_owner_xattrs(parent, Some(name), meta, path)?;
        self.set_mtime_at(parent, name, meta.mtime, path)
    }

    /// A hard link: only to an earlier file of this layer, reached without following links.
    pub(super) fn hard_link<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        parent: RawFd,
        name: &OsStr,
        comps: &[OsString],
        path: &Path,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name()
            .map_err(|e| self.io_entry(path, e))?
            .ok_or_else(|| self.unsafe_entry(path, "is a hard link without a target"))?
            .into_owned();
        let tcomps = clean_components(&target).map_err(|_| {
            self.unsafe_entry(
                path,
                format!(
                    "is a hard link to `{}`, which is outside the layer",
                    target.display()
                ),
            )
        })?;
        let Some((tname, tparent)) = tcomps.split_last() else {
            return Err(self.unsafe_entry(path, "is a hard link to the layer root"));
        };
        let tfd = self.walk(tparent, false).map_err(|e| match e {
            WalkError::Unsafe(r) => {
                self.unsafe_entry(path, format!("is a hard link whose target {r}"))
            }
            WalkError::Io(_) => self.unsafe_entry(
                path,
                format!(
                    "is a hard link to `{}`, which is not an earlier entry of this layer",
                    target.display()
                ),
            ),
        })?;
        match stat::fstatat(
            Some(tfd.as_raw_fd()),
            tname.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
            _ => {
                return Err(self.unsafe_entry(
                    path,
                    format!(
                        "is a hard link to `{}`, which is not an earlier file of this layer",
                        target.display()
                    ),
                ))
            }
        }
        if tcomps == comps {
            return Ok(());
        }
        self.clear(parent, name, false)
            .map_err(|e| self.io_entry(path, e))?;
        unistd::linkat(
            Some(tfd.as_raw_fd()),
            tname.as_os_str(),
            Some(parent),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| self.io_entry(path, io::Error::from(e)))
    }

    /// A device node (as root only; counted as skipped otherwise) or a FIFO.
    pub(super) fn node<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        kind: tar::EntryType,
        parent: RawFd,
        name: &OsStr,
        meta: &Meta,
        path: &Path,
    ) -> Result<(), ImageError> {
        use tar::EntryType as T;
        let (sflag, dev) = match kind {
            T::Char | T::Block => {
                if !self.opts.privileged {
                    self.skipped_devices += 1;
                    return Ok(());
                }
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let f = if kind == T::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                (f, stat::makedev(major.into(), minor.into()))
            }
            _ => (SFlag::S_IFIFO, 0),
        };
        self.clear(parent, name, false)
            .map_err(|e| self.io_entry(path, e))?;
        stat::mknodat(
            Some(parent),
            name,
            sflag,
            Mode::from_bits_truncate(meta.mode),
            dev,
        )
        .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        self.set_owner_xattrs(parent, Some(name), meta, path)?;
        stat::fchmodat(
            Some(parent),
            name,
            Mode::from_bits_truncate(meta.mode),
            stat::FchmodatFlags::NoFollowSymlink,
        )
        .or_else(|e| {
            if e == Errno::EOPNOTSUPP {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        self.set_mtime_at(parent, name, meta.mtime, path)
    }

    /// Copies up to `limit` bytes (all, with `u64::MAX`) of the entry's data to `file` at its
    /// position, runs of zero blocks as holes, within the layer's budget. Returns the bytes
    /// copied.
    fn copy_data<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        file: &mut File,
        path: &Path,
        limit: u64,
    ) -> Result<u64, ImageError> {
        let mut copied: u64 = 0;
        while copied < limit {
            let want = (self.buf.len() as u64).min(limit - copied) as usize;
            let n = match entry.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::BadArchive {
                        layer: self.layer.to_string(),
                        source: e,
                    })
                }
            };
            let data = write_sparse(file, &self.buf[..n]).map_err(|e| self.io_entry(path, e))?;
            copied += n as u64;
            self.report_content += n as u64;
            self.allocated = self.allocated.saturating_add(data);
            if self.allocated > self.budget {
                return Err(ImageError::NoSpace {
                    what: format!(
                        "layer {} (unpacking stopped at `{}`)",
                        self.layer,
                        path.display()
                    ),
                    need: self.allocated,
                    free: self.budget,
                    path: self.dest.to_path_buf(),
                });
            }
        }
        Ok(copied)
    }

    /// Writes a PAX sparse member: each data segment at its offset, holes between them.
    /// Returns the file's real size.
    fn copy_pax_sparse<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        file: &mut File,
        path: &Path,
        sp: &sparse::SparseMember,
    ) -> Result<u64, ImageError> {
        use std::io::{Seek, SeekFrom};
        let stored = entry.size();
        let (segments, map_len) = match &sp.segments {
            Some(s) => (s.clone(), 0),
            None => sparse::read_map_1_0(entry).map_err(|r| self.unsafe_entry(path, r))?,
        };
        let data_len = stored
            .checked_sub(map_len)
            .ok_or_else(|| self.unsafe_entry(path, "has a sparse map longer than its data"))?;
        sparse::check(&segments, sp.real_size, data_len).map_err(|r| self.unsafe_entry(path, r))?;
        for (off, len) in segments {
            file.seek(SeekFrom::Start(off))
                .map_err(|e| self.io_entry(path, e))?;
            if self.copy_data(entry, file, path, len)? != len {
                return Err(self.unsafe_entry(path, "ends before its sparse data"));
            }
        }
        Ok(sp.real_size)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{canary_empty, finish, raw_entry, run};
    use super::super::{unpack_bounded, UnpackOptions};
    use crate::image::error::ImageError;

    #[test]
    fn a_layer_larger_than_its_budget_is_refused() {
        let data = vec![b'a'; 2 << 20];
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "big", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        let e = unpack_bounded(
            &tar[..],
            d.path(),
            "sha256:bomb",
            UnpackOptions::for_current_user(),
            1 << 20,
        )
        .unwrap_err();
        assert!(
            matches!(e, ImageError::NoSpace { free, .. } if free == 1 << 20),
            "{e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("sha256:bomb") && msg.contains("free"), "{msg}");
    }

    #[test]
    fn rejects_hard_links_out_of_the_layer() {
        for link in ["../canary/x", "/etc/passwd", "nonexistent"] {
            let t = finish(raw_entry("hl", b'1', link, b""));
            let (d, r) = run(&t);
            let e = r.unwrap_err().to_string();
            assert!(e.contains("hard link"), "{link}: {e}");
            canary_empty(&d);
        }
        // Through a symlinked directory.
        let mut t = raw_entry("etc", b'2', "/etc", b"");
        t.extend(raw_entry("hl", b'1', "etc/passwd", b""));
        let (d, r) = run(&finish(t));
        assert!(matches!(r, Err(ImageError::UnsafeEntry { .. })), "{r:?}");
        canary_empty(&d);
    }
}
