//! A batch of dirty paths from the watchers: each path looked at on both sides (a big batch's
//! stats prefetched by one thread per side), echoes of the engine's own writes passed over,
//! changed folders rescanned, and `.gitignore` changes turned into new rules.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::full_scan::without_unknown;
use super::{idx, trace, PassResult, Worker};
use crate::sync::base::Side;
use crate::sync::status::SyncState;
use crate::sync::transport::{Transport, TransportError, WatchEvent};
use crate::sync::tree::{file_name, parent, Entry, EntryKind, Tree};
use crate::sync::watch::{Batch, DirtyPath};
use crate::sync::SyncError;

/// Batches of at least this many paths have both sides' entries looked up by two threads.
const PREFETCH_FROM: usize = 64;

/// Remembered writes for echo suppression before the memory is cleared.
const MAX_ECHOES: usize = 200_000;

impl Worker<'_> {
    /// Reconciles the paths a batch of events named. A path that could not be read on some
    /// side is left alone (its state is unknown, not deleted) and named in the result's
    /// `failure`; rules changed by a `.gitignore` queue a rescan.
    pub(super) fn apply_batch(
        &mut self,
        batch: Batch,
        stop: &AtomicBool,
    ) -> Result<PassResult, SyncError> {
        let t = Instant::now();
        let (n, rescan) = (batch.paths.len(), batch.rescan);
        let r = self.apply_batch_inner(batch, stop);
        trace(format_args!(
            "batch of {n} paths{} took {:?}",
            if rescan { " (rescan)" } else { "" },
            t.elapsed()
        ));
        r
    }

    fn apply_batch_inner(
        &mut self,
        batch: Batch,
        stop: &AtomicBool,
    ) -> Result<PassResult, SyncError> {
        if batch.rescan {
            self.update_status(false, |s| s.state = SyncState::Scanning);
            let r = self.full_pass(stop)?;
            self.update_status(true, |s| {
                s.state = SyncState::Watching;
                s.pending = 0;
            });
            return Ok(r);
        }
        let mut unknown = None;
        let mut trees = [Tree::new(), Tree::new()];
        let mut paths = BTreeSet::new();
        let mut scanned: HashSet<String> = HashSet::new();
        let mut gitignore_dirs = BTreeSet::new();
        let mut unreadable = Vec::new();
        let mut assumed = HashMap::new();
        // Deep paths first, shortest first, so their subtrees cover the rest.
        let mut order: Vec<(String, DirtyPath)> = batch.paths.into_iter().collect();
        order.sort_by_key(|(p, d)| (!d.deep, p.len()));
        let mut pre = self.prefetch_stats(&order);
        for (rel, dp) in order {
            if covered(&rel, &scanned) {
                continue;
            }
            if self.is_echo(&rel, dp, &pre) {
                continue;
            }
            let mut deep = dp.deep;
            if file_name(&rel) == ".gitignore" {
                gitignore_dirs.insert(parent(&rel).to_string());
            }
            let as_base = self.unreported_as_base(&rel, dp);
            let mut look = |w: &mut Self, side: Side| match &as_base {
                Some((s, b)) if *s == side => Some(Some(b.clone())),
                _ => w.look(side, &rel, &mut pre),
            };
            let (Some(h), Some(e)) = (look(self, Side::Host), look(self, Side::Env)) else {
                // Could not be read: unknown, not deleted; the error is in the status.
                unknown = Some(format!("{rel}: could not be read (see the last error)"));
                continue;
            };
            let is_dir = |x: &Option<Entry>| x.as_ref().map(|e| e.kind) == Some(EntryKind::Dir);
            let base_dir = self.base.get(&rel).map(|b| b.kind) == Some(EntryKind::Dir);
            // A folder that appeared, vanished or changed kind: its subtree changed too.
            if is_dir(&h) != base_dir || is_dir(&e) != base_dir {
                deep = true;
            }
            if self
                .rules
                .is_ignored(&rel, is_dir(&h) || is_dir(&e) || base_dir)
            {
                continue;
            }
            if deep && (is_dir(&h) || is_dir(&e) || base_dir) {
                let scans =
                    [Side::Host, Side::Env].map(|side| self.side(side).scan(&rel, &self.rules));
                let [Ok(hs), Ok(es)] = scans else {
                    let msg = scans
                        .into_iter()
                        .find_map(|r| r.err())
                        .map(|e| e.to_string());
                    unknown.clone_from(&msg);
                    self.update_status(true, |s| s.last_error = msg);
                    continue;
                };
                for (side, scan) in [(Side::Host, hs), (Side::Env, es)] {
                    unreadable.extend(scan.unreadable.iter().cloned());
                    for (dir, text) in scan.gitignores {
                        if self.gitignores[idx(side)].get(&dir) != Some(&text) {
                            gitignore_dirs.insert(dir);
                        }
                    }
                    paths.extend(scan.entries.keys().cloned());
                    trees[idx(side)].extend(scan.entries);
                }
                paths.extend(self.base.paths_under(&rel));
                paths.insert(rel.clone());
                scanned.insert(rel);
            } else {
                if let Some(h) = h {
                    trees[0].insert(rel.clone(), h);
                }
                if let Some(e) = e {
                    trees[1].insert(rel.clone(), e);
                }
                if let Some((side, _)) = as_base {
                    assumed.insert(rel.clone(), side);
                }
                paths.insert(rel);
            }
        }
        let paths = self.filter_ignored(paths, &trees);
        let paths = without_unknown(paths, &unreadable);
        let [mut host, mut env] = trees;
        let (mut result, retry) = self.apply(paths, &mut host, &mut env, &assumed, stop)?;
        if result.failure.is_none() {
            result.failure = unknown;
        }
        let now = Instant::now();
        for r in retry {
            self.dirty.retry(r, now);
        }
        if !gitignore_dirs.is_empty() && self.reload_gitignores(&gitignore_dirs) {
            // Rules changed: what they now include or exclude needs a complete look.
            self.dirty.add(None, WatchEvent::Rescan, now);
        }
        self.update_status(true, |s| {
            s.state = SyncState::Watching;
            s.pending = 0;
        });
        Ok(result)
    }

    /// The side that did not report `rel` and the entry it had in the base, when the engine
    /// takes that entry as its state instead of looking: one side alone reported a change of
    /// a file (not deep) that both sides agreed on. Whatever is done with it checks the entry
    /// first (a copy's commit and a removal look at the target before they act; see
    /// [`Worker::apply`] for the rest), so a change of that side whose event is still on its
    /// way makes the operation report `Changed` and the path is looked at again.
    fn unreported_as_base(&self, rel: &str, dp: DirtyPath) -> Option<(Side, Entry)> {
        let other = dp.only_side().filter(|_| !dp.deep)?.other();
        let b = self.base.get(rel).filter(|b| b.kind == EntryKind::File)?;
        Some((other, b.entry_of(other)))
    }

    /// `stat` of one side for reconciling: `Some(None)` when the path is not in the tree
    /// (missing, or behind a symlink). `None` (error recorded) when the side could not be
    /// read: the path's state is then unknown and must not be taken for a deletion.
    pub(super) fn look(
        &mut self,
        side: Side,
        rel: &str,
        pre: &mut Prefetched,
    ) -> Option<Option<Entry>> {
        let stat = match pre[idx(side)].remove(rel) {
            Some(r) => r,
            None => self.side(side).stat(rel),
        };
        match stat {
            Ok(e) => Some(e),
            Err(TransportError::Escapes { .. }) => Some(None),
            Err(e) => {
                let msg = e.to_string();
                self.update_status(true, |s| s.last_error = Some(msg));
                None
            }
        }
    }

    /// Whether the events for `rel` are only the echo of the engine's own write: reported by
    /// the side it wrote, which still holds exactly what was written. Folders are never
    /// treated as echoes (something may have been created inside before it was watched).
    fn is_echo(&mut self, rel: &str, dp: DirtyPath, pre: &Prefetched) -> bool {
        let Some((side, expected)) = self.echo.get(rel) else {
            return false;
        };
        let side = *side;
        let is_echo = dp.only_side() == Some(side)
            && expected.as_ref().map(|e| e.kind) != Some(EntryKind::Dir)
            && match pre[idx(side)].get(rel) {
                Some(Ok(now)) => same_or_both_missing(now.as_ref(), expected.as_ref()),
                Some(Err(_)) => false,
                None => match self.side(side).stat(rel) {
                    Ok(now) => same_or_both_missing(now.as_ref(), expected.as_ref()),
                    Err(_) => false,
                },
            };
        if !is_echo {
            self.echo.remove(rel);
        }
        is_echo
    }

    /// For a big batch, the `stat` of both sides of every path not below a deep path (those
    /// are usually covered by a scan of that folder; the deep path itself is looked at
    /// first), taken by one thread per side at once; for a likely echo of the engine's own
    /// write, only of the side it wrote. Small batches (a single save) are looked at path by
    /// path.
    fn prefetch_stats(&self, order: &[(String, DirtyPath)]) -> Prefetched {
        if order.len() < PREFETCH_FROM {
            return [HashMap::new(), HashMap::new()];
        }
        let deep: HashSet<String> = order
            .iter()
            .filter(|(_, d)| d.deep)
            .map(|(p, _)| p.clone())
            .collect();
        let mut todo: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
        for (p, d) in order {
            if !p.is_empty() && covered(parent(p), &deep) {
                continue;
            }
            let echo_side = self
                .echo
                .get(p)
                .map(|(side, _)| *side)
                .filter(|side| d.only_side() == Some(*side));
            let as_base = self.unreported_as_base(p, *d).map(|(side, _)| side);
            for side in [Side::Host, Side::Env] {
                if echo_side.is_none_or(|e| e == side) && as_base != Some(side) {
                    todo[idx(side)].push(p.as_str());
                }
            }
        }
        // In path order, so that the paths of one folder come one after another.
        todo[0].sort_unstable();
        todo[1].sort_unstable();
        let stat_all = |t: &Arc<dyn Transport>, paths: &[&str]| {
            paths
                .iter()
                .map(|p| p.to_string())
                .zip(t.stat_many(paths))
                .collect::<HashMap<_, _>>()
        };
        let (host, env) = (&self.engine.host, &self.engine.env);
        if todo[0].is_empty() || todo[1].is_empty() {
            return [stat_all(host, &todo[0]), stat_all(env, &todo[1])];
        }
        std::thread::scope(|s| {
            let h = s.spawn(|| stat_all(host, &todo[0]));
            let e = stat_all(env, &todo[1]);
            [h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), e]
        })
    }

    pub(super) fn expect_echo(&mut self, side: Side, rel: &str, entry: Option<Entry>) {
        if self.echo.len() >= MAX_ECHOES {
            self.echo.clear();
        }
        self.echo.insert(rel.to_string(), (side, entry));
    }

    /// Rereads the `.gitignore` of these folders on both sides; whether the rules changed.
    fn reload_gitignores(&mut self, dirs: &BTreeSet<String>) -> bool {
        for side in [Side::Host, Side::Env] {
            for dir in dirs {
                let rel = if dir.is_empty() {
                    ".gitignore".to_string()
                } else {
                    format!("{dir}/.gitignore")
                };
                let text = self.side(side).read_file(&rel).ok().and_then(|(_, mut r)| {
                    let mut s = String::new();
                    r.read_to_string(&mut s).ok().map(|_| s)
                });
                match text {
                    Some(t) => self.gitignores[idx(side)].insert(dir.clone(), t),
                    None => self.gitignores[idx(side)].remove(dir),
                };
            }
        }
        self.rebuild_rules()
    }
}

/// Entries of a batch's paths looked up ahead, per side ([`Worker::prefetch_stats`]).
type Prefetched = [HashMap<String, Result<Option<Entry>, TransportError>>; 2];

/// Whether a path's entry now is the one expected (`None`: missing).
fn same_or_both_missing(now: Option<&Entry>, expected: Option<&Entry>) -> bool {
    match (now, expected) {
        (None, None) => true,
        (Some(n), Some(e)) => n.same_state(e),
        _ => false,
    }
}

fn covered(rel: &str, scanned: &HashSet<String>) -> bool {
    let mut p = rel;
    loop {
        if scanned.contains(p) {
            return true;
        }
        if p.is_empty() {
            return false;
        }
        p = parent(p);
        if p.is_empty() {
            return scanned.contains("");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_by_a_scanned_ancestor() {
        let scanned: HashSet<String> = ["a/b".to_string()].into();
        assert!(covered("a/b", &scanned));
        assert!(covered("a/b/c/d", &scanned));
        assert!(!covered("a/bc", &scanned));
        assert!(!covered("a", &scanned));
        let all: HashSet<String> = ["".to_string()].into();
        assert!(covered("x/y", &all));
    }
}
