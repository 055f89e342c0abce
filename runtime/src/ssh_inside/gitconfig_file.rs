//! The environment's system gitconfig (`berth-builtin:write-gitconfig`): run as root inside
//! by `up`, it writes its stdin as [`GITCONFIG_PATH`] (mode 0644, root's) in berth's own
//! tmpfs [`RUN_DIR`], or removes the file when stdin is empty. Every process started inside
//! gets `GIT_CONFIG_SYSTEM` pointing at the file while it exists, so `exec` pays nothing for
//! the host's git identity. Like `write-secrets`, it refuses to write unless the folder is a
//! tmpfs reached without a symlink.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use berth_agent_proto::{GITCONFIG_PATH, RUN_DIR};

use super::secret_files::open_run_tmpfs;

/// Largest gitconfig accepted.
const MAX_GITCONFIG: u64 = 64 * 1024;
const FILE: &str = "gitconfig";

fn fail(msg: String) -> i32 {
    let _ = writeln!(io::stderr(), "{msg}");
    1
}

fn write_file(dir: &OwnedFd, text: &[u8]) -> Result<(), String> {
    let tmp = ".gitconfig.new";
    let at = Some(dir.as_raw_fd());
    let _ = nix::unistd::unlinkat(at, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fd = nix::fcntl::openat(
        at,
        tmp,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("cannot write {GITCONFIG_PATH}: {e}"))?;
    // SAFETY: a descriptor just opened, owned by nobody else.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // The umask may have taken bits away: readable by every user inside.
    nix::sys::stat::fchmod(
        f.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("cannot set the mode of {GITCONFIG_PATH}: {e}"))?;
    f.write_all(text)
        .map_err(|e| format!("cannot write {GITCONFIG_PATH}: {e}"))?;
    nix::fcntl::renameat(at, tmp, at, FILE)
        .map_err(|e| format!("cannot write {GITCONFIG_PATH}: {e}"))
}

/// The builtin; see the module's documentation. Returns the exit code.
pub fn write_stdin() -> i32 {
    let dir = match open_run_tmpfs("berth") {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let mut text = Vec::new();
    if let Err(e) = io::stdin()
        .lock()
        .take(MAX_GITCONFIG + 1)
        .read_to_end(&mut text)
    {
        return fail(format!("cannot read the gitconfig: {e}"));
    }
    if text.len() as u64 > MAX_GITCONFIG {
        return fail("the gitconfig is larger than 64 KiB".into());
    }
    let done = if text.is_empty() {
        match nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            FILE,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("cannot remove {GITCONFIG_PATH}: {e}")),
        }
    } else {
        write_file(&dir, &text)
    };
    match done {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}
