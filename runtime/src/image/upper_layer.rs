//! A build step's upper folder made into its layer: the step's changes are written once as
//! the layer tar (into the blob store: its digest names the layer), and, as root, the upper
//! folder itself then becomes the layer folder (`layers/<diff-id>/`), made while the tar is
//! written into exactly what unpacking that tar gives
//! ([`write_tree_adopting`](super::layer_writer::write_tree_adopting)). Unpacking the tar
//! again would create every file a second time and delete the upper's: on a filesystem that
//! skips recently freed inodes when it allocates new ones (ext4 without a journal), a rebuild
//! right after a build paid for each of those twice.
//!
//! Without root, the step's files belong to subordinate ids that an unpack would not keep,
//! so the tar is unpacked as before and the upper removed.

use std::fs;
use std::io;

use super::digest::Hashing;
use super::error::ImageError;
use super::image_store::LayerRecord;
use super::layer_store::LayerMeta;
use super::layer_writer::{write_tree_adopting, WhiteoutMode};
use super::manifest::OCI_LAYER_TAR;
use super::progress::Progress;
use super::store::ImageStore;
use super::unpack::UnpackOptions;
use crate::host::clock::now_secs;
use crate::state::StagingDir;

impl ImageStore {
    /// Stores the step output `upper` (a staging folder of this home; `mode`: how its
    /// whiteouts read) as an uncompressed layer and returns its record. The folder is
    /// consumed: it becomes the layer folder, or is removed.
    pub(crate) fn add_upper_layer(
        &self,
        upper: StagingDir,
        mode: WhiteoutMode,
        label: &str,
        progress: &Progress,
    ) -> Result<LayerRecord, ImageError> {
        let opts = UnpackOptions::for_current_user();
        if !opts.privileged {
            return self.add_tree_layer(upper.path(), mode, label, progress);
        }
        let (tmp, _guard, file) = self.new_tree_tar()?;
        let (out, content_size) = write_tree_adopting(
            upper.path(),
            Hashing::new(io::BufWriter::with_capacity(1 << 20, file)),
            mode,
            opts.opaque_xattr(),
        )
        .map_err(ImageError::io(upper.path()))?;
        let (w, digest, size) = out.finish();
        w.into_inner()
            .map_err(|e| ImageError::io(&tmp)(e.into_error()))?;
        if !self.blobs.contains(&digest) {
            fs::rename(&tmp, self.blobs.path(&digest)).map_err(ImageError::io(&tmp))?;
        }
        if self.layers.contains(&digest) {
            drop(upper);
        } else {
            // The folder itself is not in the tar: it gets what a fresh layer folder has.
            let root = upper.path();
            std::os::unix::fs::lchown(root, Some(0), Some(0)).map_err(ImageError::io(root))?;
            fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(ImageError::io(root))?;
            let meta = LayerMeta {
                diff_id: digest.clone(),
                size: content_size,
                tar_size: size,
                created: now_secs(),
                skipped_devices: 0,
                privileged: true,
            };
            self.layers.commit(upper, &meta)?;
        }
        Ok(LayerRecord {
            digest: digest.clone(),
            media_type: OCI_LAYER_TAR.to_string(),
            size,
            diff_id: digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::progress::QuietProgress;
    use crate::image::unpack::unpack;
    use crate::image::xattrs;
    use crate::state::BerthHome;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::sync::Arc;

    /// Every entry below `root`: kind, mode, owner, device, mtime (whiteouts excepted: an
    /// unpack makes them now), attributes, content hash or link target, and which earlier
    /// entry it is a hard link of.
    fn snapshot(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            let mut names: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for p in names {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                let ft = m.file_type();
                let whiteout = ft.is_char_device() && m.rdev() == 0;
                let what = if ft.is_dir() {
                    todo.push(p.clone());
                    "dir".to_string()
                } else if ft.is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if ft.is_file() {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    let data = fs::read(&p).unwrap();
                    format!(
                        "file {} link of {first}",
                        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
                    )
                } else {
                    format!("{:?} {}", ft, m.rdev())
                };
                let time = if whiteout {
                    String::new()
                } else {
                    format!("{}.{:09}", m.mtime(), m.mtime_nsec())
                };
                out.insert(
                    rel,
                    format!(
                        "{what} {:o} {}:{} {time} {:?}",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid(),
                        xattrs::list(&p).unwrap()
                    ),
                );
            }
        }
        out
    }

    #[test]
    fn a_step_upper_becomes_its_layer_exactly_as_unpacking_its_tar_makes_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (ownership, trusted.* attributes); CI runs as root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path().join("home")).unwrap();
        let store = ImageStore::open(&home);
        let upper = home.staging_dir("build-upper").unwrap();
        let u = upper.path().to_path_buf();
        // What a RUN step's upper holds: files with odd owners, modes and nanosecond times,
        // a hard link, a symlink, a whiteout, an opaque folder with overlay's bookkeeping
        // attributes, a user attribute, a socket the step left.
        fs::create_dir_all(u.join("app/o")).unwrap();
        fs::write(u.join("app/f"), b"content\n").unwrap();
        std::os::unix::fs::lchown(u.join("app/f"), Some(1000), Some(1001)).unwrap();
        fs::set_permissions(u.join("app/f"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::hard_link(u.join("app/f"), u.join("app/hl")).unwrap();
        std::os::unix::fs::symlink("f", u.join("app/sl")).unwrap();
        fs::write(u.join("app/o/kept"), b"k").unwrap();
        xattrs::set(&u.join("app/o"), "trusted.overlay.opaque", b"y").unwrap();
        xattrs::set(&u.join("app/o"), "trusted.overlay.origin", b"\x00x").unwrap();
        xattrs::set(&u.join("app/f"), "user.note", b"kept").unwrap();
        xattrs::set(&u, "trusted.overlay.impure", b"y").unwrap();
        nix::sys::stat::mknod(
            &u.join("app/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        drop(std::os::unix::net::UnixListener::bind(u.join("app/sock")).unwrap());
        let t = nix::sys::time::TimeSpec::new(1_700_000_000, 123_456_789);
        for p in ["app/f", "app/o/kept", "app"] {
            nix::sys::stat::utimensat(
                None,
                &u.join(p),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let ino = fs::metadata(u.join("app/f")).unwrap().ino();

        let progress: Progress = Arc::new(QuietProgress);
        let layer = store
            .add_upper_layer(upper, WhiteoutMode::FromOverlay, "step", &progress)
            .unwrap();
        let dir = store.layers.path(&layer.diff_id);
        assert!(!u.exists(), "the upper folder moved");
        assert_eq!(
            fs::metadata(dir.join("app/f")).unwrap().ino(),
            ino,
            "the step's files are the layer's: written once, not unpacked again"
        );

        let unpacked = d.path().join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let blob = fs::File::open(store.blobs.path(&layer.digest)).unwrap();
        let report = unpack(blob, &unpacked, "step", UnpackOptions::for_current_user()).unwrap();
        assert_eq!(report.diff_id, layer.diff_id);
        let (ours, theirs) = (snapshot(&dir), snapshot(&unpacked));
        assert_eq!(ours, theirs);
        // Not equal by being empty or unchanged: the normalisations happened.
        assert!(!ours.contains_key("app/sock"), "{ours:?}");
        assert!(
            ours["app/f"].contains(" 4750 1000:1001 1700000000.000000000 "),
            "{ours:?}"
        );
        assert!(ours["app/f"].contains("user.note"), "{ours:?}");
        assert!(ours["app/o"].contains("trusted.overlay.opaque"), "{ours:?}");
        assert!(!ours["app/o"].contains("origin"), "{ours:?}");
        assert!(xattrs::list(&dir).unwrap().is_empty());
        let meta = store.layers.meta(&layer.diff_id).unwrap();
        assert_eq!(
            (meta.size, meta.tar_size),
            (report.content_size, report.tar_size)
        );
    }
}
