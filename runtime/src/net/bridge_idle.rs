//! The idle bridge: a detach that releases the bridge's last lease for a caller that asked
//! ([`LastUser::LeavesIdle`]: `berth run` and `berth down`, which remove it in their detached
//! child) leaves the bridge, its NAT table and forwarding up, with a record of no leases and
//! the time it became idle. The next attach uses an idle bridge as it is (when it has the
//! subnet that attach would choose); otherwise it is removed once it has been idle for
//! [`IDLE_BRIDGE_GRACE`], by the remover of its last user (which waits that long:
//! [`IdleBridge::remove_if_idle_for`]) or by garbage collection
//! ([`Bridge::collect_departed`](super::bridge::Bridge::collect_departed)), so a remover
//! killed on the way leaks nothing for long. A remover whose bridge was used and left idle
//! again meanwhile leaves it to the later one: a loop of `up`/`down` or `run`s never has
//! the bridge removed under it by an earlier round's remover.

use std::time::Duration;

use super::bridge::{netlink, release_departed, settle, Bridge};
use super::bridge_idle_policy::idle_too_briefly;
pub use super::bridge_idle_policy::{LastUser, IDLE_BRIDGE_GRACE};
use super::error::NetError;

/// A bridge its last user may have left idle ([`LastUser::LeavesIdle`]), to be removed
/// unless someone uses it again meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleBridge {
    pub name: String,
    pub nft_table: String,
}

impl IdleBridge {
    /// Whether the bridge is idle now (a record of no leases; read without the lock): its
    /// remover has something to wait for.
    pub fn is_idle(&self) -> bool {
        Bridge::store_of(&self.name)
            .and_then(|s| s.peek())
            .is_ok_and(|st| st.is_some_and(|st| st.leases.is_empty()))
    }

    /// Under the bridge's lock, with its holders checked again: removes the bridge, NAT
    /// table, forwarding and record when no lease is left (those of holders that are gone
    /// released first) and it has been idle for at least `min_idle`; leaves everything as it
    /// is when an environment attached meanwhile, or left it idle less than `min_idle` ago
    /// (its own remover comes later). Returns whether it removed the bridge. Idempotent.
    pub fn remove_if_idle_for(&self, min_idle: Duration) -> Result<bool, NetError> {
        let store = Bridge::store_of(&self.name)?;
        if !store.dir().exists() {
            return Ok(false);
        }
        let lock = store.lock()?;
        let Some(mut st) = store.load(&lock)? else {
            return store.remove(lock).map(|()| false);
        };
        let mut nl = netlink()?;
        release_departed(&mut st, &mut nl, None);
        if !st.leases.is_empty() {
            return store.save(&lock, &st).map(|()| false);
        }
        if idle_too_briefly(&st, min_idle) {
            return Ok(false);
        }
        settle(&store, lock, &mut nl, &st).map(|()| true)
    }
}

#[cfg(test)]
#[path = "bridge_idle_tests.rs"]
mod tests;
