//! A [`Transport`] for a folder this process can reach by path: the host's source folder, or
//! an environment's folder seen through `/proc/<pid>/root/<target>` (or from a helper running
//! inside the environment's mount namespace).
//!
//! The root is opened once; every later operation resolves its relative path from that file
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a symlink anywhere on
//! the way — even one swapped in by a process on that side while the engine runs — makes the
//! operation fail instead of reading or writing outside the tree. This matters for
//! `/proc/<pid>/root`: an absolute symlink inside a container would otherwise resolve against
//! the *host's* root. Final components are handled through `/proc/self/fd/<dirfd>/<name>`
//! with calls that do not follow a final symlink (`lstat`, `rename`, `unlink`, `O_NOFOLLOW`).
//! Those calls are in [`dir_fd_calls`].
//!
//! | file | concern |
//! |---|---|
//! | `mod.rs` | opening the root, resolving paths beneath it, removals, renames, folders, modes |
//! | [`tree_walk`] | scans and lookups |
//! | [`source_file`] | reading a file to copy |
//! | [`staging`] | writing an entry under a temporary name and renaming it into place |
//! | [`kept_folder`] | the folder a copying thread keeps open |

mod dir_fd_calls;
mod kept_folder;
mod source_file;
mod spare_inode;
mod staging;
#[cfg(test)]
mod staging_tests;
#[cfg(test)]
mod transport_tests;
mod tree_walk;

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::ignore::IgnoreRules;
use crate::own_renames::OwnRenames;
use crate::transport::{EventSink, SourceFile, Staged, Transport, TransportError, Watching};
use crate::tree::{file_name, hash_reader, is_normal_rel, parent, Entry, EntryKind, Scan};
use crate::watch::watch_tree;
use dir_fd_calls::{fd_path, lstat_at, mkdir_at, openat2_beneath, rename_at, unlink_at};

/// A synced folder reachable by path.
pub struct LocalTransport {
    label: String,
    root: PathBuf,
    root_fd: OwnedFd,
    owner: Option<(u32, u32)>,
    /// Setuid (setgid) bits are dropped from files owned by user (group) root.
    no_root_setid: bool,
    poll_interval: Duration,
    counter: AtomicU64,
    /// This process's id, part of every temporary name (asked once: `getpid` is a system call).
    pid: u32,
    /// Renames of staged entries into place, for this transport's watcher to drop.
    own_renames: Arc<OwnRenames>,
}

impl LocalTransport {
    /// Opens `root` (which must be an existing folder; it may itself be reached through
    /// symlinks or `/proc/<pid>/root`). `label` names the side in messages (`host`, `env`).
    pub fn open(label: &str, root: impl Into<PathBuf>) -> Result<Self, TransportError> {
        let root = root.into();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root)
            .map_err(|source| TransportError::Io {
                side: format!("{label} {}", root.display()),
                op: "open the synced folder",
                path: String::new(),
                source,
            })?;
        Ok(LocalTransport {
            label: format!("{label} {}", root.display()),
            root,
            root_fd: OwnedFd::from(file),
            owner: None,
            no_root_setid: false,
            poll_interval: Duration::from_millis(500),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            own_renames: Arc::new(OwnRenames::default()),
        })
    }

    /// Everything this transport creates gets this owner (the environment's user, mapped).
    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// Never gives a file owned by user root a setuid bit, or one of group root a setgid bit
    /// (the bits are dropped from the mode written): for a host folder written by berth as
    /// root, so that what an environment syncs there cannot become a setuid-root program.
    pub fn without_root_setid(mut self) -> Self {
        self.no_root_setid = true;
        self
    }

    /// `mode` without the setuid/setgid bits a file owned by `uid`:`gid` may not get here.
    fn allowed_mode(&self, mode: u32, uid: u32, gid: u32) -> u32 {
        let mut mode = mode & 0o7777;
        if self.no_root_setid {
            if uid == 0 {
                mode &= !libc::S_ISUID;
            }
            if gid == 0 {
                mode &= !libc::S_ISGID;
            }
        }
        mode
    }

    /// How often the polling fallback rescans.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, op: &'static str, rel: &str, source: io::Error) -> TransportError {
        match source.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::EXDEV) => TransportError::Escapes {
                side: self.label.clone(),
                path: rel.to_string(),
            },
            Some(libc::ENOTEMPTY) => TransportError::NotEmpty {
                side: self.label.clone(),
                path: rel.to_string(),
            },
            _ => TransportError::Io {
                side: self.label.clone(),
                op,
                path: rel.to_string(),
                source,
            },
        }
    }

    fn check(&self, rel: &str) -> Result<(), TransportError> {
        if is_normal_rel(rel) {
            Ok(())
        } else {
            Err(TransportError::Escapes {
                side: self.label.clone(),
                path: rel.to_string(),
            })
        }
    }

    /// Opens `rel` (`""` = the root) beneath the root without following any symlink.
    fn open_beneath(&self, rel: &str, flags: i32) -> io::Result<OwnedFd> {
        openat2_beneath(&self.root_fd, if rel.is_empty() { "." } else { rel }, flags)
    }

    /// The folder holding `rel`, as an `O_PATH` descriptor.
    fn parent_fd(&self, rel: &str) -> Result<OwnedFd, TransportError> {
        self.check(rel)?;
        self.open_beneath(parent(rel), libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| self.err("open the folder of", rel, e))
    }

    /// Like [`Self::parent_fd`] but creates missing folders (mode 0755, owned by the owner).
    fn ensure_parent(&self, rel: &str) -> Result<OwnedFd, TransportError> {
        match self.parent_fd(rel) {
            Err(TransportError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            r => return r,
        }
        let mut cur = self
            .open_beneath("", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| self.err("open", "", e))?;
        let dir = parent(rel);
        for comp in dir.split('/') {
            match mkdir_at(&cur, comp, 0o755, self.owner) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.err("create folder", dir, e)),
            }
            cur = openat2_beneath(&cur, comp, libc::O_PATH | libc::O_DIRECTORY)
                .map_err(|e| self.err("open folder", dir, e))?;
        }
        Ok(cur)
    }

    /// This transport's key among the folders kept by a thread.
    fn key(&self) -> usize {
        self as *const Self as usize
    }

    /// The folder of `rel` for writing into (created when missing): the one kept open by
    /// this thread ([`Transport::keep_folder`]) when it is that folder, else looked up.
    fn staging_parent(&self, rel: &str) -> Result<Arc<OwnedFd>, TransportError> {
        self.check(rel)?;
        let folder = parent(rel);
        match kept_folder::get(self.key(), folder) {
            Some(Some(fd)) => Ok(fd),
            kept => {
                let fd = Arc::new(self.ensure_parent(rel)?);
                if kept.is_some() {
                    kept_folder::store(self.key(), folder, &fd);
                }
                Ok(fd)
            }
        }
    }

    fn lstat_at(&self, dir: &OwnedFd, name: &str) -> io::Result<Option<Entry>> {
        lstat_at(dir, name)
    }
}

impl Transport for LocalTransport {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn scan(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError> {
        self.scan_tree(rel, rules)
    }

    fn stat(&self, rel: &str) -> Result<Option<Entry>, TransportError> {
        self.stat_entry(rel)
    }

    fn stat_many(&self, rels: &[&str]) -> Vec<Result<Option<Entry>, TransportError>> {
        self.stat_entries(rels)
    }

    fn hash(&self, rel: &str) -> Result<Option<String>, TransportError> {
        let mut f = match self.read_file(rel) {
            Ok((_, f)) => f,
            Err(TransportError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        hash_reader(&mut f)
            .map(|(h, _)| Some(h))
            .map_err(|e| self.err("read", rel, e))
    }

    fn read_file(&self, rel: &str) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.open_source(rel, None)
    }

    fn read_file_seen(
        &self,
        rel: &str,
        seen: &Entry,
    ) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.open_source(rel, Some(seen))
    }

    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError> {
        self.staged_file(rel, data, mode, mtime_ns)
    }

    fn stage_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError> {
        self.staged_symlink(rel, target)
    }

    fn commit(&self, staged: Staged, expect: Option<&Entry>) -> Result<Entry, TransportError> {
        self.commit_staged(staged, expect)
    }

    fn discard(&self, staged: Staged) {
        self.discard_staged(staged)
    }

    fn remove(&self, rel: &str, expect: &Entry) -> Result<(), TransportError> {
        let dir = self.parent_fd(rel)?;
        let name = file_name(rel);
        match self
            .lstat_at(&dir, name)
            .map_err(|e| self.err("stat", rel, e))?
        {
            None => return Ok(()),
            Some(c) if c.same_state(expect) => {}
            Some(_) => {
                return Err(TransportError::Changed {
                    side: self.label.clone(),
                    path: rel.to_string(),
                })
            }
        }
        match unlink_at(&dir, name, expect.kind == EntryKind::Dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("remove", rel, e)),
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), TransportError> {
        let a = self.parent_fd(from)?;
        let b = self.parent_fd(to)?;
        rename_at(&a, file_name(from), &b, file_name(to)).map_err(|e| self.err("rename", from, e))
    }

    fn mkdir(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        let dir = self.ensure_parent(rel)?;
        let name = file_name(rel);
        match mkdir_at(&dir, name, mode, self.owner) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.err("create folder", rel, e)),
        }
        self.set_mode(rel, mode)
    }

    fn set_mode(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        self.check(rel)?;
        let fd = self
            .open_beneath(rel, libc::O_PATH)
            .map_err(|e| self.err("open", rel, e))?;
        let st =
            nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| self.err("stat", rel, e.into()))?;
        let mode = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            self.allowed_mode(mode, st.st_uid, st.st_gid)
        } else {
            mode & 0o7777
        };
        fs::set_permissions(fd_path(&fd, ""), fs::Permissions::from_mode(mode))
            .map_err(|e| self.err("chmod", rel, e))?;
        self.stat(rel)?.ok_or_else(|| TransportError::Changed {
            side: self.label.clone(),
            path: rel.to_string(),
        })
    }

    fn keep_folder(&self, folder: &str) {
        kept_folder::keep(self.key(), folder);
    }

    fn release_folder(&self) {
        if let Some((dir, spare)) = kept_folder::release(self.key()) {
            let _ = unlink_at(&dir, &spare, false);
        }
    }

    fn watch(&self, sink: EventSink, force_poll: bool) -> Result<Watching, TransportError> {
        watch_tree(
            &self.label,
            &self.root,
            sink,
            force_poll,
            self.poll_interval,
            Some(&self.own_renames),
        )
    }
}
