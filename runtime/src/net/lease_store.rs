//! The machine-wide record of one berth bridge: its subnet and the address lease of every
//! environment plugged into it, whichever berth home the environment belongs to.
//!
//! A bridge, its nftables table and IPv4 forwarding are host-wide, so their users are
//! counted host-wide: `/run/berth/net/<bridge>/leases.json`, read and written only under the
//! `flock` of `/run/berth/net/<bridge>/lock`. Each lease names its holder (berth home and
//! environment id) and the host-side interface (veth or tap) it plugged in, so a holder
//! that no longer exists (its environment folder is gone, its interface vanished with its
//! namespace) is found and released by the next user of the bridge. The last release
//! removes the bridge, the table and this folder. `/run` is a tmpfs: a reboot, which
//! removes the bridge too, forgets it.
//!
//! Homes of berth versions before this record kept their leases in
//! `BERTH_HOME/net/bridge-<name>.json`; such a file is folded in the first time its home
//! touches the bridge ([`LeaseStore::adopt_home_file`]), so environments running across an
//! upgrade keep their addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{self, FileLock, LockMode};

use super::error::NetError;
use super::subnet::Subnet;

/// Where the machine-wide records of berth's bridges live, one folder per bridge.
pub const MACHINE_NET_DIR: &str = "/run/berth/net";

/// Who holds a lease: an environment of a berth home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The berth home's root (absolute).
    pub home: PathBuf,
    pub env_id: String,
}

impl Holder {
    pub fn new(home: &Path, env_id: &str) -> Holder {
        Holder {
            home: home.to_path_buf(),
            env_id: env_id.to_string(),
        }
    }

    /// The environment's folder (`BERTH_HOME/envs/<id>`): it exists from before the lease is
    /// taken until after it is released, so its absence means the holder is gone.
    pub fn env_dir(&self) -> PathBuf {
        self.home.join("envs").join(&self.env_id)
    }
}

/// One environment's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    #[serde(flatten)]
    pub holder: Holder,
    pub address: Ipv4Addr,
    /// The host-side interface (veth or tap) plugged into the bridge for it.
    pub port: String,
}

/// What berth knows about one bridge, shared by every environment on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeState {
    pub bridge: String,
    pub subnet: Subnet,
    pub nft_table: String,
    pub leases: Vec<LeaseEntry>,
    /// When the last lease went and the bridge was left idle (milliseconds since the epoch;
    /// see `bridge_idle`); `None` while in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since_ms: Option<u64>,
}

impl BridgeState {
    pub fn new(bridge: &str, subnet: Subnet, nft_table: &str) -> BridgeState {
        BridgeState {
            bridge: bridge.to_string(),
            subnet,
            nft_table: nft_table.to_string(),
            leases: Vec::new(),
            idle_since_ms: None,
        }
    }

    pub fn lease_of(&self, holder: &Holder) -> Option<&LeaseEntry> {
        self.leases.iter().find(|l| &l.holder == holder)
    }

    /// Drops `holder`'s lease; returns it.
    pub fn release(&mut self, holder: &Holder) -> Option<LeaseEntry> {
        let i = self.leases.iter().position(|l| &l.holder == holder)?;
        Some(self.leases.remove(i))
    }

    /// The lowest free host address (the gateway is the bridge's own).
    pub fn free_address(&self) -> Result<Ipv4Addr, NetError> {
        let taken: BTreeSet<Ipv4Addr> = self.leases.iter().map(|l| l.address).collect();
        (2..)
            .map_while(|n| self.subnet.host(n))
            .find(|a| !taken.contains(a))
            .ok_or_else(|| NetError::SubnetFull {
                subnet: self.subnet.to_string(),
                leases: self.leases.len(),
            })
    }

    /// The host-side interface name for a new lease of `holder`: [`port_name`] of its
    /// environment id, or, when another home's environment of the same id already uses that
    /// name (two homes running one project), a name derived from the home as well.
    pub fn free_port_name(&self, holder: &Holder) -> String {
        let plain = port_name(&holder.env_id);
        if self.leases.iter().any(|l| l.port == plain) {
            port_name(&format!("{}\0{}", holder.home.display(), holder.env_id))
        } else {
            plain
        }
    }

    /// Whether another lease than `holder`'s plugged the interface `port`.
    pub fn port_used_by_other(&self, port: &str, holder: &Holder) -> bool {
        self.leases
            .iter()
            .any(|l| l.port == port && &l.holder != holder)
    }
}

/// The host-side veth (or tap) name for `key`: short (IFNAMSIZ is 16) and stable.
pub fn port_name(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!("bv{}", &hex::encode(d)[..10])
}

/// The record of one bridge under [`MACHINE_NET_DIR`].
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
}

/// The held lock of a [`LeaseStore`]: the record may be read and changed while it lives.
#[derive(Debug)]
pub struct StoreLock {
    _held: FileLock,
}

/// The leases file of berth versions that kept them per home.
#[derive(Deserialize)]
struct HomeBridgeFile {
    subnet: Subnet,
    leases: BTreeMap<String, Ipv4Addr>,
}

impl LeaseStore {
    pub fn for_bridge(bridge: &str) -> LeaseStore {
        LeaseStore {
            dir: Path::new(MACHINE_NET_DIR).join(bridge),
        }
    }

    /// The folder holding the record and its lock.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Blocks until this process alone may change the record. The last user removes the
    /// lock file with the record ([`remove`](Self::remove)); a waiter that then holds the
    /// lock of a removed file takes it again on the new file.
    pub fn lock(&self) -> Result<StoreLock, NetError> {
        let mut last = None;
        for _ in 0..1000 {
            match FileLock::acquire(&self.lock_path(), LockMode::Exclusive) {
                Ok(lock) if lock.is_current() => return Ok(StoreLock { _held: lock }),
                Ok(_) => continue,
                // The folder was removed between creating it and opening the file: again.
                Err(e) => last = Some(e),
            }
        }
        Err(NetError::State(last.unwrap_or_else(|| {
            state::StateError::Lock {
                path: self.lock_path(),
                source: std::io::Error::other("the lock file kept being replaced"),
            }
        })))
    }

    /// Like [`lock`](Self::lock), but `None` at once when another process holds the lock
    /// (or removed the record meanwhile).
    pub fn try_lock(&self) -> Result<Option<StoreLock>, NetError> {
        match FileLock::try_acquire(&self.lock_path(), LockMode::Exclusive)? {
            Some(lock) if lock.is_current() => Ok(Some(StoreLock { _held: lock })),
            _ => Ok(None),
        }
    }

    /// The record, if the bridge is in use.
    pub fn load(&self, _lock: &StoreLock) -> Result<Option<BridgeState>, NetError> {
        self.peek()
    }

    /// The record as last written, without the lock (for status and tests).
    pub fn peek(&self) -> Result<Option<BridgeState>, NetError> {
        Ok(state::read_json(&self.state_path())?)
    }

    /// Atomic, not fsynced: the record lives on `/run` and means nothing after a reboot,
    /// which removes the bridge too.
    pub fn save(&self, _lock: &StoreLock, st: &BridgeState) -> Result<(), NetError> {
        Ok(state::write_json_volatile(&self.state_path(), st)?)
    }

    /// Removes the record, the lock file and the folder (the bridge has no users left).
    pub fn remove(&self, lock: StoreLock) -> Result<(), NetError> {
        for path in [self.state_path(), self.lock_path()] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(NetError::State(state::StateError::Write {
                        path,
                        source: e,
                    }))
                }
                _ => {}
            }
        }
        drop(lock);
        // Another process may already have created the lock again: then the folder stays.
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Folds the per-home leases file `home/net/bridge-<bridge>.json` of an earlier berth
    /// into `st` (creating the record from it when there is none) and removes the file.
    pub fn adopt_home_file(
        &self,
        _lock: &StoreLock,
        home: &Path,
        bridge: &str,
        nft_table: &str,
        st: &mut Option<BridgeState>,
    ) -> Result<(), NetError> {
        let path = home.join("net").join(format!("bridge-{bridge}.json"));
        let Some(old) = state::read_json::<HomeBridgeFile>(&path)? else {
            return Ok(());
        };
        let st = st.get_or_insert_with(|| BridgeState::new(bridge, old.subnet, nft_table));
        if st.subnet == old.subnet {
            for (env_id, address) in old.leases {
                let holder = Holder::new(home, &env_id);
                let taken = st.leases.iter().any(|l| l.address == address);
                if st.lease_of(&holder).is_none() && !taken {
                    st.leases.push(LeaseEntry {
                        port: port_name(&env_id),
                        holder,
                        address,
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(home: &str, env: &str, address: &str, port: &str) -> LeaseEntry {
        LeaseEntry {
            holder: Holder::new(Path::new(home), env),
            address: address.parse().unwrap(),
            port: port.into(),
        }
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_and_never_twice_across_homes() {
        let mut st = BridgeState::new("b", "10.9.0.0/29".parse().unwrap(), "t");
        let mut got = Vec::new();
        for i in 0..5 {
            let a = st.free_address().unwrap();
            let home = format!("/home{}", i % 2);
            st.leases.push(entry(&home, "web-1", &a.to_string(), "p"));
            got.push(a.to_string());
        }
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert!(matches!(
            st.free_address(),
            Err(NetError::SubnetFull { .. })
        ));
        st.leases.remove(1);
        assert_eq!(st.free_address().unwrap().to_string(), "10.9.0.3");
    }

    #[test]
    fn one_project_in_two_homes_gets_two_interfaces() {
        let mut st = BridgeState::new("b", "10.9.0.0/24".parse().unwrap(), "t");
        let a = Holder::new(Path::new("/ci/job1"), "web-12345678");
        let b = Holder::new(Path::new("/ci/job2"), "web-12345678");
        let pa = st.free_port_name(&a);
        assert_eq!(pa, port_name("web-12345678"), "the usual name when free");
        st.leases.push(LeaseEntry {
            holder: a.clone(),
            address: "10.9.0.2".parse().unwrap(),
            port: pa.clone(),
        });
        let pb = st.free_port_name(&b);
        assert_ne!(pa, pb);
        assert!(pb.len() <= 15);
        assert!(st.port_used_by_other(&pa, &b));
        assert!(!st.port_used_by_other(&pa, &a));
        assert_eq!(st.release(&a).unwrap().port, pa);
        assert!(st.lease_of(&a).is_none());
    }

    #[test]
    fn a_lock_whose_file_was_removed_is_taken_again() {
        let d = tempfile::tempdir().unwrap();
        let store = LeaseStore {
            dir: d.path().join("berth_x"),
        };
        let first = store.lock().unwrap();
        let st = BridgeState::new("berth_x", "10.9.0.0/24".parse().unwrap(), "berth_x");
        store.save(&first, &st).unwrap();
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || {
                let lock = store.lock().unwrap();
                let current = lock._held.is_current();
                (current, store.load(&lock).unwrap())
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        store.remove(first).unwrap();
        let (current, seen) = waiter.join().unwrap();
        assert!(current, "the waiter holds the lock of the file that exists");
        assert_eq!(seen, None, "and sees the record gone");
    }

    #[test]
    fn a_home_file_of_an_earlier_berth_is_adopted() {
        let d = tempfile::tempdir().unwrap();
        let store = LeaseStore {
            dir: d.path().join("run/berth_y"),
        };
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join("net")).unwrap();
        std::fs::write(
            home.join("net/bridge-berth_y.json"),
            r#"{"bridge":"berth_y","subnet":"10.9.0.0/24","nft_table":"berth_y","leases":{"web-1":"10.9.0.2"}}"#,
        )
        .unwrap();
        let lock = store.lock().unwrap();
        let mut st = store.load(&lock).unwrap();
        store
            .adopt_home_file(&lock, &home, "berth_y", "berth_y", &mut st)
            .unwrap();
        let st = st.unwrap();
        assert_eq!(st.subnet.to_string(), "10.9.0.0/24");
        let l = st.lease_of(&Holder::new(&home, "web-1")).unwrap();
        assert_eq!(l.address.to_string(), "10.9.0.2");
        assert_eq!(l.port, port_name("web-1"));
        assert!(!home.join("net/bridge-berth_y.json").exists());
    }
}
