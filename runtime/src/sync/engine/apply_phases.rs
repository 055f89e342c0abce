//! Deciding and applying: every path decided ([`decide`]), then applied in three phases:
//! removals (deepest first) and conflict losers moved aside; folders, symlinks, modes and base
//! records (parents first); then the file copies. Every change is recorded in the base and the
//! round's journal lines are written when it ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::file_copy::{copy_file, CopyJob};
use super::{Outcome, PassResult, Worker};
use crate::host::clock::now_secs;
use crate::sync::base::{BaseEntry, Side};
use crate::sync::reconcile::{conflict_name, decide, Decision};
use crate::sync::status::SyncState;
use crate::sync::transport::TransportError;
use crate::sync::tree::{Entry, EntryKind, Tree};
use crate::sync::SyncError;

/// Runs of at least this many file copies are copied by several threads.
const PARALLEL_COPIES_FROM: usize = 8;

/// How long after a failed path everything is looked at again.
pub(super) const FAILURE_RETRY: Duration = Duration::from_secs(5);

impl Worker<'_> {
    /// Decides and applies every path. Returns what was done and the paths to retry.
    /// `assumed`: paths whose entry on that side is taken from the base, not looked up
    /// ([`Worker::unreported_as_base`]); where the decision would act on it unchecked, the
    /// side is looked at first.
    pub(super) fn apply(
        &mut self,
        paths: Vec<String>,
        host: &mut Tree,
        env: &mut Tree,
        assumed: &HashMap<String, Side>,
        stop: &AtomicBool,
    ) -> Result<(PassResult, Vec<String>), SyncError> {
        let mut decisions = Vec::new();
        let mut unknown = None;
        for p in paths {
            let Some(mut d) = self.decide_path(&p, host, env) else {
                continue;
            };
            if let Some(&side) = assumed.get(&p) {
                if !self.checked_when_applied(&p, d, host, env) {
                    let tree = tree_mut(side, host, env);
                    match self.side(side).stat(&p) {
                        Ok(Some(e)) => {
                            tree.insert(p.clone(), e);
                        }
                        Ok(None) | Err(TransportError::Escapes { .. }) => {
                            tree.remove(&p);
                        }
                        Err(e) => {
                            // Unknown, not deleted: left for the next look.
                            unknown = Some(e.to_string());
                            continue;
                        }
                    }
                    match self.decide_path(&p, host, env) {
                        Some(now) => d = now,
                        None => continue,
                    }
                }
            }
            if d != Decision::Nothing {
                decisions.push((p, d));
            }
        }
        let work = decisions
            .iter()
            .filter(|(_, d)| *d != Decision::Record)
            .count();
        if work > 0 {
            self.update_status(false, |s| {
                s.state = SyncState::Syncing;
                s.pending = work as u64;
            });
        }
        let mut retry = Vec::new();
        let mut failed: Option<String> = None;
        let mut applied = 0u64;
        let mut conflicts = 0u64;
        let mut blocked: HashSet<String> = HashSet::new();
        // Phase 1: removals (deepest first) and moving conflict losers aside.
        for (p, d) in decisions.iter().rev() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let outcome = match *d {
                Decision::Propagate { from } => {
                    let (src, dst) = pick(from, host, env, p);
                    match dst {
                        Some(dst) if needs_removal(src, dst) => {
                            match self.side(from.other()).remove(p, dst) {
                                Ok(()) => {
                                    applied += 1;
                                    if src.is_none() {
                                        let _ = self.base.set(p, None);
                                        self.expect_echo(from.other(), p, None);
                                    }
                                    tree_mut(from.other(), host, env).remove(p);
                                    Outcome::Done
                                }
                                Err(TransportError::NotEmpty { .. }) => {
                                    // Holds ignored or new entries: kept, looked at again.
                                    blocked.insert(p.clone());
                                    Outcome::Done
                                }
                                Err(e) => self.transport_failure(e),
                            }
                        }
                        _ => Outcome::Done,
                    }
                }
                Decision::Conflict { winner } => {
                    let loser = winner.other();
                    match self.keep_loser(loser, p, host, env) {
                        Ok(()) => {
                            conflicts += 1;
                            Outcome::Done
                        }
                        Err(e) => self.transport_failure(e),
                    }
                }
                _ => Outcome::Done,
            };
            match outcome {
                Outcome::Done => {}
                Outcome::Retry => {
                    blocked.insert(p.clone());
                    retry.push(p.clone());
                }
                Outcome::Failed(m) => {
                    blocked.insert(p.clone());
                    failed = Some(m);
                }
            }
        }
        // Phase 2: creations and updates (parents first) and base records. Plain file copies
        // are collected and made afterwards, so that many of them run in parallel: their
        // folders exist by then (created in this loop, in path order, with their modes).
        let mut jobs = Vec::new();
        for (p, d) in decisions.iter().filter(|(p, _)| !blocked.contains(p)) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(job) = self.copy_job(p, *d, host, env) {
                jobs.push(job);
                continue;
            }
            let outcome = match *d {
                Decision::Record => {
                    let r = match (host.get(p), env.get(p)) {
                        (Some(h), Some(e)) => {
                            let hash = h.hash.clone().or_else(|| e.hash.clone());
                            Some(BaseEntry::agreed(h, e, hash))
                        }
                        _ => None,
                    };
                    let _ = self.base.set(p, r);
                    Outcome::Done
                }
                Decision::Propagate { from } | Decision::Conflict { winner: from } => {
                    match pick(from, host, env, p).0.cloned() {
                        None => Outcome::Done, // removal done in phase 1
                        Some(src) => match self.put(from, p, &src, host, env) {
                            Ok(()) => {
                                applied += 1;
                                Outcome::Done
                            }
                            Err(e) => self.transport_failure(e),
                        },
                    }
                }
                _ => Outcome::Done,
            };
            match outcome {
                Outcome::Done => {}
                Outcome::Retry => retry.push(p.clone()),
                Outcome::Failed(m) => failed = Some(m),
            }
        }
        // Phase 3: the file copies.
        let results = if jobs.len() >= PARALLEL_COPIES_FROM {
            self.copy_files(&jobs, stop)
        } else {
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (src, dst) = match job.from {
                    Side::Host => (&self.engine.host, &self.engine.env),
                    Side::Env => (&self.engine.env, &self.engine.host),
                };
                results.push(copy_file(
                    &**src,
                    &**dst,
                    &job.rel,
                    Some(&job.src_seen),
                    job.dst_expect.as_ref(),
                ));
            }
            results
        };
        for (job, r) in jobs.into_iter().zip(results) {
            match r {
                Ok((s, d)) => {
                    applied += 1;
                    self.record_put(job.from, &job.rel, s, d, host, env);
                }
                Err(e) => match self.transport_failure(e) {
                    Outcome::Done => {}
                    Outcome::Retry => retry.push(job.rel),
                    Outcome::Failed(m) => failed = Some(m),
                },
            }
        }
        // Journal lines of this round reach the file before anything else is looked at.
        if let Err(e) = self.base.write_journal() {
            failed = Some(e.to_string());
        }
        if failed.is_none() {
            failed = unknown;
        }
        if failed.is_some() && self.rescan_at.is_none() {
            self.rescan_at = Some(Instant::now() + FAILURE_RETRY);
        }
        let result = PassResult {
            applied: applied + conflicts,
            retries: retry.len() as u64,
            failure: failed.clone(),
            needs_full_pass: conflicts > 0,
        };
        self.update_status(false, |s| {
            s.applied += applied;
            s.conflicts += conflicts;
            if let Some(m) = failed {
                s.last_error = Some(m);
            }
        });
        Ok((result, retry))
    }

    /// Whether applying decision `d` for `rel` checks the target's entry before it acts, so
    /// that an entry taken from the base instead of looked up ([`Worker::unreported_as_base`])
    /// cannot be acted on when it is out of date: nothing to do, a removal (it compares the
    /// entry first), a file copy or symlink (committed only over the expected entry), a folder
    /// replacing a non-folder (removed first). A change of permission bits alone is not
    /// checked (nor is a conflict, which cannot arise from an entry equal to the base).
    fn checked_when_applied(&self, rel: &str, d: Decision, host: &Tree, env: &Tree) -> bool {
        match d {
            Decision::Nothing => true,
            Decision::Propagate { from } => {
                let (src, dst) = pick(from, host, env, rel);
                match (src, dst) {
                    (None, _) => true,
                    (Some(s), dst) => match s.kind {
                        EntryKind::File => !self.mode_only_applies(from, rel, s, dst),
                        EntryKind::Symlink => true,
                        EntryKind::Dir => dst.is_some_and(|d| d.kind != EntryKind::Dir),
                    },
                }
            }
            Decision::Record | Decision::Conflict { .. } | Decision::NeedHash { .. } => false,
        }
    }

    /// The decision for `rel` (hashing what it needs); `None` when a file vanished while it
    /// was hashed (its event brings it back).
    fn decide_path(&self, rel: &str, host: &mut Tree, env: &mut Tree) -> Option<Decision> {
        let mut d = decide(host.get(rel), env.get(rel), self.base.get(rel));
        if let Decision::NeedHash { host: hh, env: he } = d {
            if hh {
                self.fill_hash(Side::Host, rel, host);
            }
            if he {
                self.fill_hash(Side::Env, rel, env);
            }
            d = decide(host.get(rel), env.get(rel), self.base.get(rel));
            if let Decision::NeedHash { .. } = d {
                return None;
            }
        }
        if self.cfg().host_to_env_only {
            d = host_wins(d);
        }
        Some(d)
    }

    fn transport_failure(&self, e: TransportError) -> Outcome {
        if e.is_transient() {
            Outcome::Retry
        } else {
            Outcome::Failed(e.to_string())
        }
    }

    fn fill_hash(&self, side: Side, rel: &str, tree: &mut Tree) {
        if let Some(e) = tree.get_mut(rel) {
            if e.kind == EntryKind::File && e.hash.is_none() {
                match self.side(side).hash(rel) {
                    Ok(Some(h)) => e.hash = Some(h),
                    _ => {
                        tree.remove(rel);
                    }
                }
            }
        }
    }

    /// Renames the losing side's version to `NAME.berth-conflict-<time>`.
    fn keep_loser(
        &mut self,
        loser: Side,
        rel: &str,
        host: &mut Tree,
        env: &mut Tree,
    ) -> Result<(), TransportError> {
        let secs = now_secs();
        let t = self.side(loser).clone();
        let tree = tree_mut(loser, host, env);
        let name = conflict_name(rel, secs, |c| {
            tree.contains_key(c) || matches!(t.stat(c), Ok(Some(_)))
        });
        t.rename(rel, &name)?;
        tree.remove(rel);
        Ok(())
    }

    /// Makes `to`'s side of `rel` equal to `src` (from side `from`) and records the base.
    fn put(
        &mut self,
        from: Side,
        rel: &str,
        src: &Entry,
        host: &mut Tree,
        env: &mut Tree,
    ) -> Result<(), TransportError> {
        let to = from.other();
        let dst_now = tree_mut(to, host, env).get(rel).cloned();
        let dst = self.side(to).clone();
        let (src_final, dst_final) = match src.kind {
            EntryKind::Dir => (src.clone(), dst.mkdir(rel, src.mode)?),
            EntryKind::Symlink => {
                let target = src.target.clone().unwrap_or_default();
                let staged = dst.stage_symlink(rel, &target)?;
                (src.clone(), dst.commit(staged, dst_now.as_ref())?)
            }
            EntryKind::File => {
                if self.mode_only_applies(from, rel, src, dst_now.as_ref()) {
                    let new = dst.set_mode(rel, src.mode)?;
                    let mut src = src.clone();
                    src.hash = self.base.get(rel).and_then(|b| b.hash.clone());
                    (src, new)
                } else {
                    let src_t = self.side(from).clone();
                    copy_file(&*src_t, &*dst, rel, Some(src), dst_now.as_ref())?
                }
            }
        };
        self.record_put(from, rel, src_final, dst_final, host, env);
        Ok(())
    }

    /// Whether only the permission bits of an otherwise unchanged file differ (chmod, no copy).
    fn mode_only_applies(&self, from: Side, rel: &str, src: &Entry, dst: Option<&Entry>) -> bool {
        let (Some(b), Some(dst)) = (self.base.get(rel), dst) else {
            return false;
        };
        let to = from.other();
        b.kind == EntryKind::File
            && dst.kind == EntryKind::File
            && src.size == b.size
            && dst.size == b.size
            && src.mtime_ns == b.mtime(from)
            && dst.mtime_ns == b.mtime(to)
            && src.mode != dst.mode
    }

    /// The copy job for a decision, when it is a plain file copy.
    fn copy_job(&self, rel: &str, d: Decision, host: &Tree, env: &Tree) -> Option<CopyJob> {
        let (Decision::Propagate { from } | Decision::Conflict { winner: from }) = d else {
            return None;
        };
        let (src, dst) = pick(from, host, env, rel);
        let src = src?;
        if src.kind != EntryKind::File || self.mode_only_applies(from, rel, src, dst) {
            return None;
        }
        Some(CopyJob {
            from,
            rel: rel.to_string(),
            src_seen: src.clone(),
            dst_expect: dst.cloned(),
        })
    }

    /// Records a finished put: base, expected echo, and the destination tree.
    /// When the side written refused only setuid/setgid bits of a file (a host folder of
    /// root's drops them: `LocalTransport::without_root_setid`), the source side drops them
    /// too, so both sides agree instead of the bits being copied again on every pass. The
    /// source entry as it is now (unchanged if that chmod fails: the next pass retries).
    fn settle_setid(&self, from: Side, rel: &str, src: Entry, dst: &Entry) -> Entry {
        let setid = libc::S_ISUID | libc::S_ISGID;
        if src.kind != EntryKind::File
            || dst.kind != EntryKind::File
            || src.mode == dst.mode
            || (src.mode ^ dst.mode) & !setid != 0
            || dst.mode & setid & !src.mode != 0
        {
            return src;
        }
        match self.side(from).set_mode(rel, dst.mode) {
            Ok(mut now) if now.mode == dst.mode => {
                now.hash = src.hash;
                now
            }
            _ => src,
        }
    }

    fn record_put(
        &mut self,
        from: Side,
        rel: &str,
        src_final: Entry,
        dst_final: Entry,
        host: &mut Tree,
        env: &mut Tree,
    ) {
        let to = from.other();
        let src_final = self.settle_setid(from, rel, src_final, &dst_final);
        let (h, e) = match from {
            Side::Host => (&src_final, &dst_final),
            Side::Env => (&dst_final, &src_final),
        };
        let hash = src_final.hash.clone();
        let _ = self.base.set(rel, Some(BaseEntry::agreed(h, e, hash)));
        self.expect_echo(to, rel, Some(dst_final.clone()));
        tree_mut(to, host, env).insert(rel.to_string(), dst_final);
    }
}

/// A one-way (host → environment) sync's decision: whatever differs, the host's state is
/// applied to the environment, and nothing is ever kept as a conflict copy.
fn host_wins(d: Decision) -> Decision {
    match d {
        Decision::Propagate { .. } | Decision::Conflict { .. } => {
            Decision::Propagate { from: Side::Host }
        }
        other => other,
    }
}

fn pick<'t>(
    from: Side,
    host: &'t Tree,
    env: &'t Tree,
    rel: &str,
) -> (Option<&'t Entry>, Option<&'t Entry>) {
    match from {
        Side::Host => (host.get(rel), env.get(rel)),
        Side::Env => (env.get(rel), host.get(rel)),
    }
}

fn tree_mut<'t>(side: Side, host: &'t mut Tree, env: &'t mut Tree) -> &'t mut Tree {
    match side {
        Side::Host => host,
        Side::Env => env,
    }
}

/// Whether the destination entry must be removed before the source's state can be written:
/// the source is gone, or one of them is a folder and the other is not (a file or symlink can
/// be renamed over a file or symlink, not over a folder).
fn needs_removal(src: Option<&Entry>, dst: &Entry) -> bool {
    match src {
        None => true,
        Some(s) => (s.kind == EntryKind::Dir) != (dst.kind == EntryKind::Dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_needed_only_across_folder_and_non_folder() {
        let f = Entry {
            kind: EntryKind::File,
            mode: 0o644,
            size: 1,
            mtime_ns: 1,
            target: None,
            hash: None,
        };
        let mut l = f.clone();
        l.kind = EntryKind::Symlink;
        let mut d = f.clone();
        d.kind = EntryKind::Dir;
        assert!(needs_removal(None, &f));
        assert!(
            !needs_removal(Some(&l), &f),
            "rename replaces a file by a link"
        );
        assert!(needs_removal(Some(&d), &f));
        assert!(needs_removal(Some(&f), &d));
        assert!(!needs_removal(Some(&d), &d));
    }
}
