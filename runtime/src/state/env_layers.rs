//! Which layers an environment uses, read from its record (`envs/<id>/env.json`, written by
//! `environment::EnvRecord`, which produces this view with `EnvRecord::layers_in_use`): the
//! image store's prune keeps those layers. A view on this floor, so that the image store
//! reads the record without depending on the environment layer above it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::atomic_file::read_json;
use super::StateError;

/// File name of an environment's record inside its folder.
pub const ENV_RECORD_FILE: &str = "env.json";

/// The layers part of an environment's record: every other key of the record is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLayersInUse {
    /// Diff-ids of every layer the environment uses, bottom first (`sha256:<hex>`; records of
    /// early versions wrote the bare hex).
    #[serde(default)]
    pub layers: Vec<String>,
}

impl EnvLayersInUse {
    /// The layers the environment in `env_dir` records; `Ok(None)` without a record, an
    /// error when the record cannot be read or is damaged (a caller that removes unused
    /// layers must then remove none).
    pub fn load(env_dir: &Path) -> Result<Option<EnvLayersInUse>, StateError> {
        read_json(&env_dir.join(ENV_RECORD_FILE))
    }

    /// The diff-ids, each with its `sha256:` prefix.
    pub fn diff_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.layers.iter().map(|l| {
            if l.starts_with("sha256:") {
                l.clone()
            } else {
                format!("sha256:{l}")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_layers_are_read_and_bare_hex_gets_its_prefix() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(EnvLayersInUse::load(d.path()).unwrap(), None);
        std::fs::write(
            d.path().join(ENV_RECORD_FILE),
            r#"{"env_id": "web-1", "plan": {"anything": 1}, "layers": ["sha256:aa", "bb"]}"#,
        )
        .unwrap();
        let l = EnvLayersInUse::load(d.path()).unwrap().unwrap();
        assert_eq!(l.diff_ids().collect::<Vec<_>>(), ["sha256:aa", "sha256:bb"]);
        std::fs::write(d.path().join(ENV_RECORD_FILE), r#"{"layers": "#).unwrap();
        assert!(matches!(
            EnvLayersInUse::load(d.path()),
            Err(StateError::Corrupt { .. })
        ));
    }
}
