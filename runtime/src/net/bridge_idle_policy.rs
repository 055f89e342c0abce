//! When berth's bridge, left idle by its last user ([`LastUser::LeavesIdle`]), may be
//! removed: the grace it stays up for and the check of its record. Apart from
//! [`super::bridge_idle`] (which removes it through the bridge's internals) so that the
//! bridge's own detach and garbage collection ask it without a circle between the two.

use std::time::Duration;

use super::lease_store::BridgeState;
use crate::host::clock::now_ms;

/// How long the bridge stays idle before it is removed: `berth run` or `up`/`down` in a loop
/// (a test suite, CI) then make and remove it once, not every round (making it costs a NAT
/// table transaction and three interface changes; removing it, some 50 ms of RCU grace
/// periods that the next attach would wait for under the bridge's lock). Short, so that
/// nothing berth made outlives its last environment for long.
pub const IDLE_BRIDGE_GRACE: Duration = Duration::from_millis(500);

/// What [`Bridge::detach`](super::bridge::Bridge::detach) does when it releases the bridge's last lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastUser {
    /// Removes the bridge, its NAT table, forwarding and record before it returns.
    RemovesBridge,
    /// Leaves them idle (a record of no leases): the caller removes them later, off its
    /// critical path, with [`IdleBridge::remove_if_idle_for`](super::bridge_idle::IdleBridge::remove_if_idle_for) (a RTM_DELLINK of a bridge
    /// waits for RCU grace periods, some 50 ms).
    LeavesIdle,
}

/// Whether the unused bridge of `st` became idle less than `min_idle` ago (a record of an
/// earlier berth, without the time, counts as idle long enough).
pub(super) fn idle_too_briefly(st: &BridgeState, min_idle: Duration) -> bool {
    st.idle_since_ms
        .is_some_and(|t| now_ms().saturating_sub(t) < min_idle.as_millis() as u64)
}
