//! Garbage collection of throw-away environments whose `berth run` process is gone (killed
//! with SIGKILL, crashed, machine rebooted). Every berth command that touches environments
//! runs it first, so nothing a killed run created outlives the next command.

use std::time::Duration;

use serde::Deserialize;

use super::lifecycle::Environments;
use super::record::{EnvRecord, Ephemeral, RECORD_FILE};
use crate::state::{read_json, FileLock, LockMode};

/// The one field of `env.json` garbage collection looks at first.
#[derive(Deserialize)]
struct EphemeralField {
    #[serde(default)]
    ephemeral: Option<Ephemeral>,
}

impl Environments {
    /// Destroys every ephemeral environment whose owner process no longer exists. Returns
    /// the ids removed. Environments locked by a live command are left alone.
    pub fn collect_garbage(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.home().envs_dir()) else {
            return removed;
        };
        // Every command runs this, over every environment: read only the `ephemeral` field
        // of each record (most are not), and the whole record only of orphans.
        let mut orphans: Vec<EnvRecord> = rd
            .flatten()
            .filter(|e| {
                read_json::<EphemeralField>(&e.path().join(RECORD_FILE))
                    .ok()
                    .flatten()
                    .and_then(|f| f.ephemeral)
                    .is_some_and(|e| !e.owner.alive())
            })
            .filter_map(|e| EnvRecord::load(&e.path()).ok().flatten())
            .collect();
        orphans.sort_by(|a, b| a.name.cmp(&b.name).then(a.env_id.cmp(&b.env_id)));
        for r in orphans {
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
