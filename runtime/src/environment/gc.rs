//! Garbage collection of throw-away environments whose `berth run` process is gone (killed
//! with SIGKILL, crashed, machine rebooted). Every berth command that touches environments
//! runs it first, so nothing a killed run created outlives the next command.

use std::time::Duration;

use super::lifecycle::Environments;
use super::record::EnvRecord;
use crate::state::{FileLock, LockMode};

impl Environments {
    /// Destroys every ephemeral environment whose owner process no longer exists. Returns
    /// the ids removed. Environments locked by a live command are left alone.
    pub fn collect_garbage(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(records) = self.records() else {
            return removed;
        };
        for r in records {
            let Some(e) = r.ephemeral else { continue };
            if e.owner.alive() {
                continue;
            }
            let dir = self.home().env_dir(&r.env_id);
            // Someone else (another gc, or the owner's own teardown) holds it: skip.
            let Ok(Some(lock)) = FileLock::try_acquire(&dir.join("lock"), LockMode::Exclusive)
            else {
                continue;
            };
            drop(lock);
            if self
                .destroy(&r.env_id, false, Duration::from_secs(2))
                .is_ok()
            {
                removed.push(r.env_id);
            }
        }
        removed
    }

    /// Whether a record's environment belongs to a `berth run` that is gone.
    pub fn is_orphan(record: &EnvRecord) -> bool {
        record.ephemeral.is_some_and(|e| !e.owner.alive())
    }
}
