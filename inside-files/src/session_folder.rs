//! A session's private folder `/tmp/berth-<16 hex>`: the listening sockets of its forwarded
//! credentials (`agent.sock`, `git-credential.sock`) and its gitconfig. It is made under a
//! fresh random name (`mkdir` fails on any name already there, a link included), mode 0700,
//! by whoever makes it: the session's user itself (a container's `session-sockets` builtin)
//! or root, who hands it over to the user once it is filled ([`SessionFolder::give_to`]: a
//! VM's agent). What it made goes when it is dropped, removed by names relative to the
//! folder's descriptor (a name swapped in meanwhile is not followed).

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

    /// Makes a fresh folder `<parent>/berth-<16 hex>`, the caller's and 0700.
    pub fn make_in(parent: &str) -> Result<SessionFolder, String> {
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
            let dir = fd_calls::open_dir_at(libc::AT_FDCWD, &path)
                .map_err(|e| format!("cannot open {path}: {e}"))?;
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
