//! Unpacks one layer tar stream into a directory, safely.
//!
//! Every path is resolved from the layer's root one component at a time with
//! `openat(O_NOFOLLOW)`, so nothing is ever written through a symbolic link (a link may be
//! created, never followed). Entries with `..` components are rejected; absolute paths are
//! taken relative to the layer root. Hard links must point to an earlier entry of the same
//! layer. The layer's own `trusted.overlay.*` / `user.overlay.*` attributes are dropped: only
//! the unpacker sets those.
//!
//! Whiteouts become what overlayfs reads: `.wh.NAME` a character device 0:0 named NAME
//! (allowed without privilege since Linux 5.8), `.wh..wh..opq` the attribute
//! `trusted.overlay.opaque=y` on its directory — or `user.overlay.opaque=y` when berth does
//! not run as root, which overlayfs honours when mounted with `userxattr` (as it is inside a
//! user namespace).
//!
//! As root, ownership, device nodes and all xattrs are restored; otherwise files belong to
//! the invoking user, device nodes are skipped (counted in the report) and only `user.*`
//! xattrs are kept.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{self, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid};

use super::digest::{Digest, Hashing};
use super::error::ImageError;
use super::sparse::{self, write_sparse};
use super::xattrs;

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What the unpacker may do beyond an ordinary user's rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Restore ownership, create device nodes, write `trusted.*` attributes.
    pub privileged: bool,
}

impl UnpackOptions {
    pub fn for_current_user() -> Self {
        UnpackOptions {
            privileged: unistd::geteuid().is_root(),
        }
    }

    /// The attribute that marks an opaque directory for this mode.
    pub fn opaque_xattr(&self) -> &'static str {
        if self.privileged {
            "trusted.overlay.opaque"
        } else {
            "user.overlay.opaque"
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream.
    pub tar_size: u64,
    /// Bytes of regular file content written.
    pub content_size: u64,
    pub entries: u64,
    /// Device nodes not created because berth is not root.
    pub skipped_devices: u64,
}

/// Unpacks the (already decompressed) tar stream `reader` into the existing, empty directory
/// `dest`. `layer` names the layer in errors.
pub fn unpack(
    reader: impl Read,
    dest: &Path,
    layer: &str,
    opts: UnpackOptions,
) -> Result<UnpackReport, ImageError> {
    unpack_bounded(reader, dest, layer, opts, u64::MAX)
}

/// [`unpack`], refusing (with [`ImageError::NoSpace`]) a layer whose files would take more
/// than `budget` bytes of disk. Runs of zeros (declared sparse holes, or zeros a dense entry
/// carries) are not written but skipped over, so they take no space and do not count.
/// On an error `dest` is left half-filled: the caller removes it (a staging folder).
pub fn unpack_bounded(
    reader: impl Read,
    dest: &Path,
    layer: &str,
    opts: UnpackOptions,
    budget: u64,
) -> Result<UnpackReport, ImageError> {
    let root = open_dir_path(dest).map_err(ImageError::io(dest))?;
    let mut u = Unpacker {
        root,
        dest,
        budget,
        allocated: 0,
        layer,
        opts,
        cache: None,
        dirs: Vec::new(),
        root_meta: None,
        buf: vec![0u8; 256 * 1024],
        report_content: 0,
        entries: 0,
        skipped_devices: 0,
    };
    let mut archive = tar::Archive::new(EofPadding::new(Hashing::new(reader)));
    let bad = |source| ImageError::BadArchive {
        layer: layer.to_string(),
        source,
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        u.entry(&mut entry)?;
    }
    u.finish_dirs()?;
    let mut padded = archive.into_inner();
    io::copy(&mut padded, &mut io::sink()).map_err(bad)?;
    let (_, diff_id, tar_size) = padded.inner.finish();
    Ok(UnpackReport {
        diff_id,
        tar_size,
        content_size: u.report_content,
        entries: u.entries,
        skipped_devices: u.skipped_devices,
    })
}

/// Completes a tar stream that ends without its final padding and end-of-archive blocks
/// (some tools, e.g. umoci 0.4, write such layers; Go's reader accepts them) by yielding
/// zeros after the real end. The diff-id is hashed below this, over the real bytes only.
struct EofPadding<R> {
    inner: R,
    seen: u64,
    /// Zeros still to yield once the inner stream has ended.
    pad: Option<u64>,
}

impl<R> EofPadding<R> {
    fn new(inner: R) -> Self {
        EofPadding {
            inner,
            seen: 0,
            pad: None,
        }
    }
}

impl<R: Read> Read for EofPadding<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pad.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.seen += n as u64;
                return Ok(n);
            }
            self.pad = Some((512 - self.seen % 512) % 512 + 1024);
        }
        let left = self.pad.unwrap_or(0);
        let n = (buf.len() as u64).min(left) as usize;
        buf[..n].fill(0);
        self.pad = Some(left - n as u64);
        Ok(n)
    }
}

/// Opens a directory of the host (the staging folder) as the root of resolution.
fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    let fd = openat(
        None,
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_child_dir(parent: RawFd, name: &OsStr) -> Result<OwnedFd, Errno> {
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

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

enum WalkError {
    Unsafe(String),
    Io(io::Error),
}

struct DirMeta {
    comps: Vec<OsString>,
    mode: u32,
    mtime: i64,
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: &'a Path,
    /// Most bytes of file data this layer may write.
    budget: u64,
    /// Bytes of file data written so far (holes excluded).
    allocated: u64,
    layer: &'a str,
    opts: UnpackOptions,
    /// The parent directory of the previous entry, reused while entries share it.
    cache: Option<(Vec<OsString>, OwnedFd)>,
    dirs: Vec<DirMeta>,
    root_meta: Option<(u32, i64)>,
    buf: Vec<u8>,
    report_content: u64,
    entries: u64,
    skipped_devices: u64,
}

struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &Path, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    fn io_entry(&self, entry: &Path, source: impl Into<io::Error>) -> ImageError {
        ImageError::UnpackEntry {
            layer: self.layer.to_string(),
            entry: entry.display().to_string(),
            source: source.into(),
        }
    }

    /// Opens the directory `comps` below the root without following any symlink, creating
    /// missing directories when `create`.
    fn walk(&self, comps: &[OsString], create: bool) -> Result<OwnedFd, WalkError> {
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

    fn parent(&mut self, entry: &Path, comps: &[OsString]) -> Result<RawFd, ImageError> {
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
    fn clear(&mut self, parent: RawFd, name: &OsStr, keep_dir: bool) -> io::Result<bool> {
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

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<(), ImageError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let mut xattrs = Vec::new();
        let mut sparse_keys = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Ok(key) = ext.key() else { continue };
                if key.starts_with("GNU.sparse.") {
                    sparse_keys.push((key.to_string(), ext.value_bytes().to_vec()));
                }
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
                        continue;
                    }
                    if self.opts.privileged || name.starts_with("user.") {
                        xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        let mut path: PathBuf = entry
            .path()
            .map_err(|e| ImageError::BadArchive {
                layer: self.layer.to_string(),
                source: e,
            })?
            .into_owned();
        let sparse = match kind {
            T::Regular | T::Continuous => {
                sparse::from_pax(&sparse_keys).map_err(|r| self.unsafe_entry(&path, r))?
            }
            _ => None,
        };
        if let Some(name) = sparse.as_ref().and_then(|s| s.name.as_ref()) {
            path = PathBuf::from(OsStr::from_bytes(name));
        }
        let comps = clean_components(&path).map_err(|r| self.unsafe_entry(&path, r))?;
        self.entries += 1;
        let h = entry.header();
        let meta = Meta {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: h.mtime().unwrap_or(0) as i64,
            xattrs,
        };
        let Some((name, parent_comps)) = comps.split_last() else {
            if kind == T::Directory {
                self.root_meta = Some((meta.mode, meta.mtime));
                let root = self.root.as_raw_fd();
                self.set_owner_xattrs(root, None, &meta, &path)?;
            }
            return Ok(());
        };
        let name = name.clone();
        let parent = self.parent(&path, parent_comps)?;
        let name_bytes = name.as_bytes();

        if name_bytes == OPAQUE_MARKER.as_bytes() {
            return xattrs::set_fd(parent, self.opts.opaque_xattr(), b"y")
                .map_err(|e| self.io_entry(&path, e));
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            let hidden = OsStr::from_bytes(hidden);
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.unsafe_entry(&path, "is a whiteout without a valid name"));
            }
            self.clear(parent, hidden, false)
                .map_err(|e| self.io_entry(&path, e))?;
            return stat::mknodat(Some(parent), hidden, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| self.io_entry(&path, io::Error::from(e)));
        }

        match kind {
            T::Directory => {
                let exists = self
                    .clear(parent, &name, true)
                    .map_err(|e| self.io_entry(&path, e))?;
                if !exists {
                    stat::mkdirat(
                        Some(parent),
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                }
                let fd = open_child_dir(parent, &name)
                    .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                self.set_owner_xattrs(fd.as_raw_fd(), None, &meta, &path)?;
                self.dirs.push(DirMeta {
                    comps: comps.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
                Ok(())
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.clear(parent, &name, false)
                    .map_err(|e| self.io_entry(&path, e))?;
                let fd = openat(
                    Some(parent),
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                // SAFETY: openat returned a fresh descriptor that nothing else owns.
                let mut file = unsafe { File::from_raw_fd(fd) };
                let size = match &sparse {
                    None => self.copy_data(entry, &mut file, &path, u64::MAX)?,
                    Some(sp) => self.copy_pax_sparse(entry, &mut file, &path, sp)?,
                };
                // A trailing hole: the length the entry declared.
                file.set_len(size).map_err(|e| self.io_entry(&path, e))?;
                let fd = file.as_raw_fd();
                self.set_owner_xattrs(fd, None, &meta, &path)?;
                stat::fchmod(fd, Mode::from_bits_truncate(meta.mode))
                    .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                let t = TimeSpec::new(meta.mtime, 0);
                stat::futimens(fd, &t, &t).map_err(|e| self.io_entry(&path, io::Error::from(e)))
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&path, "is a symbolic link without a target"))?
                    .into_owned();
                self.clear(parent, &name, false)
                    .map_err(|e| self.io_entry(&path, e))?;
                unistd::symlinkat(OsStr::from_bytes(&target), Some(parent), name.as_os_str())
                    .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                self.set_owner_xattrs(parent, Some(&name), &meta, &path)?;
                self.set_mtime_at(parent, &name, meta.mtime, &path)
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| self.io_entry(&path, e))?
                    .ok_or_else(|| self.unsafe_entry(&path, "is a hard link without a target"))?
                    .into_owned();
                let tcomps = clean_components(&target).map_err(|_| {
                    self.unsafe_entry(
                        &path,
                        format!(
                            "is a hard link to `{}`, which is outside the layer",
                            target.display()
                        ),
                    )
                })?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&path, "is a hard link to the layer root"));
                };
                let tfd = self.walk(tparent, false).map_err(|e| match e {
                    WalkError::Unsafe(r) => {
                        self.unsafe_entry(&path, format!("is a hard link whose target {r}"))
                    }
                    WalkError::Io(_) => self.unsafe_entry(
                        &path,
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
                            &path,
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
                self.clear(parent, &name, false)
                    .map_err(|e| self.io_entry(&path, e))?;
                unistd::linkat(
                    Some(tfd.as_raw_fd()),
                    tname.as_os_str(),
                    Some(parent),
                    name.as_os_str(),
                    nix::fcntl::AtFlags::empty(),
                )
                .map_err(|e| self.io_entry(&path, io::Error::from(e)))
            }
            T::Char | T::Block | T::Fifo => {
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
                self.clear(parent, &name, false)
                    .map_err(|e| self.io_entry(&path, e))?;
                stat::mknodat(
                    Some(parent),
                    name.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(meta.mode),
                    dev,
                )
                .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                self.set_owner_xattrs(parent, Some(&name), &meta, &path)?;
                stat::fchmodat(
                    Some(parent),
                    name.as_os_str(),
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
                .map_err(|e| self.io_entry(&path, io::Error::from(e)))?;
                self.set_mtime_at(parent, &name, meta.mtime, &path)
            }
            other => Err(self.io_entry(
                &path,
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("unsupported tar entry type {other:?}"),
                ),
            )),
        }
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

    /// Ownership (root only) and xattrs, on `fd` itself or on `fd/name` without following.
    fn set_owner_xattrs(
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

    fn set_mtime_at(
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
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
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

    fn dir_meta(&self, fd: RawFd, mode: u32, mtime: i64, path: &Path) -> Result<(), ImageError> {
        stat::fchmod(fd, Mode::from_bits_truncate(mode))
            .map_err(|e| self.io_entry(path, io::Error::from(e)))?;
        let t = TimeSpec::new(mtime, 0);
        stat::futimens(fd, &t, &t).map_err(|e| self.io_entry(path, io::Error::from(e)))
    }
}

/// Opens a layer blob for reading, decompressing gzip or zstd as its first bytes say (the
/// media type is not trusted for this).
pub fn decompressed(source: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut r = io::BufReader::with_capacity(1 << 20, source);
    let head = io::BufRead::fill_buf(&mut r)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// Builds a tar from (path, kind, data/link) triples.
    pub(crate) fn tar_of(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, io::empty()).unwrap();
                }
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
                'l' | 'h' => {
                    h.set_entry_type(if *kind == 'l' {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    /// One tar entry with an arbitrary (unchecked) name, for traversal tests the tar crate's
    /// builder refuses to produce.
    fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
        berth_e2e::oci::TarBuilder::new()
            .raw(name, kind, 0o644, link, data)
            .entries()
    }

    fn finish(mut v: Vec<u8>) -> Vec<u8> {
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    fn run(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackReport, ImageError>) {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("layer")).unwrap();
        fs::create_dir(d.path().join("canary")).unwrap();
        let r = unpack(
            tar,
            &d.path().join("layer"),
            "sha256:test",
            UnpackOptions::for_current_user(),
        );
        (d, r)
    }

    fn canary_empty(d: &tempfile::TempDir) {
        assert_eq!(
            fs::read_dir(d.path().join("canary")).unwrap().count(),
            0,
            "something escaped"
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            2,
            "something escaped"
        );
    }

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
    fn unpacks_files_links_whiteouts_and_reports_diff_id() {
        let tar = tar_of(&[
            ("bin/", 'd', ""),
            ("bin/busybox", 'f', "ELF"),
            ("bin/sh", 'l', "busybox"),
            ("bin/ash", 'h', "bin/busybox"),
            ("etc/gone", 'f', ""),
            ("etc/.wh.removed", 'f', ""),
            ("opt/.wh..wh..opq", 'f', ""),
        ]);
        let (d, r) = run(&tar);
        let r = r.unwrap();
        assert_eq!(r.diff_id, Digest::of(&tar));
        assert_eq!(r.tar_size, tar.len() as u64);
        let l = d.path().join("layer");
        assert_eq!(fs::read(l.join("bin/busybox")).unwrap(), b"ELF");
        assert_eq!(
            fs::read_link(l.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let (a, b) = (
            fs::metadata(l.join("bin/ash")).unwrap(),
            fs::metadata(l.join("bin/busybox")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(b.permissions().mode() & 0o777, 0o644);
        assert_eq!(b.mtime(), 1_600_000_000);
        let wh = fs::symlink_metadata(l.join("etc/removed")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(!l.join("etc/.wh.removed").exists());
        let opts = UnpackOptions::for_current_user();
        assert_eq!(
            xattrs::get(&l.join("opt"), opts.opaque_xattr()).as_deref(),
            Some(&b"y"[..])
        );
        canary_empty(&d);
    }

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

    #[test]
    fn accepts_a_stream_without_end_padding_and_hashes_the_real_bytes() {
        // What umoci 0.4 writes: a header and 3 bytes of data, then nothing.
        let mut t = raw_entry("hostname", b'0', "", b"bb\n");
        t.truncate(512 + 3);
        let (d, r) = run(&t);
        let r = r.unwrap();
        assert_eq!(r.diff_id, Digest::of(&t));
        assert_eq!(r.tar_size, t.len() as u64);
        assert_eq!(fs::read(d.path().join("layer/hostname")).unwrap(), b"bb\n");
    }

    #[test]
    fn gzip_and_zstd_are_detected() {
        let tar = tar_of(&[("a", 'f', "1")]);
        let d = tempfile::tempdir().unwrap();
        let gz = d.path().join("gz");
        let mut e =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        e.finish().unwrap();
        let zs = d.path().join("zs");
        fs::write(&zs, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        for p in [gz, zs] {
            let mut out = Vec::new();
            decompressed(File::open(&p).unwrap())
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, tar);
        }
    }
}
