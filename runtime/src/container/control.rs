//! The control protocol between berth commands and an environment's supervisor, over the Unix
//! socket `envs/<id>/control.sock`.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes of JSON ([`Request`] or
//! [`Response`]); at most [`MAX_FRAME`] bytes. File descriptors travel as SCM_RIGHTS ancillary
//! data on the frame they belong to: an `exec` request carries the caller's stdin, stdout and
//! stderr, so the process inside writes straight to the caller's terminal or pipe; a `Started`
//! answer to a tty exec carries the PTY master. A malformed frame gets an `Error` answer and
//! the connection is closed; it never brings the supervisor down.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::error::{ContainerError, Result};
use crate::backend::{ExecRequest, ServiceStatus, Usage};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;
/// How long ping, status and stop wait for the supervisor's answer.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most descriptors one frame may carry.
pub const MAX_FDS: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// Run a process. Without `tty` the frame carries exactly three fds (stdin, stdout,
    /// stderr); with `tty` it carries none and the answer carries the PTY master.
    Exec(ExecRequest),
    /// Send a signal to the process group of a process this connection started.
    Signal {
        pid: i32,
        signal: i32,
    },
    Status,
    /// Start the services an environment started with `hold_services` (answered `Pong`;
    /// nothing happens when they already run).
    StartServices,
    /// SIGTERM to every process, SIGKILL after `grace_ms`, then the supervisor exits.
    Stop {
        grace_ms: u64,
    },
    /// The environment's user and network namespaces, for a sidecar joining them: answered
    /// `Namespaces` with two fds (its `/proc/self/ns/user` and `/proc/self/ns/net`). The
    /// supervisor is not dumpable, so its owner (not root) cannot open them through /proc.
    Namespaces,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Pong,
    /// The process runs; `pid` is its id inside the environment.
    Started {
        pid: i32,
    },
    /// Exit code, or 128 + signal number when killed by a signal.
    Exited {
        code: i32,
    },
    Status(SupervisorStatus),
    Stopping,
    /// The answer to `Namespaces`: the frame carries the user and the network namespace.
    Namespaces,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    /// Seconds since the epoch when the supervisor became ready.
    pub started_at: u64,
    pub services: Vec<ServiceStatus>,
    pub processes: u32,
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Encodes one frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain types cannot fail.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Accumulates bytes and yields complete frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }

    /// The next complete frame parsed as `T`.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| FrameError::Malformed(e.to_string())),
        }
    }

    /// Bytes received but not yet part of a complete frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Sends all of `bytes`, the fds riding on the first chunk.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if sent == 0 && !fds.is_empty() {
            &cmsg
        } else {
            &[]
        };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                wait_writable(sock)?;
                continue;
            }
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(())
}

fn wait_writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(sock, PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::from(1000u16)).map_err(io::Error::from)?;
    Ok(())
}

/// One `recvmsg`: bytes into `buf`, any passed fds (close-on-exec) appended to `fds`.
/// `Ok(0)` is end of stream.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel installed these fds in our table for us.
                            fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                return Ok(msg.bytes);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// Runs `f` with a path to the socket `path` that fits in `sockaddr_un` (107 bytes): long
/// paths are reached through `/proc/self/fd/<fd of its folder>/<name>`.
pub fn with_socket_path<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let d = std::fs::File::open(dir)?;
    let short = std::path::PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name);
    f(&short)
}

/// A blocking client connection to a supervisor.
pub struct ControlClient {
    stream: UnixStream,
    decoder: FrameDecoder,
    fds: VecDeque<OwnedFd>,
}

impl ControlClient {
    pub fn connect(socket: &Path) -> Result<ControlClient> {
        let stream = with_socket_path(socket, |p| UnixStream::connect(p)).map_err(|e| {
            ContainerError::io(
                format!(
                    "cannot connect to the environment's supervisor at {}; is the environment running (`berth status`)?",
                    socket.display()
                ),
                e,
            )
        })?;
        Ok(ControlClient {
            stream,
            decoder: FrameDecoder::default(),
            fds: VecDeque::new(),
        })
    }

    /// A connection for a request the supervisor answers at once (ping, status, stop): a
    /// supervisor that does not answer within [`REPLY_TIMEOUT`] is reported, not waited for.
    pub fn connect_for_reply(socket: &Path) -> Result<ControlClient> {
        let c = Self::connect(socket)?;
        c.stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| ContainerError::io("cannot set a timeout on the control socket", e))?;
        Ok(c)
    }

    pub fn send(&mut self, req: &Request, fds: &[RawFd]) -> Result<()> {
        send_with_fds(self.stream_fd(), &encode(req), fds)
            .map_err(|e| ContainerError::Protocol(format!("cannot send request: {e}")))
    }

    fn stream_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    /// The underlying socket (to poll it next to a terminal).
    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Blocks for the next answer; fds that came with it are returned too.
    pub fn receive(&mut self) -> Result<(Response, Vec<OwnedFd>)> {
        loop {
            match self.decoder.next_message::<Response>() {
                Ok(Some(r)) => return Ok((r, self.fds.drain(..).collect())),
                Ok(None) => {}
                Err(e) => return Err(ContainerError::Protocol(e.to_string())),
            }
            let mut buf = [0u8; 8192];
            use std::os::fd::AsFd;
            let n = recv_with_fds(self.stream.as_fd(), &mut buf, &mut self.fds).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    ContainerError::Protocol(format!(
                        "the supervisor did not answer within {REPLY_TIMEOUT:?}; it may be hung (`berth down` kills it)"
                    ))
                } else {
                    ContainerError::Protocol(format!("cannot read answer: {e}"))
                }
            })?;
            if n == 0 {
                return Err(ContainerError::Protocol(
                    "the supervisor closed the connection (did the environment stop?)".into(),
                ));
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Whether a complete or partial answer already sits in this client's buffer: polling the
    /// socket would not report it, so check this before waiting on [`raw_fd`](Self::raw_fd).
    pub fn has_buffered(&self) -> bool {
        self.decoder.pending() > 0
    }

    /// Sends a request and expects exactly one answer.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        self.send(req, &[])?;
        match self.receive()?.0 {
            Response::Error { message } => Err(ContainerError::Protocol(message)),
            r => Ok(r),
        }
    }
}

/// A process started by [`exec`] or [`exec_tty`], still running.
pub struct ExecSession {
    client: ControlClient,
    /// Pid inside the environment.
    pub pid: i32,
    /// The PTY master for a tty exec.
    pub master: Option<OwnedFd>,
}

impl ExecSession {
    /// Forwards a signal to the process's group (e.g. the caller's SIGINT).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        self.client.send(
            &Request::Signal {
                pid: self.pid,
                signal,
            },
            &[],
        )
    }

    /// Waits for the exit code (128 + signal when killed).
    pub fn wait(mut self) -> Result<i32> {
        self.wait_ref()
    }

    pub(crate) fn wait_ref(&mut self) -> Result<i32> {
        loop {
            match self.client.receive()?.0 {
                Response::Exited { code } => return Ok(code),
                Response::Error { message } => return Err(ContainerError::Protocol(message)),
                _ => continue,
            }
        }
    }

    /// The exit status (or part of it) was already read off the socket together with an
    /// earlier answer: `wait` returns without blocking then, but the socket will not poll
    /// readable. Check this before polling [`control_fd`](Self::control_fd).
    pub fn reply_buffered(&self) -> bool {
        self.client.has_buffered()
    }

    /// The control connection's fd (readable when the exit status arrives).
    pub fn control_fd(&self) -> RawFd {
        self.client.raw_fd()
    }
}

/// Starts a process whose stdin/stdout/stderr are the given fds (passed to the process as-is).
pub fn exec_start(
    socket: &Path,
    req: &ExecRequest,
    stdio: [BorrowedFd<'_>; 3],
) -> Result<ExecSession> {
    if req.tty {
        return Err(ContainerError::Invalid(
            "use exec_tty for a terminal".into(),
        ));
    }
    let client = connect_for_exec(socket)?;
    let raw = [
        stdio[0].as_raw_fd(),
        stdio[1].as_raw_fd(),
        stdio[2].as_raw_fd(),
    ];
    start(client, socket, req.clone(), &raw)
}

/// Runs a process to completion with the given stdio; returns its exit code.
pub fn exec(socket: &Path, req: &ExecRequest, stdio: [BorrowedFd<'_>; 3]) -> Result<i32> {
    exec_start(socket, req, stdio)?.wait()
}

/// Starts a process on a new PTY inside the environment; the session holds the master.
pub fn exec_tty(socket: &Path, req: &ExecRequest) -> Result<ExecSession> {
    let mut req = req.clone();
    req.tty = true;
    let client = connect_for_exec(socket)?;
    let s = start(client, socket, req, &[])?;
    if s.master.is_none() {
        return Err(ContainerError::Protocol(
            "the supervisor sent no terminal".into(),
        ));
    }
    Ok(s)
}

/// The supervisor's view: services, process count, start time.
pub fn status(socket: &Path) -> Result<SupervisorStatus> {
    match ControlClient::connect_for_reply(socket)?.call(&Request::Status)? {
        Response::Status(s) => Ok(s),
        other => Err(ContainerError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// Whether a supervisor answers on `socket`.
pub fn ping(socket: &Path) -> bool {
    ControlClient::connect_for_reply(socket)
        .and_then(|mut c| c.call(&Request::Ping))
        .is_ok_and(|r| r == Response::Pong)
}

/// Asks the supervisor to start the services it holds back (see `hold_services`).
pub fn start_services(socket: &Path) -> Result<()> {
    match ControlClient::connect_for_reply(socket)?.call(&Request::StartServices)? {
        Response::Pong => Ok(()),
        other => Err(ContainerError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// The user and network namespaces of the environment whose supervisor serves `socket`.
pub fn namespaces(socket: &Path) -> Result<(OwnedFd, OwnedFd)> {
    let mut client = ControlClient::connect_for_reply(socket)?;
    client.send(&Request::Namespaces, &[])?;
    match client.receive()? {
        (Response::Namespaces, fds) if fds.len() == 2 => {
            let mut fds = fds.into_iter();
            Ok((
                fds.next().unwrap_or_else(|| unreachable!()),
                fds.next().unwrap_or_else(|| unreachable!()),
            ))
        }
        (Response::Error { message }, _) => Err(ContainerError::Protocol(message)),
        (other, fds) => Err(ContainerError::Protocol(format!(
            "unexpected answer {other:?} with {} descriptors",
            fds.len()
        ))),
    }
}

/// Asks the supervisor to stop everything (SIGTERM, SIGKILL after `grace_ms`) and exit.
pub fn request_stop(socket: &Path, grace_ms: u64) -> Result<()> {
    match ControlClient::connect_for_reply(socket)?.call(&Request::Stop { grace_ms })? {
        Response::Stopping => Ok(()),
        other => Err(ContainerError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// [`request_stop`], then waits up to `wait` for the supervisor to close the connection;
/// whether it did. It closes it only by exiting, which it does once no process it started
/// is left (or after its SIGKILL, with some stuck: the caller checks the cgroup); and its
/// exit closes every descriptor it holds, the forwarded ports' sockets with them, before
/// the kernel tears down its namespaces (the mount namespace's unmounts, an overlay's sync,
/// RCU grace periods), which this does not wait for.
pub fn stop_and_wait_for_close(socket: &Path, grace_ms: u64, wait: Duration) -> Result<bool> {
    let mut client = ControlClient::connect_for_reply(socket)?;
    match client.call(&Request::Stop { grace_ms })? {
        Response::Stopping => {}
        other => {
            return Err(ContainerError::Protocol(format!(
                "unexpected answer {other:?}"
            )))
        }
    }
    let deadline = std::time::Instant::now() + wait;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        client
            .stream
            .set_read_timeout(Some(left))
            .map_err(|e| ContainerError::io("cannot set a timeout on the control socket", e))?;
        match io::Read::read(&mut client.stream, &mut buf) {
            Ok(0) => return Ok(true),
            // Nothing else is sent on a stopping connection; read past it.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => {
                return Err(ContainerError::io(
                    "cannot read from the stopping supervisor's control socket",
                    e,
                ))
            }
        }
    }
}

/// Connects to start a process. Between the check that the environment runs and this
/// connection, a `down` may have ended the supervisor: its socket gone or refusing is then
/// "not running", as the check would have said a moment later.
fn connect_for_exec(socket: &Path) -> Result<ControlClient> {
    ControlClient::connect(socket).map_err(|e| match e {
        ContainerError::Io { source, .. }
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            not_running(socket)
        }
        e => e,
    })
}

fn not_running(socket: &Path) -> ContainerError {
    ContainerError::not_running_at(socket.parent().unwrap_or(socket))
}

/// Sends `Exec` with the descriptors `fds` and reads the supervisor's answer. A supervisor
/// that is stopping starts nothing more and says so with `Stopping`: the environment is on
/// its way down, i.e. not running. One that ended its stop after it accepted this connection,
/// before it read it, closes it unanswered: when no supervisor listens on the socket any more,
/// that is "not running" too.
fn start(
    mut client: ControlClient,
    socket: &Path,
    req: ExecRequest,
    fds: &[RawFd],
) -> Result<ExecSession> {
    let gone_meanwhile = |e: ContainerError| {
        if matches!(
            connect_for_exec(socket),
            Err(ContainerError::NotRunning { .. })
        ) {
            not_running(socket)
        } else {
            e
        }
    };
    client
        .send(&Request::Exec(req), fds)
        .map_err(gone_meanwhile)?;
    let answer = client.receive().map_err(gone_meanwhile)?;
    match answer {
        (Response::Stopping, _) => Err(not_running(socket)),
        (Response::Started { pid }, mut fds) => Ok(ExecSession {
            client,
            pid,
            master: fds.pop(),
        }),
        (Response::Error { message }, _) => Err(ContainerError::Setup(message)),
        (other, _) => Err(ContainerError::Protocol(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_split_anywhere() {
        let reqs = vec![
            Request::Ping,
            Request::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "échø".into()],
                tty: true,
                ..Default::default()
            }),
            Request::Stop { grace_ms: 5 },
        ];
        let bytes: Vec<u8> = reqs.iter().flat_map(encode).collect();
        for split in 0..bytes.len() {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in [&bytes[..split], &bytes[split..]] {
                d.push(chunk);
                while let Some(r) = d.next_message::<Request>().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, reqs, "split at {split}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn truncated_frame_waits_and_malformed_or_huge_frames_error() {
        let mut d = FrameDecoder::default();
        let f = encode(&Request::Status);
        d.push(&f[..f.len() - 1]);
        assert_eq!(d.next_message::<Request>().unwrap(), None);
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 3, b'{', b'x', b'}']);
        assert!(matches!(
            d.next_message::<Request>(),
            Err(FrameError::Malformed(_))
        ));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0, 2, b'[', b']']);
        assert!(matches!(
            d.next_message::<Request>(),
            Err(FrameError::Malformed(_))
        ));
        let mut d = FrameDecoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0]);
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn exec_to_a_gone_or_stopping_supervisor_reports_the_environment_not_running() {
        use std::os::fd::AsFd;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("abc");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("control.sock");
        let null = std::fs::File::open("/dev/null").unwrap();
        let stdio = [null.as_fd(), null.as_fd(), null.as_fd()];
        let req = ExecRequest {
            argv: vec!["true".into()],
            ..Default::default()
        };
        let not_running = |e: ContainerError| matches!(&e, ContainerError::NotRunning { env_id } if env_id == "abc");
        // No socket (the supervisor removed it on its way out).
        assert!(not_running(exec_start(&path, &req, stdio).err().unwrap()));
        // A socket nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(not_running(exec_start(&path, &req, stdio).err().unwrap()));
        // A supervisor that is stopping answers `Stopping`.
        let server = one_request_supervisor(&path, |mut c, _| {
            use std::io::Write;
            c.write_all(&encode(&Response::Stopping)).unwrap();
        });
        assert!(not_running(exec_start(&path, &req, stdio).err().unwrap()));
        server.join().unwrap();
        // A supervisor that ends its stop (exits) after it accepted the connection, before
        // it answered: the listening socket closes first, then the connection.
        let server = one_request_supervisor(&path, |c, l| {
            drop(l);
            drop(c);
        });
        assert!(not_running(exec_start(&path, &req, stdio).err().unwrap()));
        server.join().unwrap();
        // A live supervisor that closes a connection without an answer is not "not running".
        let server = one_request_supervisor(&path, |c, l| {
            drop(c);
            l
        });
        let e = exec_start(&path, &req, stdio).err().unwrap();
        assert!(!not_running(e), "a live supervisor's closed connection");
        drop(server.join().unwrap());
    }

    /// A supervisor on a fresh socket at `path` that accepts one connection, reads its
    /// request, then does `then` with the connection and the listening socket.
    fn one_request_supervisor<T: Send + 'static>(
        path: &Path,
        then: impl FnOnce(std::os::unix::net::UnixStream, std::os::unix::net::UnixListener) -> T
            + Send
            + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::io::Read;
        let _ = std::fs::remove_file(path);
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let _ = c.read(&mut [0u8; 4096]).unwrap();
            then(c, l)
        })
    }

    #[test]
    fn a_silent_supervisor_is_reported_not_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("control.sock");
        // Bound and listening, never answering: connect succeeds, the answer never comes.
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = status(&path).unwrap_err();
        assert!(e.to_string().contains("did not answer"), "{e}");
    }

    #[test]
    fn long_socket_paths_work() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        assert!(path.as_os_str().len() > 108);
        let l = with_socket_path(&path, |p| std::os::unix::net::UnixListener::bind(p)).unwrap();
        assert!(path.exists());
        let c = with_socket_path(&path, |p| UnixStream::connect(p)).unwrap();
        drop((l, c));
    }

    #[test]
    fn fds_travel_with_their_frame() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let (a, b) = UnixStream::pair().unwrap();
        let (mut pr, mut pw) = std::os::unix::net::UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), &encode(&Response::Pong), &[pw.as_raw_fd()]).unwrap();
        let mut fds = VecDeque::new();
        let mut buf = [0u8; 64];
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        let mut d = FrameDecoder::default();
        d.push(&buf[..n]);
        assert_eq!(d.next_message::<Response>().unwrap(), Some(Response::Pong));
        assert_eq!(fds.len(), 1);
        let mut passed = UnixStream::from(fds.pop_front().unwrap());
        passed.write_all(b"hi").unwrap();
        drop(passed);
        drop(pw.flush());
        let mut got = [0u8; 2];
        pr.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }
}
