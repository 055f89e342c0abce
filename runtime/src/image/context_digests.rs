//! The content hashes of a build context's files, answered from a metadata stamp: a
//! Dockerfile build (and `berth up`, which compares the whole context to know whether the
//! base must be built again) needs the SHA-256 of every file a `COPY` or bind mount reads, and
//! reading a large context on every build only to find it unchanged cost most of a cached
//! build. The hashes are kept per context in the berth home (`context-digests/<hash of the
//! context path>.json`), each with the stat data a change of any kind moves: device and
//! inode (a replaced file), mode, owner, size, modification time and **change time** (set to
//! "now" by every write, truncate, chmod, chown and rename, and by `utimensat`, so it cannot be
//! set back by a user; see `tree_stamp.rs`). A file whose stamp is the kept one is answered
//! without being opened; any other is read and hashed again.
//!
//! As for the other stamps: a file that changed less than [`RACY_MARGIN`] before the build
//! began (or claims a change time in the future) is hashed but its hash is not kept, since a
//! second write within the same clock tick could keep its stamp ("racy git"); and a hash is
//! kept only when the file's stamp was the same before and after it was read. Files are
//! opened with `O_NOFOLLOW`: a file swapped for a symlink while the build reads it is an
//! error, not a read of the link's target. The memo is only a cache, written without fsync
//! (a lost one costs one more read of the context); `berth image prune` removes those of
//! contexts that no longer exist ([`prune`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::tree_stamp::RACY_MARGIN;
use crate::state::{create_private_dir, read_json, replace_volatile};

/// The folder of the berth home the memos are kept in.
pub const MEMO_DIR: &str = "context-digests";

/// The stat data of a file that any change of its content moves (see the module
/// documentation): dev, ino, mode, uid, gid, size, mtime s/ns, ctime s/ns.
type Stamp = [i64; 10];

fn stamp_of(m: &fs::Metadata) -> Stamp {
    [
        m.dev() as i64,
        m.ino() as i64,
        i64::from(m.mode()),
        i64::from(m.uid()),
        i64::from(m.gid()),
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    stamp: Stamp,
    /// Hex SHA-256 of the content.
    sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Memo {
    /// The context folder the paths are relative to.
    context: PathBuf,
    files: BTreeMap<String, Kept>,
}

#[derive(Default)]
struct State {
    memo: Memo,
    /// Paths looked up in this build (kept on save without a second look).
    used: BTreeSet<String>,
    changed: bool,
    /// Files read and hashed (for tests and measurements).
    read: u64,
}

/// The content hashes of one context's files for one build (or one `up`); [`save`] keeps
/// them for the next. Shared by the threads of a build's stages.
///
/// [`save`]: ContextDigests::save
pub struct ContextDigests {
    context: PathBuf,
    /// Where the memo is kept; `None`: nothing is kept (a home that cannot hold it).
    file: Option<PathBuf>,
    /// (seconds, nanoseconds) since the epoch from which a change is too recent to trust.
    limit: (i64, i64),
    state: Mutex<State>,
}

impl ContextDigests {
    /// The digests of `context` kept in the berth home `home` (none kept yet, or an
    /// unreadable memo: every file is read).
    pub fn load(home: &Path, context: &Path) -> ContextDigests {
        let file = home.join(MEMO_DIR).join(format!(
            "{}.json",
            hex::encode(Sha256::digest(context.as_os_str().as_encoded_bytes()))
        ));
        let memo = read_json::<Memo>(&file)
            .ok()
            .flatten()
            .filter(|m| m.context == context)
            .unwrap_or_else(|| Memo {
                context: context.to_path_buf(),
                files: BTreeMap::new(),
            });
        Self::with_memo(context, Some(file), memo)
    }

    /// Digests kept nowhere: every file is read.
    pub fn unkept(context: &Path) -> ContextDigests {
        Self::with_memo(
            context,
            None,
            Memo {
                context: context.to_path_buf(),
                files: BTreeMap::new(),
            },
        )
    }

    fn with_memo(context: &Path, file: Option<PathBuf>, memo: Memo) -> ContextDigests {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(RACY_MARGIN);
        ContextDigests {
            context: context.to_path_buf(),
            file,
            limit: (now.as_secs() as i64, i64::from(now.subsec_nanos())),
            state: Mutex::new(State {
                memo,
                ..State::default()
            }),
        }
    }

    /// How many files were read and hashed so far (the others were answered from the memo).
    pub fn files_read(&self) -> u64 {
        self.lock().read
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The SHA-256 of the regular file `path`, whose `lstat` is `meta`: from the memo when
    /// `path` is in the context and its stamp is the kept one, else read (and kept when it is
    /// settled and did not change while it was read).
    pub fn file_digest(&self, path: &Path, meta: &fs::Metadata) -> io::Result<[u8; 32]> {
        let rel = path
            .strip_prefix(&self.context)
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_string);
        let stamp = stamp_of(meta);
        if let Some(rel) = &rel {
            let mut st = self.lock();
            st.used.insert(rel.clone());
            if let Some(k) = st.memo.files.get(rel) {
                if k.stamp == stamp {
                    let mut out = [0u8; 32];
                    if hex::decode_to_slice(&k.sha256, &mut out).is_ok() {
                        return Ok(out);
                    }
                }
            }
        }
        let (digest, before, after) = read_digest(path)?;
        let mut st = self.lock();
        st.read += 1;
        if let Some(rel) = rel {
            let settled = (stamp[8], stamp[9]) < self.limit;
            if settled && before == stamp && after == stamp {
                st.memo.files.insert(
                    rel,
                    Kept {
                        stamp,
                        sha256: hex::encode(digest),
                    },
                );
            } else {
                st.memo.files.remove(&rel);
            }
            st.changed = true;
        }
        Ok(digest)
    }

    /// Keeps the memo for the next build: the files looked up in this one, and the others
    /// that are still what they were (one `lstat` each). Best effort: it is only a cache.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let mut st = self.lock();
        let State {
            memo,
            used,
            changed,
            ..
        } = &mut *st;
        let before = memo.files.len();
        memo.files.retain(|rel, k| {
            used.contains(rel)
                || fs::symlink_metadata(self.context.join(rel))
                    .is_ok_and(|m| stamp_of(&m) == k.stamp)
        });
        if !*changed && memo.files.len() == before {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&*memo) else {
            return;
        };
        if let Some(dir) = file.parent() {
            if create_private_dir(dir).is_err() {
                return;
            }
        }
        if replace_volatile(file, &bytes).is_ok() {
            *changed = false;
        }
    }
}

/// Reads the regular file `path` (not through a symlink) and hashes it; with its stamp
/// before and after the read.
fn read_digest(path: &Path) -> io::Result<([u8; 32], Stamp, Stamp)> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let before = stamp_of(&f.metadata()?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let after = stamp_of(&f.metadata()?);
    Ok((h.finalize().into(), before, after))
}

/// Feeds an entry's name `rel`, kind, mode, size and content hash (a file's, from `digests`
/// when given) or link target into `h`.
pub fn hash_entry(
    h: &mut Sha256,
    rel: &str,
    path: &Path,
    digests: Option<&ContextDigests>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    h.update(rel.as_bytes());
    h.update(b"\0");
    h.update(format!("{:o}\0", meta.permissions().mode()).as_bytes());
    let ft = meta.file_type();
    if ft.is_symlink() {
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        h.update(meta.size().to_le_bytes());
        let digest = match digests {
            Some(d) => d.file_digest(path, &meta)?,
            None => read_digest(path)?.0,
        };
        h.update(digest);
    }
    h.update(b"\n");
    Ok(())
}

/// Removes the memos of contexts that no longer exist (and unreadable ones) from the berth
/// home `home`; the number removed and their bytes.
pub fn prune(home: &Path) -> (usize, u64) {
    remove_stale(&home.join(MEMO_DIR), |m: &Memo| !m.context.is_dir())
}

/// Removes the JSON files of `dir` that do not read as a `T` or that `stale` says are;
/// the number removed and their bytes.
pub(super) fn remove_stale<T: serde::de::DeserializeOwned>(
    dir: &Path,
    stale: impl Fn(&T) -> bool,
) -> (usize, u64) {
    let mut removed = (0, 0);
    let Ok(rd) = fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let path = e.path();
        let gone = match read_json::<T>(&path) {
            Ok(Some(m)) => stale(&m),
            _ => true,
        };
        if gone {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(&path).is_ok() {
                removed.0 += 1;
                removed.1 += size;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_hash(rel: &str, path: &Path, d: Option<&ContextDigests>) -> Vec<u8> {
        let mut h = Sha256::new();
        hash_entry(&mut h, rel, path, d).unwrap();
        h.finalize().to_vec()
    }

    /// A settled file is read once and then answered from the memo, in the next build too;
    /// a change that keeps size and mtime (put back with `utimensat`) is seen through the
    /// change time, read again, and the hash is the content's either way.
    #[test]
    fn an_unchanged_file_is_answered_from_its_stamp_and_a_changed_one_is_read() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let f = ctx.path().join("big.txt");
        fs::write(&f, b"one").unwrap();
        std::thread::sleep(RACY_MARGIN + std::time::Duration::from_millis(100));

        let first = ContextDigests::load(home.path(), ctx.path());
        let h1 = entry_hash("big.txt", &f, Some(&first));
        assert_eq!(h1, entry_hash("big.txt", &f, None), "same key, memo or not");
        assert_eq!(first.files_read(), 1);
        first.save();

        let second = ContextDigests::load(home.path(), ctx.path());
        assert_eq!(entry_hash("big.txt", &f, Some(&second)), h1);
        assert_eq!(second.files_read(), 0, "answered from the stamp");

        // Same size, the mtime put back: only the change time tells.
        let mtime = fs::metadata(&f).unwrap().modified().unwrap();
        let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
        std::io::Write::write_all(&mut &file, b"two").unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), mtime);
        let third = ContextDigests::load(home.path(), ctx.path());
        let h3 = entry_hash("big.txt", &f, Some(&third));
        assert_eq!(third.files_read(), 1, "the change time moved: read again");
        assert_ne!(h3, h1);
        assert_eq!(h3, entry_hash("big.txt", &f, None));
    }

    /// A file changed within the racy margin is read every time and never kept; memos of a
    /// removed context go with `prune`, others stay.
    #[test]
    fn a_fresh_file_is_not_kept_and_prune_removes_memos_of_gone_contexts() {
        let home = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let f = ctx.path().join("fresh");
        fs::write(&f, b"x").unwrap();
        for _ in 0..2 {
            let d = ContextDigests::load(home.path(), ctx.path());
            entry_hash("fresh", &f, Some(&d));
            assert_eq!(d.files_read(), 1);
            d.save();
        }
        let gone = tempfile::tempdir().unwrap();
        fs::write(gone.path().join("a"), b"a").unwrap();
        let d = ContextDigests::load(home.path(), gone.path());
        entry_hash("a", &gone.path().join("a"), Some(&d));
        d.save();
        let memos = || fs::read_dir(home.path().join(MEMO_DIR)).unwrap().count();
        assert_eq!(memos(), 2);
        assert_eq!(prune(home.path()).0, 0);
        drop(gone);
        assert_eq!(prune(home.path()).0, 1);
        assert_eq!(memos(), 1);
    }

    /// A context file replaced by a symlink is not read through it.
    #[test]
    fn a_symlink_is_hashed_as_a_link_and_never_opened() {
        let ctx = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let l = ctx.path().join("l");
        std::os::unix::fs::symlink(outside.path().join("secret"), &l).unwrap();
        let d = ContextDigests::unkept(ctx.path());
        entry_hash("l", &l, Some(&d));
        assert_eq!(d.files_read(), 0);
        assert!(read_digest(&l).is_err(), "O_NOFOLLOW");
    }
}
