//! `envs/<id>/env.json`: what berth applied to an environment, written atomically before the
//! backend is asked to create anything, so every later command knows what exists.

use std::path::{Path, PathBuf};

use envfile_spec::Plan;
use serde::{Deserialize, Serialize};

use crate::host::process::ProcessIdentity;
use crate::state::{
    read_json, write_json_if_changed, write_json_volatile, EnvLayersInUse, StateError,
};

/// File name of the record inside the environment's folder.
pub const RECORD_FILE: &str = crate::state::ENV_RECORD_FILE;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvRecord {
    pub env_id: String,
    pub name: String,
    /// The berth.toml the environment was made from.
    pub file: PathBuf,
    /// The plan last applied.
    pub plan: Plan,
    /// `plan.hash()` of that plan.
    pub plan_hash: String,
    /// The last `up` finished (started and ran every `on_up` step). When false, the next
    /// `up` restarts the environment even if the plan is unchanged.
    pub converged: bool,
    /// The image the writable layer was made on.
    pub image: Option<ImageUse>,
    /// Diff-ids of every layer in use, bottom first (kept from `image prune`).
    pub layers: Vec<String>,
    /// Ran without a user namespace (`up --privileged`).
    #[serde(default)]
    pub privileged: bool,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Set for throw-away environments of `berth run`: they belong to that process.
    #[serde(default)]
    pub ephemeral: Option<Ephemeral>,
    /// Content hash of what the build read besides the plan (the inputs, the host's CA
    /// certificates): when it changes, `up` rebuilds even if the plan did not.
    #[serde(default)]
    pub build_key: Option<String>,
    /// The `on_create` commands (their hash) that last succeeded on the current writable
    /// layer; `None` until they did, and again when the writable layer is made anew.
    #[serde(default)]
    pub on_create_done: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    /// Record name (`docker.io/library/debian:bookworm`, `rootfs:/abs/dir`, …).
    pub name: String,
    /// Image id (config digest).
    pub id: String,
    /// Layer folders, bottom first (base layers, then build-step layers).
    pub layer_dirs: Vec<PathBuf>,
}

/// The owner of a throw-away environment: when it is gone, the environment is garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ephemeral {
    pub owner: ProcessIdentity,
}

impl EnvRecord {
    pub fn load(env_dir: &Path) -> Result<Option<EnvRecord>, StateError> {
        read_json(&env_dir.join(RECORD_FILE))
    }

    /// Writes the record atomically. Durably (fsync of the file and the folder) when it is a
    /// kept environment's. A throw-away environment's only atomically: a `kill -9` keeps it
    /// (the page cache outlives the process), and a power cut ends its `berth run` owner
    /// anyway; the folder it may leave without a readable record is destroyed by the first
    /// full sweep after the reboot (`gc::never_recorded`), as its record would have had it.
    pub fn save(&self, env_dir: &Path) -> Result<(), StateError> {
        let path = env_dir.join(RECORD_FILE);
        if self.ephemeral.is_some() {
            return write_json_volatile(&path, self);
        }
        // `converged` alone flipped (a cold `up` finishing, `down`): only atomic. Lost to a
        // power cut, the record says converged when nothing runs (the next `up` sees the
        // environment stopped and starts it) or not converged (the next `up` restarts it):
        // both as after the reboot itself.
        let flipped = EnvRecord {
            converged: !self.converged,
            ..self.clone()
        };
        if std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<EnvRecord>(&b).ok())
            .is_some_and(|old| old == flipped)
        {
            return write_json_volatile(&path, self);
        }
        write_json_if_changed(&path, self)
    }

    /// The layers this record keeps in use, as the image store reads them back
    /// ([`EnvLayersInUse::load`]) from the saved record.
    pub fn layers_in_use(&self) -> EnvLayersInUse {
        EnvLayersInUse {
            layers: self.layers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_store_reads_the_layers_a_saved_record_keeps() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("berth.toml");
        let plan = envfile_spec::parse(
            b"name = \"web\"\n[image]\nfrom = \"docker.io/library/alpine:3.20\"\n",
            &file,
        )
        .unwrap()
        .plan;
        let record = EnvRecord {
            env_id: "web-1".into(),
            name: "web".into(),
            file,
            plan_hash: plan.hash(),
            plan,
            converged: true,
            image: None,
            layers: vec![
                format!("sha256:{}", "a".repeat(64)),
                format!("sha256:{}", "b".repeat(64)),
            ],
            privileged: false,
            created_at: 1,
            ephemeral: None,
            build_key: None,
            on_create_done: None,
        };
        record.save(d.path()).unwrap();
        let read = EnvLayersInUse::load(d.path()).unwrap().unwrap();
        assert_eq!(read, record.layers_in_use());
        assert_eq!(
            read.diff_ids().collect::<Vec<_>>(),
            record.layers,
            "the layers prune keeps are the record's"
        );
    }
}
