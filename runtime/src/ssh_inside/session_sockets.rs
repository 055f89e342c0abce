//! The inside half of credential forwarding (`berth-builtin:session-sockets`): run as the
//! user of a session (`shell`, `exec`, an SSH channel), it makes a private folder
//! `/tmp/berth-<random>/` (mode 0700, that user's: nobody else inside but root can enter
//! it, and other environments have their own filesystem), binds the listening sockets the
//! host side asked for in it (`agent.sock`, `git-credential.sock`), writes the session's
//! `gitconfig` when given one, and passes the folder's path and the listening sockets to
//! the host side over its stdin (a Unix socket pair) with `SCM_RIGHTS`. The host side
//! accepts the connections and decides alone where they lead: nothing the environment
//! sends names a target.
//!
//! The builtin then waits for its stdin to end (the session is over, or the host side
//! died) and removes what it made, through the folder's descriptor (a name swapped in the
//! meantime is not followed).
//!
//! `argv`: `[SESSION_SOCKETS, "agent.sock,git-credential.sock", GITCONFIG_TEXT?]`.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// Where the private folders are made.
const PARENT: &str = "/tmp";
/// The session's git configuration file inside the folder.
pub const GITCONFIG_FILE: &str = berth_agent_proto::SESSION_GITCONFIG;
/// Stands for the folder's path in the gitconfig text (the host side cannot know it yet).
/// (The same a VM's agent replaces.)
pub const SESSION_DIR_PLACEHOLDER: &str = berth_agent_proto::SESSION_DIR_PLACEHOLDER;

/// Whether `name` may be a socket's file name in the folder (no path, no oddities).
pub fn valid_socket_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && name != GITCONFIG_FILE
}

fn random_hex() -> io::Result<String> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes a fresh folder `/tmp/berth-<random>` (never one that existed: `mkdir` fails on any
/// name already there, a symlink included) and returns its path and descriptor.
fn make_private_dir() -> Result<(String, OwnedFd), String> {
    for _ in 0..16 {
        let path = format!(
            "{PARENT}/berth-{}",
            random_hex().map_err(|e| format!("no random bytes: {e}"))?
        );
        match nix::unistd::mkdir(path.as_str(), nix::sys::stat::Mode::S_IRWXU) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(format!("cannot make {path}: {e}")),
        }
        let fd = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open {path}: {e}"))?;
        // SAFETY: a descriptor just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The umask may have taken bits away, never added: set exactly 0700.
        nix::sys::stat::fchmod(fd.as_raw_fd(), nix::sys::stat::Mode::S_IRWXU)
            .map_err(|e| format!("cannot set the mode of {path}: {e}"))?;
        return Ok((path, fd));
    }
    Err(format!("cannot find a free name in {PARENT}"))
}

fn write_gitconfig(dir: &OwnedFd, text: &str) -> Result<(), String> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        GITCONFIG_FILE,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| format!("cannot write the session's gitconfig: {e}"))?;
    // SAFETY: a descriptor just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the session's gitconfig: {e}"))
}

/// Sends `path` (any short text) and the listening sockets `fds` over `to` (the host
/// side's end).
pub(super) fn pass_fds(to: RawFd, path: &str, fds: &[RawFd]) -> Result<(), String> {
    let iov = [io::IoSlice::new(path.as_bytes())];
    let rights = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    let cmsg: &[_] = if fds.is_empty() { &[] } else { &rights };
    nix::sys::socket::sendmsg::<()>(to, &iov, cmsg, nix::sys::socket::MsgFlags::empty(), None)
        .map_err(|e| format!("cannot pass the sockets to berth: {e}"))?;
    Ok(())
}

/// Removes what [`serve_stdin`] made, by names relative to the folder's descriptor.
fn clean_up(path: &str, dir: &OwnedFd, names: &[&str]) {
    for n in names.iter().copied().chain([GITCONFIG_FILE]) {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            n,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    if let Ok(c) = CString::new(path) {
        // SAFETY: rmdir with a NUL-terminated path; it removes an empty folder only, never
        // follows a link.
        unsafe { libc::rmdir(c.as_ptr()) };
    }
}

/// The builtin: see the module's documentation. Returns the exit code.
pub fn serve_stdin(sockets: &str, gitconfig: Option<&str>) -> i32 {
    // The supervisor hangs up on a session's processes when its caller goes away; the
    // caller's end of stdin closes then too, and that is when the folder is removed.
    // SAFETY: setting a signal's disposition to "ignore" in this single-threaded process.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let names: Vec<&str> = sockets.split(',').filter(|s| !s.is_empty()).collect();
    if (names.is_empty() && gitconfig.is_none())
        || names.len() > 4
        || !names.iter().all(|n| valid_socket_name(n))
    {
        let _ = writeln!(
            io::stderr(),
            "session-sockets: bad socket names {sockets:?}"
        );
        return 2;
    }
    let (path, dir) = match make_private_dir() {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{e}");
            return 1;
        }
    };
    let result = (|| {
        let mut listeners = Vec::new();
        for n in &names {
            let l = UnixListener::bind(format!("{path}/{n}"))
                .map_err(|e| format!("cannot listen on {path}/{n}: {e}"))?;
            listeners.push(l);
        }
        if let Some(text) = gitconfig {
            write_gitconfig(&dir, &text.replace(SESSION_DIR_PLACEHOLDER, &path))?;
        }
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        pass_fds(0, &path, &fds)
        // Our copies close here: the host side's are the only ones.
    })();
    if let Err(e) = result {
        let _ = writeln!(io::stderr(), "{e}");
        clean_up(&path, &dir, &names);
        return 1;
    }
    // SAFETY: fd 0 is our stdin, owned by this process from here on.
    let mut stdin = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(0) });
    let mut buf = [0u8; 256];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    clean_up(&path, &dir, &names);
    0
}
