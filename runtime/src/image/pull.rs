//! Pulling an image: manifest (or index → platform manifest), config, then the layers in
//! parallel, each downloaded into the blob store and unpacked into the layer store. Blobs
//! and layers already present are not fetched again.

use std::sync::Mutex;

use envfile_spec::reference::ImageReference;

use super::blob_store::BlobStore;
use super::blob_store::TeeRead;
use super::digest::Digest;
use super::error::ImageError;
use super::image_store::{ImageConfig, ImageRecord, LayerRecord};
use super::layer_store::LayerStore;
use super::manifest::{
    is_layer_media_type, ConfigFile, Descriptor, Manifest, ManifestKind, Platform,
};
use super::progress::Progress;
use super::registry::{RegistryClient, RegistryOptions};
use super::unpack::decompressed_buffered;
use crate::host::clock::now_secs;
use crate::host::fault_injection::checkpoint;

/// How to pull.
#[derive(Clone)]
pub struct PullOptions {
    pub registry: RegistryOptions,
    pub platform: Platform,
    pub progress: Progress,
    /// Layers fetched at the same time.
    pub jobs: usize,
    /// Also store each downloaded layer's uncompressed tar under its diff-id (as a layer
    /// berth built is stored), copied while the download is unpacked instead of
    /// decompressed a second time (the registry build cache).
    pub keep_tar: bool,
    /// Told the image's id (its config's digest) and config as soon as a pull has them,
    /// before any layer is fetched (the registry build cache looks the build's steps up
    /// while the base's layers download).
    pub on_config: Option<ConfigSeen>,
}

/// See [`PullOptions::on_config`].
pub type ConfigSeen = std::sync::Arc<dyn Fn(&Digest, &ConfigFile) + Send + Sync>;

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            registry: RegistryOptions::default(),
            platform: Platform::host(),
            progress: std::sync::Arc::new(super::progress::QuietProgress),
            jobs: 4,
            keep_tar: false,
            on_config: None,
        }
    }
}

pub(crate) struct Puller<'a> {
    pub blobs: &'a BlobStore,
    pub layers: &'a LayerStore,
}

impl Puller<'_> {
    /// Pulls `reference` and returns the record to store under `name`.
    pub fn pull(
        &self,
        reference: &ImageReference,
        name: &str,
        opts: &PullOptions,
    ) -> Result<ImageRecord, ImageError> {
        let client = RegistryClient::new(reference, &opts.registry)?;
        let origin = client.origin();
        let top = client.manifest(reference.manifest_reference())?;
        let (manifest_bytes, manifest_digest, index_digest) = match ManifestKind::parse(
            &top.bytes,
            &top.media_type,
            &format!("manifest of {reference}"),
        )? {
            ManifestKind::Image(_) => (top.bytes, top.digest, None),
            ManifestKind::Index(idx) => {
                let chosen = select_platform(&idx.manifests, &opts.platform).ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        reference: reference.to_string(),
                        platform: opts.platform.to_string(),
                        available: idx
                            .manifests
                            .iter()
                            .filter_map(|m| m.platform.as_ref().map(|p| p.to_string()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?;
                let m = client.manifest(chosen.digest.as_str())?;
                (m.bytes, m.digest, Some(top.digest))
            }
        };
        let manifest: Manifest =
            match ManifestKind::parse(&manifest_bytes, "", &format!("manifest of {reference}"))? {
                ManifestKind::Image(m) => m,
                ManifestKind::Index(_) => {
                    return Err(ImageError::malformed(
                        format!("manifest of {reference}"),
                        "an index points to another index",
                    ))
                }
            };
        for l in &manifest.layers {
            if !is_layer_media_type(&l.media_type) {
                return Err(ImageError::UnsupportedMediaType {
                    registry: reference.registry.clone(),
                    what: format!("layer {} of {reference}", l.digest),
                    media_type: l.media_type.clone(),
                });
            }
        }
        // The config is verified now but stored with the manifest, only once every layer
        // arrived: a failed pull leaves nothing in the blob store.
        let config_bytes = if self.blobs.contains(&manifest.config.digest) {
            self.blobs.read(&manifest.config.digest)?
        } else {
            client.blob_bytes(&manifest.config)?
        };
        let config: ConfigFile = serde_json::from_slice(&config_bytes).map_err(|e| {
            ImageError::malformed(
                format!("image config {} of {reference}", manifest.config.digest),
                e,
            )
        })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::malformed(
                format!("image {reference}"),
                format!(
                    "the manifest lists {} layers but the config {} diff-ids",
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let pairs: Vec<(Descriptor, Digest)> = manifest
            .layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        if let Some(seen) = &opts.on_config {
            seen(&manifest.config.digest, &config);
        }
        self.fetch_layers(&client, &pairs, opts)?;
        self.blobs
            .put_bytes(&config_bytes, Some(&manifest.config.digest), &origin)?;
        self.blobs
            .put_bytes(&manifest_bytes, Some(&manifest_digest), &origin)?;
        Ok(ImageRecord {
            name: name.to_string(),
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            index_digest,
            platform: format!("{}/{}", config.os, config.architecture),
            config: ImageConfig::from(config.config.as_ref()),
            layers: pairs
                .into_iter()
                .map(|(d, diff_id)| LayerRecord {
                    digest: d.digest,
                    media_type: d.media_type,
                    size: d.size,
                    diff_id,
                })
                .collect(),
            created: now_secs(),
        })
    }

    /// Fetches the blobs of `pairs` (descriptor, diff-id) not in the store yet, each
    /// verified, and unpacks them (safely, checked against the diff-id).
    pub(crate) fn fetch_layers(
        &self,
        client: &RegistryClient,
        pairs: &[(Descriptor, Digest)],
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        let mut todo: Vec<&(Descriptor, Digest)> = Vec::new();
        for p in pairs {
            let present = self.blobs.contains(&p.0.digest) && self.layers.contains(&p.1);
            if !present && !todo.iter().any(|t| t.0.digest == p.0.digest) {
                todo.push(p);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        self.check_room(client, &todo)?;
        let queue = Mutex::new(todo.into_iter());
        let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
        let workers = opts.jobs.clamp(1, 8);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some((desc, diff_id)) = next else { return };
                    if let Err(e) = self.fetch_one(client, desc, diff_id, opts) {
                        if let Ok(mut g) = first_error.lock() {
                            g.get_or_insert(e);
                        }
                        return;
                    }
                });
            }
        });
        match first_error.into_inner().ok().flatten() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Refuses, before anything is downloaded, layers whose declared sizes (less what
    /// earlier, interrupted downloads already hold) exceed the free space of the home's
    /// filesystem: a registry cannot make berth fill the disk by declaring a huge layer.
    /// (Unpacking is bounded separately, see `LayerStore::unpack_stream`.)
    fn check_room(
        &self,
        client: &RegistryClient,
        todo: &[&(Descriptor, Digest)],
    ) -> Result<(), ImageError> {
        let tmp = self.blobs.tmp_dir();
        let free = crate::state::free_bytes(tmp).map_err(ImageError::io(tmp))?;
        let mut need: u64 = 0;
        for (d, _) in todo {
            if !self.blobs.contains(&d.digest) {
                let have = self.blobs.partial_len(&d.digest);
                need = need.saturating_add(d.size.saturating_sub(have));
            }
        }
        if need > free {
            let what = match todo {
                [(d, _)] => format!("layer {} of {}", d.digest, client.origin()),
                _ => format!(
                    "the {} layers of {} to download",
                    todo.len(),
                    client.origin()
                ),
            };
            return Err(ImageError::NoSpace {
                what,
                need,
                free,
                path: tmp.to_path_buf(),
            });
        }
        Ok(())
    }

    fn fetch_one(
        &self,
        client: &RegistryClient,
        desc: &Descriptor,
        diff_id: &Digest,
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        let label = format!("layer {}", desc.digest.short());
        let layer_label = format!("{} ({})", desc.digest, client.origin());
        // With `keep_tar`, a layer new here is stored as its tar: its compressed blob is
        // only the way there, verified while it streams through but never written.
        let transient = opts.keep_tar
            && !self.blobs.contains(&desc.digest)
            && !self.layers.contains(diff_id)
            && !self.blobs.contains(diff_id);
        if !self.blobs.contains(&desc.digest) {
            let mut partial = if transient {
                self.blobs
                    .begin_transient(&desc.digest, desc.size, &client.origin())
            } else {
                self.blobs
                    .begin(&desc.digest, desc.size, &client.origin())?
            };
            if !transient && self.blobs.contains(&desc.digest) {
                // Another berth fetched it while this one waited.
                partial.abandon();
            } else {
                let mut bar = opts
                    .progress
                    .start(&format!("{label} download"), Some(desc.size));
                checkpoint("blob-download");
                // A fresh download is unpacked while it arrives; the layer is committed
                // only when its diff-id matches, and the blob only when its digest does.
                let tee = if self.layers.contains(diff_id) {
                    None
                } else {
                    partial.tee()
                };
                let streamed = std::thread::scope(|s| {
                    let unpacker = tee.map(|reader| {
                        s.spawn(|| {
                            let r = decompressed_buffered(reader).map_err(|e| {
                                ImageError::BadArchive {
                                    layer: layer_label.clone(),
                                    source: e,
                                }
                            })?;
                            if !opts.keep_tar || self.blobs.contains(diff_id) {
                                return self.layers.unpack_stream(
                                    r,
                                    Some(diff_id),
                                    &layer_label,
                                    &mut |_| {},
                                );
                            }
                            // The tar is copied as it is unpacked; the unpacker hashes it
                            // (the diff-id), so the copy is not hashed a second time.
                            let mut copy = self.blobs.writer_unhashed()?;
                            let mut tee = TeeRead {
                                inner: r,
                                copy: &mut copy,
                            };
                            let meta = self.layers.unpack_stream(
                                &mut tee,
                                Some(diff_id),
                                &layer_label,
                                &mut |_| {},
                            )?;
                            // The unpacker read the stream to its end: the copy holds
                            // exactly the bytes of the verified diff-id (its size says so).
                            let stored = copy.commit_verified(diff_id, meta.tar_size);
                            // Without the compressed blob there is no other way to the tar.
                            if transient {
                                stored?;
                            }
                            Ok(meta)
                        })
                    });
                    // Committing or dropping the partial blob ends the tee: the unpacker
                    // then finishes or fails, so joining it cannot hang.
                    let downloaded = match client.blob_into(desc, &mut partial, bar.as_mut()) {
                        Ok(()) => {
                            let intact = partial.tee_intact();
                            partial.commit().map(|_| intact)
                        }
                        Err(e) => {
                            drop(partial);
                            Err(e)
                        }
                    };
                    let unpacked = unpacker.map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ImageError::Base(format!(
                                "unpacking {layer_label} panicked"
                            )))
                        })
                    });
                    (downloaded, unpacked)
                });
                match streamed {
                    (Err(e), _) => return Err(e),
                    (Ok(true), Some(Err(e))) => return Err(e),
                    (Ok(_), Some(Ok(_))) => {}
                    // A transient blob exists only in the stream: unpacked from it, or
                    // not at all.
                    _ if transient => {
                        return Err(ImageError::Base(format!(
                            "the download of {layer_label} was restarted midway, so it was not unpacked while it arrived; try again"
                        )))
                    }
                    _ => {}
                }
                bar.finish("downloaded");
            }
        }
        if !self.layers.contains(diff_id) {
            let blob = self.blobs.path(&desc.digest);
            self.layers.unpack_blob(
                &blob,
                Some(diff_id),
                &format!("{} ({})", desc.digest, client.origin()),
                &mut |_| {},
            )?;
            opts.progress.message(&format!("{label}: unpacked"));
        }
        Ok(())
    }
}

/// The index entry for `want`; an index with a single entry without platform is taken as is.
pub fn select_platform<'a>(manifests: &'a [Descriptor], want: &Platform) -> Option<&'a Descriptor> {
    manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| want.matches(p)))
        .or_else(|| match manifests {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
}
