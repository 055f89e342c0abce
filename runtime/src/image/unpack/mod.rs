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
//!
//! Here: the stream (decompression, hashing, end padding) and each entry's header; then
//! `path.rs` resolves where an entry goes, `whiteout.rs` handles whiteouts, `write.rs` writes
//! files, links and nodes, and `meta.rs` restores ownership, attributes, modes and times.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd;

use super::digest::Digest;
use super::error::ImageError;
use super::sparse;

mod meta;
mod path;
mod read_ahead;
mod whiteout;
mod write;

use meta::{DirMeta, Meta};
pub use path::clean_components;
use path::open_dir_path;
pub use read_ahead::Chunk;
use read_ahead::{read_ahead, AheadReader};
pub use whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};

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
    reader: impl Read + Send,
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
/// The stream is read (decompressed) on a thread of its own while this one hashes it and
/// writes the files (`read_ahead.rs`).
pub fn unpack_bounded(
    reader: impl Read + Send,
    dest: &Path,
    layer: &str,
    opts: UnpackOptions,
    budget: u64,
) -> Result<UnpackReport, ImageError> {
    let root = open_dir_path(dest).map_err(ImageError::io(dest))?;
    std::thread::scope(|s| {
        let (stream, filling) = read_ahead(s, reader);
        let (u, stream) = unpack_from(stream, root, dest, layer, opts, budget)?;
        // A reading thread that panicked ended the stream early: not a layer.
        filling.join().map_err(|_| ImageError::BadArchive {
            layer: layer.to_string(),
            source: io::Error::other("the thread reading the layer's stream panicked"),
        })?;
        let (diff_id, tar_size) = stream.finish();
        Ok(UnpackReport {
            diff_id,
            tar_size,
            content_size: u.report_content,
            entries: u.entries,
            skipped_devices: u.skipped_devices,
        })
    })
}

/// The unpacking of [`unpack_bounded`] over the read-ahead `stream`: the unpacker, with its
/// counts, once every entry is written, and the stream read to its end (to be hashed whole).
fn unpack_from<'a>(
    stream: AheadReader,
    root: OwnedFd,
    dest: &'a Path,
    layer: &'a str,
    opts: UnpackOptions,
    budget: u64,
) -> Result<(Unpacker<'a>, AheadReader), ImageError> {
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
    let mut archive = tar::Archive::new(EofPadding::new(stream));
    let bad = |source| ImageError::BadArchive {
        layer: layer.to_string(),
        source,
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        u.entry(&mut entry)?;
    }
    u.finish_dirs()?;
    // The rest of the stream (end blocks, padding) is read so all of it is hashed.
    let mut padded = archive.into_inner();
    io::copy(&mut padded, &mut io::sink()).map_err(bad)?;
    Ok((u, padded.inner))
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

    /// Unpacks one entry of the layer.
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

        if let Some(done) = self.whiteout(parent, name_bytes, &path) {
            return done;
        }
        match kind {
            T::Directory => self.make_dir(parent, &name, &comps, &meta, &path),
            T::Regular | T::Continuous | T::GNUSparse => {
                self.write_file(entry, parent, &name, sparse.as_ref(), &meta, &path)
            }
            T::Symlink => self.symlink(entry, parent, &name, &meta, &path),
            T::Link => self.hard_link(entry, parent, &name, &comps, &path),
            T::Char | T::Block | T::Fifo => self.node(entry, kind, parent, &name, &meta, &path),
            other => Err(self.io_entry(
                &path,
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("unsupported tar entry type {other:?}"),
                ),
            )),
        }
    }
}

/// Opens a layer blob for reading, decompressing gzip or zstd as its first bytes say (the
/// media type is not trusted for this).
pub fn decompressed(source: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    decompressed_buffered(io::BufReader::with_capacity(1 << 20, source))
}

/// [`decompressed`] of a source that has its own buffer (read by the decompressor where it
/// is, without a copy into another). Its first read must hold the magic bytes: four, or all
/// of a shorter blob.
pub fn decompressed_buffered(
    mut r: impl io::BufRead + Send + 'static,
) -> io::Result<Box<dyn Read + Send>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::xattrs;
    use std::fs::{self, File};
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
    pub(super) fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
        berth_e2e::oci::TarBuilder::new()
            .raw(name, kind, 0o644, link, data)
            .entries()
    }

    pub(super) fn finish(mut v: Vec<u8>) -> Vec<u8> {
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    pub(super) fn run(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackReport, ImageError>) {
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

    pub(super) fn canary_empty(d: &tempfile::TempDir) {
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
