//! What a running sync reports, and how another process asks it to flush.
//!
//! Files in the sync's state folder:
//! - `status.json`: [`SyncStatus`], rewritten (atomically) when the state changes.
//! - `flush.request`: a counter. [`request_flush`] increments it and waits until
//!   `status.json`'s `flushed` reaches that number; the engine polls the file (every 100 ms),
//!   then rescans both sides completely and repeats until a pass finds nothing to do — only
//!   then are both sides identical and `flushed` updated.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::SyncError;
use crate::host::clock::now_ms;
use crate::state::{self, FileLock, LockMode, StateError};

/// What a sync is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    Starting,
    /// Comparing both trees completely (start, rescan, flush).
    Scanning,
    /// Idle, waiting for changes.
    Watching,
    /// Applying changes.
    Syncing,
    Stopped,
    Failed,
}

/// The status of one sync, as written to `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub name: String,
    pub host: String,
    pub env: String,
    pub pid: u32,
    pub state: SyncState,
    /// Paths in the batch being applied.
    pub pending: u64,
    /// Files, folders and links written or removed since the engine started.
    pub applied: u64,
    /// Conflicts since the engine started (each left a `.berth-conflict-` copy).
    pub conflicts: u64,
    pub last_error: Option<String>,
    /// Why a side is polled instead of watched with inotify, if it is.
    pub polling: Option<String>,
    /// Paths that were not synchronized (unsupported kind or name), with the reason; capped.
    pub skipped: Vec<String>,
    /// The last flush request number served.
    pub flushed: u64,
    /// The last flush request number that failed (see `last_error`).
    #[serde(default)]
    pub flush_failed: u64,
    pub updated_unix_ms: u64,
}

impl SyncStatus {
    pub fn new(name: &str, host: String, env: String) -> Self {
        SyncStatus {
            name: name.to_string(),
            host,
            env,
            pid: std::process::id(),
            state: SyncState::Starting,
            pending: 0,
            applied: 0,
            conflicts: 0,
            last_error: None,
            polling: None,
            skipped: Vec::new(),
            flushed: 0,
            flush_failed: 0,
            updated_unix_ms: now_ms(),
        }
    }
}

impl fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            SyncState::Syncing => write!(f, "syncing {} paths", self.pending)?,
            SyncState::Starting => f.write_str("starting")?,
            SyncState::Scanning => f.write_str("scanning")?,
            SyncState::Watching => f.write_str("watching")?,
            SyncState::Stopped => f.write_str("stopped")?,
            SyncState::Failed => f.write_str("failed")?,
        }
        if self.conflicts > 0 {
            write!(f, ", {} conflicts", self.conflicts)?;
        }
        if self.polling.is_some() {
            f.write_str(", polling")?;
        }
        if let Some(e) = &self.last_error {
            write!(f, ", last error: {e}")?;
        }
        Ok(())
    }
}

pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

fn request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("flush.request")
}

/// The status a sync last wrote; `None` if it never ran.
pub fn read_status(state_dir: &Path) -> Result<Option<SyncStatus>, StateError> {
    state::read_json(&status_path(state_dir))
}

/// Writes `status.json` by temp file + rename, without `fsync`: a reader never sees a torn
/// file, and the status is rewritten after every batch, so a durable copy would only add
/// latency (the base, which must survive crashes, is written durably elsewhere).
pub(crate) fn write_status(state_dir: &Path, s: &SyncStatus) -> Result<(), StateError> {
    let path = status_path(state_dir);
    let err = |source| StateError::Write {
        path: path.clone(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(s).map_err(|e| err(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    let tmp = state_dir.join(format!(".status.json.tmp-{}", std::process::id()));
    fs::write(&tmp, &bytes)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(e)
        })
}

/// The highest flush number requested so far.
pub(crate) fn read_flush_request(state_dir: &Path) -> u64 {
    fs::read_to_string(request_path(state_dir))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Asks the sync engine running for `state_dir` to make both sides identical, and waits until
/// it has (or `timeout` passes, or the engine is not running).
pub fn request_flush(state_dir: &Path, timeout: Duration) -> Result<(), SyncError> {
    let n = {
        let _lock = FileLock::acquire(&state_dir.join("flush.lock"), LockMode::Exclusive)?;
        let n = read_flush_request(state_dir) + 1;
        state::atomic_write(&request_path(state_dir), format!("{n}\n").as_bytes())?;
        n
    };
    let start = Instant::now();
    loop {
        let st = read_status(state_dir)?;
        match &st {
            Some(s) if s.flush_failed >= n => {
                return Err(SyncError::Failed {
                    name: s.name.clone(),
                    message: s.last_error.clone().unwrap_or_default(),
                })
            }
            Some(s) if s.flushed >= n => return Ok(()),
            // A failure recorded by a process that is gone (its VM went away) is stale: the
            // engine restarted by the next `up` has not announced itself yet.
            Some(s) if s.state == SyncState::Failed && process_alive(s.pid) => {
                return Err(SyncError::Failed {
                    name: s.name.clone(),
                    message: s.last_error.clone().unwrap_or_default(),
                })
            }
            Some(s) if s.state != SyncState::Stopped && process_alive(s.pid) => {}
            _ => {
                return Err(SyncError::NotRunning {
                    state_dir: state_dir.to_path_buf(),
                })
            }
        }
        if start.elapsed() > timeout {
            return Err(SyncError::Timeout {
                what: "flush".into(),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_state_conflicts_and_error() {
        let mut s = SyncStatus::new("src", "host /a".into(), "env /b".into());
        s.state = SyncState::Syncing;
        s.pending = 12;
        s.conflicts = 2;
        s.last_error = Some("boom".into());
        assert_eq!(
            s.to_string(),
            "syncing 12 paths, 2 conflicts, last error: boom"
        );
    }

    #[test]
    fn flush_without_engine_fails_fast() {
        let d = tempfile::tempdir().unwrap();
        let e = request_flush(d.path(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, SyncError::NotRunning { .. }), "{e}");
        assert_eq!(read_flush_request(d.path()), 1);
    }
}
