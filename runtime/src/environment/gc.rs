//! Garbage collection: what a killed process left is removed by the next berth command, at a
//! cost that does not grow with the number of environments (every command runs it).
//!
//! What it must catch, and where each command finds it without reading every record:
//!
//! - A throw-away environment of `berth run` whose process is gone (SIGKILL, crash, reboot),
//!   however far it got (a copied project, a half-started container, a running one): its
//!   `watch/<env-id>.run` marker (`state::WatchList`), written before anything of the
//!   environment exists and removed after its folder is. One small file per live run.
//! - The tap, lease and NAT of a VM whose VMM was killed: `watch/<env-id>.vm`, one per VM.
//! - Leases on berth's bridge held by environments of any home that are gone (a deleted home,
//!   a dead namespace): released machine-wide by the bridge's next user, by `berth ls`, and by
//!   any command once at least [`DEPARTED_INTERVAL`] after the last such check (the lease
//!   record holds every networked environment of the machine).
//! - After a reboot, and in a home of an older berth (records without markers): a full sweep
//!   of every record by the home's next command ([`Environments::sweep`]), which also writes
//!   the markers that were missing and narrows environment folders of older versions.
//!
//! `berth ls`, which reads every record anyway, sweeps on every call.

use std::time::Duration;

use envfile_spec::plan::BackendKind;
use serde::Deserialize;

use super::environments::Environments;
use super::error::EnvError;
use super::record::{EnvRecord, Ephemeral, RECORD_FILE};
use crate::host::process::ProcessIdentity;
use crate::net::{Network, NetworkOptions};
use crate::state::{read_json, FileLock, LockMode, WatchList, Watched, ENV_LOCK_FILE};

/// An environment's network record and VM state (see `vm/vm_record.rs`).
const NETWORK_FILE: &str = "network.json";
const VM_FILE: &str = "vm.json";

/// How long a command may rely on the last check of the bridge's leases.
pub const DEPARTED_INTERVAL: Duration = Duration::from_secs(30);

/// The fields of `env.json` garbage collection looks at.
#[derive(Deserialize)]
struct GcFields {
    #[serde(default)]
    ephemeral: Option<Ephemeral>,
    plan: GcPlanFields,
}

#[derive(Deserialize)]
struct GcPlanFields {
    backend: BackendKind,
}

/// An environment as the full sweep sees it.
struct Found {
    env_id: String,
    ephemeral: Option<Ephemeral>,
    backend: BackendKind,
}

impl Environments {
    /// What every berth command runs first: the watched environments (see the module
    /// documentation), the full sweep when one is due, and the bridge's departed leases when
    /// their last check is old. Returns the ids of the environments removed. Environments
    /// locked by a live command are left alone.
    pub fn collect_garbage(&self) -> Vec<String> {
        let due = self.home.gc_due(DEPARTED_INTERVAL);
        if due.sweep {
            return self.sweep();
        }
        let removed = self.collect_watched();
        if due.departed {
            self.collect_departed();
        }
        removed
    }

    /// Reads every environment's record: destroys throw-away environments whose owner is gone
    /// (with or without a marker), releases the networks of VMs whose VMM is gone, marks what
    /// later commands must watch, narrows folders of older versions, checks the bridge's
    /// leases, and records the sweep. Returns the ids removed.
    pub fn sweep(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.home.envs_dir()) {
            for e in rd.flatten() {
                let Some(env_id) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Ok(Some(f)) = read_json::<GcFields>(&e.path().join(RECORD_FILE)) {
                    found.push(Found {
                        env_id,
                        ephemeral: f.ephemeral,
                        backend: f.plan.backend,
                    });
                }
            }
        }
        self.sweep_found(found)
    }

    /// [`Environments::sweep`] over the records `berth ls` has read already.
    pub(super) fn sweep_records(&self, records: &[EnvRecord]) -> Vec<String> {
        self.sweep_found(
            records
                .iter()
                .map(|r| Found {
                    env_id: r.env_id.clone(),
                    ephemeral: r.ephemeral,
                    backend: r.plan.backend,
                })
                .collect(),
        )
    }

    fn sweep_found(&self, found: Vec<Found>) -> Vec<String> {
        let mut removed = self.collect_watched();
        let _ = self.home.narrow_env_dirs();
        let watch = WatchList::of(&self.home);
        let mut orphans = Vec::new();
        for f in found {
            if removed.contains(&f.env_id) {
                continue;
            }
            if f.backend == BackendKind::Vm {
                let _ = watch.add_vm(&f.env_id);
            }
            match f.ephemeral {
                Some(e) if !e.owner.alive() => orphans.push(f.env_id),
                // A run of an older berth, which wrote no marker.
                Some(e) => {
                    let _ = watch.add_run(&f.env_id, e.owner);
                }
                None => {}
            }
        }
        orphans.sort();
        removed.extend(orphans.into_iter().filter(|id| self.collect_env(id)));
        self.release_dead_vm_networks();
        self.collect_departed();
        let _ = self.home.mark_swept();
        removed
    }

    /// The environments on the watch list: throw-away environments whose owner is gone are
    /// destroyed, VMs whose VMM is gone lose their network, markers of folders that are gone
    /// are dropped. Returns the ids removed.
    fn collect_watched(&self) -> Vec<String> {
        let watch = WatchList::of(&self.home);
        let mut removed = Vec::new();
        for w in watch.entries() {
            match w {
                Watched::Run { env_id, owner } => {
                    if owner.is_some_and(|o| o.alive()) {
                        continue;
                    }
                    let dir = self.home.env_dir(&env_id);
                    if !dir.exists() {
                        let _ = watch.remove(&env_id);
                        continue;
                    }
                    match read_json::<GcFields>(&dir.join(RECORD_FILE)) {
                        // Kept (`run --keep`) by a command killed before it dropped the marker.
                        Ok(Some(GcFields {
                            ephemeral: None, ..
                        })) => {
                            let _ = watch.remove_run(&env_id);
                        }
                        // Another `berth run` of the same name that lives.
                        Ok(Some(GcFields {
                            ephemeral: Some(e),
                            ..
                        })) if e.owner.alive() => {}
                        // Its owner is gone: however far its `up` got (no record yet, a
                        // half-started environment, a running one).
                        _ => {
                            if self.collect_env(&env_id) {
                                removed.push(env_id);
                            }
                        }
                    }
                }
                Watched::Vm { env_id } => {
                    let dir = self.home.env_dir(&env_id);
                    if !dir.exists() {
                        let _ = watch.remove(&env_id);
                    } else {
                        self.release_dead_vm_network(&dir);
                    }
                }
            }
        }
        removed
    }

    /// Destroys the environment `env_id` unless a command holds it (another gc, the owner's
    /// own teardown); whether it is gone.
    fn collect_env(&self, env_id: &str) -> bool {
        let dir = self.home.env_dir(env_id);
        let Ok(Some(lock)) = FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        drop(lock);
        self.destroy(env_id, false, Duration::from_secs(2)).is_ok()
    }

    /// Leases on berth's bridge of environments of any home that are gone (a deleted home, a
    /// killed VMM whose home went with it): released machine-wide.
    fn collect_departed(&self) {
        let _ = Network::new(self.home(), NetworkOptions::default()).collect_departed();
        let _ = self.home.mark_departed_checked();
    }

    /// Marks, before anything of it is created, an environment that garbage collection must
    /// watch from now on: a throw-away environment of `owner` (a `berth run`), a VM.
    pub(super) fn watch(
        &self,
        env_id: &str,
        backend: BackendKind,
        ephemeral: Option<Ephemeral>,
    ) -> Result<(), EnvError> {
        let watch = WatchList::of(&self.home);
        if let Some(e) = ephemeral {
            watch.add_run(env_id, e.owner)?;
        }
        if backend == BackendKind::Vm {
            watch.add_vm(env_id)?;
        }
        Ok(())
    }

    /// [`Environments::watch`] of a throw-away environment this process owns, before it
    /// creates anything in its folder (`berth run --copy-source` copies the project first).
    pub(super) fn watch_own_run(&self, env_id: &str) -> Result<(), EnvError> {
        if let Some(owner) = ProcessIdentity::current() {
            WatchList::of(&self.home).add_run(env_id, owner)?;
        }
        Ok(())
    }

    /// Releases the tap, lease and NAT of VMs whose VMM is gone without releasing them
    /// (killed with SIGKILL; a VMM that ends otherwise releases them itself). `vm.json` stays,
    /// so the environment still shows as dead until `down` or `up`. Environments locked by a
    /// command (a start plumbing its tap) are left alone. Reads every environment folder (the
    /// full sweep); returns the ids released.
    pub fn release_dead_vm_networks(&self) -> Vec<String> {
        let mut released = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.home().envs_dir()) else {
            return released;
        };
        for e in rd.flatten() {
            if self.release_dead_vm_network(&e.path()) {
                released.extend(e.file_name().to_str().map(str::to_string));
            }
        }
        released
    }

    /// [`Environments::release_dead_vm_networks`] of the environment in `dir`; whether its
    /// network was released.
    fn release_dead_vm_network(&self, dir: &std::path::Path) -> bool {
        // Cheap checks first.
        if !dir.join(NETWORK_FILE).exists() || !dir.join(VM_FILE).exists() {
            return false;
        }
        let Ok(Some(_lock)) = FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        !self.vms.is_running(dir) && self.vms.release_network(dir).is_ok()
    }

    /// Whether a record's environment belongs to a `berth run` that is gone.
    pub fn is_orphan(record: &EnvRecord) -> bool {
        record.ephemeral.is_some_and(|e| !e.owner.alive())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
    use crate::state::{write_json, BerthHome};
    use crate::vm::{Provider, VmState};

    /// kill -9 of a networked VMM: the next command's garbage collection removes the tap,
    /// lease, NAT and bridge; a live VMM's, and a locked environment's, are left alone.
    #[test]
    fn the_network_of_a_killed_vmm_is_released_by_the_next_command() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "c") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let id = "vmnet-gc";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let envs = Environments::open(&home);
        let env = home.env_dir(id);
        let t = net.plumb_tap(id).unwrap();

        // The VMM (stand-in) runs: its network stays.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write_json(
            &env.join(VM_FILE),
            &VmState::stand_in(Provider::Kvm, &env, child.id()),
        )
        .unwrap();
        assert!(envs.release_dead_vm_networks().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        // Killed, but a command holds the environment's lock (a start plumbing its tap).
        let lock = FileLock::acquire(&env.join(ENV_LOCK_FILE), LockMode::Exclusive).unwrap();
        assert!(envs.release_dead_vm_networks().is_empty());
        assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
        drop(lock);

        envs.collect_garbage();
        assert_released(&net, id, &t.tap);
        assert!(
            env.join(VM_FILE).exists(),
            "still shown as dead until down/up"
        );
        assert!(envs.release_dead_vm_networks().is_empty(), "nothing left");
    }

    /// A CI job's home is deleted while its VM's tap is still on the shared bridge: the next
    /// user of the bridge from another home releases the lease, the tap and, as the last,
    /// the bridge, NAT table and record.
    #[test]
    fn the_lease_of_a_deleted_home_is_released_from_another_home() {
        let gone = tempfile::tempdir().unwrap();
        let gone_home = BerthHome::at(gone.path()).unwrap();
        let Some(net) = test_network(&gone_home, "d") else {
            return;
        };
        let id = "vmnet-gone";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let t = net.plumb_tap(id).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_home = BerthHome::at(other.path()).unwrap();
        let from_other = Network::new(&other_home, net.options().clone());
        assert_eq!(
            from_other.collect_departed().unwrap(),
            0,
            "its holder exists"
        );
        assert_eq!(
            master_of(&t.tap).as_deref(),
            Some(net.options().bridge.name.as_str())
        );

        std::fs::remove_dir_all(gone_home.env_dir(id)).unwrap();
        assert_eq!(from_other.collect_departed().unwrap(), 1);
        assert_released(&net, id, &t.tap);
    }
}
