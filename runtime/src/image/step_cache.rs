//! The step engine's cache lookup, one for every kind of build step (berth.toml's
//! `packages`/`setup` steps, the certificates and inputs layers, a Dockerfile's
//! instructions): [`ImageStore::cached_step`] before a step runs, [`ImageStore::record_step`]
//! after it ran. The local cache is the image record `build:<key>`; behind it the registry
//! cache ([`super::build_cache::BuildCache`]) is asked and fed.

use super::build_cache::BuildCache;
use super::digest::Digest;
use super::error::ImageError;
use super::image_store::{ImageRecord, LayerRecord};
use super::manifest::RunConfig;
use super::store::ImageStore;

/// Name of the image record that caches a step.
pub fn cache_name(key: &str) -> String {
    format!("{}{key}", super::store::BUILD_PREFIX)
}

/// Where a step that did not run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOrigin {
    /// This home built (or took) it before.
    Local,
    /// Taken from the registry cache now.
    Registry,
}

fn diff_ids(layers: &[LayerRecord]) -> Vec<Digest> {
    layers.iter().map(|l| l.diff_id.clone()).collect()
}

impl ImageStore {
    /// The image of the step `key` over `below` (the layers so far, bottom → top) with
    /// `run_config`: the local cache's record, else one made from the layer the registry
    /// cache holds for `key` (identical to the record the building machine made), else
    /// `None`: run the step, then call [`ImageStore::record_step`]. A step found only
    /// locally is pushed to the registry cache when pushing is on (and the cache lacks it).
    pub fn cached_step(
        &self,
        key: &str,
        below: &[LayerRecord],
        run_config: &RunConfig,
        cache: &BuildCache,
        label: &str,
    ) -> Result<Option<(ImageRecord, StepOrigin)>, ImageError> {
        let name = cache_name(key);
        if let Some(r) = self.records.get(&name)?.filter(|r| self.is_complete(r)) {
            if cache.pushes() {
                if let Some((top, rest)) = r.layers.split_last() {
                    cache.store(self, key, &diff_ids(rest), top, label);
                }
            }
            return Ok(Some((r, StepOrigin::Local)));
        }
        if let Some(layer) = cache.fetch(self, key, &diff_ids(below), label) {
            let mut layers = below.to_vec();
            layers.push(layer);
            let r = self.record_local_image(&name, layers, run_config.clone())?;
            return Ok(Some((r, StepOrigin::Registry)));
        }
        Ok(None)
    }

    /// Records the step `key`, whose `layer` was built here over `below`, in the local
    /// cache (`build:<key>`), and pushes the layer to the registry cache when pushing is on.
    pub fn record_step(
        &self,
        key: &str,
        below: Vec<LayerRecord>,
        layer: LayerRecord,
        run_config: &RunConfig,
        cache: &BuildCache,
        label: &str,
    ) -> Result<ImageRecord, ImageError> {
        let below_ids = diff_ids(&below);
        let mut layers = below;
        layers.push(layer.clone());
        let record = self.record_local_image(&cache_name(key), layers, run_config.clone())?;
        cache.store(self, key, &below_ids, &layer, label);
        Ok(record)
    }
}
