//! Debouncing of watch events ([`berth_sync_transport::watch`] produces them).
//!
//! [`Dirty`] collects the changed paths and says when to act: `quiet` after the last event (so a
//! single save is picked up within a few milliseconds), but at most `max_delay` after the first
//! one (so a long burst such as `git checkout` is synchronized in slices while it runs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::base::Side;
use super::transport::WatchEvent;

pub use berth_sync_transport::watch::watch_tree;

/// Debounce timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Act this long after the last event.
    pub quiet: Duration,
    /// ... but no later than this after the first event of a batch.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Why a path is waiting: which sides reported it, and whether its subtree may have changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyPath {
    pub deep: bool,
    pub host: bool,
    pub env: bool,
}

impl DirtyPath {
    /// The one side that reported the path, if only one did.
    pub fn only_side(&self) -> Option<Side> {
        match (self.host, self.env) {
            (true, false) => Some(Side::Host),
            (false, true) => Some(Side::Env),
            _ => None,
        }
    }
}

/// Paths waiting to be reconciled.
#[derive(Debug, Default)]
pub struct Dirty {
    paths: BTreeMap<String, DirtyPath>,
    rescan: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A batch taken from [`Dirty`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Relative path → what is known about its change.
    pub paths: BTreeMap<String, DirtyPath>,
    /// Everything must be rescanned.
    pub rescan: bool,
}

impl Dirty {
    /// Adds an event reported by `side` (`None`: not from a watcher; look at both sides).
    pub fn add(&mut self, side: Option<Side>, ev: WatchEvent, now: Instant) {
        match ev {
            WatchEvent::Changed { rel, deep } => {
                let d = self.paths.entry(rel).or_default();
                d.deep |= deep;
                d.host |= side != Some(Side::Env);
                d.env |= side != Some(Side::Host);
            }
            WatchEvent::Rescan => self.rescan = true,
            WatchEvent::Failed { .. } => return,
        }
        // Events of the two sides' watchers may be taken slightly out of order.
        self.first = Some(self.first.map_or(now, |f| f.min(now)));
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Marks a path for another look (after a transfer was interrupted by a change).
    pub fn retry(&mut self, rel: String, now: Instant) {
        self.add(None, WatchEvent::Changed { rel, deep: true }, now);
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether a complete rescan was asked for (a watcher's queue overflowed, rules changed).
    pub fn rescan_pending(&self) -> bool {
        self.rescan
    }

    /// How long until the batch is due; `None` when there is nothing to do.
    pub fn due_in(&self, now: Instant, d: Debounce) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        let at = (last + d.quiet).min(first + d.max_delay);
        Some(at.saturating_duration_since(now))
    }

    /// Takes the pending batch.
    pub fn take(&mut self) -> Batch {
        self.first = None;
        self.last = None;
        Batch {
            paths: std::mem::take(&mut self.paths),
            rescan: std::mem::take(&mut self.rescan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(rel: &str, deep: bool) -> WatchEvent {
        WatchEvent::Changed {
            rel: rel.into(),
            deep,
        }
    }

    #[test]
    fn quiet_period_then_cap_under_a_burst() {
        let d = Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        };
        let t0 = Instant::now();
        let mut dirty = Dirty::default();
        assert_eq!(dirty.due_in(t0, d), None);
        dirty.add(Some(Side::Host), ch("a", false), t0);
        assert_eq!(dirty.due_in(t0, d), Some(Duration::from_millis(5)));
        // Events every 3 ms keep pushing the quiet deadline, up to the cap.
        for i in 1..30 {
            dirty.add(
                Some(Side::Env),
                ch("b", false),
                t0 + Duration::from_millis(3 * i),
            );
        }
        let now = t0 + Duration::from_millis(40);
        assert_eq!(dirty.due_in(now, d), Some(Duration::from_millis(10)));
        let b = dirty.take();
        assert_eq!(b.paths.len(), 2);
        assert!(dirty.is_empty());
    }

    #[test]
    fn events_taken_out_of_order_keep_the_latest_and_earliest_times() {
        // The loop takes queued events late and the two sides' watchers interleave: the
        // quiet period counts from the latest event sent, the cap from the earliest.
        let d = Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        };
        let t0 = Instant::now();
        let mut dirty = Dirty::default();
        dirty.add(
            Some(Side::Host),
            ch("a", false),
            t0 + Duration::from_millis(3),
        );
        dirty.add(
            Some(Side::Env),
            ch("b", false),
            t0 + Duration::from_millis(1),
        );
        assert_eq!(dirty.due_in(t0, d), Some(Duration::from_millis(8)));
        for i in 0..20 {
            dirty.add(
                Some(Side::Host),
                ch("c", false),
                t0 + Duration::from_millis(3 * i + 2),
            );
        }
        // Capped at 50 ms after the earliest event (t0 + 1 ms).
        assert_eq!(dirty.due_in(t0, d), Some(Duration::from_millis(51)));
    }

    #[test]
    fn deep_flag_is_sticky() {
        let mut dirty = Dirty::default();
        let now = Instant::now();
        dirty.add(Some(Side::Host), ch("a", true), now);
        dirty.add(Some(Side::Host), ch("a", false), now);
        let a = dirty.take().paths["a"];
        assert!(a.deep);
        assert_eq!(a.only_side(), Some(Side::Host));
        dirty.add(Some(Side::Host), ch("a", false), now);
        dirty.add(Some(Side::Env), ch("a", false), now);
        assert_eq!(dirty.take().paths["a"].only_side(), None);
    }
}
