//! Temporary work under `tmp/`: staging folders removed on drop, unique temporary names that
//! carry the writer's pid (so the next command can tell a dead writer's leftovers), their
//! removal on SIGINT/SIGTERM, and removal of trees with read-only folders.

use std::fs;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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
/// covered by `BerthHome::sweep_tmp` at the next command. `tmp` is the home's `tmp/`; `also`
/// removes what else the stopping process (its pid given) leaves elsewhere.
pub fn remove_staging_on_signals(tmp: PathBuf, also: fn(i32)) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
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
                also(me);
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

/// The pid in a temporary name `<purpose>-<pid>-<hex suffix>` (as `BerthHome::staging_dir`
/// and the other writers under `tmp/` name them), or `None` for any other name.
pub(super) fn staging_pid(name: &str) -> Option<i32> {
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
pub(super) fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence; no memory is involved.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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
    pub(super) path: Option<PathBuf>,
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
