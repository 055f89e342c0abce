//! The last synchronized state ("base") of every path, persisted so that a restarted engine
//! can tell which side changed what while it was not running — the third leg of the
//! three-way merge in [`super::reconcile`].
//!
//! On disk, in the sync's state folder: `base.json` (a snapshot, written with
//! [`crate::state::atomic_write`]) plus `base.journal`, one JSON line per change. Lines are
//! collected in memory while a round of changes is applied and appended with one `write` at
//! the end of the round ([`BaseStore::write_journal`]; also whenever 64 KiB are pending), so a
//! 10,000-file round costs a few dozen writes instead of 10,000. A `kill -9` therefore loses
//! the lines of the round under way (and a torn last line, which is skipped): for those paths
//! the base is the one before the round, and the restart's three-way merge finds both sides
//! equal and records them (comparing hashes when only mtimes tell them apart) — nothing is
//! copied back or lost. Replaying the journal over the snapshot is idempotent, so a crash
//! between writing a new snapshot and truncating the journal is harmless. The journal is
//! folded into the snapshot when it grows long and when the engine stops. Neither the journal
//! nor synchronized files are `fsync`ed (like `rsync`): after a power loss the restart merges
//! whatever the disk kept, as after an edit made while the engine was stopped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tree::{Entry, EntryKind};
use crate::state::{self, StateError};

/// Which side of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Host,
    Env,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Host => Side::Env,
            Side::Env => Side::Host,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Side::Host => "host",
            Side::Env => "env",
        }
    }
}

/// One path as it was when both sides last agreed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseEntry {
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Hex sha256 of the content (files), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Each side's mtime at that moment (they can differ by filesystem precision).
    pub host_mtime_ns: i64,
    pub env_mtime_ns: i64,
}

impl BaseEntry {
    /// The base recorded when `host` and `env` agree; `hash` is the content's hash if known.
    pub fn agreed(host: &Entry, env: &Entry, hash: Option<String>) -> BaseEntry {
        BaseEntry {
            kind: host.kind,
            mode: host.mode,
            size: host.size,
            target: host.target.clone(),
            hash: if host.kind == EntryKind::File {
                hash
            } else {
                None
            },
            host_mtime_ns: host.mtime_ns,
            env_mtime_ns: env.mtime_ns,
        }
    }
    pub fn mtime(&self, side: Side) -> i64 {
        match side {
            Side::Host => self.host_mtime_ns,
            Side::Env => self.env_mtime_ns,
        }
    }

    /// The entry `side` had when both sides agreed (without the hash).
    pub fn entry_of(&self, side: Side) -> Entry {
        Entry {
            kind: self.kind,
            mode: self.mode,
            size: self.size,
            mtime_ns: self.mtime(side),
            target: self.target.clone(),
            hash: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    entries: BTreeMap<String, BaseEntry>,
}

/// [`Snapshot`] as written, borrowing the entries.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    entries: &'a BTreeMap<String, BaseEntry>,
}

#[derive(Serialize, Deserialize)]
struct JournalLine {
    p: String,
    e: Option<BaseEntry>,
}

/// Journal lines after which the journal is folded into the snapshot: at least this many, and
/// at least [`COMPACT_PER_ENTRY`] per entry of the base, so that writing the snapshot (all
/// entries) costs a bounded amount per journal line however big the tree is (a 100,000-file
/// tree's snapshot was rewritten every 20,000 lines).
const COMPACT_AFTER: usize = 20_000;
const COMPACT_PER_ENTRY: usize = 4;

/// The persisted base state.
pub struct BaseStore {
    snapshot: PathBuf,
    journal_path: PathBuf,
    entries: BTreeMap<String, BaseEntry>,
    journal: File,
    /// Journal lines not yet written to `journal`.
    pending: Vec<u8>,
    journal_lines: usize,
}

/// Pending journal bytes that trigger a write before the end of the round.
const PENDING_MAX: usize = 64 * 1024;

impl BaseStore {
    /// Loads the base from `dir` (empty when there is none yet) and compacts it.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        state::create_dir_all(dir)?;
        let snapshot = dir.join("base.json");
        let journal_path = dir.join("base.journal");
        let mut entries = state::read_json::<Snapshot>(&snapshot)?
            .map(|s| s.entries)
            .unwrap_or_default();
        match File::open(&journal_path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let Ok(line) = line else { break };
                    // A torn last line (killed mid-write) does not parse: stop there.
                    let Ok(j) = serde_json::from_str::<JournalLine>(&line) else {
                        break;
                    };
                    match j.e {
                        Some(e) => entries.insert(j.p, e),
                        None => entries.remove(&j.p),
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StateError::Read {
                    path: journal_path,
                    source,
                })
            }
        }
        let journal = open_journal(&journal_path)?;
        let mut store = BaseStore {
            snapshot,
            journal_path,
            entries,
            journal,
            pending: Vec::new(),
            journal_lines: 0,
        };
        store.compact()?;
        Ok(store)
    }

    pub fn get(&self, rel: &str) -> Option<&BaseEntry> {
        self.entries.get(rel)
    }

    pub fn entries(&self) -> &BTreeMap<String, BaseEntry> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Paths strictly below folder `dir` (`""` = everything).
    pub fn paths_under(&self, dir: &str) -> Vec<String> {
        if dir.is_empty() {
            return self.entries.keys().cloned().collect();
        }
        let lo = format!("{dir}/");
        let hi = format!("{dir}0"); // '0' is the byte after '/'
        self.entries.range(lo..hi).map(|(k, _)| k.clone()).collect()
    }

    /// Records the new base of `rel` (`None`: the path is gone on both sides) and adds it to
    /// the journal lines written by the next [`Self::write_journal`].
    pub fn set(&mut self, rel: &str, entry: Option<BaseEntry>) -> Result<(), StateError> {
        if self.entries.get(rel) == entry.as_ref() {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&JournalLine {
            p: rel.to_string(),
            e: entry.clone(),
        })
        .map_err(|e| StateError::Write {
            path: self.journal_path.clone(),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        self.pending.extend_from_slice(&line);
        self.journal_lines += 1;
        match entry {
            Some(e) => self.entries.insert(rel.to_string(), e),
            None => self.entries.remove(rel),
        };
        if self.pending.len() >= PENDING_MAX {
            self.write_journal()?;
        }
        if self.journal_lines >= COMPACT_AFTER.max(COMPACT_PER_ENTRY * self.entries.len()) {
            self.compact()?;
        }
        Ok(())
    }

    /// Appends the pending journal lines to the journal file (no `fsync`: the page cache
    /// survives the engine being killed).
    pub fn write_journal(&mut self) -> Result<(), StateError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self.journal.write_all(&self.pending);
        // Dropped on failure too: the next snapshot (compaction) holds what they say.
        self.pending.clear();
        r.map_err(|source| StateError::Write {
            path: self.journal_path.clone(),
            source,
        })
    }

    /// Writes a fresh snapshot and empties the journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(&SnapshotOut {
            version: 1,
            entries: &self.entries,
        })
        .map_err(|e| StateError::Write {
            path: self.snapshot.clone(),
            source: io::Error::other(e),
        })?;
        state::atomic_write(&self.snapshot, &bytes)?;
        // The snapshot holds what the pending lines say.
        self.pending.clear();
        self.journal
            .set_len(0)
            .map_err(|source| StateError::Write {
                path: self.journal_path.clone(),
                source,
            })?;
        self.journal_lines = 0;
        Ok(())
    }
}

impl Drop for BaseStore {
    fn drop(&mut self) {
        let _ = self.write_journal();
    }
}

fn open_journal(path: &Path) -> Result<File, StateError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| StateError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Removes a sync's persisted base (the next start treats both sides as unsynchronized).
pub fn forget(dir: &Path) -> io::Result<()> {
    for name in ["base.json", "base.journal"] {
        match fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(size: u64) -> BaseEntry {
        BaseEntry {
            kind: EntryKind::File,
            mode: 0o644,
            size,
            target: None,
            hash: Some("ab".into()),
            host_mtime_ns: 1,
            env_mtime_ns: 2,
        }
    }

    #[test]
    fn journal_survives_without_compaction_and_torn_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = BaseStore::open(d.path()).unwrap();
            s.set("a", Some(be(1))).unwrap();
            s.set("b", Some(be(2))).unwrap();
            s.set("a", None).unwrap();
            s.set("c/d", Some(be(3))).unwrap();
            // Dropped without compact(), as by kill -9.
        }
        let mut j = OpenOptions::new()
            .append(true)
            .open(d.path().join("base.journal"))
            .unwrap();
        j.write_all(b"{\"p\":\"torn").unwrap();
        let s = BaseStore::open(d.path()).unwrap();
        assert_eq!(s.get("a"), None);
        assert_eq!(s.get("b"), Some(&be(2)));
        assert_eq!(s.paths_under("c"), vec!["c/d".to_string()]);
        assert_eq!(s.paths_under("").len(), 2);
        assert_eq!(
            fs::metadata(d.path().join("base.journal")).unwrap().len(),
            0,
            "compacted on open"
        );
    }

    #[test]
    fn journal_lines_are_written_per_round_and_when_many_are_pending() {
        let d = tempfile::tempdir().unwrap();
        let journal = d.path().join("base.journal");
        let mut s = BaseStore::open(d.path()).unwrap();
        s.set("a", Some(be(1))).unwrap();
        s.set("b", Some(be(2))).unwrap();
        assert_eq!(
            fs::metadata(&journal).unwrap().len(),
            0,
            "pending in memory"
        );
        s.write_journal().unwrap();
        s.set("c", Some(be(3))).unwrap();
        // Killed before the end of the round: its lines are lost, the earlier ones kept.
        std::mem::forget(s);
        let s = BaseStore::open(d.path()).unwrap();
        assert_eq!(s.get("a"), Some(&be(1)));
        assert_eq!(s.get("b"), Some(&be(2)));
        assert_eq!(s.get("c"), None);
        drop(s);
        // A long round writes as it goes.
        let mut s = BaseStore::open(d.path()).unwrap();
        for i in 0..PENDING_MAX / 50 {
            s.set(&format!("many/{i}"), Some(be(i as u64))).unwrap();
        }
        assert!(fs::metadata(&journal).unwrap().len() > 0);
        std::mem::forget(s);
        let s = BaseStore::open(d.path()).unwrap();
        assert!(s.get("many/0").is_some());
    }

    #[test]
    fn the_snapshot_is_rewritten_after_lines_in_proportion_to_the_entries() {
        let d = tempfile::tempdir().unwrap();
        let snapshot = d.path().join("base.json");
        // Opening wrote the (empty) snapshot.
        let mut s = BaseStore::open(d.path()).unwrap();
        let written = fs::metadata(&snapshot).unwrap().modified().unwrap();
        let size = fs::metadata(&snapshot).unwrap().len();
        // COMPACT_AFTER entries written, then each rewritten twice: 3 lines per entry, fewer
        // than COMPACT_PER_ENTRY, so the journal holds them all (the snapshot was rewritten
        // every COMPACT_AFTER lines before).
        let entries = COMPACT_AFTER;
        for round in 1..4 {
            for i in 0..entries {
                s.set(&format!("f{i}"), Some(be(round))).unwrap();
            }
        }
        assert_eq!(fs::metadata(&snapshot).unwrap().len(), size);
        assert_eq!(
            fs::metadata(&snapshot).unwrap().modified().unwrap(),
            written
        );
        s.write_journal().unwrap();
        std::mem::forget(s);
        let s = BaseStore::open(d.path()).unwrap();
        assert_eq!(s.get("f0"), Some(&be(3)));
        assert_eq!(s.len(), entries);
    }

    #[test]
    fn paths_under_does_not_include_siblings_with_common_prefix() {
        let d = tempfile::tempdir().unwrap();
        let mut s = BaseStore::open(d.path()).unwrap();
        for p in ["a", "a/x", "a/y/z", "a-b", "a.c", "ab"] {
            s.set(p, Some(be(1))).unwrap();
        }
        assert_eq!(
            s.paths_under("a"),
            vec!["a/x".to_string(), "a/y/z".to_string()]
        );
    }
}
