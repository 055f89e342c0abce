//! Moving images in and out of the store: a flattened rootfs tar, an OCI image layout, and a
//! CI cache folder (all blobs and image records, for restoring a warm store elsewhere).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::blob_store::file_digest;
use super::digest::Digest;
use super::error::ImageError;
use super::image_store::{ImageConfig, ImageRecord, LayerRecord};
use super::layer_writer::{LayerTarWriter, WhiteoutMode};
use super::manifest::{
    ConfigFile, Descriptor, Index, ManifestKind, Platform, OCI_INDEX, OCI_MANIFEST,
};
use super::progress::Progress;
use super::pull::select_platform;
use super::store::ImageStore;
use super::xattrs;
use crate::host::clock::now_secs;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a CI cache import or export moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    pub images: usize,
    pub blobs: usize,
    pub layers_unpacked: usize,
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn is_opaque(p: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|k| xattrs::get(p, k).as_deref() == Some(b"y"))
}

/// Removes `rel`'s descendants (and `rel` itself when `inclusive`) from the merged view.
fn drop_subtree(view: &mut BTreeMap<PathBuf, usize>, rel: &Path, inclusive: bool) {
    let doomed: Vec<PathBuf> = view
        .range(rel.to_path_buf()..)
        .map(|(k, _)| k)
        .take_while(|k| k.starts_with(rel))
        .filter(|k| inclusive || k.as_path() != rel)
        .cloned()
        .collect();
    for k in doomed {
        view.remove(&k);
    }
}

/// The merged view of layers (bottom → top): for each visible path, the layer it comes from.
pub fn merged_view(layers: &[PathBuf]) -> io::Result<BTreeMap<PathBuf, usize>> {
    let mut view = BTreeMap::new();
    for (i, layer) in layers.iter().enumerate() {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = layer.join(&rel);
            let mut names: Vec<_> = fs::read_dir(&abs)?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for name in names.into_iter().rev() {
                let r = rel.join(&name);
                let a = layer.join(&r);
                if is_whiteout(&a) {
                    drop_subtree(&mut view, &r, true);
                    continue;
                }
                let meta = fs::symlink_metadata(&a)?;
                if meta.is_dir() {
                    if is_opaque(&a) {
                        drop_subtree(&mut view, &r, false);
                    }
                    stack.push(r.clone());
                } else {
                    drop_subtree(&mut view, &r, true);
                }
                view.insert(r, i);
            }
        }
    }
    Ok(view)
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    if to.exists() {
        return Ok(());
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).map_err(ImageError::io(to))?;
    }
    Ok(())
}

impl ImageStore {
    fn layer_dirs(&self, record: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        record
            .layers
            .iter()
            .map(|l| {
                let p = self.layers.path(&l.diff_id);
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(ImageError::Base(format!(
                        "layer {} of {} is missing from the store; pull or import the image again",
                        l.diff_id, record.name
                    )))
                }
            })
            .collect()
    }

    /// Writes the image's root filesystem (all layers applied, whiteouts resolved) as one
    /// tar.
    pub fn export_rootfs_tar(
        &self,
        record: &ImageRecord,
        out: impl Write,
    ) -> Result<(), ImageError> {
        let _lock = self.lock_shared()?;
        let dirs = self.layer_dirs(record)?;
        let view = merged_view(&dirs).map_err(|e| ImageError::Io {
            path: self.home.layers_dir(),
            source: e,
        })?;
        let mut w = LayerTarWriter::new(out, WhiteoutMode::Plain);
        for (rel, i) in &view {
            w.append(rel, &dirs[*i].join(rel))
                .map_err(|e| ImageError::Io {
                    path: dirs[*i].join(rel),
                    source: e,
                })?;
        }
        let mut out = w.finish().map_err(|e| ImageError::Io {
            path: PathBuf::from("rootfs tar"),
            source: e,
        })?;
        out.flush().map_err(ImageError::io("rootfs tar"))
    }

    /// Writes an OCI image layout at `dir` holding the image (blobs hard-linked when the
    /// filesystem allows).
    pub fn export_oci_layout(&self, record: &ImageRecord, dir: &Path) -> Result<(), ImageError> {
        let _lock = self.lock_shared()?;
        let blobs_dir = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs_dir).map_err(ImageError::io(&blobs_dir))?;
        let mut digests = vec![record.manifest_digest.clone(), record.config_digest.clone()];
        digests.extend(record.layers.iter().map(|l| l.digest.clone()));
        for d in &digests {
            let src = self.blobs.path(d);
            if !src.is_file() {
                return Err(ImageError::Base(format!(
                    "blob {d} of {} is missing from the store; pull or import the image again",
                    record.name
                )));
            }
            link_or_copy(&src, &blobs_dir.join(d.hex()))?;
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(ImageError::io(dir.join("oci-layout")))?;
        let manifest_bytes = self.blobs.read(&record.manifest_digest)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let tag = record
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .filter(|t| !t.contains('/'))
            .unwrap_or("latest");
        let platform = Platform::parse(&record.platform).ok();
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![Descriptor {
                media_type,
                digest: record.manifest_digest.clone(),
                size: manifest_bytes.len() as u64,
                platform,
                annotations: Some([(REF_NAME.to_string(), tag.to_string())].into()),
            }],
        };
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| ImageError::malformed("index.json", e))?;
        fs::write(dir.join("index.json"), bytes).map_err(ImageError::io(dir.join("index.json")))
    }

    /// Imports the image of an OCI layout folder (choosing the host platform from an index).
    pub fn import_oci_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        let _lock = self.lock_shared()?;
        let blob_path = |d: &Digest| dir.join("blobs/sha256").join(d.hex());
        let read_verified = |d: &Digest| -> Result<Vec<u8>, ImageError> {
            let p = blob_path(d);
            let b = fs::read(&p).map_err(ImageError::io(&p))?;
            if Digest::of(&b) != *d {
                return Err(ImageError::DigestMismatch {
                    digest: d.to_string(),
                    origin: dir.display().to_string(),
                    actual: Digest::of(&b).to_string(),
                });
            }
            Ok(b)
        };
        let index_path = dir.join("index.json");
        let index_bytes = fs::read(&index_path).map_err(ImageError::io(&index_path))?;
        let index: Index = serde_json::from_slice(&index_bytes)
            .map_err(|e| ImageError::malformed(index_path.display().to_string(), e))?;
        let platform = Platform::host();
        let mut desc = index
            .manifests
            .iter()
            .find(|m| {
                name.is_some_and(|n| {
                    m.annotations
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|r| n.ends_with(r.as_str()))
                })
            })
            .or_else(|| select_platform(&index.manifests, &platform))
            .or_else(|| index.manifests.first())
            .ok_or_else(|| {
                ImageError::malformed(index_path.display().to_string(), "it lists no image")
            })?
            .clone();
        let what = format!("manifest in {}", dir.display());
        let mut bytes = read_verified(&desc.digest)?;
        let mut index_digest = None;
        let manifest = loop {
            match ManifestKind::parse(&bytes, &desc.media_type, &what)? {
                ManifestKind::Image(m) => break m,
                ManifestKind::Index(i) => {
                    index_digest = Some(desc.digest.clone());
                    desc = select_platform(&i.manifests, &platform)
                        .ok_or_else(|| ImageError::NoMatchingPlatform {
                            reference: dir.display().to_string(),
                            platform: platform.to_string(),
                            available: String::new(),
                        })?
                        .clone();
                    bytes = read_verified(&desc.digest)?;
                }
            }
        };
        let cfg_bytes = read_verified(&manifest.config.digest)?;
        let cfg: ConfigFile = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| ImageError::malformed(format!("image config in {}", dir.display()), e))?;
        if cfg.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::malformed(
                what,
                "manifest and config disagree on the number of layers",
            ));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(&cfg.rootfs.diff_ids) {
            if !self.blobs.contains(&l.digest) {
                let p = blob_path(&l.digest);
                let f = File::open(&p).map_err(ImageError::io(&p))?;
                let (got, _) = self.blobs.put_stream(f, &p.display().to_string())?;
                if got != l.digest {
                    self.blobs.remove(&got)?;
                    return Err(ImageError::DigestMismatch {
                        digest: l.digest.to_string(),
                        origin: dir.display().to_string(),
                        actual: got.to_string(),
                    });
                }
            }
            if !self.layers.contains(diff_id) {
                let mut bar = progress.start(&format!("layer {} unpack", l.digest.short()), None);
                self.layers.unpack_blob(
                    &self.blobs.path(&l.digest),
                    Some(diff_id),
                    &format!("{} ({})", l.digest, dir.display()),
                    &mut |n| bar.advance(n),
                )?;
                bar.finish("unpacked");
            }
            layers.push(LayerRecord {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
                diff_id: diff_id.clone(),
            });
        }
        self.blobs.put_bytes(
            &cfg_bytes,
            Some(&manifest.config.digest),
            &dir.display().to_string(),
        )?;
        self.blobs
            .put_bytes(&bytes, Some(&desc.digest), &dir.display().to_string())?;
        let name = name
            .map(str::to_string)
            .or_else(|| {
                desc.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .map(|t| format!("oci:{}:{t}", dir.display()))
            })
            .unwrap_or_else(|| format!("oci:{}", dir.display()));
        let record = ImageRecord {
            name,
            manifest_digest: desc.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            index_digest,
            platform: format!("{}/{}", cfg.os, cfg.architecture),
            config: ImageConfig::from(cfg.config.as_ref()),
            layers,
            created: now_secs(),
        };
        self.records.put(&record)?;
        Ok(record)
    }

    /// Copies every blob of the given images (all images when `names` is empty) and their
    /// records into `dir`, for a CI cache.
    pub fn export_cache(&self, dir: &Path, names: &[String]) -> Result<CacheReport, ImageError> {
        let _lock = self.lock_shared()?;
        let records: Vec<ImageRecord> = if names.is_empty() {
            self.records.list()?
        } else {
            names
                .iter()
                .map(|n| self.get(n)?.ok_or_else(|| ImageError::NotFound(n.clone())))
                .collect::<Result<_, _>>()?
        };
        let blobs_dir = dir.join("blobs/sha256");
        let images_dir = dir.join("images");
        for d in [&blobs_dir, &images_dir] {
            fs::create_dir_all(d).map_err(ImageError::io(d))?;
        }
        let mut report = CacheReport::default();
        for r in &records {
            let mut digests = vec![r.manifest_digest.clone(), r.config_digest.clone()];
            digests.extend(r.index_digest.clone());
            digests.extend(r.layers.iter().map(|l| l.digest.clone()));
            for d in digests {
                let src = self.blobs.path(&d);
                let dst = blobs_dir.join(d.hex());
                if src.is_file() && !dst.exists() {
                    link_or_copy(&src, &dst)?;
                    report.blobs += 1;
                }
            }
            let src = self.records.path(&r.name);
            let dst = images_dir.join(src.file_name().unwrap_or_default());
            fs::copy(&src, &dst).map_err(ImageError::io(&dst))?;
            report.images += 1;
        }
        Ok(report)
    }

    /// Restores a CI cache written by [`ImageStore::export_cache`]: every blob is verified
    /// against its name, layers are unpacked, records written.
    pub fn import_cache(&self, dir: &Path, progress: &Progress) -> Result<CacheReport, ImageError> {
        let _lock = self.lock_shared()?;
        let mut report = CacheReport::default();
        let blobs_dir = dir.join("blobs/sha256");
        if let Ok(rd) = fs::read_dir(&blobs_dir) {
            for e in rd.flatten() {
                let Ok(d) = Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy()))
                else {
                    continue;
                };
                if self.blobs.contains(&d) {
                    continue;
                }
                let (actual, _) = file_digest(&e.path())?;
                if actual != d {
                    return Err(ImageError::DigestMismatch {
                        digest: d.to_string(),
                        origin: e.path().display().to_string(),
                        actual: actual.to_string(),
                    });
                }
                let dst = self.blobs.path(&d);
                let tmp = self.home.tmp_dir().join(format!(
                    "cache-{}-{}",
                    d.short(),
                    super::unique_suffix()
                ));
                fs::copy(e.path(), &tmp).map_err(ImageError::io(&tmp))?;
                fs::rename(&tmp, &dst).map_err(ImageError::io(&dst))?;
                report.blobs += 1;
            }
        }
        let images_dir = dir.join("images");
        let rd = fs::read_dir(&images_dir).map_err(ImageError::io(&images_dir))?;
        for e in rd.flatten() {
            let Some(r) = crate::state::read_json::<ImageRecord>(&e.path())? else {
                continue;
            };
            for l in &r.layers {
                if !self.layers.contains(&l.diff_id) {
                    let blob = self.blobs.path(&l.digest);
                    if !blob.is_file() {
                        return Err(ImageError::Base(format!(
                            "the cache at {} lacks blob {} of {}; export it again",
                            dir.display(),
                            l.digest,
                            r.name
                        )));
                    }
                    let mut bar =
                        progress.start(&format!("layer {} unpack", l.digest.short()), None);
                    self.layers.unpack_blob(
                        &blob,
                        Some(&l.diff_id),
                        &l.digest.to_string(),
                        &mut |n| bar.advance(n),
                    )?;
                    bar.finish("unpacked");
                    report.layers_unpacked += 1;
                }
            }
            self.records.put(&r)?;
            report.images += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::tests::tar_of;

    #[test]
    fn merged_view_applies_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let store = ImageStore::open(&home);
        let lower = tar_of(&[
            ("a/", 'd', ""),
            ("a/keep", 'f', "1"),
            ("a/gone", 'f', "2"),
            ("o/", 'd', ""),
            ("o/old", 'f', "3"),
        ]);
        let upper = tar_of(&[
            ("a/.wh.gone", 'f', ""),
            ("o/.wh..wh..opq", 'f', ""),
            ("o/new", 'f', "4"),
        ]);
        let mut dirs = Vec::new();
        for t in [lower, upper] {
            let m = store
                .layers
                .unpack_stream(&t[..], None, "t", &mut |_| {})
                .unwrap();
            dirs.push(store.layers.path(&m.diff_id));
        }
        let view = merged_view(&dirs).unwrap();
        let names: Vec<String> = view
            .keys()
            .map(|k| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a", "a/keep", "o", "o/new"]);
    }
}
