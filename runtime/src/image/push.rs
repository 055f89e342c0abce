//! Pushing an image of the local store to a registry: its layers (uncompressed layers of
//! berth's own builds compressed first, gzip or zstd, deterministically, so the same layer
//! always gives the same blob and a second push sends nothing), its config, its manifest by
//! digest and an index (one entry, the image's platform) under the tag.
//!
//! What berth knows of where blobs already are (the repository an image was pulled from,
//! the repositories it pushed a blob to) is kept in `push/known/` of the berth home and
//! lets the registry mount a blob from another repository instead of receiving it again.
//! Compressed copies are ordinary blobs of the blob store; `push/compressed/` remembers
//! which blob a layer compresses to (written only once the blob is stored).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use envfile_spec::reference::ImageReference;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;
use super::image_store::ImageRecord;
use super::manifest::{
    Descriptor, Index, Manifest, ManifestKind, Platform, DOCKER_LAYER_GZIP, DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use super::progress::Progress;
use super::registry::{RegistryClient, RegistryOptions};
use super::store::ImageStore;
use super::upload::{
    chunk_size_from_env, private_dirs, push_blob, BlobOutcome, LocalBlob, UploadJournal,
};
use crate::state::{read_json, write_json};

/// How uncompressed layers are compressed for the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    #[default]
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gzip" => Some(LayerCompression::Gzip),
            "zstd" => Some(LayerCompression::Zstd),
            _ => None,
        }
    }
    /// The compressed bytes of `input`. Fixed settings and no timestamps or names in the
    /// headers: the same tar always gives the same bytes (gzip: fixed 1 MiB pieces
    /// compressed on all cores, see parallel_gzip).
    pub(super) fn encoder(
        self,
        input: std::fs::File,
        origin: &str,
    ) -> Result<Box<dyn std::io::Read + Send>, ImageError> {
        let input = std::io::BufReader::with_capacity(1 << 20, input);
        Ok(match self {
            LayerCompression::Gzip => Box::new(super::parallel_gzip::ParallelGzip::new(input)),
            LayerCompression::Zstd => {
                let mut e =
                    zstd::stream::read::Encoder::new(input, 3).map_err(ImageError::io(origin))?;
                // zstd's own worker threads (independent jobs, overlapping windows): the
                // output depends on the level and job size only, not on how many workers
                // made it, so every machine still gives the same bytes.
                e.multithread(compression_workers())
                    .map_err(ImageError::io(origin))?;
                Box::new(e)
            }
        })
    }

    /// What the compressed bytes depend on besides the input: an interrupted upload of a
    /// compressed stream is continued only by a berth that makes the same bytes.
    pub(super) fn format(self) -> &'static str {
        match self {
            LayerCompression::Gzip => super::parallel_gzip::FORMAT,
            LayerCompression::Zstd => "zstd-level3-mt-v1",
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            LayerCompression::Gzip => "gzip",
            LayerCompression::Zstd => "zstd",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => OCI_LAYER_GZIP,
            LayerCompression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// Threads zstd compresses a layer with: the cores (at most 8).
fn compression_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32)
}

/// How to push.
#[derive(Clone)]
pub struct PushOptions {
    pub registry: RegistryOptions,
    pub compression: LayerCompression,
    pub progress: Progress,
    /// Blobs sent at the same time.
    pub jobs: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            registry: RegistryOptions::default(),
            compression: LayerCompression::Gzip,
            progress: std::sync::Arc::new(super::progress::QuietProgress),
            jobs: 4,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// `registry/repository:tag`.
    pub reference: String,
    pub manifest_digest: String,
    /// The index stored under the tag.
    pub index_digest: String,
    /// Blobs (layers and config) sent, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the repository had already.
    pub existed: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Uploads that continued an interrupted one.
    pub resumed: usize,
}

/// A layer of the image being pushed.
enum PushLayer {
    /// A blob of the store, sent as it is.
    Blob(Descriptor),
    /// An uncompressed layer (its digest), sent compressed.
    Compress(Digest),
}

/// How a blob to send is made.
#[derive(Clone, Copy)]
enum Made {
    /// The store's blob `digest` as it is.
    Blob { size: u64 },
    /// The compression of the uncompressed layer `digest`.
    Compress,
}

/// A blob to send.
struct Outgoing {
    label: String,
    digest: Digest,
    what: Made,
}

#[derive(Serialize, Deserialize)]
struct Compressed {
    digest: Digest,
    size: u64,
}

impl ImageStore {
    pub(super) fn push_dir(&self) -> PathBuf {
        self.home.root().join("push")
    }

    fn compression_memo(&self, layer: &Digest, compression: LayerCompression) -> PathBuf {
        self.push_dir().join("compressed").join(format!(
            "{}.{}.json",
            layer.hex(),
            compression.name()
        ))
    }

    /// The blob `layer` compressed to before, when it is still in the store.
    pub(super) fn remembered_compression(
        &self,
        layer: &Digest,
        compression: LayerCompression,
    ) -> Option<(Digest, u64)> {
        let c = read_json::<Compressed>(&self.compression_memo(layer, compression))
            .ok()
            .flatten()?;
        (self.blobs.size(&c.digest) == Some(c.size)).then_some((c.digest, c.size))
    }

    /// Remembers that `layer` compresses to the stored blob `digest`.
    pub(super) fn remember_compression(
        &self,
        layer: &Digest,
        compression: LayerCompression,
        digest: &Digest,
        size: u64,
    ) -> Result<(), ImageError> {
        private_dirs(&self.push_dir().join("compressed"))?;
        Ok(write_json(
            &self.compression_memo(layer, compression),
            &Compressed {
                digest: digest.clone(),
                size,
            },
        )?)
    }

    /// The blob `layer` (an uncompressed tar blob of the store) compresses to, compressing
    /// it now (with the compressor pushes use) unless that was done before.
    #[cfg(test)]
    pub(super) fn compressed_layer(
        &self,
        layer: &Digest,
        compression: LayerCompression,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(known) = self.remembered_compression(layer, compression) {
            return Ok(known);
        }
        let src = self.blobs.path(layer);
        let file = std::fs::File::open(&src).map_err(ImageError::io(&src))?;
        let origin = src.display().to_string();
        let (digest, size) = self
            .blobs
            .put_stream(compression.encoder(file, &origin)?, &origin)?;
        self.remember_compression(layer, compression, &digest, size)?;
        Ok((digest, size))
    }

    /// Repositories of `registry` known to hold `digest`.
    fn known_locations(&self, digest: &Digest, registry: &str) -> Vec<String> {
        let path = self
            .push_dir()
            .join("known")
            .join(format!("{}.json", digest.hex()));
        let all: Vec<String> = read_json(&path).ok().flatten().unwrap_or_default();
        all.iter()
            .filter_map(|l| l.strip_prefix(registry)?.strip_prefix('/'))
            .map(str::to_string)
            .collect()
    }

    fn remember_location(&self, digest: &Digest, location: &str) -> Result<(), ImageError> {
        let dir = self.push_dir().join("known");
        let path = dir.join(format!("{}.json", digest.hex()));
        let mut all: Vec<String> = read_json(&path).ok().flatten().unwrap_or_default();
        if all.iter().any(|l| l == location) {
            return Ok(());
        }
        all.push(location.to_string());
        // A blob in many repositories: the most recent few are enough to mount from.
        if all.len() > 16 {
            all.remove(0);
        }
        private_dirs(&dir)?;
        Ok(write_json(&path, &all)?)
    }

    /// Pushes `record` to `target` (which must name a tag).
    pub fn push(
        &self,
        record: &ImageRecord,
        target: &ImageReference,
        opts: &PushOptions,
    ) -> Result<PushReport, ImageError> {
        if target.digest.is_some() {
            return Err(ImageError::Base(format!(
                "cannot push to {target}: name a tag (e.g. {}/{}:latest), not a digest; the digest is what the push prints",
                target.registry, target.repository
            )));
        }
        let tag = target.tag.clone().unwrap_or_else(|| "latest".into());
        let _lock = self.lock_shared()?;
        let chunk = chunk_size_from_env()?;
        let missing = |d: &Digest| {
            ImageError::Base(format!(
                "blob {d} of {} is missing from the store; pull or build the image again",
                record.name
            ))
        };
        let manifest_bytes = self
            .blobs
            .read(&record.manifest_digest)
            .map_err(|_| missing(&record.manifest_digest))?;
        let original = match ManifestKind::parse(&manifest_bytes, "", &record.name)? {
            ManifestKind::Image(m) => m,
            ManifestKind::Index(_) => {
                return Err(ImageError::malformed(
                    format!("manifest of {}", record.name),
                    "it is an index",
                ))
            }
        };
        let docker = original.media_type.as_deref() == Some(DOCKER_MANIFEST);
        let compressed_media = if docker && opts.compression == LayerCompression::Gzip {
            DOCKER_LAYER_GZIP
        } else {
            opts.compression.media_type()
        };
        // Each layer as the registry gets it: a blob of the store as it is, or an
        // uncompressed layer compressed now (its digest known after, see
        // compressing_upload), or compressed before (remembered).
        let mut layers: Vec<PushLayer> = Vec::new();
        let mut changed = false;
        for l in &record.layers {
            let uncompressed = l.media_type == OCI_LAYER_TAR
                || l.media_type == "application/vnd.docker.image.rootfs.diff.tar";
            if uncompressed {
                if !self.blobs.contains(&l.digest) {
                    return Err(missing(&l.digest));
                }
                changed = true;
                layers.push(PushLayer::Compress(l.digest.clone()));
            } else {
                if self.blobs.size(&l.digest) != Some(l.size) {
                    return Err(missing(&l.digest));
                }
                layers.push(PushLayer::Blob(Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    platform: None,
                    annotations: None,
                }));
            }
        }
        let config = &original.config;
        if self.blobs.size(&config.digest) != Some(config.size) {
            return Err(missing(&config.digest));
        }

        // Where the blobs may already be, on this registry.
        let pulled_from = ImageReference::parse(&record.name)
            .ok()
            .filter(|r| r.registry == target.registry && r.repository != target.repository)
            .map(|r| r.repository);
        let mut outgoing: Vec<(Outgoing, Vec<String>)> = Vec::new();
        let mut all_sources: Vec<String> = Vec::new();
        let count = layers.len();
        for (i, l) in layers.iter().enumerate() {
            // (A layer never compressed has no known places.)
            let digest = match l {
                PushLayer::Blob(d) => d.digest.clone(),
                PushLayer::Compress(layer) => self
                    .remembered_compression(layer, opts.compression)
                    .map_or_else(|| layer.clone(), |(d, _)| d),
            };
            let mut sources = self.known_locations(&digest, &target.registry);
            if !changed {
                sources.extend(pulled_from.clone());
            }
            sources.retain(|s| s != &target.repository);
            sources.dedup();
            all_sources.extend(sources.iter().cloned());
            let (key, what) = match l {
                PushLayer::Blob(d) => (&d.digest, Made::Blob { size: d.size }),
                PushLayer::Compress(layer) => (layer, Made::Compress),
            };
            if outgoing.iter().any(|(o, _)| &o.digest == key) {
                continue;
            }
            outgoing.push((
                Outgoing {
                    label: format!("layer {}/{count} {}", i + 1, key.short()),
                    digest: key.clone(),
                    what,
                },
                sources,
            ));
        }
        let mut config_sources = self.known_locations(&config.digest, &target.registry);
        config_sources.extend(pulled_from.clone());
        config_sources.retain(|s| s != &target.repository);
        all_sources.extend(config_sources.iter().cloned());
        all_sources.sort();
        all_sources.dedup();
        let client = RegistryClient::for_push(target, &opts.registry, &all_sources)?;
        let journal = UploadJournal::new(self.push_dir().join("uploads"));
        let report = Mutex::new(PushReport {
            reference: format!("{}/{}:{tag}", target.registry, target.repository),
            ..PushReport::default()
        });
        // Uncompressed layer → the blob it compressed to.
        let compressed: Mutex<HashMap<Digest, (Digest, u64)>> = Mutex::new(HashMap::new());
        let send = |o: &Outgoing, sources: &[String]| -> Result<(), ImageError> {
            let (digest, outcome, mut bar) = match o.what {
                Made::Blob { size } => {
                    let mut bar = opts.progress.start(&o.label, Some(size));
                    let blob = LocalBlob::stored(&self.blobs, &o.digest, size);
                    let outcome =
                        push_blob(&client, &journal, &blob, sources, chunk, bar.as_mut())?;
                    (o.digest.clone(), outcome, bar)
                }
                Made::Compress => {
                    let known = self.remembered_compression(&o.digest, opts.compression);
                    if known.is_none() {
                        opts.progress.message(&format!(
                            "layer {}: compressing ({}) while it is pushed",
                            o.digest.short(),
                            opts.compression.name()
                        ));
                    }
                    let mut bar = opts.progress.start(&o.label, known.map(|k| k.1));
                    let pushed = self.push_compressing(
                        &client,
                        &journal,
                        &o.digest,
                        opts.compression,
                        chunk,
                        sources,
                        bar.as_mut(),
                    )?;
                    compressed
                        .lock()
                        .map_err(|_| ImageError::Base("push panicked".into()))?
                        .insert(o.digest.clone(), (pushed.digest.clone(), pushed.size));
                    (pushed.digest, pushed.outcome, bar)
                }
            };
            let note = match outcome {
                BlobOutcome::Existed => "already there".to_string(),
                BlobOutcome::Mounted => "mounted from another repository".to_string(),
                BlobOutcome::Uploaded { resumed_at: 0, .. } => "pushed".to_string(),
                BlobOutcome::Uploaded { resumed_at, .. } => {
                    format!("pushed (resumed an interrupted upload at byte {resumed_at})")
                }
            };
            bar.finish(&note);
            self.remember_location(
                &digest,
                &format!("{}/{}", target.registry, target.repository),
            )?;
            let mut r = report
                .lock()
                .map_err(|_| ImageError::Base("push panicked".into()))?;
            match outcome {
                BlobOutcome::Existed => r.existed += 1,
                BlobOutcome::Mounted => r.mounted += 1,
                BlobOutcome::Uploaded { bytes, resumed_at } => {
                    r.uploaded += 1;
                    r.uploaded_bytes += bytes;
                    if resumed_at > 0 {
                        r.resumed += 1;
                    }
                }
            }
            Ok(())
        };

        // Layers in parallel (each compressed while it is sent when it must be), then the
        // config (a registry may check that a manifest's blobs exist, so they all go
        // first).
        let queue = Mutex::new(outgoing.iter());
        let first_error: Mutex<Option<ImageError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..opts.jobs.clamp(1, 8) {
                s.spawn(|| loop {
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        return;
                    }
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some((o, sources)) = next else { return };
                    if let Err(e) = send(o, sources) {
                        if let Ok(mut g) = first_error.lock() {
                            g.get_or_insert(e);
                        }
                        return;
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }

        send(
            &Outgoing {
                label: format!("config {}", config.digest.short()),
                digest: config.digest.clone(),
                what: Made::Blob { size: config.size },
            },
            &config_sources,
        )?;

        let compressed = compressed
            .into_inner()
            .map_err(|_| ImageError::Base("push panicked".into()))?;
        let layers: Vec<Descriptor> = layers
            .into_iter()
            .map(|l| match l {
                PushLayer::Blob(d) => Ok(d),
                PushLayer::Compress(layer) => {
                    let (digest, size) = compressed
                        .get(&layer)
                        .cloned()
                        .ok_or_else(|| ImageError::Base(format!("layer {layer} was not pushed")))?;
                    Ok(Descriptor {
                        media_type: compressed_media.into(),
                        digest,
                        size,
                        platform: None,
                        annotations: None,
                    })
                }
            })
            .collect::<Result<_, ImageError>>()?;
        let (manifest_bytes, manifest_media) = if changed {
            let m = Manifest {
                schema_version: 2,
                media_type: Some(if docker && opts.compression == LayerCompression::Gzip {
                    DOCKER_MANIFEST.into()
                } else {
                    OCI_MANIFEST.into()
                }),
                config: original.config.clone(),
                layers,
                annotations: original.annotations.clone(),
            };
            let bytes = serde_json::to_vec(&m).map_err(|e| ImageError::malformed("manifest", e))?;
            (bytes, m.media_type.unwrap_or_default())
        } else {
            let media = original
                .media_type
                .clone()
                .unwrap_or_else(|| OCI_MANIFEST.into());
            (manifest_bytes, media)
        };
        let manifest_digest = Digest::of(&manifest_bytes);
        client.put_manifest(manifest_digest.as_str(), &manifest_media, &manifest_bytes)?;
        let platform = Platform::parse(&record.platform).ok();
        let index = Index {
            schema_version: 2,
            media_type: Some(if manifest_media == DOCKER_MANIFEST {
                DOCKER_MANIFEST_LIST.into()
            } else {
                OCI_INDEX.into()
            }),
            manifests: vec![Descriptor {
                media_type: manifest_media.clone(),
                digest: manifest_digest.clone(),
                size: manifest_bytes.len() as u64,
                platform,
                annotations: None,
            }],
        };
        let index_bytes =
            serde_json::to_vec(&index).map_err(|e| ImageError::malformed("index", e))?;
        let index_media = index.media_type.clone().unwrap_or_default();
        client.put_manifest(&tag, &index_media, &index_bytes)?;
        let mut r = report
            .into_inner()
            .map_err(|_| ImageError::Base("push panicked".into()))?;
        r.manifest_digest = manifest_digest.to_string();
        r.index_digest = Digest::of(&index_bytes).to_string();
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::tests::tar_of;

    #[test]
    fn the_same_layer_always_compresses_to_the_same_blob() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path()).unwrap();
        let store = ImageStore::open(&home);
        let tar = tar_of(&[("a/", 'd', ""), ("a/f", 'f', "content")]);
        let layer = store.blobs.put_bytes(&tar, None, "t").unwrap();
        for compression in [LayerCompression::Gzip, LayerCompression::Zstd] {
            let first = store.compressed_layer(&layer, compression).unwrap();
            // Forget the memo and the blob: compressing again gives the same bytes.
            std::fs::remove_dir_all(store.push_dir()).unwrap();
            store.blobs.remove(&first.0).unwrap();
            let again = store.compressed_layer(&layer, compression).unwrap();
            assert_eq!(first, again, "{compression:?}");
            let bytes = store.blobs.read(&again.0).unwrap();
            match compression {
                // gzip: no modification time (bytes 4..8) and no file name flag.
                LayerCompression::Gzip => {
                    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
                    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
                }
                LayerCompression::Zstd => assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]),
            }
            // The memo is used the next time (no new blob written).
            assert_eq!(store.compressed_layer(&layer, compression).unwrap(), again);
        }
    }

    #[test]
    fn zstd_gives_the_same_bytes_whatever_the_number_of_workers() {
        // Several of zstd's jobs (a job is a few MiB at level 3), compressible but not trivial.
        let mut data = Vec::with_capacity(24 << 20);
        let mut x: u32 = 1;
        while data.len() < 24 << 20 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            data.extend_from_slice(format!("line {} of a layer\n", x >> 20).as_bytes());
        }
        let compress = |workers: u32| {
            use std::io::Read;
            let mut e = zstd::stream::read::Encoder::new(&data[..], 3).unwrap();
            e.multithread(workers).unwrap();
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            out
        };
        let one = compress(1);
        assert_eq!(one, compress(4));
        assert_eq!(one, compress(compression_workers()));
        assert_eq!(zstd::stream::decode_all(&one[..]).unwrap(), data);
    }
}
