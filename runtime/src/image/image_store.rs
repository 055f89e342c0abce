//! Image records: `images/<hash of name>.json`, one per image name, each pointing from a
//! name (`127.0.0.1:5000/bb:latest`, `rootfs:/src/root`, `debootstrap:bookworm …`) to a
//! manifest digest, a config and the ordered list of layers.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::ImageError;
use super::manifest::RunConfig;
use crate::state::{read_json, write_json, BerthHome};

/// How the image wants its processes run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl From<Option<&RunConfig>> for ImageConfig {
    fn from(c: Option<&RunConfig>) -> Self {
        let Some(c) = c else {
            return ImageConfig::default();
        };
        ImageConfig {
            env: c.env.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: c.user.clone().filter(|u| !u.is_empty()),
        }
    }
}

impl ImageConfig {
    /// The environment as pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }
}

/// One layer of an image: the blob as distributed and the unpacked layer it gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the (possibly compressed) blob.
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    /// Digest of the uncompressed tar: names the unpacked layer.
    pub diff_id: Digest,
}

/// An image known to the local store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The name it is known by.
    pub name: String,
    /// Digest of the image manifest (stored in the blob store).
    pub manifest_digest: Digest,
    /// Digest of the image config blob: the image id.
    pub config_digest: Digest,
    /// Digest of the index the manifest was chosen from, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub platform: String,
    pub config: ImageConfig,
    /// Bottom to top.
    pub layers: Vec<LayerRecord>,
    /// Unix time the record was written.
    pub created: u64,
}

impl ImageRecord {
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn new(home: &BerthHome) -> Self {
        RecordStore {
            dir: home.images_dir(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.json",
            hex::encode(Sha256::digest(name.as_bytes()))
        ))
    }

    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        Ok(read_json(&self.path(name))?)
    }

    pub fn put(&self, record: &ImageRecord) -> Result<(), ImageError> {
        Ok(write_json(&self.path(&record.name), record)?)
    }

    /// Removes the record of `name`; `false` when there was none.
    pub fn remove(&self, name: &str) -> Result<bool, ImageError> {
        let p = self.path(name);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io(p)(e)),
        }
    }

    /// Every record, sorted by name. Unreadable records are skipped.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let rd = fs::read_dir(&self.dir).map_err(ImageError::io(&self.dir))?;
        let mut out: Vec<ImageRecord> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| read_json(&e.path()).ok().flatten())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
