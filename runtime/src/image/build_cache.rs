//! The registry build cache: one entry per build step in a registry repository (`[image].cache`,
//! `berth up --cache-from/--cache-to`), so a machine that did not build a step takes the
//! layer another machine built instead of running it.
//!
//! An entry is an OCI image manifest tagged `cache-<step key>` (the key of
//! [`super::build::plan_steps`], which chains the base image and every step before) holding
//! one layer, the step's, compressed (gzip, deterministic: the same layer always gives the
//! same blob), and a small image config whose `rootfs.diff_ids` names the layer's
//! uncompressed digest. Annotations carry the key, the layer's diff-id and the digest of the
//! layers it was built on (`below`): an entry built on other lower layers than this
//! machine's (a step built locally before, differently) is not used, so a stack never mixes
//! layers that were not built on each other.
//!
//! [`BuildCache::fetch`] and [`BuildCache::store`] are the seam every step engine uses
//! (berth.toml's steps; a Dockerfile's instructions): fetch the layer cached for a key, store
//! the layer built for a key. Taking a layer stores exactly what the building machine stored
//! (the uncompressed layer tar under its diff-id, unpacked by the same safe unpacker), so the
//! step's image record — layers, config, manifest — is byte for byte the one a local build
//! there made. The cache registry is trusted for content the way a base image's registry is
//! (whoever may push to it decides what a step's layer holds), but nothing it sends is taken
//! unverified: manifests are bounded, the blob must match its digest, the tar its diff-id,
//! and unpacking never leaves the layer's folder.
//!
//! Nothing about the cache ever fails a build: a miss, an unreachable or stalled registry
//! (short timeouts: [`CACHE_TIMEOUT_VAR`]), refused credentials, a layer that does not
//! verify — each is a notice, the step is built here, and after the first error the cache
//! is not asked again during that build.

#[path = "build_cache_prefetch.rs"]
mod prefetch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use envfile_spec::reference::ImageReference;
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::ImageError;
use super::image_store::LayerRecord;
use super::manifest::{
    is_layer_media_type, ConfigFile, Descriptor, Manifest, ManifestKind, Platform, RootFs,
    OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
};
use super::progress::{Progress, ProgressReporter, QuietProgress};
use super::pull::{PullOptions, Puller};
use super::push::LayerCompression;
use super::registry::{RegistryClient, RegistryOptions, RegistryTimeouts};
use super::store::ImageStore;
use super::unpack::decompressed;
use super::upload::{chunk_size_from_env, push_blob, LocalBlob, UploadJournal};

/// Environment variable: seconds berth waits for the cache registry (to connect, and for
/// each answer or read) before it builds without the cache. Default 5.
pub const CACHE_TIMEOUT_VAR: &str = "BERTH_CACHE_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const ANNOTATION_KEY: &str = "dev.berth.cache.key";
const ANNOTATION_DIFF_ID: &str = "dev.berth.cache.diff-id";
const ANNOTATION_BELOW: &str = "dev.berth.cache.below";
const ANNOTATION_STEP: &str = "dev.berth.cache.step";

/// Tag of the cache entry of the step with `key` (64 hex digits).
pub fn entry_tag(key: &str) -> String {
    format!("cache-{key}")
}

/// Digest naming the layers a step was built on (bottom → top).
pub fn below_digest(below: &[Digest]) -> String {
    let mut h = Sha256::new();
    h.update(b"berth-cache-below-v1");
    for d in below {
        h.update(b"\n");
        h.update(d.as_str());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Where the cache is read from and pushed to.
#[derive(Debug, Clone, Default)]
pub struct BuildCacheSettings {
    /// Read: the repository looked up before each step.
    pub from: Option<ImageReference>,
    /// Push: the repository each step built here (or found only here) is pushed to.
    pub to: Option<ImageReference>,
    pub registry: RegistryOptions,
}

impl BuildCacheSettings {
    /// From berth.toml's `cache`/`cache_push` and the command line's `--cache-from` /
    /// `--cache-to` (which win): read from `--cache-from`, else `cache`; push to
    /// `--cache-to`, else to `cache` when `cache_push` is on.
    pub fn new(
        plan_cache: Option<&str>,
        plan_push: bool,
        cache_from: Option<&ImageReference>,
        cache_to: Option<&ImageReference>,
    ) -> Result<Self, ImageError> {
        let plan = match plan_cache {
            Some(c) => Some(ImageReference::parse_repository(c).map_err(|why| {
                ImageError::Base(format!(
                    "`[image].cache` in berth.toml: {why}; run `berth validate`"
                ))
            })?),
            None => None,
        };
        Ok(BuildCacheSettings {
            from: cache_from.cloned().or_else(|| plan.clone()),
            to: cache_to.cloned().or_else(|| plan.filter(|_| plan_push)),
            registry: RegistryOptions::default(),
        })
    }
}

/// What the cache did during one build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Steps taken from the cache registry.
    pub pulled: usize,
    /// Steps pushed to it.
    pub pushed: usize,
    /// Steps the cache did not have.
    pub missed: usize,
}

/// The registry build cache of one build (see the module documentation). Cheap when no
/// cache is set: [`BuildCache::none`].
pub struct BuildCache {
    settings: BuildCacheSettings,
    progress: Progress,
    timeouts: RegistryTimeouts,
    reader: OnceLock<Result<RegistryClient, String>>,
    writer: OnceLock<Result<RegistryClient, String>>,
    /// Set after the first problem reading / pushing: not asked again in this build.
    read_off: AtomicBool,
    push_off: AtomicBool,
    /// Whether the first miss checked that the repository exists.
    checked_repository: AtomicBool,
    notices: Mutex<Vec<String>>,
    counts: Mutex<CacheCounts>,
    /// Answers looked up and fetched ahead of the steps.
    prefetch: prefetch::Prefetch,
}

impl BuildCache {
    /// No cache: every fetch misses, nothing is stored.
    pub fn none() -> Self {
        Self::new(
            BuildCacheSettings::default(),
            std::sync::Arc::new(QuietProgress),
        )
        .expect("no settings to read")
    }

    /// A cache with `settings`, reporting on `progress`. Only an invalid
    /// [`CACHE_TIMEOUT_VAR`] is an error.
    pub fn new(settings: BuildCacheSettings, progress: Progress) -> Result<Self, ImageError> {
        let timeout = match std::env::var(CACHE_TIMEOUT_VAR) {
            Ok(v) if !v.trim().is_empty() => match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Duration::from_secs_f64(s),
                _ => {
                    return Err(ImageError::InvalidSetting {
                        var: CACHE_TIMEOUT_VAR,
                        value: v,
                        expected: "a number of seconds above 0 and at most 3600, e.g. 5 or 0.5",
                    })
                }
            },
            _ => DEFAULT_TIMEOUT,
        };
        Ok(BuildCache {
            settings,
            progress,
            timeouts: RegistryTimeouts {
                connect: timeout,
                read: timeout,
            },
            reader: OnceLock::new(),
            writer: OnceLock::new(),
            read_off: AtomicBool::new(false),
            push_off: AtomicBool::new(false),
            checked_repository: AtomicBool::new(false),
            notices: Mutex::new(Vec::new()),
            counts: Mutex::new(CacheCounts::default()),
            prefetch: prefetch::Prefetch::default(),
        })
    }

    /// Whether steps are looked up in a registry.
    pub fn reads(&self) -> bool {
        self.settings.from.is_some() && !self.read_off.load(Ordering::Relaxed)
    }

    /// Whether steps are pushed to a registry.
    pub fn pushes(&self) -> bool {
        self.settings.to.is_some() && !self.push_off.load(Ordering::Relaxed)
    }

    /// What went wrong with the cache (each line once), for the command's notices.
    pub fn notices(&self) -> Vec<String> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }

    pub fn counts(&self) -> CacheCounts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The repository read from, for messages (`registry/repository`).
    pub fn source(&self) -> Option<String> {
        self.settings
            .from
            .as_ref()
            .map(|r| format!("{}/{}", r.registry, r.repository))
    }

    fn notice(&self, text: String) {
        if let Ok(mut n) = self.notices.lock() {
            if !n.contains(&text) {
                n.push(text);
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut CacheCounts)) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }

    fn client<'a>(
        &self,
        slot: &'a OnceLock<Result<RegistryClient, String>>,
        target: &ImageReference,
        push: bool,
    ) -> Result<&'a RegistryClient, String> {
        slot.get_or_init(|| {
            let mut c =
                RegistryClient::with_timeouts(target, &self.settings.registry, self.timeouts)
                    .map_err(|e| e.to_string())?;
            if push {
                c.scopes
                    .push(format!("repository:{}:pull,push", target.repository));
            }
            Ok(c)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The layer the cache holds for the step `key` built on `below` (diff-ids, bottom →
    /// top), downloaded, verified and unpacked into `store`, with the record a local build
    /// of it made; `None` on a miss or any problem (a notice): build the step.
    pub fn fetch(
        &self,
        store: &ImageStore,
        key: &str,
        below: &[Digest],
        label: &str,
    ) -> Option<LayerRecord> {
        let target = self.settings.from.as_ref()?;
        if !self.reads() {
            return None;
        }
        let answer = match self.prefetched(key, below) {
            Some(a) => a,
            None => self.try_fetch(store, target, key, below),
        };
        match answer {
            Ok(Some(layer)) => {
                self.count(|c| c.pulled += 1);
                Some(layer)
            }
            Ok(None) => {
                self.count(|c| c.missed += 1);
                None
            }
            Err(why) => {
                self.read_off.store(true, Ordering::Relaxed);
                self.notice(format!(
                    "build cache {}/{}: {why}; `{label}` and the steps after it are built here without the cache",
                    target.registry, target.repository
                ));
                None
            }
        }
    }

    fn try_fetch(
        &self,
        store: &ImageStore,
        target: &ImageReference,
        key: &str,
        below: &[Digest],
    ) -> Result<Option<LayerRecord>, String> {
        let client = self.client(&self.reader, target, false)?;
        let Some(entry) = self.lookup(client, target, key)? else {
            return Ok(None);
        };
        if entry.below != below_digest(below) {
            // Built on other lower layers than this machine's: not taken (a notice, but the
            // cache stays on for the next steps).
            self.notice(format!(
                "build cache {}/{}: the entry for a step was built on other layers than this machine's (built here earlier); building it here",
                target.registry, target.repository
            ));
            return Ok(None);
        }
        self.take_layer(store, client, &entry)
            .map(Some)
            .map_err(|e| format!("refused its layer {}: {e}", entry.layer.digest))
    }

    /// The entry for `key` in the cache, `None` on a miss (the first miss also checks that
    /// the repository exists: without one, it says so once and turns the cache off).
    fn lookup(
        &self,
        client: &RegistryClient,
        target: &ImageReference,
        key: &str,
    ) -> Result<Option<CacheEntry>, String> {
        let found = self.lookup_quiet(client, key)?;
        // The first miss: is there a cache at all? Without one, say so once and ask no
        // more.
        if found.is_none()
            && !self.checked_repository.swap(true, Ordering::Relaxed)
            && !repository_exists(client).map_err(|e| e.to_string())?
        {
            self.read_off.store(true, Ordering::Relaxed);
            // (No notice when this build is the one filling it.)
            let filling = self.settings.to.as_ref().is_some_and(|to| {
                to.registry == target.registry && to.repository == target.repository
            });
            if !filling {
                self.notice(format!(
                    "build cache {}/{}: the repository does not exist (yet): every step is built here; a build with --cache-to (or cache_push = true) fills it",
                    target.registry, target.repository
                ));
            }
        }
        Ok(found)
    }

    /// The entry for `key` in the cache, `None` on a miss, which says nothing more (a key
    /// asked on speculation: see `build_cache_prefetch.rs`).
    fn lookup_quiet(
        &self,
        client: &RegistryClient,
        key: &str,
    ) -> Result<Option<CacheEntry>, String> {
        let fetched = match client.manifest(&entry_tag(key)) {
            Ok(m) => m,
            Err(ImageError::ManifestNotFound { .. })
            | Err(ImageError::RegistryStatus { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let entry = CacheEntry::parse(&fetched.bytes, key).map_err(|why| {
            format!(
                "the entry {} is not a berth cache entry ({why})",
                entry_tag(key)
            )
        })?;
        Ok(Some(entry))
    }

    /// Downloads (verified), unpacks (safely, checked against the diff-id) and stores the
    /// uncompressed tar of `entry`'s layer under its diff-id. Leaves nothing of the layer
    /// when anything fails.
    fn take_layer(
        &self,
        store: &ImageStore,
        client: &RegistryClient,
        entry: &CacheEntry,
    ) -> Result<LayerRecord, ImageError> {
        let diff_id = &entry.diff_id;
        let tar_present = store.blobs.contains(diff_id);
        let layer_present = store.layers.contains(diff_id);
        if tar_present && layer_present {
            return Ok(local_layer(store, diff_id));
        }
        let desc = &entry.layer;
        let blob_present = store.blobs.contains(&desc.digest);
        let undo = |store: &ImageStore| {
            if !blob_present && desc.digest != *diff_id {
                let _ = store.blobs.remove(&desc.digest);
            }
            if !tar_present {
                let _ = store.blobs.remove(diff_id);
            }
            if !layer_present {
                let _ = store.layers.remove(diff_id);
            }
        };
        let puller = Puller {
            blobs: &store.blobs,
            layers: &store.layers,
        };
        let opts = PullOptions {
            progress: self.progress.clone(),
            jobs: 1,
            keep_tar: true,
            ..PullOptions::default()
        };
        let fetched = puller
            .fetch_layers(client, &[(desc.clone(), diff_id.clone())], &opts)
            .and_then(|()| {
                if store.blobs.contains(diff_id) {
                    return Ok(());
                }
                // The layer tar as the building machine stored it: its diff-id names it
                // (made during the download's unpacking; here only when the layer was
                // unpacked before).
                let src = store.blobs.path(&desc.digest);
                let file = std::fs::File::open(&src).map_err(ImageError::io(&src))?;
                let tar = decompressed(file).map_err(ImageError::io(&src))?;
                let (digest, _) = store.blobs.put_stream(tar, &client.origin())?;
                if &digest != diff_id {
                    let _ = store.blobs.remove(&digest);
                    return Err(ImageError::DigestMismatch {
                        digest: diff_id.to_string(),
                        origin: client.origin(),
                        actual: digest.to_string(),
                    });
                }
                Ok(())
            });
        if let Err(e) = fetched {
            undo(store);
            return Err(e);
        }
        // The compressed blob was only the way here.
        if !blob_present && desc.digest != *diff_id {
            let _ = store.blobs.remove(&desc.digest);
        }
        Ok(local_layer(store, diff_id))
    }

    /// Pushes `layer`, built for the step `key` on `below`, to the cache (when pushing is
    /// on and the cache has no entry for `key` yet). Problems are notices.
    pub fn store(
        &self,
        store: &ImageStore,
        key: &str,
        below: &[Digest],
        layer: &LayerRecord,
        label: &str,
    ) {
        let Some(target) = self.settings.to.as_ref() else {
            return;
        };
        if !self.pushes() {
            return;
        }
        match self.try_store(store, target, key, below, layer, label) {
            Ok(true) => self.count(|c| c.pushed += 1),
            Ok(false) => {}
            Err(e) => {
                self.push_off.store(true, Ordering::Relaxed);
                self.notice(format!(
                    "build cache {}/{}: could not push `{label}`: {e}; the build goes on without pushing",
                    target.registry, target.repository
                ));
            }
        }
    }

    fn try_store(
        &self,
        store: &ImageStore,
        target: &ImageReference,
        key: &str,
        below: &[Digest],
        layer: &LayerRecord,
        label: &str,
    ) -> Result<bool, String> {
        let client = self.client(&self.writer, target, true)?;
        let tag = entry_tag(key);
        // Already there (this or another machine pushed it): the first entry stays, so
        // every machine taking it gets the same layer.
        match client.manifest(&tag) {
            Ok(_) => return Ok(false),
            Err(ImageError::ManifestNotFound { .. }) => {}
            Err(ImageError::RegistryStatus { status: 404, .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        let err = |e: ImageError| e.to_string();
        let config = ConfigFile {
            architecture: Platform::host().architecture,
            os: Platform::host().os,
            created: None,
            config: None,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer.diff_id.clone()],
            },
        };
        let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
        let config_digest = store
            .blobs
            .put_bytes(&config_bytes, None, "build cache")
            .map_err(err)?;
        let chunk = chunk_size_from_env().map_err(err)?;
        let journal = UploadJournal::new(store.push_dir().join("uploads"));
        // berth's own layers are compressed while they are sent.
        let (blob, size, media_type) = if layer.media_type == OCI_LAYER_TAR {
            let mut bar = self
                .progress
                .start(&format!("cache push {}", layer.digest.short()), None);
            let pushed = store
                .push_compressing(
                    client,
                    &journal,
                    &layer.digest,
                    LayerCompression::Gzip,
                    chunk,
                    &[],
                    bar.as_mut(),
                )
                .map_err(err)?;
            bar.finish("pushed");
            (
                pushed.digest,
                pushed.size,
                super::manifest::OCI_LAYER_GZIP.to_string(),
            )
        } else {
            let mut bar = self.progress.start(
                &format!("cache push {}", layer.digest.short()),
                Some(layer.size),
            );
            push_blob(
                client,
                &journal,
                &LocalBlob::stored(&store.blobs, &layer.digest, layer.size),
                &[],
                chunk,
                bar.as_mut(),
            )
            .map_err(err)?;
            bar.finish("pushed");
            (layer.digest.clone(), layer.size, layer.media_type.clone())
        };
        let mut quiet = QuietProgress.start("", None);
        push_blob(
            client,
            &journal,
            &LocalBlob::stored(&store.blobs, &config_digest, config_bytes.len() as u64),
            &[],
            chunk,
            quiet.as_mut(),
        )
        .map_err(err)?;
        let entry = CacheEntry {
            key: key.to_string(),
            diff_id: layer.diff_id.clone(),
            below: below_digest(below),
            layer: Descriptor {
                media_type,
                digest: blob,
                size,
                platform: None,
                annotations: None,
            },
        };
        let manifest = entry.manifest(
            Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
                platform: None,
                annotations: None,
            },
            label,
        );
        let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
        client
            .put_manifest(&tag, OCI_MANIFEST, &bytes)
            .map_err(err)?;
        Ok(true)
    }
}

/// Whether the client's repository exists (has any tag): `GET /v2/<repo>/tags/list`.
fn repository_exists(client: &RegistryClient) -> Result<bool, ImageError> {
    let url = format!("{}/v2/{}/tags/list?n=1", client.base, client.repository);
    let resp = client.request(
        reqwest::Method::GET,
        &url,
        reqwest::header::HeaderMap::new(),
        None,
    )?;
    match resp.status().as_u16() {
        404 => Ok(false),
        s if (200..300).contains(&s) => {
            let v: serde_json::Value = resp.json().unwrap_or_default();
            Ok(v["tags"].as_array().is_some_and(|t| !t.is_empty()))
        }
        _ => Err(client.status_error(&url, resp)),
    }
}

/// The record of an uncompressed layer tar of the store (what a local build records).
fn local_layer(store: &ImageStore, diff_id: &Digest) -> LayerRecord {
    LayerRecord {
        digest: diff_id.clone(),
        media_type: OCI_LAYER_TAR.to_string(),
        size: store.blobs.size(diff_id).unwrap_or(0),
        diff_id: diff_id.clone(),
    }
}

/// A cache entry as read from (or written to) the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheEntry {
    key: String,
    diff_id: Digest,
    /// [`below_digest`] of the layers it was built on.
    below: String,
    layer: Descriptor,
}

impl CacheEntry {
    fn manifest(&self, config: Descriptor, label: &str) -> Manifest {
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_KEY.to_string(), self.key.clone());
        annotations.insert(ANNOTATION_DIFF_ID.to_string(), self.diff_id.to_string());
        annotations.insert(ANNOTATION_BELOW.to_string(), self.below.clone());
        // For people looking at the registry; never read back.
        let short: String = label.chars().take(200).collect();
        annotations.insert(ANNOTATION_STEP.to_string(), short);
        Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config,
            layers: vec![self.layer.clone()],
            annotations: Some(annotations),
        }
    }

    /// Reads an entry, refusing anything but one layer of a known type for `key`.
    fn parse(bytes: &[u8], key: &str) -> Result<Self, String> {
        let m = match ManifestKind::parse(bytes, "", "cache entry").map_err(|e| e.to_string())? {
            ManifestKind::Image(m) => m,
            ManifestKind::Index(_) => return Err("it is an index".into()),
        };
        let ann = m.annotations.unwrap_or_default();
        let get = |k: &str| {
            ann.get(k)
                .cloned()
                .ok_or_else(|| format!("no annotation {k}"))
        };
        if get(ANNOTATION_KEY)? != key {
            return Err("it names another step's key".into());
        }
        let diff_id = Digest::parse(&get(ANNOTATION_DIFF_ID)?)
            .map_err(|_| "its diff-id is not a sha256 digest".to_string())?;
        let below = get(ANNOTATION_BELOW)?;
        let [layer] = <[Descriptor; 1]>::try_from(m.layers)
            .map_err(|l| format!("it has {} layers, not one", l.len()))?;
        if !is_layer_media_type(&layer.media_type) {
            return Err(format!("its layer has the media type {}", layer.media_type));
        }
        if layer.media_type == OCI_LAYER_TAR && layer.digest != diff_id {
            return Err("its uncompressed layer's digest is not its diff-id".into());
        }
        Ok(CacheEntry {
            key: key.to_string(),
            diff_id,
            below,
            layer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn entry() -> CacheEntry {
        CacheEntry {
            key: "k".repeat(64),
            diff_id: d('a'),
            below: below_digest(&[d('1'), d('2')]),
            layer: Descriptor {
                media_type: super::super::manifest::OCI_LAYER_GZIP.into(),
                digest: d('b'),
                size: 10,
                platform: None,
                annotations: None,
            },
        }
    }

    fn config() -> Descriptor {
        Descriptor {
            media_type: OCI_CONFIG.into(),
            digest: d('c'),
            size: 2,
            platform: None,
            annotations: None,
        }
    }

    #[test]
    fn an_entry_reads_back_and_anything_else_is_refused() {
        let e = entry();
        let key = e.key.clone();
        let bytes = serde_json::to_vec(&e.manifest(config(), "setup[0]: x")).unwrap();
        assert_eq!(CacheEntry::parse(&bytes, &key).unwrap(), e);
        assert!(CacheEntry::parse(&bytes, &"z".repeat(64))
            .unwrap_err()
            .contains("another step"));

        let mut two = e.manifest(config(), "x");
        two.layers.push(two.layers[0].clone());
        let err = CacheEntry::parse(&serde_json::to_vec(&two).unwrap(), &key).unwrap_err();
        assert!(err.contains("2 layers"), "{err}");

        let mut odd = e.manifest(config(), "x");
        odd.layers[0].media_type = "application/x-evil".into();
        let err = CacheEntry::parse(&serde_json::to_vec(&odd).unwrap(), &key).unwrap_err();
        assert!(err.contains("media type"), "{err}");

        let mut tar = e.manifest(config(), "x");
        tar.layers[0].media_type = OCI_LAYER_TAR.into();
        let err = CacheEntry::parse(&serde_json::to_vec(&tar).unwrap(), &key).unwrap_err();
        assert!(err.contains("diff-id"), "{err}");

        let mut bare = e.manifest(config(), "x");
        bare.annotations = None;
        assert!(CacheEntry::parse(&serde_json::to_vec(&bare).unwrap(), &key).is_err());
        assert!(CacheEntry::parse(b"{not json", &key).is_err());
    }

    #[test]
    fn the_layers_below_decide_and_the_tag_is_a_valid_tag() {
        assert_ne!(below_digest(&[d('1')]), below_digest(&[d('2')]));
        assert_ne!(
            below_digest(&[d('1'), d('2')]),
            below_digest(&[d('2'), d('1')])
        );
        assert_eq!(below_digest(&[d('1')]), below_digest(&[d('1')]));
        let tag = entry_tag(&"0123456789abcdef".repeat(4));
        assert!(tag.len() <= 128 && tag.starts_with("cache-"));
    }

    #[test]
    fn settings_take_the_command_line_over_berth_toml_and_read_only_by_default() {
        let repo = |s: &str| ImageReference::parse_repository(s).unwrap();
        let s = BuildCacheSettings::new(Some("127.0.0.1:5000/c"), false, None, None).unwrap();
        assert_eq!(s.from.as_ref().unwrap().repository, "c");
        assert!(s.to.is_none(), "read-only unless cache_push");
        let s = BuildCacheSettings::new(Some("127.0.0.1:5000/c"), true, None, None).unwrap();
        assert_eq!(s.to.as_ref().unwrap().repository, "c");
        let s = BuildCacheSettings::new(
            Some("127.0.0.1:5000/c"),
            false,
            Some(&repo("127.0.0.1:5000/from")),
            Some(&repo("127.0.0.1:5000/to")),
        )
        .unwrap();
        assert_eq!(s.from.unwrap().repository, "from");
        assert_eq!(s.to.unwrap().repository, "to");
        let s = BuildCacheSettings::new(None, false, None, None).unwrap();
        assert!(s.from.is_none() && s.to.is_none());
        let none = BuildCache::none();
        assert!(!none.reads() && !none.pushes());
    }
}
