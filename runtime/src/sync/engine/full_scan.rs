//! A full pass: both sides scanned completely (at once), ignored paths dropped, every path
//! of either side or the base reconciled. The initial sync, rescans and flushes are full passes.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::{idx, trace, PassResult, Worker};
use crate::sync::base::Side;
use crate::sync::tree::{is_within, EntryKind, Tree};
use crate::sync::SyncError;

impl Worker<'_> {
    pub(super) fn rebuild_rules(&mut self) -> bool {
        let new = self
            .mount_rules
            .with_gitignores(&[&self.gitignores[0], &self.gitignores[1]]);
        let changed = new.gitignore_texts() != self.rules.gitignore_texts();
        self.rules = new;
        changed
    }

    /// Scans both sides completely and reconciles every path.
    pub(super) fn full_pass(&mut self, stop: &AtomicBool) -> Result<PassResult, SyncError> {
        let t = Instant::now();
        let r = self.full_pass_inner(stop);
        if let Ok(p) = &r {
            trace(format_args!(
                "full pass: {} applied, {} retries in {:?}",
                p.applied,
                p.retries,
                t.elapsed()
            ));
        }
        r
    }

    fn full_pass_inner(&mut self, stop: &AtomicBool) -> Result<PassResult, SyncError> {
        let t = Instant::now();
        let mut trees = [Tree::new(), Tree::new()];
        let mut skipped = Vec::new();
        let mut unreadable = Vec::new();
        // One scan per side: each scanner applies its own side's .gitignore files as it
        // descends; what only the other side's rules ignore is filtered out below. Both run
        // at once (each mostly waits for its own side's filesystem or channel).
        let scans = {
            let (host, env, rules) = (&self.engine.host, &self.engine.env, &self.rules);
            std::thread::scope(|s| {
                let h = s.spawn(|| host.scan("", rules));
                let e = env.scan("", rules);
                let h = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                [h, e]
            })
        };
        for (side, scan) in [Side::Host, Side::Env].into_iter().zip(scans) {
            let scan = scan?;
            if self.first_pass {
                for rel in &scan.leftovers {
                    // We hold the engine lock: temp files are from a killed engine.
                    if let Ok(Some(e)) = self.side(side).stat(rel) {
                        let _ = self.side(side).remove(rel, &e);
                    }
                }
            }
            skipped.extend(
                scan.skipped
                    .iter()
                    .map(|(p, why)| format!("{}: {p} ({why})", side.name())),
            );
            skipped.extend(scan.unreadable.iter().map(|p| {
                format!(
                    "{}: {p}/ (cannot be listed: permission denied)",
                    side.name()
                )
            }));
            unreadable.extend(scan.unreadable);
            self.gitignores[idx(side)] = scan.gitignores;
            trees[idx(side)] = scan.entries;
        }
        // Each side was scanned with the rules of the previous pass: when a `.gitignore`
        // changed since, a path the old rules hid may be missing from these trees.
        let rules_changed = self.rebuild_rules();
        trace(format_args!(
            "full pass: both sides scanned in {:?}",
            t.elapsed()
        ));
        skipped.truncate(100);
        self.update_status(false, |s| s.skipped = skipped);
        let mut paths: BTreeSet<String> = trees[0].keys().cloned().collect();
        paths.extend(trees[1].keys().cloned());
        paths.extend(self.base.entries().keys().cloned());
        let paths = self.filter_ignored(paths, &trees);
        let paths = without_unknown(paths, &unreadable);
        trace(format_args!(
            "full pass: {} paths to decide after {:?}",
            paths.len(),
            t.elapsed()
        ));
        let [mut host, mut env] = trees;
        let (mut result, retry) =
            self.apply(paths, &mut host, &mut env, &Default::default(), stop)?;
        result.needs_full_pass |= rules_changed;
        let now = Instant::now();
        for r in retry {
            self.dirty.retry(r, now);
        }
        Ok(result)
    }

    /// Drops ignored paths; their base entries are forgotten (they are no longer synced).
    pub(super) fn filter_ignored(
        &mut self,
        paths: BTreeSet<String>,
        trees: &[Tree; 2],
    ) -> Vec<String> {
        let mut keep = Vec::with_capacity(paths.len());
        for p in paths {
            let is_dir = trees[0].get(&p).or(trees[1].get(&p)).map(|e| e.kind)
                == Some(EntryKind::Dir)
                || self.base.get(&p).map(|b| b.kind) == Some(EntryKind::Dir);
            if self.rules.is_ignored(&p, is_dir) {
                if self.base.get(&p).is_some() {
                    let _ = self.base.set(&p, None);
                }
            } else {
                keep.push(p);
            }
        }
        keep
    }
}

/// Drops paths below folders whose content could not be read on some side.
pub(super) fn without_unknown(paths: Vec<String>, unreadable: &[String]) -> Vec<String> {
    if unreadable.is_empty() {
        return paths;
    }
    paths
        .into_iter()
        .filter(|p| !unreadable.iter().any(|u| p != u && is_within(p, u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_unreadable_folders_are_left_out() {
        let paths = ["a", "a/x", "a/y/z", "ab", "b/c"]
            .map(String::from)
            .to_vec();
        let kept = without_unknown(paths, &["a".to_string()]);
        assert_eq!(kept, vec!["a", "ab", "b/c"]);
    }
}
