//! The end of a `berth run`: the command's exit code is reported as soon as it is known, and a
//! detached child process stops what the throw-away environment left running and removes it.

use std::fs;
use std::time::Duration;

use super::background_child::{in_background_child, leave_bridge_idle, remove_idle_bridge};
use super::environments::{Environments, Locked};
use super::error::EnvError;
use super::record::EnvRecord;
use crate::host::fault_injection::checkpoint;
use crate::state::{self, FileLock};

impl Environments {
    /// Tears down the finished `berth run` environment `env_id` like
    /// [`destroy`](Self::destroy), in a detached child process: `berth run` reports the
    /// command's exit code without waiting for the supervisor to stop (its exit and reaping
    /// wait for the mount namespace's teardown and RCU grace periods, 10–20 ms), the cgroups
    /// and the network to go, or the file system (some twenty metadata updates).
    ///
    /// The child takes over the environment's lock (the same open file, inherited), ends its
    /// processes, cgroups, mounts and network, then renames the folder out of `envs/` into
    /// the home's `tmp/` as `run-removal-<pid>-<hex>`, lets the lock go and removes the
    /// folder. Until the rename the environment stays in `envs/`, locked, with the record of
    /// a `berth run` that is gone: a command that needs its name waits for the lock
    /// ([`wait_for_run_removal`](Self::wait_for_run_removal)). A child killed before the
    /// rename leaves it unlocked on the watch list, and the next command's garbage collection
    /// destroys it as that of any killed `berth run` (cgroups included); killed after, the
    /// next command's sweep of `tmp/` removes its folder.
    ///
    /// The same child removes berth's bridge when this run was its last user (left idle by
    /// the network's detach,
    /// [`Network::leave_bridge_idle`](crate::net::Network::leave_bridge_idle)): deleting a
    /// bridge waits for the kernel's RCU grace periods (some 50 ms). It waits
    /// [`IDLE_BRIDGE_GRACE`](crate::net::bridge::IDLE_BRIDGE_GRACE) first, so that
    /// the next run of a test loop finds the bridge and its NAT table made, then removes
    /// them under the bridge's lock with its leases read again: an environment that
    /// attached meanwhile keeps them. A child killed first leaves an idle bridge that the next
    /// attach uses and garbage collection removes.
    ///
    /// Sidecars are stopped before that, here (see below). When no process can be forked,
    /// all of it is done here before returning.
    pub fn remove_run(&self, env_id: &str, timeout: Duration) -> Result<(), EnvError> {
        let quiet: crate::image::Progress = std::sync::Arc::new(crate::image::QuietProgress);
        let locked = self.lock(env_id, &quiet)?;
        // Sidecars stop here, before the exit code: what their servers write as they stop
        // (a database's last dump) is in a volume kept for the next command
        // (`--keep-volumes`) when that command starts.
        if locked.dir.join("sidecars").exists() {
            self.destroy_sidecars(&locked.dir, timeout)?;
        }
        in_background_child("run-stop", |detached| {
            self.end_run(env_id, locked, timeout, detached)
        })
    }

    /// Waits until the removal process of a finished `berth run` named like `env_id` (a
    /// throw-away environment whose `berth run` is gone) lets its lock go, and destroys the
    /// environment when that process died before it could. Whether the name is free now;
    /// `false` for an environment of a live command or a kept one.
    pub(super) fn wait_for_run_removal(&self, env_id: &str) -> Result<bool, EnvError> {
        let dir = self.home().env_dir(env_id);
        // Gone since the caller saw it: the removal process moved the folder out of `envs/`
        // in between, and the name is free.
        let Some(record) = EnvRecord::load(&dir)? else {
            return Ok(true);
        };
        let dead_run = record.ephemeral.is_some_and(|e| !e.owner.alive());
        if !dead_run {
            return Ok(false);
        }
        // The lock file moves out of `envs/` with the folder: held until then. Waited for
        // without taking it (a lock taken after the move would make `envs/<id>/` again).
        let lock = self.home().env_lock(env_id);
        FileLock::wait_until_released(&lock).map_err(|source| state::StateError::Lock {
            path: lock.clone(),
            source,
        })?;
        if EnvRecord::load(&dir)?.is_some() {
            self.destroy(env_id, false, Duration::from_secs(2))?;
        }
        Ok(true)
    }

    /// Whether `record` is that of a finished `berth run` (its `berth run` is gone) whose
    /// environment a command holds (its removal process, stopping it) or that is gone since
    /// the record was read (its folder moved out of `envs/`). Looked at without taking the
    /// lock: a lock taken after the folder moved would make `envs/<id>/lock` again.
    pub(super) fn run_being_removed(&self, record: &EnvRecord) -> bool {
        record.ephemeral.is_some_and(|e| !e.owner.alive())
            && matches!(
                FileLock::held_by_another(&self.home().env_lock(&record.env_id)),
                Ok(Some(true) | None)
            )
    }

    /// What [`remove_run`](Self::remove_run)'s child does (`detached`), or `remove_run`
    /// itself when it cannot fork: ends the run's processes, moves its folder out of `envs/`,
    /// then removes the bridge it left idle and the folder.
    fn end_run(
        &self,
        env_id: &str,
        locked: Locked,
        timeout: Duration,
        detached: bool,
    ) -> Result<(), EnvError> {
        let idle = leave_bridge_idle(self.home(), env_id);
        if let Err(e) = self.end_processes(&locked.dir, timeout) {
            remove_idle_bridge(idle.as_ref(), false);
            return Err(e);
        }
        // Named after this process, so a sweep leaves it alone while it works.
        let aside = self.home().tmp_dir().join(format!(
            "{REMOVAL_PURPOSE}-{}-{}",
            std::process::id(),
            state::unique_suffix()
        ));
        // The lock file moves with the folder; a command waiting for it then finds no
        // environment, as after `destroy`.
        if fs::rename(&locked.dir, &aside).is_err() {
            drop(locked);
            remove_idle_bridge(idle.as_ref(), false);
            return self.destroy(env_id, false, timeout);
        }
        // Garbage collection no longer watches it: its folder is out of `envs/`.
        if let Some((watch, env_id)) = crate::state::WatchList::of_env_dir(&locked.dir) {
            let _ = watch.remove(&env_id);
        }
        drop(locked);
        checkpoint("run-removal");
        remove_idle_bridge(idle.as_ref(), detached);
        state::remove_tree(&aside).map_err(|source| state::StateError::Write {
            path: aside.clone(),
            source,
        })?;
        Ok(())
    }
}

/// The `tmp/` purpose of a run's folder being removed (see [`Environments::remove_run`]).
const REMOVAL_PURPOSE: &str = "run-removal";

#[cfg(test)]
mod tests {
    use crate::state::BerthHome;

    use super::Environments;

    /// The caller saw the record of a finished run, and its removal process moved the folder
    /// out of `envs/` before this look (CI: `run --name` twice back to back found the name
    /// taken).
    #[test]
    fn a_run_removed_since_the_caller_looked_leaves_its_name_free() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        assert!(!home.env_dir("same-run").exists());
        assert!(envs.wait_for_run_removal("same-run").unwrap());
    }
}
