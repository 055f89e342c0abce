//! The relay of a `direct-tcpip` channel (`ssh -L`): connects to HOST:PORT from inside the
//! environment (its network namespace, as the `[shell]` user), says so with one `\0` byte
//! on stdout, then copies stdin to the connection and the connection to stdout. When the
//! connection fails, nothing is written to stdout and the reason goes to stderr, so the SSH
//! side can refuse the channel with it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(host: &str, port: &str) -> Result<TcpStream, String> {
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a TCP port number"))?;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => {
                last = format!("cannot connect to {host}:{port} ({a}) inside the environment: {e}")
            }
        }
    }
    Err(last)
}

/// Relays stdin/stdout to a TCP connection to `host`:`port`; the exit code.
pub fn relay_stdio(host: &str, port: &str) -> i32 {
    let sock = match connect(host, port) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{e}");
            return 1;
        }
    };
    let mut out = io::stdout().lock();
    if out.write_all(&[0]).and_then(|_| out.flush()).is_err() {
        return 1;
    }
    let Ok(mut to_sock) = sock.try_clone() else {
        return 1;
    };
    let upstream = std::thread::spawn(move || {
        let mut input = io::stdin().lock();
        let _ = io::copy(&mut input, &mut to_sock);
        let _ = to_sock.shutdown(Shutdown::Write);
    });
    let mut from_sock = sock;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    drop(out);
    // SAFETY: closing our stdout (fd 1) so the SSH side sees the end of the connection
    // while the client may still be sending.
    unsafe { libc::close(1) };
    let _ = upstream.join();
    0
}
