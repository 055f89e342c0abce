//! The three-way decision for one path: what the host has, what the environment has, and what
//! both had when they last agreed (the base, [`super::base`]).
//!
//! Rules:
//! - A side *changed* a path when its entry differs from the base in kind, permission bits,
//!   symlink target, or (files) size or mtime. When only the mtime differs and the other side
//!   changed too, the content hash is compared with the base's first, so a `touch` does not
//!   turn into a conflict; a touch on one side alone is just copied.
//! - Only one side changed: its state is propagated (create, update, chmod, delete).
//! - Both changed to the same state: nothing to copy; the base is updated.
//! - Both changed differently — a **conflict**: a folder beats a non-folder; otherwise the
//!   newer mtime wins (the host on a tie). The losing version is never dropped: it is renamed
//!   to `NAME.berth-conflict-<unix-time>` on its side, and then synchronized like any new file.
//! - One side deleted, the other modified: the modification wins (the file comes back), so no
//!   edit is lost to a concurrent deletion.

use super::base::{BaseEntry, Side};
use super::tree::{Entry, EntryKind};

/// What to do with one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Both sides are as in the base.
    Nothing,
    /// Both sides agree (or both are gone) but the base is out of date: record them.
    Record,
    /// Apply `from`'s state to the other side.
    Propagate { from: Side },
    /// Both changed differently: keep the loser as a conflict copy, then propagate `winner`.
    Conflict { winner: Side },
    /// The content hashes of these sides are needed to decide.
    NeedHash { host: bool, env: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Unchanged,
    Changed,
    NeedHash,
}

fn side_change(side: Side, e: Option<&Entry>, b: Option<&BaseEntry>) -> Change {
    let (e, b) = match (e, b) {
        (None, None) => return Change::Unchanged,
        (Some(e), Some(b)) => (e, b),
        _ => return Change::Changed,
    };
    if e.kind != b.kind {
        return Change::Changed;
    }
    match e.kind {
        EntryKind::Dir => {
            if e.mode == b.mode {
                Change::Unchanged
            } else {
                Change::Changed
            }
        }
        EntryKind::Symlink => {
            if e.target == b.target {
                Change::Unchanged
            } else {
                Change::Changed
            }
        }
        EntryKind::File => {
            if e.mode != b.mode || e.size != b.size {
                Change::Changed
            } else if e.mtime_ns == b.mtime(side) {
                Change::Unchanged
            } else {
                match (&e.hash, &b.hash) {
                    (Some(h), Some(bh)) if h == bh => Change::Unchanged,
                    (Some(_), Some(_)) => Change::Changed,
                    (None, Some(_)) => Change::NeedHash,
                    (_, None) => Change::Changed,
                }
            }
        }
    }
}

/// Whether the two sides hold the same thing. `None` when file hashes are needed to tell.
fn same_state(h: &Entry, e: &Entry) -> Option<bool> {
    if h.kind != e.kind {
        return Some(false);
    }
    match h.kind {
        EntryKind::Dir => Some(h.mode == e.mode),
        EntryKind::Symlink => Some(h.target == e.target),
        EntryKind::File => {
            if h.mode != e.mode || h.size != e.size {
                Some(false)
            } else {
                match (&h.hash, &e.hash) {
                    (Some(a), Some(b)) => Some(a == b),
                    _ => None,
                }
            }
        }
    }
}

/// Whether the base's recorded mtimes are stale for unchanged entries (content verified equal).
fn base_stale(host: Option<&Entry>, env: Option<&Entry>, b: Option<&BaseEntry>) -> bool {
    match (host, env, b) {
        (Some(h), Some(e), Some(b)) if h.kind == EntryKind::File => {
            h.mtime_ns != b.host_mtime_ns || e.mtime_ns != b.env_mtime_ns
        }
        _ => false,
    }
}

/// Decides what to do with one path. Entries' `hash` fields are used when filled in; when a
/// decision needs a hash that is missing, [`Decision::NeedHash`] says which.
pub fn decide(host: Option<&Entry>, env: Option<&Entry>, base: Option<&BaseEntry>) -> Decision {
    let mut hc = side_change(Side::Host, host, base);
    let mut ec = side_change(Side::Env, env, base);
    // A touched file on one side only is simply copied (with its mtime): hashing first would
    // read it twice. The hash matters only to keep a touch from turning into a conflict.
    if hc == Change::NeedHash && ec == Change::Unchanged {
        hc = Change::Changed;
    }
    if ec == Change::NeedHash && hc == Change::Unchanged {
        ec = Change::Changed;
    }
    if hc == Change::NeedHash || ec == Change::NeedHash {
        return Decision::NeedHash {
            host: hc == Change::NeedHash,
            env: ec == Change::NeedHash,
        };
    }
    match (hc, ec) {
        (Change::Unchanged, Change::Unchanged) => {
            if base_stale(host, env, base) {
                Decision::Record
            } else {
                Decision::Nothing
            }
        }
        (Change::Changed, Change::Unchanged) => Decision::Propagate { from: Side::Host },
        (Change::Unchanged, Change::Changed) => Decision::Propagate { from: Side::Env },
        _ => match (host, env) {
            (None, None) => Decision::Record,
            // An edit beats a concurrent deletion.
            (None, Some(_)) => Decision::Propagate { from: Side::Env },
            (Some(_), None) => Decision::Propagate { from: Side::Host },
            (Some(h), Some(e)) => match same_state(h, e) {
                None => Decision::NeedHash {
                    host: h.hash.is_none(),
                    env: e.hash.is_none(),
                },
                Some(true) => Decision::Record,
                Some(false) => {
                    if h.kind == EntryKind::Dir && e.kind == EntryKind::Dir {
                        // Only the modes differ: no content at stake, the host's mode wins.
                        Decision::Propagate { from: Side::Host }
                    } else if h.kind == EntryKind::Dir {
                        Decision::Conflict { winner: Side::Host }
                    } else if e.kind == EntryKind::Dir || e.mtime_ns > h.mtime_ns {
                        Decision::Conflict { winner: Side::Env }
                    } else {
                        Decision::Conflict { winner: Side::Host }
                    }
                }
            },
        },
    }
}

/// The name a conflict's losing version gets: `NAME.berth-conflict-<unix-time>`, with `-N`
/// appended when `taken` says that name is in use.
pub fn conflict_name(rel: &str, unix_time: u64, taken: impl Fn(&str) -> bool) -> String {
    let base = format!("{rel}.berth-conflict-{unix_time}");
    if !taken(&base) {
        return base;
    }
    (1..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !taken(c))
        .unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64, hash: Option<&str>) -> Entry {
        Entry {
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime_ns: mtime,
            target: None,
            hash: hash.map(String::from),
        }
    }
    fn dir() -> Entry {
        Entry {
            kind: EntryKind::Dir,
            mode: 0o755,
            size: 0,
            mtime_ns: 7,
            target: None,
            hash: None,
        }
    }
    fn base_of(e: &Entry, hash: &str) -> BaseEntry {
        BaseEntry::agreed(e, e, Some(hash.into()))
    }

    #[test]
    fn one_sided_changes_propagate() {
        let f = file(3, 10, None);
        let b = base_of(&f, "h");
        assert_eq!(decide(Some(&f), Some(&f), Some(&b)), Decision::Nothing);
        let g = file(4, 11, None);
        assert_eq!(
            decide(Some(&g), Some(&f), Some(&b)),
            Decision::Propagate { from: Side::Host }
        );
        assert_eq!(
            decide(Some(&f), None, Some(&b)),
            Decision::Propagate { from: Side::Env },
            "deletion on env propagates"
        );
        assert_eq!(
            decide(None, Some(&f), None),
            Decision::Propagate { from: Side::Env },
            "creation on env propagates"
        );
        let mut x = f.clone();
        x.mode = 0o755;
        assert_eq!(
            decide(Some(&f), Some(&x), Some(&b)),
            Decision::Propagate { from: Side::Env },
            "chmod propagates"
        );
    }

    #[test]
    fn touch_is_copied_alone_and_hashed_when_the_other_side_changed_too() {
        let f = file(3, 10, None);
        let b = base_of(&f, "h");
        let touched = file(3, 20, None);
        assert_eq!(
            decide(Some(&touched), Some(&f), Some(&b)),
            Decision::Propagate { from: Side::Host }
        );
        let env_edit = file(5, 30, None);
        assert_eq!(
            decide(Some(&touched), Some(&env_edit), Some(&b)),
            Decision::NeedHash {
                host: true,
                env: false
            }
        );
        let touched = file(3, 20, Some("h"));
        assert_eq!(
            decide(Some(&touched), Some(&env_edit), Some(&b)),
            Decision::Propagate { from: Side::Env },
            "the touch was no change: env's edit propagates without a conflict"
        );
        assert_eq!(decide(Some(&touched), Some(&f), Some(&b)), Decision::Record);
        let edited = file(3, 20, Some("other"));
        assert_eq!(
            decide(Some(&edited), Some(&env_edit), Some(&b)),
            Decision::Conflict { winner: Side::Env }
        );
    }

    #[test]
    fn both_changed_the_same_way_is_no_conflict() {
        let a = file(3, 10, None);
        let b = file(3, 11, None);
        assert_eq!(
            decide(Some(&a), Some(&b), None),
            Decision::NeedHash {
                host: true,
                env: true
            }
        );
        let a = file(3, 10, Some("x"));
        let b = file(3, 11, Some("x"));
        assert_eq!(decide(Some(&a), Some(&b), None), Decision::Record);
        assert_eq!(
            decide(None, None, Some(&base_of(&a, "x"))),
            Decision::Record
        );
        assert_eq!(decide(Some(&dir()), Some(&dir()), None), Decision::Record);
    }

    #[test]
    fn conflicts_newest_wins_folder_beats_file_edit_beats_delete() {
        let old = file(1, 1, Some("o"));
        let b = base_of(&old, "o");
        let h = file(2, 100, Some("h"));
        let e = file(3, 200, Some("e"));
        assert_eq!(
            decide(Some(&h), Some(&e), Some(&b)),
            Decision::Conflict { winner: Side::Env }
        );
        let e_old = file(3, 50, Some("e"));
        assert_eq!(
            decide(Some(&h), Some(&e_old), Some(&b)),
            Decision::Conflict { winner: Side::Host }
        );
        assert_eq!(
            decide(Some(&h), Some(&dir()), Some(&b)),
            Decision::Conflict { winner: Side::Env }
        );
        assert_eq!(
            decide(None, Some(&e), Some(&b)),
            Decision::Propagate { from: Side::Env }
        );
        assert_eq!(
            decide(Some(&h), None, Some(&b)),
            Decision::Propagate { from: Side::Host }
        );
    }

    #[test]
    fn conflict_names_are_unique() {
        assert_eq!(
            conflict_name("a/b.txt", 5, |_| false),
            "a/b.txt.berth-conflict-5"
        );
        assert_eq!(
            conflict_name("a", 5, |n| n == "a.berth-conflict-5"),
            "a.berth-conflict-5-1"
        );
    }
}
