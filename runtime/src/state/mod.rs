//! Where berth keeps its data, how it writes it and how it serializes access.
//!
//! Layout under the berth home (`BERTH_HOME`, else `/var/lib/berth` for root, else
//! `$XDG_DATA_HOME/berth` or `~/.local/share/berth`):
//!
//! ```text
//! blobs/sha256/<hex>        content-addressed blobs, verified before they are renamed in
//! layers/<diff-id-hex>/     unpacked layers, read-only, shared by every image and environment
//! images/<ref-hash>.json    image reference → manifest digest → layer chain
//! envs/<env-id>/            one per environment: state.json, lock, control.sock, upper/, work/, logs/
//! volumes/<name>/           named volumes, kept across `destroy` unless `--volumes`
//! kernels/<version>/        VM kernels and modules
//! tmp/                      staging area on the same filesystem, so renames are atomic
//! locks/                    store-wide locks (image store)
//! ```
//!
//! Every state file is written with [`atomic_write`]: write to a temporary file in the same
//! directory, fsync it, rename it over the target, fsync the directory. A reader therefore sees
//! the old or the new content, never a torn one, whatever kills the writer.
//!
//! Locks are `flock(2)` locks on files ([`FileLock`]); the kernel drops them when the holder
//! dies, so a `kill -9` never leaves a stale lock behind.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Errors about berth's own state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot determine where berth keeps its data: neither BERTH_HOME, XDG_DATA_HOME nor HOME is set; set BERTH_HOME to a writable folder")]
    NoHome,
    #[error("cannot create berth's state folder {path}: {source}; check its permissions or set BERTH_HOME to a writable folder")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot restrict {path} to mode {mode:04o} ({source}): berth keeps its store out of other users' reach; give the folder to the user running berth (`chown`) or set BERTH_HOME to a folder of your own")]
    Permissions {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt ({source}); remove it (or run `berth destroy`) and try again")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("{what} is busy: another berth command holds {path}; wait for it to finish")]
    Busy { what: String, path: PathBuf },
    #[error("permission denied: {path} belongs to {owner}, and berth keeps each user's environments private; use your own berth home (unset BERTH_HOME) or run berth as {owner}")]
    NotYours { path: PathBuf, owner: String },
}

/// The name of the user `uid` (or `uid N` when it has none), for messages.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// `Err(NotYours)` when `path` exists, belongs to another user, and this process is not root
/// (root manages every user's environments, as with any system service).
pub fn check_owner(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid();
    if me.is_root() {
        return Ok(());
    }
    // What the path names (a BERTH_HOME may be a link to the real folder).
    match fs::metadata(path) {
        Ok(m) if m.uid() != me.as_raw() => Err(StateError::NotYours {
            path: path.to_path_buf(),
            owner: user_name(m.uid()),
        }),
        _ => Ok(()),
    }
}

/// `source` as [`StateError::NotYours`] when it is a permission error on something of
/// another user's under `dir`, else as [`StateError::Read`] of `path`.
pub fn read_error(dir: &Path, path: &Path, source: io::Error) -> StateError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        if let Err(e) = check_owner(dir) {
            return e;
        }
    }
    StateError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The root of berth's on-disk state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BerthHome {
    root: PathBuf,
}

impl BerthHome {
    /// The home chosen from the environment: `BERTH_HOME`, `/var/lib/berth` for root, or the
    /// user's XDG data folder. Creates the folder layout when missing.
    pub fn discover() -> Result<Self, StateError> {
        let home = Self::at(Self::locate()?)?;
        home.sweep_tmp();
        Ok(home)
    }

    /// The folder [`discover`](Self::discover) would use, without creating or changing it.
    pub fn locate() -> Result<PathBuf, StateError> {
        Ok(
            if let Some(h) = std::env::var_os("BERTH_HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(h)
            } else if nix::unistd::geteuid().is_root() {
                PathBuf::from("/var/lib/berth")
            } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(x).join("berth")
            } else if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                PathBuf::from(h).join(".local/share/berth")
            } else {
                return Err(StateError::NoHome);
            },
        )
    }

    /// Removes what killed berth processes left in `tmp/`: staging folders and temporary
    /// files named `<purpose>-<pid>-<suffix>` whose process is gone (a `kill -9`, a crash,
    /// a power loss), and partial downloads nobody resumed for a day (a download in progress
    /// holds its lock and is never touched). Runs at the start of every command.
    pub fn sweep_tmp(&self) {
        const STALE_PARTIAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
        let Ok(rd) = fs::read_dir(self.tmp_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if let Some(pid) = staging_pid(&name) {
                if !process_alive(pid) {
                    let _ = if path.is_dir() && !path.is_symlink() {
                        remove_tree(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            } else if let Some(hex) = name
                .strip_prefix("blob-")
                .and_then(|n| n.strip_suffix(".partial"))
            {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_PARTIAL);
                if old {
                    let lock = self.locks_dir().join("blobs").join(hex);
                    if let Ok(Some(_held)) = FileLock::try_acquire(&lock, LockMode::Exclusive) {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
    }

    /// A home at an explicit path (tests), created when missing.
    pub fn at(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        let root = if root.is_relative() {
            std::env::current_dir()
                .map_err(|source| StateError::CreateDir {
                    path: root.clone(),
                    source,
                })?
                .join(root)
        } else {
            root
        };
        // Someone else's home (BERTH_HOME pointing at root's /var/lib/berth): refused whole,
        // before anything is created in it or read from it.
        check_owner(&root)?;
        let home = BerthHome { root };
        for dir in [
            home.blobs_dir(),
            home.layers_dir(),
            home.images_dir(),
            home.envs_dir(),
            home.volumes_dir(),
            home.kernels_dir(),
            home.tmp_dir(),
            home.locks_dir(),
        ] {
            create_dir_all(&dir)?;
        }
        home.restrict_access(nix::unistd::geteuid().is_root())?;
        Ok(home)
    }

    /// Keeps the store out of other local users' reach, as containerd and podman keep theirs:
    /// unpacked layers hold the images' setuid files and device nodes, and an environment's
    /// folder its writable layer. The home is `0711` for root (an environment's root, an
    /// unprivileged host uid, must still walk through it and `envs/` to its own folder, which
    /// the container backend gives it through the folder's group) and `0700` rootless (there
    /// the environment's root is the user); `layers/`, `blobs/`, `images/`, `tmp/`,
    /// `volumes/`, `kernels/` and `locks/` are `0700` (only berth's root-side processes open
    /// them); each `envs/<id>/` loses every permission for others. A home made by an older
    /// berth is tightened here, by the next command, without touching its content.
    pub fn restrict_access(&self, as_root: bool) -> Result<(), StateError> {
        let traversable = if as_root { 0o711 } else { 0o700 };
        set_mode(&self.root, traversable)?;
        set_mode(&self.envs_dir(), traversable)?;
        for dir in [
            self.root.join("blobs"),
            self.layers_dir(),
            self.images_dir(),
            self.volumes_dir(),
            self.kernels_dir(),
            self.tmp_dir(),
            self.locks_dir(),
        ] {
            set_mode(&dir, 0o700)?;
        }
        let Ok(envs) = fs::read_dir(self.envs_dir()) else {
            return Ok(());
        };
        for entry in envs.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() && mode & 0o067 != 0 {
                // Group search stays: the container backend gives it to the environment's root.
                set_mode(&path, mode & 0o710)?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn envs_dir(&self) -> PathBuf {
        self.root.join("envs")
    }
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// The folder of one environment.
    pub fn env_dir(&self, env_id: &str) -> PathBuf {
        self.envs_dir().join(env_id)
    }

    /// A fresh, uniquely named staging folder under `tmp/`, removed when the guard drops
    /// (unless [`StagingDir::keep`] is called after its content was renamed elsewhere).
    pub fn staging_dir(&self, purpose: &str) -> Result<StagingDir, StateError> {
        let path = self.tmp_dir().join(format!(
            "{purpose}-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        create_dir_all(&path)?;
        Ok(StagingDir { path: Some(path) })
    }
}

/// The write end of the pipe [`remove_staging_on_signals`]'s handler wakes its thread with.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::SeqCst);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the byte lives on this stack frame.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// Makes SIGINT and SIGTERM remove this process's staging folders and temporary files in
/// `tmp/` (half-unpacked layers, imports) before the process exits with 128 + the signal,
/// as a shell reports it. Partial downloads stay: the next pull resumes them. For commands
/// whose only lasting work is in `tmp/` until a final rename (image pulls); a `kill -9` is
/// covered by [`BerthHome::sweep_tmp`] at the next command.
pub fn remove_staging_on_signals(home: &BerthHome) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let tmp = home.tmp_dir();
    std::thread::Builder::new()
        .name("stop-signal".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            if nix::unistd::read(r.as_raw_fd(), &mut b).is_ok_and(|n| n == 1) {
                let me = std::process::id() as i32;
                if let Ok(rd) = fs::read_dir(&tmp) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if staging_pid(&name) == Some(me) {
                            let p = e.path();
                            let _ = if p.is_dir() && !p.is_symlink() {
                                remove_tree(&p)
                            } else {
                                fs::remove_file(&p)
                            };
                        }
                    }
                }
                std::process::exit(128 + i32::from(b[0]));
            }
        })?;
    SIGNAL_PIPE.store(
        std::os::fd::IntoRawFd::into_raw_fd(w),
        std::sync::atomic::Ordering::SeqCst,
    );
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only writes one byte to a pipe, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// The pid in a temporary name `<purpose>-<pid>-<hex suffix>` (as [`BerthHome::staging_dir`]
/// and the other writers under `tmp/` name them), or `None` for any other name.
fn staging_pid(name: &str) -> Option<i32> {
    let (rest, suffix) = name.rsplit_once('-')?;
    let (purpose, pid) = rest.rsplit_once('-')?;
    let valid_suffix = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_hexdigit());
    let valid_purpose = !purpose.is_empty()
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit());
    if !valid_suffix || !valid_purpose || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists (of any user).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// An identifier for an environment that is stable for one berth.toml: its name plus a short
/// hash of the file's absolute path, so two projects both named `web` do not collide.
pub fn env_id(name: &str, envfile: &Path) -> String {
    let digest = Sha256::digest(envfile.as_os_str().as_encoded_bytes());
    format!("{name}-{}", &hex::encode(digest)[..8])
}

/// A suffix unique within this process and unlikely across processes (for temp names that
/// also carry the pid).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{n:x}")
}

/// A temporary folder removed on drop unless kept.
#[derive(Debug)]
pub struct StagingDir {
    path: Option<PathBuf>,
}

impl StagingDir {
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
    /// Stop managing the folder (its content was moved to its final place).
    pub fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// Removes a tree, first making read-only directories writable (unpacked layers can contain
/// mode-0555 folders that `remove_dir_all` cannot empty when not root).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        }
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Creates the folder `path` (and its parents) with mode 0700 for the folder itself, or
/// narrows an existing one to at most 0710 (environment folders of older versions were 0755):
/// environment folders hold `[env]` values, logs and the control socket, for their owner only.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StateError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        create_dir_all(parent)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = fs::symlink_metadata(path).map_err(err)?;
            if !m.is_dir() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a folder; remove it",
                )));
            }
            // Group search (0710) is how a container's mapped root reaches its rootfs.
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o067 != 0 {
                check_owner(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o710)).map_err(err)?;
            }
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

/// Sets `path`'s permission bits to `mode` unless they already are (a no-op on every command
/// after the first).
pub fn set_mode(path: &Path, mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).map_err(|source| StateError::Permissions {
        path: path.to_path_buf(),
        mode,
        source,
    })?;
    if meta.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        StateError::Permissions {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`
/// (`statvfs`: available blocks × fragment size).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

pub fn create_dir_all(path: &Path) -> Result<(), StateError> {
    fs::create_dir_all(path).map_err(|source| StateError::CreateDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically and durably: temp file in the same folder, fsync,
/// rename, fsync of the folder.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    replace_file(path, bytes, true)
}

/// Like [`atomic_write`] but without fsync: readers still see the old or the new content and a
/// killed writer leaves no torn file, but a power loss may lose the update. For runtime state
/// that means nothing after a reboot anyway (which processes run, which cgroups exist), where
/// two fsyncs per update would dominate the cost of starting an environment.
pub fn replace_volatile(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or(OsStr::new("state"));
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        unique_suffix()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// `openat2(2)`'s `struct open_how`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
/// `openat2` resolve flags (linux/openat2.h).
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// `/proc/self/fd/N` of an open descriptor: lets a path-taking call (mount(2), a chown, a
/// read_link) act on exactly the object that was resolved and opened.
pub fn fd_path(fd: &impl std::os::fd::AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `openat2(2)` of `path` relative to `dir` with the `RESOLVE_*` flags `resolve`, always
/// close-on-exec, retried on `EINTR`/`EAGAIN`. `mode` is passed only with `O_CREAT`.
pub fn openat2(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &str,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    loop {
        // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and a correctly sized
        // open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
            return Err(e);
        }
    }
}

/// Opens `name` (a relative path) under the open folder `dir` without following a symlink
/// anywhere and without leaving `dir`: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS)`, always close-on-exec. For files in state folders that something
/// other than berth could have replaced by a link (logs a process inside can reach). A link
/// gives `ELOOP`, which [`refuse_link`] turns into a message.
pub fn open_beneath(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    flags: i32,
    mode: u32,
) -> io::Result<File> {
    let resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    openat2(dir, name, flags, mode, resolve).map(File::from)
}

/// Opens the folder `path` itself, refusing a symlink in its place (`O_NOFOLLOW`): the
/// anchor for [`open_beneath`]. Close-on-exec.
pub fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `e` with `path` and the way out in its message when it is the kernel refusing a symlink
/// (`ELOOP`, or `ENOTDIR` from `O_DIRECTORY | O_NOFOLLOW` on a link); other errors unchanged.
pub fn refuse_link(path: &Path, e: io::Error) -> io::Error {
    let is_link = e.raw_os_error() == Some(libc::ELOOP)
        || (e.raw_os_error() == Some(libc::ENOTDIR)
            && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()));
    if !is_link {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "{} is a symbolic link (or passes through one): berth does not follow links in its \
             state folders, as something inside the environment may have planted it; remove it \
             and try again",
            path.display()
        ),
    )
}

/// Serializes `value` as pretty JSON and writes it with [`atomic_write`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    atomic_write(path, &json_bytes(path, value)?)
}

/// Like [`write_json`], but leaves `path` alone when it is a regular file that already holds
/// exactly these bytes: an unchanged state file then costs a read instead of two fsyncs
/// (milliseconds each on a busy disk). Its content was made durable by the `atomic_write`
/// that put it there.
pub fn write_json_if_changed<T: serde::Serialize>(
    path: &Path,
    value: &T,
) -> Result<(), StateError> {
    let bytes = json_bytes(path, value)?;
    let meta = fs::symlink_metadata(path).ok();
    let is_file = meta.as_ref().is_some_and(|m| m.file_type().is_file());
    if is_file && fs::read(path).is_ok_and(|old| old == bytes) {
        // Written 0644 by an older version: narrowed like a rewrite would.
        use std::os::unix::fs::PermissionsExt;
        if meta.is_some_and(|m| m.permissions().mode() & 0o077 != 0) {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
                StateError::Write {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        }
        return Ok(());
    }
    atomic_write(path, &bytes)
}

fn json_bytes<T: serde::Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// [`write_json`] through [`replace_volatile`]: no fsync.
pub fn write_json_volatile<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    replace_volatile(path, &bytes)
}

/// Reads JSON written by [`write_json`]; `Ok(None)` when the file does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(
            path.parent().unwrap_or(Path::new("/")),
            path,
            source,
        )),
    }
}

/// Whether a lock is shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An `flock(2)` lock on a file, released on drop or when the process dies.
#[derive(Debug)]
pub struct FileLock {
    /// Held open for the lock's lifetime: closing the descriptor releases the lock.
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<Self, StateError> {
        let file = Self::open(path)?;
        flock(&file, mode, false).map_err(|source| StateError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Takes the lock if free; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<Self>, StateError> {
        let file = Self::open(path)?;
        match flock(&file, mode, true) {
            Ok(()) => Ok(Some(FileLock {
                _file: file,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(StateError::Lock {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the locked file is still the one at [`path`](Self::path): `false` once
    /// someone removed (or replaced) it, after which the lock guards nothing. Locks on files
    /// that get removed (the last user cleans up) must re-acquire when this says `false`.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self._file.metadata(), fs::metadata(&self.path)) {
            (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
            _ => false,
        }
    }

    fn open(path: &Path) -> Result<File, StateError> {
        if let Some(dir) = path.parent() {
            create_dir_all(dir)?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::PermissionDenied {
                    if let Err(e) = check_owner(path.parent().unwrap_or(Path::new("/"))) {
                        return e;
                    }
                }
                StateError::Lock {
                    path: path.to_path_buf(),
                    source,
                }
            })
    }
}

fn flock(file: &File, mode: LockMode, nonblocking: bool) -> io::Result<()> {
    let mut op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a file descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_json_is_not_rewritten_but_changes_and_symlinks_are() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("env.json");
        write_json_if_changed(&p, &vec![1, 2]).unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        write_json_if_changed(&p, &vec![1, 2]).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "same content: left alone"
        );
        write_json_if_changed(&p, &vec![3]).unwrap();
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            ino,
            "new content: replaced"
        );
        assert_eq!(read_json::<Vec<i32>>(&p).unwrap(), Some(vec![3]));
        // A symlink holding the same bytes is replaced by a regular file, as write_json does.
        let target = t.path().join("elsewhere.json");
        fs::copy(&p, &target).unwrap();
        let link = t.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_json_if_changed(&link, &vec![3]).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_round_trip_and_corrupt_file_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2]));
        fs::write(&p, b"{not json").unwrap();
        assert!(matches!(
            read_json::<Vec<u32>>(&p),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn exclusive_lock_excludes_and_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let held = FileLock::acquire(&p, LockMode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .is_none());
        drop(held);
        let a = FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .unwrap();
        let b = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        assert!(b.is_some());
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        drop(a);
    }

    #[test]
    fn home_layout_is_created_and_staging_is_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path().join("h")).unwrap();
        assert!(home.blobs_dir().is_dir() && home.layers_dir().is_dir() && home.tmp_dir().is_dir());
        let s = home.staging_dir("pull").unwrap();
        let sp = s.path().to_path_buf();
        fs::write(sp.join("x"), b"1").unwrap();
        drop(s);
        assert!(!sp.exists());
    }

    #[test]
    fn state_files_and_environment_folders_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let env = d.path().join("envs/e1");
        create_private_dir(&env).unwrap();
        assert_eq!(mode(&env), 0o700);
        atomic_write(&env.join("env.json"), b"{}").unwrap();
        assert_eq!(mode(&env.join("env.json")), 0o600);
        drop(FileLock::acquire(&env.join("lock"), LockMode::Exclusive).unwrap());
        assert_eq!(mode(&env.join("lock")), 0o600);
        // Made by an older version: narrowed; group search (a mapped root's) is kept.
        fs::set_permissions(&env, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&env).unwrap();
        assert_eq!(mode(&env), 0o710);
        fs::set_permissions(env.join("env.json"), fs::Permissions::from_mode(0o644)).unwrap();
        write_json_if_changed(&env.join("env.json"), &serde_json::json!({})).unwrap();
        write_json_if_changed(&env.join("env.json"), &serde_json::json!({})).unwrap();
        assert_eq!(mode(&env.join("env.json")), 0o600);
    }

    #[test]
    fn open_beneath_refuses_links_and_escapes() {
        use std::os::fd::AsFd;
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("outside"), "x").unwrap();
        let dir = d.path().join("logs");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("ok.log"), "fine").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), dir.join("link.log")).unwrap();
        let f = open_dir_nofollow(&dir).unwrap();
        assert!(open_beneath(f.as_fd(), "ok.log", libc::O_RDONLY, 0).is_ok());
        for bad in ["link.log", "../outside", "/etc/passwd"] {
            let e = open_beneath(f.as_fd(), bad, libc::O_RDONLY, 0).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)),
                "{bad}: {e}"
            );
        }
        let e = open_beneath(f.as_fd(), "link.log", libc::O_RDONLY, 0).unwrap_err();
        let e = refuse_link(&dir.join("link.log"), e);
        assert!(e.to_string().contains("link.log is a symbolic link"), "{e}");
        // The anchor folder itself replaced by a link.
        let linked = d.path().join("linked");
        std::os::unix::fs::symlink(&dir, &linked).unwrap();
        let e = refuse_link(&linked, open_dir_nofollow(&linked).unwrap_err());
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn another_users_home_is_refused_naming_its_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to become another user; CI runs as root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_owner(d.path()).is_ok(), "root manages every home");
        // SAFETY: the child only calls setresuid and this crate's code, then _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let nobody = nix::unistd::Uid::from_raw(65534);
                let code = if nix::unistd::setresuid(nobody, nobody, nobody).is_err() {
                    10
                } else {
                    match BerthHome::at(d.path()) {
                        Err(StateError::NotYours { owner, .. }) if owner.contains("uid 0") => 0,
                        _ => 1,
                    }
                };
                // SAFETY: leaving the forked child without unwinding.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        assert!(
            fs::read_dir(d.path()).unwrap().next().is_none(),
            "nothing was created in the refused home"
        );
    }

    #[test]
    fn the_store_is_private_and_an_old_home_is_tightened_without_data_loss() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("h");
        let home = BerthHome::at(&root).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        fs::create_dir_all(home.layers_dir().join("abc/bin")).unwrap();
        fs::write(home.layers_dir().join("abc/bin/tool"), b"x").unwrap();
        fs::create_dir_all(home.env_dir("e-1").join("upper")).unwrap();
        for p in [
            root.clone(),
            home.layers_dir(),
            home.envs_dir(),
            home.env_dir("e-1"),
            root.join("blobs"),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for as_root in [true, false] {
            home.restrict_access(as_root).unwrap();
            let top = if as_root { 0o711 } else { 0o700 };
            assert_eq!(mode(&root), top);
            assert_eq!(mode(&home.envs_dir()), top);
            for p in [home.layers_dir(), root.join("blobs"), home.tmp_dir()] {
                assert_eq!(mode(&p), 0o700, "{}", p.display());
            }
            assert_eq!(mode(&home.env_dir("e-1")), 0o710);
        }
        assert_eq!(
            fs::read(home.layers_dir().join("abc/bin/tool")).unwrap(),
            b"x"
        );
        assert!(home.env_dir("e-1").join("upper").is_dir());
    }

    #[test]
    fn the_next_command_removes_what_dead_processes_left_in_tmp() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let tmp = home.tmp_dir();
        // A pid that cannot exist (above the kernel's pid_max limit).
        let dead = tmp.join("layer-4194305-1a2b");
        fs::create_dir_all(dead.join("usr/bin")).unwrap();
        fs::write(dead.join("usr/bin/x"), b"half").unwrap();
        fs::write(tmp.join("blob-import-4194305-ff"), b"half").unwrap();
        let live = home.staging_dir("layer").unwrap();
        let fresh_partial = tmp.join(format!("blob-{}.partial", "ab".repeat(32)));
        fs::write(&fresh_partial, b"resumable").unwrap();
        let old_partial = tmp.join(format!("blob-{}.partial", "cd".repeat(32)));
        fs::write(&old_partial, b"abandoned").unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 24 * 3600);
        fs::File::options()
            .write(true)
            .open(&old_partial)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let other = tmp.join("removing-abc");
        fs::create_dir(&other).unwrap();
        home.sweep_tmp();
        assert!(!dead.exists(), "a dead process's staging folder stays");
        assert!(!tmp.join("blob-import-4194305-ff").exists());
        assert!(
            live.path().exists(),
            "this process's staging folder was removed"
        );
        assert!(fresh_partial.exists(), "a resumable download was removed");
        assert!(!old_partial.exists(), "a day-old partial download stays");
        assert!(other.exists(), "a name without a pid was touched");
        assert_eq!(staging_pid("layer-12-ab"), Some(12));
        assert_eq!(staging_pid("build-upper-12-ab"), Some(12));
        assert_eq!(staging_pid("removing-abc"), None);
        assert_eq!(staging_pid("blob-ab.partial"), None);
    }

    #[test]
    fn env_ids_differ_by_path() {
        let a = env_id("web", Path::new("/a/berth.toml"));
        let b = env_id("web", Path::new("/b/berth.toml"));
        assert_ne!(a, b);
        assert!(a.starts_with("web-") && a.len() == "web-".len() + 8);
    }
}
