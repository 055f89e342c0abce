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
//! meantime is not followed). The folder is a [`SessionFolder`], the same a VM's agent
//! makes for a session. A builtin killed before it could remove its folder leaves it
//! unlocked; the next session's builtin of the same user removes it.
//!
//! `argv`: `[SESSION_SOCKETS, "agent.sock,git-credential.sock", GITCONFIG_TEXT?]`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use berth_inside_files::session_folder::SessionFolder;

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
    let mut folder = match SessionFolder::make() {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{e}");
            return 1;
        }
    };
    let result = (|| {
        let mut listeners = Vec::new();
        for n in &names {
            listeners.push(folder.listen(n)?);
        }
        if let Some(text) = gitconfig {
            folder.write_gitconfig(text)?;
        }
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        pass_fds(0, folder.path(), &fds)
        // Our copies close here: the host side's are the only ones.
    })();
    if let Err(e) = result {
        let _ = writeln!(io::stderr(), "{e}");
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
    drop(folder);
    0
}
