//! Writing an entry atomically: staged under a temporary name in its folder (content, owner,
//! mtime, then the exact mode), and renamed into place only if the target is still what the
//! engine last saw.

use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dir_fd_calls::{
    chown_at, exchange_file_into_place, openat2_beneath_mode, rename_at, rename_noreplace_at,
    unlink_at,
};
use super::{kept_folder, spare_inode, LocalTransport};
use crate::transport::{Staged, TransportError};
use crate::tree::{file_name, parent, Entry, EntryKind, TEMP_MARKER};

impl LocalTransport {
    fn temp_name(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("{TEMP_MARKER}{}-{n}", self.pid);
        // Keep within NAME_MAX (255 bytes).
        let keep = name
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= 200)
            .map(|(_, c)| c)
            .collect::<String>();
        format!(".{keep}{suffix}")
    }

    /// The entry a commit put in place at `rel` (in the folder `dir`). A file: what was
    /// written (mode, size, mtime set on the temporary file); recording that rather than a
    /// new look also keeps an edit made right after the rename from being taken for the
    /// engine's own write.
    fn committed(
        &self,
        dir: &OwnedFd,
        rel: &str,
        written: Option<Entry>,
    ) -> Result<Entry, TransportError> {
        if let Some(w) = written {
            return Ok(w);
        }
        match self.lstat_at(dir, file_name(rel)) {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(TransportError::Changed {
                side: self.label.clone(),
                path: rel.to_string(),
            }),
            Err(e) => Err(self.err("stat", rel, e)),
        }
    }

    pub(super) fn staged_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError> {
        let dir = self.staging_parent(rel)?;
        let create_mode = temp_create_mode(mode, self.owner.is_some());
        // The old inode of a file replaced before in this folder, when nothing else reaches
        // it ([`spare_inode`]); else a new temporary file.
        let spare = kept_folder::take_spare(self.key(), parent(rel)).and_then(|name| {
            let f = spare_inode::take(&dir, &name, self.owner.is_some(), create_mode)?;
            Some((name, f))
        });
        let (temp_name, spare) = match spare {
            Some((name, f)) => (name, Some(f)),
            None => (self.temp_name(file_name(rel)), None),
        };
        let result = (|| -> io::Result<Entry> {
            let mut f = match spare {
                Some(f) => f,
                None => File::from(openat2_beneath_mode(
                    &dir,
                    &temp_name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    create_mode,
                )?),
            };
            COPY_BUF.with_borrow_mut(|buf| -> io::Result<()> {
                buf.resize(128 * 1024, 0);
                loop {
                    let n = match data.read(buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    f.write_all(&buf[..n])?;
                }
            })?;
            if let Some((u, g)) = self.owner {
                std::os::unix::fs::fchown(&f, Some(u), Some(g))?;
            }
            f.set_times(FileTimes::new().set_modified(time_from_ns(mtime_ns)))?;
            // What the rename will put in place (a rename changes none of it). One look
            // serves both for the owner (which decides the setuid/setgid bits allowed) and
            // for the entry written; the mode is set only where creating did not already
            // give the exact bits (umask, default ACL, setid/sticky bits, group bits held
            // back until the owner was set), and a chmod changes neither size nor mtime.
            let meta = f.metadata()?;
            let mut written = Entry::from_metadata(&meta, None)
                .ok_or_else(|| io::Error::other("the temporary file is not a regular file"))?;
            let mode = self.allowed_mode(mode, meta.uid(), meta.gid());
            if written.mode != mode {
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                written.mode = mode;
            }
            Ok(written)
        })();
        match result {
            Ok(written) => Ok(Staged {
                rel: rel.to_string(),
                temp_name,
                handle: Some(Box::new(StagedHere {
                    dir,
                    written: Some(written),
                })),
            }),
            Err(e) => {
                let _ = unlink_at(&dir, &temp_name, false);
                Err(self.err("write", rel, e))
            }
        }
    }

    pub(super) fn staged_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError> {
        let dir = Arc::new(self.ensure_parent(rel)?);
        let temp_name = self.temp_name(file_name(rel));
        nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), temp_name.as_str())
            .map_err(|e| self.err("symlink", rel, e.into()))?;
        if let Some(owner) = self.owner {
            if let Err(e) = chown_at(&dir, &temp_name, owner) {
                let _ = unlink_at(&dir, &temp_name, false);
                return Err(self.err("chown", rel, e));
            }
        }
        Ok(Staged {
            rel: rel.to_string(),
            temp_name,
            handle: Some(Box::new(StagedHere { dir, written: None })),
        })
    }

    pub(super) fn commit_staged(
        &self,
        mut staged: Staged,
        expect: Option<&Entry>,
    ) -> Result<Entry, TransportError> {
        let kept = staged
            .handle
            .take()
            .and_then(|h| h.downcast::<StagedHere>().ok());
        let (dir, written) = match kept {
            Some(k) => (k.dir, k.written),
            None => match self.parent_fd(&staged.rel) {
                Ok(d) => (Arc::new(d), None),
                Err(e) => {
                    self.discard_staged(staged);
                    return Err(e);
                }
            },
        };
        let name = file_name(&staged.rel);
        // A replaced file's old inode is kept for the next file of a kept folder (not on
        // tmpfs): the two names are exchanged instead of the old one being freed by a rename
        // over it.
        let exchange =
            expect.is_some() && kept_folder::keeps_spares(self.key(), parent(&staged.rel));
        // The watcher is told first, so that it can drop this rename's event (the engine's
        // own write) whenever it reads it; a rename that does not happen is taken back.
        let mut told = if exchange {
            self.own_renames
                .expect_exchange(&staged.temp_name, &staged.rel)
        } else {
            self.own_renames.expect(&staged.temp_name, &staged.rel)
        };
        let fail = |told: bool, e: TransportError| {
            if told {
                self.own_renames.cancel(&staged.temp_name);
            }
            let _ = unlink_at(&dir, &staged.temp_name, false);
            Err(e)
        };
        // A new entry: one rename that refuses to replace anything (no look first, and no
        // window between the look and the rename). Filesystems without the flag take the
        // look-then-rename way below.
        if expect.is_none() {
            match rename_noreplace_at(&dir, &staged.temp_name, name) {
                Ok(()) => return self.committed(&dir, &staged.rel, written),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    return fail(
                        told,
                        TransportError::Changed {
                            side: self.label.clone(),
                            path: staged.rel.clone(),
                        },
                    );
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return fail(told, self.err("rename into place", &staged.rel, e)),
            }
        }
        let current = self.lstat_at(&dir, name);
        let unchanged = match (&current, expect) {
            (Ok(None), None) => true,
            (Ok(Some(c)), Some(e)) => c.same_state(e) && c.kind != EntryKind::Dir,
            _ => false,
        };
        if !unchanged {
            return fail(
                told,
                TransportError::Changed {
                    side: self.label.clone(),
                    path: staged.rel.clone(),
                },
            );
        }
        if exchange {
            // The target first: other programs watching the folder see the old file move
            // to the temporary name, then the new one arrive under the target's name, as
            // after an editor's safe save, and the target's last event is its arrival.
            match exchange_file_into_place(&dir, name, &staged.temp_name) {
                Ok(false) => {
                    // A folder took the target's place since the look: put back. The
                    // exchanges' events carry the folder's moves, reported.
                    return fail(
                        false,
                        TransportError::Changed {
                            side: self.label.clone(),
                            path: staged.rel.clone(),
                        },
                    );
                }
                Ok(true) => {
                    if !kept_folder::put_spare(self.key(), parent(&staged.rel), &staged.temp_name) {
                        let _ = unlink_at(&dir, &staged.temp_name, false);
                    }
                    return self.committed(&dir, &staged.rel, written);
                }
                // A filesystem without the flag: a plain rename, told as one.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    if told {
                        self.own_renames.cancel(&staged.temp_name);
                        told = self.own_renames.expect(&staged.temp_name, &staged.rel);
                    }
                }
                Err(e) => return fail(told, self.err("rename into place", &staged.rel, e)),
            }
        }
        if let Err(e) = rename_at(&dir, &staged.temp_name, &dir, name) {
            return fail(told, self.err("rename into place", &staged.rel, e));
        }
        self.committed(&dir, &staged.rel, written)
    }

    pub(super) fn discard_staged(&self, staged: Staged) {
        match staged.handle.and_then(|h| h.downcast::<StagedHere>().ok()) {
            Some(k) => {
                let _ = unlink_at(&k.dir, &staged.temp_name, false);
            }
            None => {
                if let Ok(dir) = self.parent_fd(&staged.rel) {
                    let _ = unlink_at(&dir, &staged.temp_name, false);
                }
            }
        }
    }
}

thread_local! {
    /// Copy buffer, reused across files (allocating and zeroing one per file shows in profiles).
    static COPY_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A staged entry's folder, and for a file the entry it will have once renamed into place.
struct StagedHere {
    dir: Arc<OwnedFd>,
    written: Option<Entry>,
}

/// The mode a temporary file is created with before its content is written: never more
/// access for anyone than the final `mode` gives (the final bits are set after the owner,
/// since a chown clears setuid/setgid bits). Until `fchown` gives the file its owner
/// (`chown_later`), it belongs to this process's user and group: the group bits then go
/// only as far as the bits everyone gets, so that members of this process's group (root's,
/// as a rule) can read nothing the final file would not show them as others.
pub(super) fn temp_create_mode(mode: u32, chown_later: bool) -> u32 {
    let mode = mode & 0o777;
    if chown_later {
        let others = mode & 0o007;
        (mode & 0o707) | (mode & 0o070 & (others << 3))
    } else {
        mode
    }
}

fn time_from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}
