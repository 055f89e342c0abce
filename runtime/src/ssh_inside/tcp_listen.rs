//! The inside half of remote forwarding (`ssh -R`, `berth-builtin:tcp-listen ADDR PORT`):
//! binds a TCP listener inside the environment (its network namespace, as the `[shell]`
//! user), passes it and its port to berth over stdin (a Unix socket pair, `SCM_RIGHTS`),
//! then waits for stdin to end: berth accepts the connections and opens a
//! `forwarded-tcpip` channel to the client for each. A failure (a taken port, a port below
//! 1024 for a user) goes to stderr and nothing is passed.

use std::io::{self, Read, Write};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn listen(addr: &str, port: &str) -> Result<TcpListener, String> {
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a TCP port number"))?;
    // "" and "localhost" are the loopback (as sshd's default GatewayPorts=no), "*" and
    // "0.0.0.0" every address.
    let host = match addr {
        "" | "localhost" => "127.0.0.1",
        "*" => "0.0.0.0",
        a => a,
    };
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = format!("cannot listen on {a} inside the environment: {e}"),
        }
    }
    Err(last)
}

/// The builtin; see the module's documentation. Returns the exit code.
pub fn serve_stdin(addr: &str, port: &str) -> i32 {
    // SAFETY: setting a signal's disposition to "ignore" in this single-threaded process (the
    // forwarding ends when berth closes our stdin).
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let l = match listen(addr, port) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{e}");
            return 1;
        }
    };
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0).to_string();
    if let Err(e) = super::session_sockets::pass_fds(0, &port, &[l.as_raw_fd()]) {
        let _ = writeln!(io::stderr(), "{e}");
        return 1;
    }
    drop(l);
    // SAFETY: fd 0 is our stdin, owned by this process from here on.
    let mut stdin = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(0) });
    let mut buf = [0u8; 64];
    while !matches!(stdin.read(&mut buf), Ok(0) | Err(_)) {}
    0
}
