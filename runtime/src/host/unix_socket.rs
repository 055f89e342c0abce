//! Whether a Unix socket at a path accepts connections yet, asked without connecting.
//!
//! A server creates its socket file with `bind` and only then calls `listen`: in between the
//! path exists and a `connect` fails with `ECONNREFUSED`. Waiting for the path to appear
//! therefore races with the server (qemu's monitor, `ssh-agent`, virtiofsd). Connecting to
//! probe is no answer either where a server takes a single client and ends with it
//! (virtiofsd). The kernel's table of Unix sockets (`/proc/net/unix`, of the caller's network
//! namespace) says which bound path listens: the `__SO_ACCEPTCON` flag.

use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s `Flags` column: the socket listens.
const ACCEPTCON: u32 = 1 << 16;

/// Whether a socket bound to `path` (exactly as its server named it, as a rule an absolute
/// path) listens in the caller's network namespace.
pub fn is_listening(path: &Path) -> io::Result<bool> {
    let table = std::fs::File::open("/proc/net/unix")?;
    listening_in(BufReader::new(table), path)
}

/// [`is_listening`] over a copy of the table (`Num RefCount Protocol Flags Type St Inode
/// Path`, hexadecimal numbers).
fn listening_in(table: impl BufRead, path: &Path) -> io::Result<bool> {
    let wanted = path.as_os_str().as_encoded_bytes();
    // Bytes, not text: a path need not be UTF-8.
    for line in table.split(b'\n').skip(1) {
        let line = line?;
        let flags = line
            .split(|&b| b == b' ')
            .filter(|c| !c.is_empty())
            .nth(3)
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|f| u32::from_str_radix(f, 16).ok());
        // The path is the eighth column, the first to start with `/`; it keeps its spaces.
        let Some(at) = line.windows(2).position(|w| w == b" /") else {
            continue;
        };
        if &line[at + 1..] == wanted && flags.is_some_and(|f| f & ACCEPTCON != 0) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::UnixAddr;
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};

    #[test]
    fn a_socket_bound_but_not_listening_yet_is_not_listening() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("server.sock");
        assert!(!is_listening(&path).unwrap(), "no socket yet");
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        // What a wait for the path saw: it exists, and a connection is refused.
        assert!(path.exists());
        let refused = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(!is_listening(&path).unwrap());
        listen(&s, Backlog::new(1).unwrap()).unwrap();
        assert!(is_listening(&path).unwrap());
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        // Another path that only starts the same way is not this one.
        assert!(!is_listening(&d.path().join("server.so")).unwrap());
    }

    #[test]
    fn the_table_is_read_by_its_flags_and_whole_paths() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 11 /run/a b.sock\n\
            0000000000000000: 00000002 00000000 00000000 0001 01 12 /run/c.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 13\n";
        assert!(listening_in(table.as_bytes(), Path::new("/run/a b.sock")).unwrap());
        assert!(!listening_in(table.as_bytes(), Path::new("/run/c.sock")).unwrap());
        assert!(!listening_in(table.as_bytes(), Path::new("/run/a")).unwrap());
    }
}
