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

mod dir_fd_calls;
mod kept_folder;
#[cfg(test)]
mod staging_tests;

use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ignore::IgnoreRules;
use crate::transport::{EventSink, SourceFile, Staged, Transport, TransportError, Watching};
use crate::tree::{
    file_name, hash_reader, is_normal_rel, is_temp_name, join, parent, Entry, EntryKind, Scan,
    TEMP_MARKER,
};
use crate::watch::watch_tree;
use dir_fd_calls::{
    chown_at, fd_path, list_dir, lstat_at, mkdir_at, openat2_beneath, openat2_beneath_mode,
    rename_at, rename_noreplace_at, unlink_at,
};

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

    fn walk(
        &self,
        dir_rel: &str,
        rules: &mut IgnoreRules,
        scan: &mut Scan,
    ) -> Result<(), TransportError> {
        let fd = match self.open_beneath(dir_rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.unreadable.push(dir_rel.to_string());
                return Ok(());
            }
            Err(e) => return Err(self.err("list", dir_rel, e)),
        };
        let listed = match list_dir(&fd) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.unreadable.push(dir_rel.to_string());
                return Ok(());
            }
            Err(e) => return Err(self.err("list", dir_rel, e)),
        };
        let mut names = Vec::new();
        for n in listed {
            match n.into_string() {
                Ok(n) => names.push(n),
                Err(n) => scan.skipped.push((
                    join(dir_rel, &n.to_string_lossy()),
                    "name is not UTF-8".into(),
                )),
            }
        }
        names.sort();
        if names.iter().any(|n| n == ".gitignore") {
            if let Ok(f) = openat2_beneath(&fd, ".gitignore", libc::O_RDONLY | libc::O_NONBLOCK) {
                let mut text = String::new();
                if File::from(f).read_to_string(&mut text).is_ok() {
                    rules.add_gitignore(dir_rel, &text);
                    scan.gitignores.insert(dir_rel.to_string(), text);
                }
            }
        }
        let mut subdirs = Vec::new();
        for name in names {
            let rel = join(dir_rel, &name);
            if is_temp_name(&name) {
                scan.leftovers.push(rel);
                continue;
            }
            let entry = match self.lstat_at(&fd, &name) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    scan.skipped
                        .push((rel, "not a file, folder or symlink".into()));
                    continue;
                }
                Err(e) => return Err(self.err("stat", &rel, e)),
            };
            let is_dir = entry.kind == EntryKind::Dir;
            if rules.is_ignored(&rel, is_dir) {
                continue;
            }
            scan.entries.insert(rel.clone(), entry);
            if is_dir {
                subdirs.push(rel);
            }
        }
        drop(fd);
        for sub in subdirs {
            self.walk(&sub, rules, scan)?;
        }
        Ok(())
    }
}

impl Transport for LocalTransport {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn scan(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError> {
        let mut scan = Scan::default();
        let mut rules = rules.clone();
        if !rel.is_empty() {
            match self.stat(rel)? {
                Some(e) if !rules.is_ignored(rel, e.kind == EntryKind::Dir) => {
                    let is_dir = e.kind == EntryKind::Dir;
                    scan.entries.insert(rel.to_string(), e);
                    if !is_dir {
                        return Ok(scan);
                    }
                }
                _ => return Ok(scan),
            }
        }
        self.walk(rel, &mut rules, &mut scan)?;
        Ok(scan)
    }

    fn stat(&self, rel: &str) -> Result<Option<Entry>, TransportError> {
        let dir = match self.parent_fd(rel) {
            Ok(d) => d,
            Err(TransportError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(TransportError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        self.lstat_at(&dir, file_name(rel))
            .map_err(|e| self.err("stat", rel, e))
    }

    fn stat_many(&self, rels: &[&str]) -> Vec<Result<Option<Entry>, TransportError>> {
        // The folder of the previous path, kept while the next paths are in it too.
        let mut dir: Option<(&str, OwnedFd)> = None;
        let mut out = Vec::with_capacity(rels.len());
        for &rel in rels {
            let p = parent(rel);
            if dir.as_ref().is_none_or(|(d, _)| *d != p) {
                dir = None;
                if self.check(rel).is_ok() {
                    if let Ok(fd) = self.open_beneath(p, libc::O_PATH | libc::O_DIRECTORY) {
                        dir = Some((p, fd));
                    }
                }
            }
            out.push(match &dir {
                Some((_, fd)) => self
                    .lstat_at(fd, file_name(rel))
                    .map_err(|e| self.err("stat", rel, e)),
                // Missing folder, symlink on the way, bad path: as `stat` says it.
                None => self.stat(rel),
            });
        }
        out
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
        self.check(rel)?;
        let flags = libc::O_RDONLY | libc::O_NONBLOCK;
        let folder = parent(rel);
        let fd = match kept_folder::get(self.key(), folder) {
            // The folder kept open by this thread: the final name alone (it was opened
            // beneath the root without following symlinks, as `open_beneath` would).
            Some(kept) => {
                let dir = match kept {
                    Some(d) => d,
                    None => {
                        let d = Arc::new(self.parent_fd(rel)?);
                        kept_folder::store(self.key(), folder, &d);
                        d
                    }
                };
                openat2_beneath(&dir, file_name(rel), flags)
            }
            None => self.open_beneath(rel, flags),
        }
        .map_err(|e| self.err("open", rel, e))?;
        let mut f = LocalSource {
            file: File::from(fd),
            left: 0,
        };
        let entry = f.entry_now().map_err(|e| self.err("stat", rel, e))?;
        f.left = entry.size;
        if entry.kind != EntryKind::File {
            return Err(self.err(
                "read",
                rel,
                io::Error::new(io::ErrorKind::NotFound, "not a regular file"),
            ));
        }
        Ok((entry, Box::new(f)))
    }

    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError> {
        let dir = self.staging_parent(rel)?;
        let temp_name = self.temp_name(file_name(rel));
        let result = (|| -> io::Result<Entry> {
            let mut f = File::from(openat2_beneath_mode(
                &dir,
                &temp_name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                temp_create_mode(mode, self.owner.is_some()),
            )?);
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

    fn stage_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError> {
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

    fn commit(&self, mut staged: Staged, expect: Option<&Entry>) -> Result<Entry, TransportError> {
        let kept = staged
            .handle
            .take()
            .and_then(|h| h.downcast::<StagedHere>().ok());
        let (dir, written) = match kept {
            Some(k) => (k.dir, k.written),
            None => match self.parent_fd(&staged.rel) {
                Ok(d) => (Arc::new(d), None),
                Err(e) => {
                    self.discard(staged);
                    return Err(e);
                }
            },
        };
        let name = file_name(&staged.rel);
        // A new entry: one rename that refuses to replace anything (no look first, and no
        // window between the look and the rename). Filesystems without the flag take the
        // look-then-rename way below.
        if expect.is_none() {
            match rename_noreplace_at(&dir, &staged.temp_name, name) {
                Ok(()) => return self.committed(&dir, &staged.rel, written),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = unlink_at(&dir, &staged.temp_name, false);
                    return Err(TransportError::Changed {
                        side: self.label.clone(),
                        path: staged.rel,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    let _ = unlink_at(&dir, &staged.temp_name, false);
                    return Err(self.err("rename into place", &staged.rel, e));
                }
            }
        }
        let current = self.lstat_at(&dir, name);
        let unchanged = match (&current, expect) {
            (Ok(None), None) => true,
            (Ok(Some(c)), Some(e)) => c.same_state(e) && c.kind != EntryKind::Dir,
            _ => false,
        };
        if !unchanged {
            let _ = unlink_at(&dir, &staged.temp_name, false);
            return Err(TransportError::Changed {
                side: self.label.clone(),
                path: staged.rel,
            });
        }
        if let Err(e) = rename_at(&dir, &staged.temp_name, &dir, name) {
            let _ = unlink_at(&dir, &staged.temp_name, false);
            return Err(self.err("rename into place", &staged.rel, e));
        }
        self.committed(&dir, &staged.rel, written)
    }

    fn discard(&self, staged: Staged) {
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
        kept_folder::release(self.key());
    }

    fn watch(&self, sink: EventSink, force_poll: bool) -> Result<Watching, TransportError> {
        watch_tree(
            &self.label,
            &self.root,
            sink,
            force_poll,
            self.poll_interval,
        )
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

/// A file opened for copying; its entry is re-read from the descriptor. Reads stop after the
/// size the file had when opened (no `read` just to see the end): a file that grew meanwhile
/// has another size or mtime in [`SourceFile::entry_now`], and the copy is retried.
struct LocalSource {
    file: File,
    left: u64,
}

impl Read for LocalSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl SourceFile for LocalSource {
    fn entry_now(&mut self) -> io::Result<Entry> {
        let meta = self.file.metadata()?;
        Entry::from_metadata(&meta, None).ok_or_else(|| io::Error::other("not a regular file"))
    }
}

/// The mode a temporary file is created with before its content is written: never more
/// access for anyone than the final `mode` gives (the final bits are set after the owner,
/// since a chown clears setuid/setgid bits). Until `fchown` gives the file its owner
/// (`chown_later`), it belongs to this process's user and group: the group bits then go
/// only as far as the bits everyone gets, so that members of this process's group (root's,
/// as a rule) can read nothing the final file would not show them as others.
fn temp_create_mode(mode: u32, chown_later: bool) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dir: &Path) -> LocalTransport {
        LocalTransport::open("test", dir).unwrap()
    }

    #[test]
    fn stage_and_commit_write_atomically_with_mode_and_mtime() {
        let d = tempfile::tempdir().unwrap();
        let tr = t(d.path());
        let s = tr
            .stage_file(
                "a/b/c.sh",
                &mut &b"#!/bin/sh\n"[..],
                0o755,
                1_500_000_000_123_456_789,
            )
            .unwrap();
        assert!(
            !d.path().join("a/b/c.sh").exists(),
            "not visible before commit"
        );
        let e = tr.commit(s, None).unwrap();
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.mode, 0o755);
        assert_eq!(e.mtime_ns, 1_500_000_000_123_456_789);
        assert_eq!(fs::read(d.path().join("a/b/c.sh")).unwrap(), b"#!/bin/sh\n");
        // A commit whose expectation no longer holds leaves the file alone.
        let s = tr.stage_file("a/b/c.sh", &mut &b"x"[..], 0o644, 0).unwrap();
        assert!(matches!(
            tr.commit(s, None),
            Err(TransportError::Changed { .. })
        ));
        assert_eq!(fs::read(d.path().join("a/b/c.sh")).unwrap(), b"#!/bin/sh\n");
        let leftovers: Vec<_> = fs::read_dir(d.path().join("a/b")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file removed");
    }

    #[test]
    fn symlinks_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let tr = t(d.path());
        assert!(matches!(
            tr.read_file("link/secret").map(|_| ()),
            Err(TransportError::Escapes { .. })
        ));
        assert!(matches!(
            tr.stage_file("link/new", &mut &b"x"[..], 0o644, 0),
            Err(TransportError::Escapes { .. })
        ));
        assert!(!outside.path().join("new").exists());
        assert!(tr.stat("link/secret").is_err() || tr.stat("link/secret").unwrap().is_none());
        let e = tr.stat("link").unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.target.as_deref(), outside.path().to_str());
        let scan = tr.scan("", &IgnoreRules::new(&[]).unwrap()).unwrap();
        assert_eq!(scan.entries.len(), 1, "the link, not what it points to");
        assert!(matches!(
            tr.stat("../x"),
            Err(TransportError::Escapes { .. })
        ));
    }

    #[test]
    fn stat_many_answers_as_stat_and_never_looks_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/1"), "1").unwrap();
        fs::write(d.path().join("a/b/x"), "x").unwrap();
        fs::write(d.path().join("a/2"), "22").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/link")).unwrap();
        let tr = t(d.path());
        let paths = [
            "a/1",
            "a/b/x",
            "a/2",
            "a/missing",
            "missing/x",
            "link/secret",
            "link",
            "a/link",
            "a/link/secret",
            "a/1/under-a-file",
            "../x",
            "a/../a/1",
        ];
        let many = tr.stat_many(&paths);
        assert_eq!(many.len(), paths.len());
        let shape = |r: &Result<Option<Entry>, TransportError>| match r {
            Ok(e) => format!("{e:?}"),
            Err(TransportError::Escapes { .. }) => "escapes".to_string(),
            Err(e) => format!("error {e}"),
        };
        for (p, r) in paths.iter().zip(&many) {
            assert_eq!(shape(r), shape(&tr.stat(p)), "{p}");
        }
        // Nothing behind a symlink is ever described (the folder outside has `secret`).
        for (i, p) in paths.iter().enumerate() {
            if p.ends_with("secret") {
                assert!(
                    matches!(many[i], Ok(None) | Err(TransportError::Escapes { .. })),
                    "{p}: {:?}",
                    shape(&many[i])
                );
            }
        }
        assert_eq!(many[2].as_ref().unwrap().as_ref().unwrap().size, 2);
        assert_eq!(
            many[6].as_ref().unwrap().as_ref().unwrap().kind,
            EntryKind::Symlink
        );
    }

    #[test]
    fn commit_returns_the_entry_written_and_reads_stop_at_the_size_seen_at_open() {
        let d = tempfile::tempdir().unwrap();
        let tr = t(d.path());
        let s = tr
            .stage_file("f", &mut &b"hello"[..], 0o640, 1_600_000_000_000_000_001)
            .unwrap();
        let written = tr.commit(s, None).unwrap();
        assert_eq!(Some(written), tr.stat("f").unwrap());
        let (entry, mut src) = tr.read_file("f").unwrap();
        assert_eq!(entry.size, 5);
        // Grows after the open: the copy reads what it saw, and the new entry tells it changed.
        fs::OpenOptions::new()
            .append(true)
            .open(d.path().join("f"))
            .unwrap()
            .write_all(b" world")
            .unwrap();
        let mut got = Vec::new();
        src.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        assert!(!src.entry_now().unwrap().same_state(&entry));
    }

    #[test]
    fn scan_reads_gitignores_and_reports_leftovers() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src/gen")).unwrap();
        fs::write(d.path().join(".gitignore"), "*.o\n").unwrap();
        fs::write(d.path().join("src/a.rs"), "x").unwrap();
        fs::write(d.path().join("src/a.o"), "x").unwrap();
        fs::write(d.path().join("src/gen/z"), "x").unwrap();
        fs::write(d.path().join(format!("src/.a.rs{TEMP_MARKER}1-1")), "x").unwrap();
        let tr = t(d.path());
        let rules = IgnoreRules::new(&["gen/".to_string()]).unwrap();
        let scan = tr.scan("", &rules).unwrap();
        let keys: Vec<&str> = scan.entries.keys().map(|s| s.as_str()).collect();
        assert_eq!(keys, vec![".gitignore", "src", "src/a.rs"]);
        assert_eq!(scan.gitignores.get("").map(|s| s.as_str()), Some("*.o\n"));
        assert_eq!(scan.leftovers.len(), 1);
        let sub = tr.scan("src/a.rs", &rules).unwrap();
        assert_eq!(sub.entries.len(), 1);
        assert!(tr.scan("missing", &rules).unwrap().entries.is_empty());
    }

    #[test]
    fn remove_refuses_changed_entries_and_keeps_nonempty_folders() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("dir")).unwrap();
        fs::write(d.path().join("dir/f"), "1").unwrap();
        let tr = t(d.path());
        let f = tr.stat("dir/f").unwrap().unwrap();
        let dir = tr.stat("dir").unwrap().unwrap();
        assert!(matches!(
            tr.remove("dir", &dir),
            Err(TransportError::NotEmpty { .. })
        ));
        let mut stale = f.clone();
        stale.size += 1;
        assert!(matches!(
            tr.remove("dir/f", &stale),
            Err(TransportError::Changed { .. })
        ));
        tr.remove("dir/f", &f).unwrap();
        tr.remove("dir", &dir).unwrap();
        assert!(!d.path().join("dir").exists());
    }

    #[test]
    fn mkdir_and_set_mode() {
        let d = tempfile::tempdir().unwrap();
        let tr = t(d.path());
        let e = tr.mkdir("x/y", 0o700).unwrap();
        assert_eq!((e.kind, e.mode), (EntryKind::Dir, 0o700));
        fs::write(d.path().join("x/f"), "1").unwrap();
        assert_eq!(tr.set_mode("x/f", 0o751).unwrap().mode, 0o751);
    }
}
