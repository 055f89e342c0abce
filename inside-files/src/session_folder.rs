//! A session's private folder `/tmp/berth-<16 hex>`: the listening sockets of its forwarded
//! credentials (`agent.sock`, `git-credential.sock`) and its gitconfig. It is made under a
//! fresh random name (`mkdir` fails on any name already there, a link included), mode 0700,
//! by whoever makes it: the session's user itself (a container's `session-sockets` builtin)
//! or root, who hands it over to the user once it is filled ([`SessionFolder::give_to`]: a
//! VM's agent). What it made goes when it is dropped, removed by names relative to the
//! folder's descriptor (a name swapped in meanwhile is not followed).
//!
//! A process killed before its drop runs (SIGKILL, a VM or container stopped hard) cannot
//! remove its folder. So its maker holds a lock on the folder (`flock` on the folder's
//! descriptor) for as long as the folder lives, and the next folder made in the same place
//! first removes the folders nobody holds any more ([`remove_stale_in`]): the lock is
//! released by the kernel with the last descriptor of a dead process, never while its
//! maker runs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use berth_agent_proto::{SESSION_DIR_PLACEHOLDER, SESSION_GITCONFIG};

use crate::fd_calls::{self, check, cstr};

/// Where the folders are made.
pub const PARENT: &str = "/tmp";
/// What a folder's name starts with (16 hex digits follow).
const PREFIX: &str = "berth-";

/// Whether `name` is a session folder's name: `berth-` and 16 hex digits.
pub fn is_folder_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The session folders in `parent` whose maker is gone (nobody holds their lock), by name.
/// Folders this process cannot open (another user's) are not seen.
pub fn stale_in(parent: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_stale(parent, |_, name, _| out.push(name.to_string()));
    out
}

/// Removes the session folders in `parent` whose maker is gone: in each only what a session
/// folder holds (sockets, the gitconfig), then the folder if that emptied it (a folder
/// holding anything else stays, and so does one this process cannot open).
pub fn remove_stale_in(parent: &str) {
    each_stale(parent, |parent_dir, name, dir| {
        let Ok(entries) = std::fs::read_dir(format!("{parent}/{name}")) else {
            return;
        };
        for e in entries.flatten() {
            let Some(entry) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let kind = fd_calls::file_type_at(dir, &entry);
            if kind == Some(libc::S_IFSOCK)
                || (entry == SESSION_GITCONFIG && kind == Some(libc::S_IFREG))
            {
                let _ = fd_calls::unlink_at(dir, &entry, 0);
            }
        }
        // Only the folder that was locked: not one swapped in under its name meanwhile.
        if fd_calls::same_file_at(parent_dir, name, dir) {
            let _ = fd_calls::unlink_at(parent_dir, name, libc::AT_REMOVEDIR);
        }
    });
}

/// Calls `f(parent's descriptor, name, folder's descriptor)` for each folder in `parent`
/// named like a session folder whose lock this process could take (held during the call).
fn each_stale(parent: &str, mut f: impl FnMut(&OwnedFd, &str, &OwnedFd)) {
    let Ok(parent_dir) = fd_calls::open_dir_at(libc::AT_FDCWD, parent) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_folder_name(&name) {
            continue;
        }
        // A link is not followed; a folder of another user does not open.
        let Ok(dir) = fd_calls::open_dir_at(parent_dir.as_raw_fd(), &name) else {
            continue;
        };
        if fd_calls::try_lock(&dir) {
            f(&parent_dir, &name, &dir);
        }
    }
}

/// Whether `path` is a session folder's path: `/tmp/berth-<16 hex>`.
pub fn is_folder_path(path: &str) -> bool {
    path.strip_prefix(PARENT)
        .and_then(|p| p.strip_prefix('/'))
        .is_some_and(is_folder_name)
}

/// One session's folder; see the module's documentation.
#[derive(Debug)]
pub struct SessionFolder {
    path: String,
    dir: OwnedFd,
    /// What was made in it, removed on drop.
    names: Vec<String>,
}

impl SessionFolder {
    /// Makes a fresh folder in [`PARENT`], the caller's and 0700.
    pub fn make() -> Result<SessionFolder, String> {
        Self::make_in(PARENT)
    }

    /// Makes a fresh folder `<parent>/berth-<16 hex>`, the caller's and 0700, after removing
    /// the folders left there by makers that are gone ([`remove_stale_in`]).
    pub fn make_in(parent: &str) -> Result<SessionFolder, String> {
        remove_stale_in(parent);
        for _ in 0..16 {
            let hex = fd_calls::random_hex().map_err(|e| format!("no random bytes: {e}"))?;
            let path = format!("{parent}/{PREFIX}{hex}");
            let c = cstr(&path).map_err(|e| format!("cannot make {path}: {e}"))?;
            // SAFETY: mkdir with a NUL-terminated path.
            match check(unsafe { libc::mkdir(c.as_ptr(), 0o700) }) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(format!("cannot make {path}: {e}")),
            }
            let dir = match fd_calls::open_dir_at(libc::AT_FDCWD, &path) {
                Ok(dir) => dir,
                // Taken for a stale folder by another maker's sweep before it was locked.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(format!("cannot open {path}: {e}")),
            };
            // Held until the folder goes (see the module's documentation). Another maker's
            // sweep holds it for a moment at most.
            fd_calls::lock(&dir).map_err(|e| format!("cannot lock {path}: {e}"))?;
            // A sweep may have removed the folder between mkdir and the lock: then another
            // name.
            let at_path = fd_calls::open_dir_at(libc::AT_FDCWD, &path);
            if !at_path.is_ok_and(|d| fd_calls::same_file(&d, &dir)) {
                continue;
            }
            let folder = SessionFolder {
                path,
                dir,
                names: Vec::new(),
            };
            // The umask may have taken bits away, never added: exactly 0700.
            fd_calls::fchmod(&folder.dir, 0o700)
                .map_err(|e| format!("cannot set the mode of {}: {e}", folder.path))?;
            return Ok(folder);
        }
        Err(format!("cannot find a free name in {parent}"))
    }

    /// The folder's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Binds a listening Unix socket `name` in the folder.
    pub fn listen(&mut self, name: &str) -> Result<UnixListener, String> {
        let at = format!("{}/{name}", self.path);
        let listener =
            UnixListener::bind(&at).map_err(|e| format!("cannot listen on {at}: {e}"))?;
        self.names.push(name.to_string());
        Ok(listener)
    }

    /// Writes the session's gitconfig (mode 0600) with [`SESSION_DIR_PLACEHOLDER`] replaced
    /// by the folder's path; returns the file's path.
    pub fn write_gitconfig(&mut self, text: &str) -> Result<String, String> {
        let at = format!("{}/{SESSION_GITCONFIG}", self.path);
        let file = fd_calls::create_at(&self.dir, SESSION_GITCONFIG, 0o600)
            .map_err(|e| format!("cannot write {at}: {e}"))?;
        self.names.push(SESSION_GITCONFIG.to_string());
        let text = text.replace(SESSION_DIR_PLACEHOLDER, &self.path);
        fd_calls::write_all(&file, text.as_bytes())
            .map_err(|e| format!("cannot write {at}: {e}"))?;
        Ok(at)
    }

    /// Hands what the folder holds, then the folder itself, to `uid`:`gid` (until then only
    /// its maker could enter it).
    pub fn give_to(&self, uid: u32, gid: u32) -> Result<(), String> {
        for name in &self.names {
            let c = cstr(name).map_err(|e| e.to_string())?;
            // SAFETY: a valid name relative to a directory descriptor we own; links not
            // followed.
            check(unsafe {
                libc::fchownat(
                    self.dir.as_raw_fd(),
                    c.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(|e| format!("cannot hand {}/{name} over: {e}", self.path))?;
        }
        fd_calls::fchown(&self.dir, uid, gid)
            .map_err(|e| format!("cannot hand {} over: {e}", self.path))
    }
}

impl Drop for SessionFolder {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = fd_calls::unlink_at(&self.dir, name, 0);
        }
        if let Ok(c) = cstr(&self.path) {
            // SAFETY: rmdir with a NUL-terminated path; it removes an empty folder only and
            // never follows a link.
            unsafe { libc::rmdir(c.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    #[test]
    fn a_folder_is_private_holds_what_was_made_and_goes_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let mut folder = SessionFolder::make_in(parent.path().to_str().unwrap()).unwrap();
        let path = folder.path().to_string();
        let name = path.rsplit('/').next().unwrap();
        assert!(is_folder_name(name), "{name}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o700);
        let _listener = folder.listen("agent.sock").unwrap();
        let at = folder
            .write_gitconfig(&format!("helper = {SESSION_DIR_PLACEHOLDER}/git.sock\n"))
            .unwrap();
        assert_eq!(at, format!("{path}/{SESSION_GITCONFIG}"));
        assert_eq!(
            std::fs::read_to_string(&at).unwrap(),
            format!("helper = {path}/git.sock\n")
        );
        assert_eq!(std::fs::metadata(&at).unwrap().mode() & 0o777, 0o600);
        assert!(folder.write_gitconfig("again").is_err(), "an existing file");
        folder.give_to(libc_uid(), libc_gid()).unwrap();
        drop(folder);
        assert!(
            !Path::new(&path).exists(),
            "the folder outlived its session"
        );
    }

    /// A folder whose maker is gone (nobody holds its lock) goes with the next folder made
    /// beside it; a live one, one holding something else, a link and other names stay.
    #[test]
    fn the_next_folder_removes_those_whose_maker_is_gone() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let parent_str = p.to_str().unwrap();
        // Left by a killed maker: a socket and a gitconfig, no lock.
        let stale = p.join("berth-00000000000000aa");
        std::fs::create_dir(&stale).unwrap();
        let _bound = UnixListener::bind(stale.join("agent.sock")).unwrap();
        std::fs::write(stale.join(SESSION_GITCONFIG), "x").unwrap();
        // Left too, but holding a file a session folder never holds.
        let other = p.join("berth-00000000000000bb");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        // Not folders of berth's.
        let unrelated = p.join("berth-share");
        std::fs::create_dir(&unrelated).unwrap();
        let target = p.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join(SESSION_GITCONFIG), "kept").unwrap();
        std::os::unix::fs::symlink(&target, p.join("berth-00000000000000cc")).unwrap();
        let live = SessionFolder::make_in(parent_str).unwrap();
        assert!(!stale.exists(), "a stale folder stayed");
        assert_eq!(
            stale_in(parent_str),
            ["berth-00000000000000bb".to_string()],
            "the live folder counts as stale, or the link was followed"
        );
        let second = SessionFolder::make_in(parent_str).unwrap();
        assert!(Path::new(live.path()).exists(), "a live folder was removed");
        assert!(other.join("notes.txt").exists() && unrelated.exists());
        assert!(
            target.join(SESSION_GITCONFIG).exists(),
            "a link was followed"
        );
        drop((live, second));
        assert_eq!(stale_in(parent_str), ["berth-00000000000000bb".to_string()]);
    }

    #[test]
    fn names_and_paths_of_folders() {
        assert!(is_folder_name("berth-0123456789abcdef"));
        assert!(is_folder_path("/tmp/berth-0123456789abcdef"));
        for bad in [
            "/tmp/berth-0123456789abcdef/../x",
            "/tmp/berth-0123456789abcdeg",
            "/tmp/berth-0123456789abcdef\nX=1",
            "/tmp/berth-",
            "/tmp/berth-share",
            "/var/tmp/berth-0123456789abcdef",
            "/tmpberth-0123456789abcdef",
        ] {
            assert!(!is_folder_path(bad), "{bad:?}");
        }
    }

    fn libc_uid() -> u32 {
        // SAFETY: getuid takes no arguments.
        unsafe { libc::getuid() }
    }

    fn libc_gid() -> u32 {
        // SAFETY: getgid takes no arguments.
        unsafe { libc::getgid() }
    }
}
