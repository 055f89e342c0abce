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
use super::error::NetError;
use super::lease_store::BridgeState;
use crate::host::clock::now_ms;

/// How long the bridge stays idle before it is removed: `berth run` or `up`/`down` in a loop
/// (a test suite, CI) then make and remove it once, not every round (making it costs a NAT
/// table transaction and three interface changes; removing it, some 50 ms of RCU grace
/// periods that the next attach would wait for under the bridge's lock). Short, so that
/// nothing berth made outlives its last environment for long.
pub const IDLE_BRIDGE_GRACE: Duration = Duration::from_millis(500);

/// What [`Bridge::detach`] does when it releases the bridge's last lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastUser {
    /// Removes the bridge, its NAT table, forwarding and record before it returns.
    RemovesBridge,
    /// Leaves them idle (a record of no leases): the caller removes them later, off its
    /// critical path, with [`IdleBridge::remove_if_idle_for`] (a RTM_DELLINK of a bridge
    /// waits for RCU grace periods, some 50 ms).
    LeavesIdle,
}

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

/// Whether the unused bridge of `st` became idle less than `min_idle` ago (a record of an
/// earlier berth, without the time, counts as idle long enough).
pub(super) fn idle_too_briefly(st: &BridgeState, min_idle: Duration) -> bool {
    st.idle_since_ms
        .is_some_and(|t| now_ms().saturating_sub(t) < min_idle.as_millis() as u64)
}

#[cfg(test)]
#[path = "bridge_idle_tests.rs"]
mod tests;
