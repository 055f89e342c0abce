//! `envs/<id>/state.json` of a container environment: what exists, written before each resource
//! is created so that a later command can undo a half-done start.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cgroups::CgroupLayout;
use super::error::Result;
use super::idmap::IdMapping;
use crate::state::{read_json, write_json_volatile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    #[default]
    Stopped,
}

/// A process identified beyond its pid: pid numbers are reused, start times are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot).
    pub start_time: u64,
}

impl ProcessRef {
    pub fn of(pid: i32) -> Option<ProcessRef> {
        Some(ProcessRef {
            pid,
            start_time: start_time(pid)?,
        })
    }
    /// The same process is still there (not a reused pid, not a zombie).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let after = &s[s.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Start time of a process, from /proc/<pid>/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    // After ')' the first field is field 3 (state); start time is field 22.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|s| s == "Z" || s == "X")
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
    pub starter: Option<ProcessRef>,
    /// The supervisor (PID 1 inside), once known.
    #[serde(default)]
    pub supervisor: Option<ProcessRef>,
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

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_fake_one_is_not() {
        let me = ProcessRef::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let reused = ProcessRef {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!reused.alive());
    }

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
}
