//! What one side of a sync holds: entries keyed by their path relative to the synced root,
//! with the metadata the reconciler compares (kind, size, mtime, permission bits, symlink
//! target) and, when asked for, a sha256 of the content.
//!
//! Relative paths are `String`s with `/` separators and no leading or trailing slash; the root
//! itself is `""`. In byte order a parent always sorts before its children, so iterating a
//! [`Tree`] forwards creates parents first and backwards removes children first.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The kinds of entries berth synchronizes. FIFOs, sockets and device nodes are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One file, folder or symlink as seen on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`); 0 for symlinks.
    pub mode: u32,
    /// Size in bytes for files; 0 otherwise.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Symlink target, verbatim (never resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Hex sha256 of a file's content, filled in only where the reconciler needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

impl Entry {
    /// The entry for `meta` (from `lstat`), or `None` for kinds that are not synchronized.
    /// `target` is the symlink's target for symlinks.
    pub fn from_metadata(meta: &std::fs::Metadata, target: Option<String>) -> Option<Entry> {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else {
            return None;
        };
        Some(Entry {
            kind,
            mode: if kind == EntryKind::Symlink {
                0
            } else {
                meta.permissions().mode() & 0o7777
            },
            size: if kind == EntryKind::File {
                meta.len()
            } else {
                0
            },
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            target: if kind == EntryKind::Symlink {
                target
            } else {
                None
            },
            hash: None,
        })
    }

    /// Whether `self` is still the entry `other` describes: same kind, permission bits,
    /// symlink target and, for files, same size and mtime. Folder mtimes are not compared
    /// (they change whenever a child does).
    pub fn same_state(&self, other: &Entry) -> bool {
        if self.kind != other.kind {
            return false;
        }
        match self.kind {
            EntryKind::Dir => self.mode == other.mode,
            EntryKind::Symlink => self.target == other.target,
            EntryKind::File => {
                self.mode == other.mode
                    && self.size == other.size
                    && self.mtime_ns == other.mtime_ns
            }
        }
    }
}

/// All entries of (part of) one side, keyed by relative path.
pub type Tree = BTreeMap<String, Entry>;

/// The result of scanning a subtree of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    pub entries: Tree,
    /// Content of every `.gitignore` met, keyed by the relative path of its folder.
    pub gitignores: BTreeMap<String, String>,
    /// Leftover temporary files of an interrupted transfer (see [`is_temp_name`]).
    pub leftovers: Vec<String>,
    /// Paths not synchronized because of their type or name, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Folders whose content could not be listed (permission denied): what is below them is
    /// unknown, and must not be mistaken for deleted.
    pub unreadable: Vec<String>,
}

/// Marker in the names of berth's temporary files; such names are never synchronized.
pub const TEMP_MARKER: &str = ".berth-sync-tmp-";

/// Whether a file name is one of berth's in-flight temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.contains(TEMP_MARKER)
}

/// Joins a relative folder path and a name.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent folder of a relative path (`""` for top-level names).
pub fn parent(rel: &str) -> &str {
    rel.rfind('/').map(|i| &rel[..i]).unwrap_or("")
}

/// The last component of a relative path.
pub fn file_name(rel: &str) -> &str {
    rel.rfind('/').map(|i| &rel[i + 1..]).unwrap_or(rel)
}

/// Whether `rel` is `dir` or lies below it.
pub fn is_within(rel: &str, dir: &str) -> bool {
    dir.is_empty()
        || rel == dir
        || (rel.len() > dir.len() && rel.starts_with(dir) && rel.as_bytes()[dir.len()] == b'/')
}

/// Checks that a relative path is normal: no empty, `.` or `..` components, no leading `/`.
/// Transports reject anything else, so a path can never name something outside the root.
pub fn is_normal_rel(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// Reads everything from `r`, returning the hex sha256 and the number of bytes.
pub fn hash_reader(r: &mut dyn Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((hex::encode(h.finalize()), n))
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// Hex sha256 and byte count of everything read so far.
    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
    /// Like [`Self::finish`], also giving the inner reader back.
    pub fn finish_with_inner(self) -> (String, u64, R) {
        (hex::encode(self.hasher.finalize()), self.bytes, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(parent("a/b/c"), "a/b");
        assert_eq!(parent("a"), "");
        assert_eq!(file_name("a/b/c"), "c");
        assert!(is_within("a/b", "a"));
        assert!(is_within("a", "a"));
        assert!(!is_within("ab", "a"));
        assert!(is_within("x", ""));
        assert!(is_normal_rel("a/b.c"));
        for bad in ["", "/a", "a//b", "a/../b", "./a", "a/", ".."] {
            assert!(!is_normal_rel(bad), "{bad}");
        }
    }

    #[test]
    fn parents_sort_before_children() {
        let mut t = Tree::new();
        for p in ["a/b", "a", "a-b", "a.txt", "a/b/c"] {
            t.insert(
                p.into(),
                Entry {
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    size: 0,
                    mtime_ns: 0,
                    target: None,
                    hash: None,
                },
            );
        }
        let keys: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
        let pos = |k: &str| keys.iter().position(|x| *x == k).unwrap();
        assert!(pos("a") < pos("a/b") && pos("a/b") < pos("a/b/c"));
    }

    #[test]
    fn hashing_reader_matches_hash_reader() {
        let data = b"hello world".repeat(1000);
        let (h1, n1) = hash_reader(&mut &data[..]).unwrap();
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (h1, n1));
    }
}
