//! A blocking host-side client over a Unix stream (qemu's chardev socket, berth's VMM console
//! socket): handshake, setup, exec sessions with streamed I/O, poweroff.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{
    encode, Exec, Forward, Frame, FrameBuffer, Message, ProtoError, Setup, MAX_PAYLOAD,
    STREAM_CHUNK,
};

#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    Protocol(ProtoError),
    /// The agent did not answer in time.
    Timeout(&'static str),
    /// The agent closed the connection.
    Closed,
    /// The agent reported an error for the request.
    Agent(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "talking to the VM's agent failed: {e}"),
            ClientError::Protocol(e) => write!(f, "{e}"),
            ClientError::Timeout(what) => {
                write!(f, "the VM's agent did not answer in time ({what})")
            }
            ClientError::Closed => write!(
                f,
                "the VM's agent closed the control channel (did the VM stop?)"
            ),
            ClientError::Agent(m) => write!(f, "the VM's agent reports: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// What the handshake learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub agent_version: String,
    pub kernel_release: String,
    pub ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    /// Non-zero when the process was killed by this signal.
    pub signal: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The write half of the connection, shared by the client and its session handles, with
/// whatever must live exactly as long as the connection (the caller's channel lock).
struct Link {
    stream: UnixStream,
    _guard: Option<Box<dyn Send>>,
}

type SharedWriter = Arc<Mutex<Link>>;

fn send(writer: &SharedWriter, session: u32, message: Message) -> Result<(), ClientError> {
    let bytes = encode(&Frame { session, message }).map_err(ClientError::Protocol)?;
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    w.stream.write_all(&bytes)?;
    Ok(())
}

/// A running process: send input, resize its terminal, signal it.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u32,
    writer: SharedWriter,
}

impl SessionHandle {
    /// Sends stdin bytes; an empty slice means end of input.
    pub fn stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(MAX_PAYLOAD / 2) {
            send(&self.writer, self.id, Message::Stdin(chunk.to_vec()))?;
        }
        if data.is_empty() {
            send(&self.writer, self.id, Message::Stdin(Vec::new()))?;
        }
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        send(&self.writer, self.id, Message::Resize { rows, cols })
    }

    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        send(&self.writer, self.id, Message::Signal { signal })
    }

    /// Sends bytes of forwarded stream `stream` (cut into frames of at most
    /// [`STREAM_CHUNK`] bytes).
    pub fn stream_data(&self, stream: u32, data: &[u8]) -> Result<(), ClientError> {
        for chunk in data.chunks(STREAM_CHUNK) {
            let data = chunk.to_vec();
            send(&self.writer, self.id, Message::StreamData { stream, data })?;
        }
        Ok(())
    }

    /// Says that the host side of `stream` sends nothing more.
    pub fn stream_eof(&self, stream: u32) -> Result<(), ClientError> {
        send(&self.writer, self.id, Message::StreamEof { stream })
    }

    /// Ends (or refuses) `stream`.
    pub fn stream_close(&self, stream: u32) -> Result<(), ClientError> {
        send(&self.writer, self.id, Message::StreamClose { stream })
    }

    /// Copies `input` to the process's stdin on a background thread, then signals its end.
    pub fn forward_stdin(&self, mut input: Box<dyn Read + Send>) {
        let h = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if h.stdin(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = h.stdin(&[]);
        });
    }
}

pub struct Client {
    reader: UnixStream,
    writer: SharedWriter,
    frames: FrameBuffer,
    next_session: u32,
}

impl Client {
    pub fn new(stream: UnixStream) -> Result<Self, ClientError> {
        Self::with_guard(stream, None)
    }

    /// Like [`Client::new`]; `guard` is dropped when the connection closes, i.e. when the
    /// client and every [`SessionHandle`] are gone.
    pub fn with_guard(
        stream: UnixStream,
        guard: Option<Box<dyn Send>>,
    ) -> Result<Self, ClientError> {
        let writer = Arc::new(Mutex::new(Link {
            stream: stream.try_clone()?,
            _guard: guard,
        }));
        Ok(Client {
            reader: stream,
            writer,
            frames: FrameBuffer::new(),
            next_session: 1,
        })
    }

    /// Next frame, waiting at most until `deadline` (`None`: forever).
    fn recv(
        &mut self,
        deadline: Option<Instant>,
        what: &'static str,
    ) -> Result<Frame, ClientError> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.frames.next_frame() {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                // A connection may start mid-frame (bytes left from an earlier client): skip.
                Err(ProtoError::BadMagic(_)) | Err(ProtoError::UnsupportedVersion(_)) => {
                    self.frames.resync()
                }
                Err(e) => return Err(ClientError::Protocol(e)),
            }
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::Timeout(what));
                    }
                    Some(left)
                }
                None => None,
            };
            self.reader.set_read_timeout(timeout)?;
            match self.reader.read(&mut buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.frames.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(what))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Says hello and waits for the matching answer; older frames are skipped.
    pub fn hello(&mut self, timeout: Duration) -> Result<AgentInfo, ClientError> {
        let deadline = Instant::now() + timeout;
        let nonce = u64::from(std::process::id()) << 32
            | u64::from(Instant::now().elapsed().subsec_nanos()) ^ 0x5eed;
        send(&self.writer, 0, Message::Hello { nonce })?;
        loop {
            if let Message::HelloAck {
                nonce: n,
                agent_version,
                kernel_release,
                ready,
            } = self.recv(Some(deadline), "hello")?.message
            {
                if n == nonce {
                    return Ok(AgentInfo {
                        agent_version,
                        kernel_release,
                        ready,
                    });
                }
            }
        }
    }

    pub fn setup(&mut self, setup: Setup, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        send(&self.writer, 0, Message::Setup(setup))?;
        loop {
            match self.recv(Some(deadline), "setup")?.message {
                Message::SetupDone => return Ok(()),
                Message::Error { message } => return Err(ClientError::Agent(message)),
                _ => {}
            }
        }
    }

    /// Sends `message` (a `PutFile` or `KeepFiles`) and waits for the agent's answer.
    pub fn put_files(&mut self, message: Message, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        send(&self.writer, 0, message)?;
        loop {
            match self.recv(Some(deadline), "files")?.message {
                Message::SetupDone => return Ok(()),
                Message::Error { message } => return Err(ClientError::Agent(message)),
                _ => {}
            }
        }
    }

    /// Starts a process; follow with [`Client::wait`].
    pub fn start(&mut self, exec: Exec) -> Result<SessionHandle, ClientError> {
        self.start_forwarding(exec, None)
    }

    /// Starts a process with the host's credentials `forward`ed to it (a [`Message::Forward`]
    /// right before its `Exec`); its streams arrive through [`Client::wait_routing`].
    pub fn start_forwarding(
        &mut self,
        exec: Exec,
        forward: Option<Forward>,
    ) -> Result<SessionHandle, ClientError> {
        let id = self.next_session;
        self.next_session = self.next_session.wrapping_add(1).max(1);
        if let Some(f) = forward.filter(|f| !f.is_empty()) {
            send(&self.writer, id, Message::Forward(f))?;
        }
        send(&self.writer, id, Message::Exec(exec))?;
        Ok(SessionHandle {
            id,
            writer: self.writer.clone(),
        })
    }

    /// Streams the session's output until it exits. A start failure is written to `stderr`
    /// and reported as exit code 127 (or 126), like a shell.
    pub fn wait(
        &mut self,
        session: &SessionHandle,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitStatus, ClientError> {
        self.wait_routing(session, stdout, stderr, &mut |_| {})
    }

    /// [`Client::wait`], handing the session's stream frames (`StreamOpen`, `StreamData`,
    /// `StreamEof`, `StreamClose`) and the errors of session 0 (an agent refusing a message)
    /// to `other`, in the order they arrive.
    pub fn wait_routing(
        &mut self,
        session: &SessionHandle,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        other: &mut dyn FnMut(Message),
    ) -> Result<ExitStatus, ClientError> {
        loop {
            let f = self.recv(None, "exec")?;
            if f.session == 0 && matches!(f.message, Message::Error { .. }) {
                other(f.message);
                continue;
            }
            if f.session != session.id {
                continue;
            }
            match f.message {
                m @ (Message::StreamOpen { .. }
                | Message::StreamData { .. }
                | Message::StreamEof { .. }
                | Message::StreamClose { .. }) => other(m),
                Message::Stdout(d) => {
                    stdout.write_all(&d)?;
                    stdout.flush()?;
                }
                Message::Stderr(d) => {
                    stderr.write_all(&d)?;
                    stderr.flush()?;
                }
                Message::Error { message } => {
                    writeln!(stderr, "berth: {message}")?;
                }
                Message::Exit { code, signal } => return Ok(ExitStatus { code, signal }),
                _ => {}
            }
        }
    }

    /// The next frame of any session, waiting as long as it takes: for callers that run
    /// several sessions on one connection and route their output themselves.
    pub fn next_frame(&mut self) -> Result<Frame, ClientError> {
        self.recv(None, "frame")
    }

    /// Runs `argv` without input and collects its output.
    pub fn run(&mut self, argv: &[&str]) -> Result<Output, ClientError> {
        let h = self.start(Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Exec::default()
        })?;
        h.stdin(&[])?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = self.wait(&h, &mut out, &mut err)?;
        Ok(Output {
            status,
            stdout: out,
            stderr: err,
        })
    }

    /// Asks the agent to stop the VM (no answer is expected).
    pub fn poweroff(&mut self) -> Result<(), ClientError> {
        send(&self.writer, 0, Message::Poweroff)
    }
}
