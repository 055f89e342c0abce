//! The layer store: `layers/<diff-id-hex>/` holds one unpacked layer, shared by every image
//! and environment that uses it, with its metadata beside it in `layers/<diff-id-hex>.json`.
//! A layer is unpacked into a staging folder under `tmp/` and renamed in whole, so a layer
//! directory that exists is always complete.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;
use super::unpack::{decompressed, unpack_bounded, UnpackOptions};
use crate::host::clock::now_secs;
use crate::state::{read_json, remove_tree, write_json, BerthHome};

/// What the store knows about one unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub diff_id: Digest,
    /// Bytes of file content in the layer (its size on disk, roughly).
    pub size: u64,
    /// Length of the uncompressed tar stream.
    pub tar_size: u64,
    /// Unix time the layer was unpacked.
    pub created: u64,
    /// Device nodes left out because the layer was unpacked without root.
    #[serde(default)]
    pub skipped_devices: u64,
    /// Whether the layer was unpacked as root (ownership kept, trusted.* whiteout attributes).
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone)]
pub struct LayerStore {
    home: BerthHome,
}

/// A reader that reports how many bytes passed.
struct Counting<'a, R> {
    inner: R,
    on_read: &'a mut (dyn FnMut(u64) + Send),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

impl LayerStore {
    pub fn new(home: &BerthHome) -> Self {
        LayerStore { home: home.clone() }
    }

    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.home.layers_dir().join(diff_id.hex())
    }

    fn meta_path(&self, diff_id: &Digest) -> PathBuf {
        self.home
            .layers_dir()
            .join(format!("{}.json", diff_id.hex()))
    }

    pub fn contains(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    pub fn meta(&self, diff_id: &Digest) -> Option<LayerMeta> {
        read_json(&self.meta_path(diff_id)).ok().flatten()
    }

    /// Diff-ids of every unpacked layer.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.home.layers_dir();
        let rd = fs::read_dir(&dir).map_err(ImageError::io(&dir))?;
        Ok(rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect())
    }

    /// Unpacks the layer blob at `blob` (tar, tar+gzip or tar+zstd) unless the layer is
    /// already there. With `expected`, the result must have that diff-id. `label` names the
    /// layer in errors; `on_read` sees the uncompressed bytes as they are unpacked.
    pub fn unpack_blob(
        &self,
        blob: &Path,
        expected: Option<&Digest>,
        label: &str,
        on_read: &mut (dyn FnMut(u64) + Send),
    ) -> Result<LayerMeta, ImageError> {
        if let Some(d) = expected {
            if self.contains(d) {
                return Ok(self.meta(d).unwrap_or_else(|| self.fallback_meta(d)));
            }
        }
        let file = File::open(blob).map_err(ImageError::io(blob))?;
        let reader = decompressed(file).map_err(ImageError::io(blob))?;
        self.unpack_stream(reader, expected, label, on_read)
    }

    /// Like [`LayerStore::unpack_blob`] for an uncompressed tar stream.
    pub fn unpack_stream(
        &self,
        reader: impl Read + Send,
        expected: Option<&Digest>,
        label: &str,
        on_read: &mut (dyn FnMut(u64) + Send),
    ) -> Result<LayerMeta, ImageError> {
        // Each layer's folders go to a block group of their own on ext4, not the one where
        // the last layers (or a prune) just freed thousands of inodes: without a journal,
        // ext4 skips those one by one for every file created there (host::dir_spread). A
        // placement hint: a filesystem without it, or a refusal, changes nothing else.
        let _ = crate::host::dir_spread::spread_subfolders(&self.home.tmp_dir());
        let staging = self.home.staging_dir("layer")?;
        let opts = UnpackOptions::for_current_user();
        // A layer may use the free space of the home's filesystem but one reserve (5%,
        // at least 64 MiB), so a decompression bomb fails cleanly before the disk is full;
        // the staging folder goes with the error.
        let free =
            crate::state::free_bytes(staging.path()).map_err(ImageError::io(staging.path()))?;
        let budget = free.saturating_sub((free / 20).max(64 << 20));
        let report = unpack_bounded(
            Counting {
                inner: reader,
                on_read,
            },
            staging.path(),
            label,
            opts,
            budget,
        )?;
        if let Some(exp) = expected {
            if *exp != report.diff_id {
                return Err(ImageError::DiffIdMismatch {
                    layer: label.to_string(),
                    expected: exp.to_string(),
                    actual: report.diff_id.to_string(),
                });
            }
        }
        let meta = LayerMeta {
            diff_id: report.diff_id.clone(),
            size: report.content_size,
            tar_size: report.tar_size,
            created: now_secs(),
            skipped_devices: report.skipped_devices,
            privileged: opts.privileged,
        };
        self.commit(staging, &meta)?;
        Ok(meta)
    }

    /// Moves an unpacked staging folder in as layer `meta.diff_id` (another process may have
    /// put the same layer there first: then ours is dropped).
    pub(crate) fn commit(
        &self,
        staging: crate::state::StagingDir,
        meta: &LayerMeta,
    ) -> Result<(), ImageError> {
        let dest = self.path(&meta.diff_id);
        match fs::rename(staging.path(), &dest) {
            Ok(()) => {
                staging.keep();
            }
            Err(_) if dest.is_dir() => drop(staging),
            Err(e) => return Err(ImageError::io(&dest)(e)),
        }
        if self.meta(&meta.diff_id).is_none() {
            write_json(&self.meta_path(&meta.diff_id), meta)?;
        }
        Ok(())
    }

    fn fallback_meta(&self, d: &Digest) -> LayerMeta {
        LayerMeta {
            diff_id: d.clone(),
            size: 0,
            tar_size: 0,
            created: 0,
            skipped_devices: 0,
            privileged: false,
        }
    }

    /// Removes a layer: renamed out of the store first, so it disappears atomically.
    pub fn remove(&self, diff_id: &Digest) -> Result<(), ImageError> {
        let dir = self.path(diff_id);
        let _ = fs::remove_file(self.meta_path(diff_id));
        if dir.exists() {
            let tmp = self.home.tmp_dir().join(format!(
                "removing-{}-{}",
                diff_id.short(),
                super::unique_suffix()
            ));
            fs::rename(&dir, &tmp).map_err(ImageError::io(&dir))?;
            remove_tree(&tmp).map_err(ImageError::io(&tmp))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::dir_spread::spreads_subfolders;

    #[test]
    fn layers_are_staged_in_a_folder_whose_subfolders_ext4_spreads() {
        // /var/tmp: a disk filesystem here (ext4), where the flag exists.
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let home = BerthHome::at(d.path().join("home")).unwrap();
        if spreads_subfolders(&home.tmp_dir()).unwrap().is_none() {
            eprintln!("skipped: the filesystem of /var/tmp has no FS_TOPDIR_FL (not ext2/3/4)");
            return;
        }
        let store = LayerStore::new(&home);
        let tar = crate::image::unpack::tests::tar_of(&[("etc/", 'd', ""), ("etc/a", 'f', "1")]);
        let meta = store
            .unpack_stream(&tar[..], None, "t", &mut |_| {})
            .unwrap();
        assert!(store.contains(&meta.diff_id));
        assert_eq!(spreads_subfolders(&home.tmp_dir()).unwrap(), Some(true));
    }
}
