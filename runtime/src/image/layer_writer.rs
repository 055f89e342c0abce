//! Writes directory trees as OCI layer tars, deterministically: entries sorted by name,
//! ownership, modes, mtimes and xattrs from the files, hard links as links. The same tree
//! always gives the same bytes, so a tree's layer digest is a content hash of the tree.
//!
//! With [`WhiteoutMode::FromOverlay`] an overlay upper directory is converted back to OCI
//! form: character devices 0:0 become `.wh.NAME` entries and opaque directories get a
//! `.wh..wh..opq` entry; overlay's own attributes are dropped.
//!
//! [`write_tree_adopting`] also turns the tree, as it writes it, into exactly what unpacking
//! that tar gives, so a build step's upper folder can become its layer folder without the
//! tar being unpacked again (see [`super::upper_layer`]).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::unpack::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::xattrs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// A plain root filesystem: everything is content.
    Plain,
    /// An overlay upper (or an unpacked layer): translate overlay whiteouts to OCI ones.
    FromOverlay,
}

/// Appends files to a layer tar.
pub struct LayerTarWriter<W: Write> {
    builder: tar::Builder<W>,
    links: HashMap<(u64, u64), PathBuf>,
    mode: WhiteoutMode,
    adopting: Option<Adopting>,
}

/// How [`write_tree_adopting`] makes a tree the same as unpacking its tar (as root) gives:
/// overlay attributes removed (an opaque folder keeps only `opaque_xattr`, as an unpacked
/// `.wh..wh..opq` does), sockets (which a tar leaves out) removed, and every entry's times
/// set to its whole-second mtime, folders after their content.
#[derive(Debug, Clone)]
pub struct Adopting {
    /// The attribute an unpacked opaque folder gets.
    pub opaque_xattr: &'static str,
    /// Bytes of regular file content written so far.
    pub content_size: u64,
}

fn is_overlay_xattr(k: &str) -> bool {
    k.starts_with("trusted.overlay.") || k.starts_with("user.overlay.")
}

/// The attributes that mark an opaque folder (as root, and without root).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

impl<W: Write> LayerTarWriter<W> {
    pub fn new(out: W, mode: WhiteoutMode) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        LayerTarWriter {
            builder,
            links: HashMap::new(),
            mode,
            adopting: None,
        }
    }

    /// Appends the file at `abs` as `rel` (relative, no leading `/`).
    pub fn append(&mut self, rel: &Path, abs: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(abs)?;
        self.append_entry(rel, abs, &meta)?;
        if !meta.is_dir() {
            self.adopted(abs, &meta)?;
        }
        Ok(())
    }

    /// Appends `abs` (whose metadata is `meta`) as `rel`; with [`Adopting`], also makes its
    /// attributes those an unpack gives (times excepted: [`Self::adopted`]).
    fn append_entry(&mut self, rel: &Path, abs: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let ft = meta.file_type();
        if ft.is_socket() {
            if self.adopting.is_some() {
                fs::remove_file(abs)?;
            }
            return Ok(());
        }
        if self.mode == WhiteoutMode::FromOverlay && ft.is_char_device() && meta.rdev() == 0 {
            let name = rel.file_name().unwrap_or_default();
            let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let p = rel.with_file_name(wh);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(meta.mtime().max(0) as u64);
            return self.builder.append_data(&mut h, p, io::empty());
        }
        let (overlay, xattrs): (Vec<_>, Vec<_>) = xattrs::list(abs)
            .unwrap_or_default()
            .into_iter()
            .partition(|(k, _)| is_overlay_xattr(k));
        if !xattrs.is_empty() {
            self.append_pax_xattrs(&xattrs)?;
        }
        let opaque = ft.is_dir()
            && self.mode == WhiteoutMode::FromOverlay
            && overlay
                .iter()
                .any(|(k, v)| OPAQUE_XATTRS.contains(&k.as_str()) && v == b"y");
        if let Some(a) = &self.adopting {
            if !overlay.is_empty() {
                for (k, _) in &overlay {
                    xattrs::remove(abs, k)?;
                }
                if opaque {
                    xattrs::set(abs, a.opaque_xattr, b"y")?;
                }
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        h.set_mtime(meta.mtime().max(0) as u64);
        if !ft.is_dir() && meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                let first = first.clone();
                return self.builder.append_link(&mut h, rel, first);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        if ft.is_dir() {
            let mut name = rel.as_os_str().to_os_string();
            name.push("/");
            h.set_size(0);
            self.builder
                .append_data(&mut h, Path::new(&name), io::empty())?;
            if opaque {
                let mut oh = tar::Header::new_gnu();
                oh.set_entry_type(tar::EntryType::Regular);
                oh.set_mode(0o644);
                oh.set_size(0);
                oh.set_mtime(meta.mtime().max(0) as u64);
                self.builder
                    .append_data(&mut oh, rel.join(OPAQUE_MARKER), io::empty())?;
            }
            Ok(())
        } else if ft.is_symlink() {
            let target = fs::read_link(abs)?;
            h.set_size(0);
            self.builder.append_link(&mut h, rel, target)
        } else if ft.is_file() {
            if let Some(a) = &mut self.adopting {
                a.content_size += meta.len();
            }
            let f = fs::File::open(abs)?;
            self.builder
                .append_data(&mut h, rel, io::BufReader::with_capacity(1 << 20, f))
        } else {
            // Devices and fifos: the header carries type and numbers.
            h.set_size(0);
            if ft.is_char_device() || ft.is_block_device() {
                let dev = meta.rdev();
                h.set_device_major(nix::sys::stat::major(dev) as u32)?;
                h.set_device_minor(nix::sys::stat::minor(dev) as u32)?;
            }
            self.builder.append_data(&mut h, rel, io::empty())
        }
    }

    fn append_pax_xattrs(&mut self, xattrs: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let key = format!("SCHILY.xattr.{k}");
            // A record is "LEN KEY=VALUE\n" where LEN counts the whole record.
            let body = key.len() + v.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeaders/xattrs")?;
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.builder.append(&h, &data[..])
    }

    /// Appends `dir`'s content recursively (not `dir` itself), sorted by name.
    pub fn append_tree(&mut self, dir: &Path) -> io::Result<()> {
        self.walk(dir, Path::new(""))
    }

    fn walk(&mut self, abs: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(abs)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let a = abs.join(&name);
            let r = rel.join(&name);
            let meta = fs::symlink_metadata(&a)?;
            self.append_entry(&r, &a, &meta)?;
            if meta.is_dir() {
                self.walk(&a, &r)?;
            }
            self.adopted(&a, &meta)?;
        }
        Ok(())
    }

    /// With [`Adopting`]: gives `abs` the times an unpack gives it (both its whole-second
    /// mtime, as in the tar header), once nothing below it changes any more.
    fn adopted(&self, abs: &Path, meta: &fs::Metadata) -> io::Result<()> {
        if self.adopting.is_none() || meta.file_type().is_socket() {
            return Ok(());
        }
        let t = nix::sys::time::TimeSpec::new(meta.mtime().max(0), 0);
        nix::sys::stat::utimensat(
            None,
            abs,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
    }

    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

/// Writes the tree at `dir` as a layer tar into `out`.
pub fn write_tree<W: Write>(dir: &Path, out: W, mode: WhiteoutMode) -> io::Result<W> {
    let mut w = LayerTarWriter::new(out, mode);
    w.append_tree(dir)?;
    w.finish()
}

/// [`write_tree`], making `dir` what unpacking the tar as root gives as it goes (see
/// [`Adopting`]; `dir` itself, which the tar does not hold, loses its overlay attributes
/// only). Returns the output and the bytes of file content.
pub fn write_tree_adopting<W: Write>(
    dir: &Path,
    out: W,
    mode: WhiteoutMode,
    opaque_xattr: &'static str,
) -> io::Result<(W, u64)> {
    let mut w = LayerTarWriter::new(out, mode);
    w.adopting = Some(Adopting {
        opaque_xattr,
        content_size: 0,
    });
    for (k, _) in xattrs::list(dir)? {
        if is_overlay_xattr(&k) {
            xattrs::remove(dir, &k)?;
        }
    }
    w.append_tree(dir)?;
    let size = w.adopting.as_ref().map_or(0, |a| a.content_size);
    Ok((w.finish()?, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::unpack::{unpack, UnpackOptions};

    #[test]
    fn tree_round_trips_deterministically_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), b"data").unwrap();
        fs::hard_link(src.join("a/b/f"), src.join("a/hl")).unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/sl")).unwrap();
        nix::sys::stat::mknod(
            &src.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let opts = UnpackOptions::for_current_user();
        xattrs::set_fd(
            fs::File::open(src.join("a/b"))
                .map(|f| std::os::fd::AsRawFd::as_raw_fd(&f))
                .unwrap(),
            opts.opaque_xattr(),
            b"y",
        )
        .ok();
        let t1 = write_tree(&src, Vec::new(), WhiteoutMode::FromOverlay).unwrap();
        let t2 = write_tree(&src, Vec::new(), WhiteoutMode::FromOverlay).unwrap();
        assert_eq!(Digest::of(&t1), Digest::of(&t2));
        let names: Vec<String> = tar::Archive::new(&t1[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        let r = unpack(&t1[..], &out, "t", opts).unwrap();
        assert_eq!(r.diff_id, Digest::of(&t1));
        assert_eq!(fs::read(out.join("a/hl")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(out.join("a/hl")).unwrap().ino(),
            fs::metadata(out.join("a/b/f")).unwrap().ino()
        );
        assert!(fs::symlink_metadata(out.join("gone"))
            .unwrap()
            .file_type()
            .is_char_device());
    }
}
