//! [`ImageStore`]: the one entry point of the image side. Resolves an [`ImageSource`] to
//! unpacked layers, pulls, lists, removes and prunes.
//!
//! Concurrency: operations that add content (pull, import, resolve, build) hold
//! `locks/images.lock` shared; `prune` holds it exclusive, so it never removes what a
//! concurrent berth is adding. Environments record the layers they use in
//! `envs/<id>/env.json` (`"layers": ["sha256:…", …]`); prune keeps those.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use envfile_spec::plan::ImageSource;
use envfile_spec::reference::ImageReference;
use serde::Serialize;

use super::blob_store::BlobStore;
use super::digest::Digest;
use super::error::ImageError;
use super::image_store::{ImageConfig, ImageRecord, RecordStore};
use super::layer_store::LayerStore;
use super::pull::{PullOptions, Puller};
use crate::state::{BerthHome, EnvLayersInUse, FileLock, LockMode};

/// Name prefix of the image records that cache build steps.
pub(crate) const BUILD_PREFIX: &str = "build:";
/// Hex digits of a short build key or image id, as `berth image ls` prints them.
pub const SHORT_ID_LEN: usize = 12;

/// An image ready for an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The name of its record (`127.0.0.1:5000/bb:latest`, `rootfs:/abs/dir`, …).
    pub name: String,
    /// Image id: the digest of its config.
    pub id: Digest,
    pub manifest_digest: Digest,
    /// Unpacked layer folders, bottom to top: overlay lower dirs (overlayfs wants them
    /// top first in `lowerdir=`, so reverse this list there).
    pub layers: Vec<PathBuf>,
    /// Diff-ids of `layers`, same order: what an environment records in its state.
    pub diff_ids: Vec<Digest>,
    pub config: ImageConfig,
}

/// How to resolve.
#[derive(Clone, Default)]
pub struct ResolveOptions {
    pub pull: PullOptions,
    /// Ask the registry again even when the image is in the store (`--update`).
    pub update: bool,
    /// A manifest digest to use instead of what the tag points to now (from berth.lock).
    pub pinned: Option<Digest>,
}

/// One line of `berth image ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub id: String,
    pub manifest_digest: String,
    pub layers: usize,
    /// Bytes of all its layers.
    pub size: u64,
    /// Bytes of the layers no other image uses.
    pub unique_size: u64,
    pub created: u64,
}

/// What `berth image ls` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageListing {
    pub images: Vec<ImageSummary>,
    /// Bytes of all layers in use by the listed images, each counted once.
    pub total_size: u64,
    pub total_layers: usize,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Cached build steps no environment or image uses any more.
    pub build_steps_removed: usize,
    pub layers_removed: usize,
    pub blobs_removed: usize,
    /// Copies of layers owned by an id range (homes without id-mapped mounts) that no
    /// environment uses.
    pub layer_copies_removed: usize,
    /// Kept content keys of Dockerfile builds whose layers or context are gone
    /// (`copy-keys/`, `context-digests/`).
    pub build_memos_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) home: BerthHome,
    pub(crate) blobs: BlobStore,
    pub(crate) layers: LayerStore,
    pub(crate) records: RecordStore,
}

impl ImageStore {
    pub fn open(home: &BerthHome) -> Self {
        ImageStore {
            home: home.clone(),
            blobs: BlobStore::new(home),
            layers: LayerStore::new(home),
            records: RecordStore::new(home),
        }
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }
    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }
    pub fn records(&self) -> &RecordStore {
        &self.records
    }

    /// Holds the store lock shared: content is being added or used. An environment backend
    /// holds this from `resolve` until its env.json lists the layers, so a concurrent
    /// `prune` cannot remove them in between.
    pub fn lock_shared(&self) -> Result<FileLock, ImageError> {
        Ok(FileLock::acquire(&self.lock_path(), LockMode::Shared)?)
    }

    fn lock_path(&self) -> PathBuf {
        self.home.locks_dir().join("images.lock")
    }

    /// Pulls an image from its registry and records it under its full reference.
    pub fn pull(
        &self,
        reference: &ImageReference,
        opts: &PullOptions,
    ) -> Result<ImageRecord, ImageError> {
        let _lock = self.lock_shared()?;
        self.pull_locked(reference, &reference.to_string(), opts)
    }

    fn pull_locked(
        &self,
        reference: &ImageReference,
        name: &str,
        opts: &PullOptions,
    ) -> Result<ImageRecord, ImageError> {
        let puller = Puller {
            blobs: &self.blobs,
            layers: &self.layers,
        };
        let record = puller.pull(reference, name, opts)?;
        self.records.put(&record)?;
        Ok(record)
    }

    /// A stored image by name (a reference is normalized first: `bb` finds
    /// `docker.io/library/bb:latest`).
    /// `berth image ls` prints build images as `build:` + 12 hex digits and image ids as 12
    /// hex digits: both are found too (a unique prefix of at least 12 digits).
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        if let Some(r) = self.records.get(name)? {
            return Ok(Some(r));
        }
        if let Ok(r) = ImageReference::parse(name) {
            if let Some(r) = self.records.get(&r.to_string())? {
                return Ok(Some(r));
            }
        }
        let hex = |s: &str| s.len() >= SHORT_ID_LEN && s.bytes().all(|b| b.is_ascii_hexdigit());
        let unique = |mut found: Vec<ImageRecord>| (found.len() == 1).then(|| found.remove(0));
        if let Some(prefix) = name.strip_prefix(BUILD_PREFIX).filter(|p| hex(p)) {
            let found: Vec<ImageRecord> = self
                .records
                .list()?
                .into_iter()
                .filter(|r| {
                    r.name
                        .strip_prefix(BUILD_PREFIX)
                        .is_some_and(|k| k.starts_with(prefix))
                })
                .collect();
            return Ok(unique(found));
        }
        let id = name.strip_prefix("sha256:").unwrap_or(name);
        if hex(id) {
            let found: Vec<ImageRecord> = self
                .records
                .list()?
                .into_iter()
                .filter(|r| {
                    r.config_digest
                        .as_str()
                        .strip_prefix("sha256:")
                        .is_some_and(|d| d.starts_with(id))
                })
                .collect();
            return Ok(unique(found));
        }
        Ok(None)
    }

    /// How `berth image ls` names an image: build step images by `build:` and the first
    /// [`SHORT_ID_LEN`] digits of their key (which [`ImageStore::get`] accepts), others by
    /// their full name.
    pub fn display_name(name: &str) -> String {
        match name.strip_prefix(BUILD_PREFIX) {
            Some(key) if key.len() > SHORT_ID_LEN => {
                format!("{BUILD_PREFIX}{}", &key[..SHORT_ID_LEN])
            }
            _ => name.to_string(),
        }
    }

    /// Whether every layer of `record` is unpacked here.
    pub fn is_complete(&self, record: &ImageRecord) -> bool {
        record
            .layers
            .iter()
            .all(|l| self.layers.contains(&l.diff_id))
    }

    /// The environment's view of a record.
    pub fn resolved(&self, record: &ImageRecord) -> ResolvedImage {
        ResolvedImage {
            name: record.name.clone(),
            id: record.config_digest.clone(),
            manifest_digest: record.manifest_digest.clone(),
            layers: record
                .layers
                .iter()
                .map(|l| self.layers.path(&l.diff_id))
                .collect(),
            diff_ids: record.diff_ids(),
            config: record.config.clone(),
        }
    }

    /// Makes the image of `source` available (pulling, importing or bootstrapping it when
    /// needed) and returns its layers and config.
    pub fn resolve(
        &self,
        source: &ImageSource,
        opts: &ResolveOptions,
    ) -> Result<ResolvedImage, ImageError> {
        let _lock = self.lock_shared()?;
        let record = match source {
            ImageSource::Oci { reference } => self.resolve_oci(reference, opts)?,
            ImageSource::Rootfs { path } => {
                self.import_rootfs_dir(path, None, &opts.pull.progress)?
            }
            ImageSource::Tar { path } => self.import_rootfs_tar(path, None, &opts.pull.progress)?,
            ImageSource::Debootstrap { suite, mirror } => {
                self.debootstrap(suite, mirror.as_deref(), opts.update, &opts.pull.progress)?
            }
        };
        Ok(self.resolved(&record))
    }

    fn resolve_oci(
        &self,
        reference: &ImageReference,
        opts: &ResolveOptions,
    ) -> Result<ImageRecord, ImageError> {
        let name = reference.to_string();
        let existing = self.records.get(&name)?;
        if let Some(pin) = &opts.pinned {
            if let Some(r) = existing.filter(|r| &r.manifest_digest == pin && self.is_complete(r)) {
                return Ok(r);
            }
            let mut pinned = reference.clone();
            pinned.digest = Some(pin.to_string());
            return self.pull_locked(&pinned, &name, &opts.pull);
        }
        if !opts.update {
            if let Some(r) = existing.filter(|r| self.is_complete(r)) {
                return Ok(r);
            }
        }
        self.pull_locked(reference, &name, &opts.pull)
    }

    /// Every image with its sizes; shared layers are counted once in the total.
    pub fn list(&self) -> Result<ImageListing, ImageError> {
        let records = self.records.list()?;
        let size_of = |d: &Digest| self.layers.meta(d).map(|m| m.size).unwrap_or(0);
        let mut all = BTreeSet::new();
        let mut images = Vec::new();
        for r in &records {
            let mine: BTreeSet<&Digest> = r.layers.iter().map(|l| &l.diff_id).collect();
            let shared: BTreeSet<&Digest> = records
                .iter()
                .filter(|o| o.name != r.name)
                .flat_map(|o| o.layers.iter().map(|l| &l.diff_id))
                .collect();
            images.push(ImageSummary {
                name: r.name.clone(),
                id: r.config_digest.to_string(),
                manifest_digest: r.manifest_digest.to_string(),
                layers: r.layers.len(),
                size: mine.iter().map(|d| size_of(d)).sum(),
                unique_size: mine
                    .iter()
                    .filter(|d| !shared.contains(*d))
                    .map(|d| size_of(d))
                    .sum(),
                created: r.created,
            });
            all.extend(mine.into_iter().cloned());
        }
        Ok(ImageListing {
            images,
            total_size: all.iter().map(size_of).sum(),
            total_layers: all.len(),
        })
    }

    /// Removes an image's record; its layers and blobs go with the next `prune` when nothing
    /// else uses them.
    pub fn remove(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let record = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        self.records.remove(&record.name)?;
        Ok(record)
    }

    /// Diff-ids that environments record as in use.
    fn env_layers(&self) -> Result<BTreeSet<Digest>, ImageError> {
        let mut out = BTreeSet::new();
        let dir = self.home.envs_dir();
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let in_use = match EnvLayersInUse::load(&e.path()) {
                Ok(v) => v,
                Err(err) => {
                    // Keep everything rather than guess what a damaged state uses.
                    return Err(ImageError::Base(format!(
                        "cannot tell which layers environment {} uses ({err}); prune removed nothing",
                        e.file_name().to_string_lossy()
                    )));
                }
            };
            for l in in_use.iter().flat_map(EnvLayersInUse::diff_ids) {
                if let Ok(d) = Digest::parse(&l) {
                    out.insert(d);
                }
            }
        }
        Ok(out)
    }

    /// Removes what interrupted image operations left in `tmp/` (partial downloads, staging
    /// folders). Only under the exclusive store lock: every image operation holds it shared.
    fn remove_leftovers(&self) -> u64 {
        const PREFIXES: [&str; 10] = [
            "blob-",
            "layer-",
            "tree-",
            "import-",
            "cache-",
            "removing-",
            "build-upper-",
            "build-work-",
            "debootstrap-",
            "blob-import-",
        ];
        let mut freed = 0;
        let Ok(rd) = fs::read_dir(self.home.tmp_dir()) else {
            return 0;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if PREFIXES.iter().any(|p| name.starts_with(p)) {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    let _ = crate::state::remove_tree(&p);
                } else {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = fs::remove_file(&p);
                }
            }
        }
        freed
    }

    /// Removes layers and blobs that no image record and no environment references.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        let _lock = FileLock::acquire(&self.lock_path(), LockMode::Exclusive)?;
        let env_layers = self.env_layers()?;
        let mut report = PruneReport::default();
        // Cached build steps stay while their layer is in use: by an environment, or by an
        // image that is not itself build cache. Steps edited away go.
        let records = self.records.list()?;
        let image_layers: BTreeSet<Digest> = records
            .iter()
            .filter(|r| !r.name.starts_with(BUILD_PREFIX))
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        let mut kept = Vec::new();
        for r in records {
            let used = r.layers.last().is_none_or(|top| {
                env_layers.contains(&top.diff_id) || image_layers.contains(&top.diff_id)
            });
            if r.name.starts_with(BUILD_PREFIX) && !used {
                self.records.remove(&r.name)?;
                report.build_steps_removed += 1;
            } else {
                kept.push(r);
            }
        }
        let mut keep_layers = env_layers;
        let mut keep_blobs = BTreeSet::new();
        for r in kept {
            keep_blobs.insert(r.manifest_digest.clone());
            keep_blobs.insert(r.config_digest.clone());
            if let Some(i) = &r.index_digest {
                keep_blobs.insert(i.clone());
            }
            for l in &r.layers {
                keep_blobs.insert(l.digest.clone());
                keep_layers.insert(l.diff_id.clone());
            }
        }
        self.blobs.remove_download_locks();
        report.bytes_freed += self.remove_leftovers();
        for d in self.layers.list()? {
            if !keep_layers.contains(&d) {
                report.bytes_freed += self.layers.meta(&d).map(|m| m.size).unwrap_or(0);
                self.layers.remove(&d)?;
                report.layers_removed += 1;
            }
        }
        let (copies, copy_bytes) = super::layer_copies::LayerCopies::new(self.home.root())
            .prune()
            .map_err(|e| ImageError::Base(format!("{e}; prune removed no layer copies")))?;
        report.layer_copies_removed = copies;
        report.bytes_freed += copy_bytes;
        // After the layers: a kept key goes with the layers it was read from.
        for (n, bytes) in [
            super::copy_keys::prune(self.home.root()),
            super::context_digests::prune(self.home.root()),
        ] {
            report.build_memos_removed += n;
            report.bytes_freed += bytes;
        }
        for d in self.blobs.list()? {
            if !keep_blobs.contains(&d) {
                report.bytes_freed += self.blobs.size(&d).unwrap_or(0);
                self.blobs.remove(&d)?;
                report.blobs_removed += 1;
            }
        }
        Ok(report)
    }
}
