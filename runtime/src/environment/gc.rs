//! Garbage collection of throw-away environments whose `berth run` process is gone (killed
//! with SIGKILL, crashed, machine rebooted). Every berth command that touches environments
//! runs it first, so nothing a killed run created outlives the next command. The same pass
//! releases the network of a VM whose VMM was killed, and the bridge leases of environments
//! of any berth home that are gone.

use std::time::Duration;

use serde::Deserialize;

use super::environments::Environments;
use super::record::{EnvRecord, Ephemeral, RECORD_FILE};
use crate::net::{Network, NetworkOptions};
use crate::state::{read_json, FileLock, LockMode, ENV_LOCK_FILE};

/// An environment's network record and VM state (see `vm/vm_record.rs`).
const NETWORK_FILE: &str = "network.json";
const VM_FILE: &str = "vm.json";

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
            let Ok(Some(lock)) =
                FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
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
        self.release_dead_vm_networks();
        // Leases on berth's bridge of environments of any home that are gone (a deleted
        // home, a killed VMM whose home went with it): released machine-wide.
        let _ = Network::new(self.home(), NetworkOptions::default()).collect_departed();
        removed
    }

    /// Releases the tap, lease and NAT of VMs whose VMM is gone without releasing them
    /// (killed with SIGKILL; a VMM that ends otherwise releases them itself). `vm.json` stays,
    /// so the environment still shows as dead until `down` or `up`. Environments locked by a
    /// command (a start plumbing its tap) are left alone. Returns the ids released.
    pub fn release_dead_vm_networks(&self) -> Vec<String> {
        let mut released = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.home().envs_dir()) else {
            return released;
        };
        for e in rd.flatten() {
            let dir = e.path();
            // Cheap checks first: every command runs this over every environment.
            if !dir.join(NETWORK_FILE).exists() || !dir.join(VM_FILE).exists() {
                continue;
            }
            let Ok(Some(_lock)) =
                FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
            else {
                continue;
            };
            if self.vms.is_running(&dir) {
                continue;
            }
            if self.vms.release_network(&dir).is_ok() {
                released.extend(e.file_name().to_str().map(str::to_string));
            }
        }
        released
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
