//! The renames a [`crate::LocalTransport`] makes to put its staged files in place, told to the
//! inotify watcher of the same tree ([`crate::inotify`]), which drops their events where it
//! reads them: the engine's own writes do not come back to it as changes to look at (one
//! event, one message, one `stat` per copied file before).
//!
//! Only an exact rename is dropped: the temporary name this transport staged (unique: pid and
//! counter) moved to the one name it was staged for, in the same folder, seen as the kernel's
//! `IN_MOVED_FROM`/`IN_MOVED_TO` pair (same cookie). Anything else on that path (a write, a
//! chmod, another rename over it, the temporary file moved anywhere else by someone else) is
//! reported as always. Renames are recorded only while an inotify watcher of the tree runs;
//! what a watcher never sees (a failed rename, a queue overflow) is forgotten, so the record
//! stays bounded.
//!
//! A replacement made by exchanging the two names (`RENAME_EXCHANGE` of the target with the
//! temporary name, which leaves the old inode at the temporary name for the next file:
//! [`crate::local`]'s spare inode) is seen as the old file leaving the target's name for the
//! temporary one, then that pair. The watcher drops the first move too: each recorded
//! exchange into a path lets it drop one leaving of that path
//! ([`OwnRenames::take_exchange_out`]; the moves' two events need not be consecutive, so the
//! record is by path, not by the next event). The same temporary name can be staged again
//! before the watcher read the first exchange's events: the renames of one name are kept in
//! order.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// At most this many renames waiting for their event; more means events are not being read
/// (the watcher stalls): forget them (their events are then reported, as without this).
const MAX_PENDING: usize = 65_536;

/// See the module documentation.
#[derive(Default)]
pub struct OwnRenames {
    /// inotify watchers of the tree running now.
    watchers: AtomicUsize,
    /// Temporary name → the relative paths it is renamed to, in order (whether by exchange).
    pending: Mutex<HashMap<String, VecDeque<(String, bool)>>>,
    /// Renames recorded in `pending`.
    count: AtomicUsize,
    /// Path → exchanges recorded into it whose old file's leaving the watcher has not seen.
    outs: Mutex<HashMap<String, usize>>,
}

impl OwnRenames {
    /// Before renaming the temporary file `temp` (in the folder of `rel`) to `rel`: records it
    /// when a watcher will see it. Returns whether it was recorded (then [`Self::cancel`] it if
    /// the rename fails).
    pub fn expect(&self, temp: &str, rel: &str) -> bool {
        self.expect_move(temp, rel, false)
    }

    /// [`Self::expect`] for an exchange of `temp` and `rel` (`RENAME_EXCHANGE`).
    pub fn expect_exchange(&self, temp: &str, rel: &str) -> bool {
        self.expect_move(temp, rel, true)
    }

    fn expect_move(&self, temp: &str, rel: &str, exchange: bool) -> bool {
        if self.watchers.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut outs = self.outs.lock().unwrap_or_else(|e| e.into_inner());
        if self.count.load(Ordering::Relaxed) >= MAX_PENDING {
            p.clear();
            outs.clear();
            self.count.store(0, Ordering::Relaxed);
        }
        p.entry(temp.to_string())
            .or_default()
            .push_back((rel.to_string(), exchange));
        if exchange {
            *outs.entry(rel.to_string()).or_default() += 1;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The rename recorded last for `temp` did not happen.
    pub fn cancel(&self, temp: &str) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = p.get_mut(temp) {
            if let Some((rel, exchange)) = q.pop_back() {
                self.count.fetch_sub(1, Ordering::Relaxed);
                if exchange {
                    let mut outs = self.outs.lock().unwrap_or_else(|e| e.into_inner());
                    take_one(&mut outs, &rel);
                }
            }
            if q.is_empty() {
                p.remove(temp);
            }
        }
    }

    /// For the watcher: the temporary file `temp` was moved away; the path it was to be renamed
    /// to when the rename was this transport's (the first recorded for that name), and whether
    /// it was an exchange.
    pub fn take(&self, temp: &str) -> Option<(String, bool)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let q = p.get_mut(temp)?;
        let first = q.pop_front();
        if q.is_empty() {
            p.remove(temp);
        }
        if first.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        first
    }

    /// For the watcher: the file `rel` left its name. Whether that was the old file of an
    /// exchange into `rel` recorded by [`Self::expect_exchange`] (each counts once).
    pub fn take_exchange_out(&self, rel: &str) -> bool {
        let mut outs = self.outs.lock().unwrap_or_else(|e| e.into_inner());
        !outs.is_empty() && take_one(&mut outs, rel)
    }

    /// For the watcher: its events were lost (queue overflow); the renames waiting for them are
    /// forgotten.
    pub fn forget_all(&self) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.clear();
        self.outs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.count.store(0, Ordering::Relaxed);
    }

    /// A watcher of the tree starts; the returned guard says when it stops.
    pub fn watcher_started(self: &std::sync::Arc<Self>) -> WatcherRunning {
        self.watchers.fetch_add(1, Ordering::AcqRel);
        WatcherRunning(self.clone())
    }
}

/// Held by a running watcher ([`OwnRenames::watcher_started`]).
pub struct WatcherRunning(std::sync::Arc<OwnRenames>);

impl WatcherRunning {
    pub fn renames(&self) -> &OwnRenames {
        &self.0
    }
}

impl Drop for WatcherRunning {
    fn drop(&mut self) {
        if self.0.watchers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.forget_all();
        }
    }
}

/// Counts one of `rel` off `outs`; whether there was one.
fn take_one(outs: &mut HashMap<String, usize>, rel: &str) -> bool {
    match outs.get_mut(rel) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            outs.remove(rel);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renames_are_recorded_only_while_a_watcher_runs() {
        let r = Arc::new(OwnRenames::default());
        assert!(!r.expect(".a.tmp", "a"), "nobody would see it");
        assert_eq!(r.take(".a.tmp"), None);
        let w = r.watcher_started();
        assert!(r.expect(".a.tmp", "d/a"));
        assert!(r.expect(".b.tmp", "d/b"));
        r.cancel(".b.tmp");
        assert_eq!(w.renames().take(".a.tmp"), Some(("d/a".to_string(), false)));
        assert_eq!(w.renames().take(".a.tmp"), None, "taken once");
        assert_eq!(w.renames().take(".b.tmp"), None, "cancelled");
        // One temporary name staged again (a spare inode) before its first rename was seen:
        // both renames are kept, in order.
        assert!(r.expect_exchange(".s.tmp", "d/1"));
        assert!(r.expect_exchange(".s.tmp", "d/2"));
        // Each exchange lets one leaving of its path be dropped; a cancelled one none.
        assert!(r.expect_exchange(".t.tmp", "d/1"));
        r.cancel(".t.tmp");
        assert!(w.renames().take_exchange_out("d/1"));
        assert!(w.renames().take_exchange_out("d/2"));
        assert!(!w.renames().take_exchange_out("d/1"), "counted once");
        assert_eq!(w.renames().take(".s.tmp"), Some(("d/1".to_string(), true)));
        assert_eq!(w.renames().take(".s.tmp"), Some(("d/2".to_string(), true)));
        assert_eq!(w.renames().take(".s.tmp"), None);
        assert!(r.expect(".c.tmp", "c"));
        drop(w);
        assert_eq!(r.take(".c.tmp"), None, "forgotten with the last watcher");
    }
}
