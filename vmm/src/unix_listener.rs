//! Unix sockets that appear on their path only once they listen.
//!
//! `UnixListener::bind` binds and then listens: between the two, the path exists and a
//! client's `connect` fails with "connection refused". A caller that waits for the path to
//! appear (berth's `up` does, for the control channel) can land in that gap, which an
//! emulated machine makes wide. So the socket is bound under a short temporary name in the
//! same folder, set listening, and renamed into place: whoever sees the path can connect.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Listens on `path`, replacing a stale socket file there; the path appears already listening.
pub fn listen_at(path: &Path) -> std::io::Result<UnixListener> {
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)?;
    if let Err(e) = std::fs::rename(&staging, path) {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// A name beside `path`, no longer than it (a socket path has a length limit), unique within
/// this process and among processes.
fn staging_path(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!(".{:x}.{n:x}", std::process::id());
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_path_appears_listening_and_replaces_a_stale_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        // A stale socket file nobody listens on.
        drop(UnixListener::bind(&path).unwrap());
        assert!(UnixStream::connect(&path).is_err());
        let l = listen_at(&path).unwrap();
        let _c = UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        // Only the socket is left in the folder: no staging name.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("control.sock")]);
    }

    #[test]
    fn staging_names_are_unique_and_short() {
        let p = Path::new("/run/x/control.sock");
        let (a, b) = (staging_path(p), staging_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
        assert!(a.as_os_str().len() <= p.as_os_str().len());
    }
}
