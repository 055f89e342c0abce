//! `envs/<id>/state.json` of a container environment: what exists, written before each resource
//! is created so that a later command can undo a half-done start.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cgroups::CgroupLayout;
use super::error::Result;
use super::idmap::IdMapping;
use crate::host::process::ProcessIdentity;
use crate::state::{read_json, write_json_volatile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    #[default]
    Stopped,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    #[serde(default)]
    pub phase: Phase,
    /// The user namespace mapping; `None` when privileged.
    #[serde(default)]
    pub mapping: Option<IdMapping>,
    /// The cgroups, recorded before they are created.
    #[serde(default)]
    pub cgroups: Option<CgroupLayout>,
    /// The berth process running `start`, while it runs (a start whose starter died without
    /// a supervisor is dead, not starting).
    #[serde(default)]
    pub starter: Option<ProcessIdentity>,
    /// The supervisor (PID 1 inside), once known.
    #[serde(default)]
    pub supervisor: Option<ProcessIdentity>,
    /// Seconds since the epoch when the environment became ready.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Why the last start failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Keys written by other parts of berth (plan hash, …), preserved as-is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ContainerState {
    pub fn path(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("state.json")
    }
    pub fn load(state_dir: &Path) -> Result<ContainerState> {
        Ok(read_json(&Self::path(state_dir))?.unwrap_or_default())
    }
    /// Atomic (never torn, also if berth is killed) but not fsynced: this state describes
    /// processes and cgroups, which do not survive a power loss either.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        Ok(write_json_volatile(&Self::path(state_dir), self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_survive_a_round_trip() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            ContainerState::path(d.path()),
            r#"{"plan_hash":"abc","phase":"running"}"#,
        )
        .unwrap();
        let mut s = ContainerState::load(d.path()).unwrap();
        assert_eq!(s.phase, Phase::Running);
        s.phase = Phase::Stopped;
        s.save(d.path()).unwrap();
        let text = std::fs::read_to_string(ContainerState::path(d.path())).unwrap();
        assert!(
            text.contains("\"plan_hash\": \"abc\"") && text.contains("\"stopped\""),
            "{text}"
        );
    }

    #[test]
    fn a_state_json_of_the_previous_version_loads() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            ContainerState::path(d.path()),
            r#"{
  "phase": "running",
  "mapping": null,
  "cgroups": {"version": "v2", "dir": "/sys/fs/cgroup/berth/web-1"},
  "starter": null,
  "supervisor": {"pid": 4242, "start_time": 987654},
  "started_at": 1700000000,
  "last_error": null,
  "plan_hash": "abc"
}"#,
        )
        .unwrap();
        let s = ContainerState::load(d.path()).unwrap();
        assert_eq!(
            s.supervisor,
            Some(ProcessIdentity {
                pid: 4242,
                start_time: 987654
            })
        );
        assert_eq!(
            s.cgroups,
            Some(CgroupLayout::V2 {
                dir: "/sys/fs/cgroup/berth/web-1".into()
            })
        );
        assert_eq!(s.started_at, Some(1700000000));
    }
}
