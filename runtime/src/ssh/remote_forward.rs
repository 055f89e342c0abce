//! Remote forwarding (`tcpip-forward`, `ssh -R`): a listener bound inside the environment by
//! the `tcp-listen` builtin (as the `[shell]` user, in the environment's network namespace),
//! handed to berth, which accepts its connections and opens a `forwarded-tcpip` channel to
//! the client for each. The listener is checked to be a listening TCP socket before it is
//! used (a hostile environment could pass anything).

use std::net::TcpListener as StdTcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdStream;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
use russh::server::Handle;
use tokio::io::copy_bidirectional;
use tokio::net::TcpListener;

use super::session::Context;
use crate::backend::ExecRequest;
use crate::credentials::receive_handover;
use crate::environment::Environments;
use crate::ssh_inside;

/// One active `tcpip-forward`: ends (listener closed inside, builtin gone) when dropped.
pub(super) struct RemoteForward {
    pub port: u16,
    stop: std_mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteForward {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.stop.send(());
    }
}

/// `fd` as a listener if it is a listening TCP socket, else why not.
fn listening_tcp_socket(fd: OwnedFd) -> Result<StdTcpListener, String> {
    let bad =
        || "the environment's side passed something that is not a listening TCP socket".to_string();
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(|_| bad())?;
    if !matches!(
        addr.family(),
        Some(AddressFamily::Inet | AddressFamily::Inet6)
    ) || socket::getsockopt(&fd, sockopt::SockType).map_err(|_| bad())? != SockType::Stream
        || !socket::getsockopt(&fd, sockopt::AcceptConn).map_err(|_| bad())?
    {
        return Err(bad());
    }
    let l = StdTcpListener::from(fd);
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(l)
}

/// Starts forwarding `address`:`port` inside the environment to the client of `handle`.
pub(super) fn start(
    ctx: Arc<Context>,
    address: &str,
    port: u16,
    handle: Handle,
) -> Result<RemoteForward, String> {
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(u16, StdTcpListener), String>>();
    let (stop, stopped) = std_mpsc::channel::<()>();
    let req = ExecRequest {
        argv: vec![
            ssh_inside::TCP_LISTEN.into(),
            address.to_string(),
            port.to_string(),
        ],
        env: Vec::new(),
        cwd: Some("/".into()),
        user: ctx.record.plan.shell.user.clone(),
        tty: false,
        winsize: None,
        forward: None,
    };
    // A thread owns the builtin's session for as long as the forwarding lasts.
    std::thread::Builder::new()
        .name("ssh-remote-forward".into())
        .spawn(move || {
            let envs = Environments::open(&ctx.home);
            let fail = |e: String| {
                let _ = ready_tx.send(Err(e));
            };
            let Ok((ours, theirs)) = StdStream::pair() else {
                return fail("cannot make a socket pair".into());
            };
            let (Ok(devnull), Ok((err_r, err_w))) = (
                std::fs::File::open("/dev/null"),
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC),
            ) else {
                return fail("cannot make the builtin's pipes".into());
            };
            let mut builtin = match envs.exec_start(
                &ctx.record,
                &req,
                [theirs.as_fd(), devnull.as_fd(), err_w.as_fd()],
            ) {
                Ok(b) => b,
                Err(e) => return fail(e.to_string()),
            };
            drop((theirs, err_w));
            let got = receive_handover(&ours).and_then(|(text, mut fds)| {
                let port: u16 = std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or("the environment's side sent no port")?;
                if fds.len() != 1 {
                    return Err("the environment's side passed no listener".into());
                }
                Ok((port, listening_tcp_socket(fds.remove(0))?))
            });
            match got {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(l));
                    // Until the forwarding is cancelled or the connection ends.
                    let _ = stopped.recv();
                }
                Err(e) => {
                    drop(ours);
                    let mut why = String::new();
                    let _ = std::io::Read::read_to_string(
                        &mut std::io::Read::take(std::fs::File::from(err_r), 4096),
                        &mut why,
                    );
                    let why = why.trim();
                    fail(if why.is_empty() { e } else { why.to_string() });
                    let _ = builtin.wait_timeout(Duration::from_secs(5));
                    return;
                }
            }
            drop(ours);
            if !matches!(builtin.wait_timeout(Duration::from_secs(5)), Ok(Some(_))) {
                let _ = builtin.signal(libc::SIGKILL);
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let (bound, listener) = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| "the environment did not answer".to_string())??;
    let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let address = address.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, peer)) = listener.accept().await {
            let handle = handle.clone();
            let address = address.clone();
            tokio::spawn(async move {
                let Ok(channel) = handle
                    .channel_open_forwarded_tcpip(
                        address,
                        u32::from(bound),
                        peer.ip().to_string(),
                        u32::from(peer.port()),
                    )
                    .await
                else {
                    return;
                };
                let mut stream = channel.into_stream();
                let _ = copy_bidirectional(&mut conn, &mut stream).await;
            });
        }
    });
    Ok(RemoteForward {
        port: bound,
        stop,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_tcp_socket_is_served() {
        let l = StdTcpListener::bind("127.0.0.1:0").unwrap();
        assert!(listening_tcp_socket(OwnedFd::from(l)).is_ok());
        // A connected socket (the environment's way to make berth talk to a server of its choice).
        let server = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        assert!(listening_tcp_socket(OwnedFd::from(c)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let u = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(listening_tcp_socket(OwnedFd::from(u)).is_err());
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(listening_tcp_socket(OwnedFd::from(f)).is_err());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(listening_tcp_socket(OwnedFd::from(udp)).is_err());
    }
}
