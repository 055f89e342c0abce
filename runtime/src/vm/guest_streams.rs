//! The host side of a VM session's forwarded connections: the agent opens a stream per
//! connection a process made to one of the session's sockets (`StreamOpen`), and
//! [`GuestStreams`] gives each a host socket from the session's [`ForwardConnector`],
//! relaying bytes and half-closes both ways on two threads per stream.
//!
//! The guest is not trusted: a stream of a kind the session does not forward, a stream id
//! already open, or a stream beyond [`MAX_STREAMS`] at once is refused (`StreamClose`);
//! data for a stream not open is dropped; a stream whose host end does not take what the
//! guest sends falls at most [`MAX_STREAM_BUFFER`] bytes behind before it is closed. Only
//! the connector decides where a stream leads. Everything ends with the session ([`Drop`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, Weak};

use berth_agent_proto::{
    Forward, Message, SessionHandle, StreamKind, MAX_STREAMS, MAX_STREAM_BUFFER, STREAM_CHUNK,
};

use crate::backend::{ForwardConnector, ForwardKind, GuestForwarding};

/// What the agent is asked to set up for `fwd`.
pub fn forward_request(fwd: &GuestForwarding) -> Forward {
    Forward {
        agent: fwd.agent,
        git_credentials: fwd.git_credentials,
        gitconfig: fwd.gitconfig.clone(),
    }
}

/// The agent's note when it does not know `Forward` (a VM started by an older berth).
const UNKNOWN_FORWARD: &str = "unknown agent message kind 19";

enum ToHost {
    Data(Vec<u8>),
    Eof,
}

/// One open stream, as the router sees it.
struct Open {
    to_host: Sender<ToHost>,
    shared: Arc<Shared>,
    /// Alive while either of the stream's threads runs.
    live: Weak<LiveSlot>,
}

/// What a stream's threads and the router share.
struct Shared {
    /// Bytes from the guest not yet written to the host socket.
    pending: AtomicUsize,
    /// Closed by the router: its threads say nothing more to the guest.
    closed: AtomicBool,
    /// The host socket, once connected (to shut it down from the router).
    socket: Mutex<Option<UnixStream>>,
}

impl Shared {
    fn shut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(s) = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Counts a stream as live until both of its threads ended.
struct LiveSlot(Arc<AtomicUsize>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The forwarded streams of one session; see the module's documentation.
pub struct GuestStreams {
    session: SessionHandle,
    fwd: GuestForwarding,
    open: HashMap<u32, Open>,
    live: Arc<AtomicUsize>,
    /// Where a warning for the user goes (the command's stderr).
    warn: Option<Box<dyn Write + Send>>,
}

impl GuestStreams {
    pub fn new(
        session: SessionHandle,
        fwd: GuestForwarding,
        warn: Option<Box<dyn Write + Send>>,
    ) -> GuestStreams {
        GuestStreams {
            session,
            fwd,
            open: HashMap::new(),
            live: Arc::new(AtomicUsize::new(0)),
            warn,
        }
    }

    /// Streams whose threads still run.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Handles one frame the agent sent for the session (or an error of session 0).
    pub fn handle(&mut self, message: Message) {
        match message {
            Message::StreamOpen { stream, kind } => self.open(stream, kind),
            Message::StreamData { stream, data } => {
                let Some(o) = self.open.get(&stream) else {
                    return;
                };
                let before = o.shared.pending.fetch_add(data.len(), Ordering::SeqCst);
                if before + data.len() > MAX_STREAM_BUFFER
                    || o.to_host.send(ToHost::Data(data)).is_err()
                {
                    self.close(stream);
                }
            }
            Message::StreamEof { stream } => {
                if let Some(o) = self.open.get(&stream) {
                    let _ = o.to_host.send(ToHost::Eof);
                }
            }
            Message::StreamClose { stream } => {
                if let Some(o) = self.open.remove(&stream) {
                    o.shared.shut();
                }
            }
            Message::Error { message } if message.contains(UNKNOWN_FORWARD) => {
                if let Some(mut w) = self.warn.take() {
                    let _ = writeln!(
                        w,
                        "berth: warning: the VM's agent forwards no credentials (the VM was started by an older berth): `berth down && berth up` restarts it with this one"
                    );
                }
            }
            _ => {}
        }
    }

    /// Refuses `stream` and drops whatever this side holds of it.
    fn close(&mut self, stream: u32) {
        if let Some(o) = self.open.remove(&stream) {
            o.shared.shut();
        }
        let _ = self.session.stream_close(stream);
    }

    fn open(&mut self, stream: u32, kind: StreamKind) {
        self.open.retain(|_, o| o.live.strong_count() > 0);
        let kind = match kind {
            StreamKind::SshAgent => ForwardKind::SshAgent,
            StreamKind::GitCredential => ForwardKind::GitCredential,
        };
        if self.open.contains_key(&stream) {
            // An id still in use: both are dropped.
            return self.close(stream);
        }
        if !self.fwd.allows(kind) || self.live() >= MAX_STREAMS {
            return self.close(stream);
        }
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            socket: Mutex::new(None),
        });
        self.live.fetch_add(1, Ordering::SeqCst);
        let slot = Arc::new(LiveSlot(self.live.clone()));
        let (to_host, queue) = mpsc::channel();
        self.open.insert(
            stream,
            Open {
                to_host,
                shared: shared.clone(),
                live: Arc::downgrade(&slot),
            },
        );
        let connector = self.fwd.connector.clone();
        let session = self.session.clone();
        let spawned = std::thread::Builder::new()
            .name("vm-forward".into())
            .spawn(move || write_side(connector, kind, stream, session, shared, queue, slot));
        if spawned.is_err() {
            self.close(stream);
        }
    }
}

impl Drop for GuestStreams {
    fn drop(&mut self) {
        for (_, o) in self.open.drain() {
            o.shared.shut();
        }
    }
}

/// Connects the stream's host end, starts its reading side, then writes what the guest
/// sends until its end.
fn write_side(
    connector: Arc<dyn ForwardConnector>,
    kind: ForwardKind,
    stream: u32,
    session: SessionHandle,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<ToHost>,
    slot: Arc<LiveSlot>,
) {
    let Some(mut socket) = connector.connect(kind) else {
        if !shared.closed.load(Ordering::SeqCst) {
            let _ = session.stream_close(stream);
        }
        return;
    };
    let reader = socket.try_clone();
    *shared.socket.lock().unwrap_or_else(|p| p.into_inner()) = socket.try_clone().ok();
    // Closed while connecting: the router could not shut it.
    if shared.closed.load(Ordering::SeqCst) {
        let _ = socket.shutdown(Shutdown::Both);
        return;
    }
    if let Ok(reader) = reader {
        let (session, shared, slot) = (session.clone(), shared.clone(), slot.clone());
        let _ = std::thread::Builder::new()
            .name("vm-forward".into())
            .spawn(move || read_side(reader, stream, session, shared, slot));
    }
    for item in queue {
        match item {
            ToHost::Data(d) => {
                let n = d.len();
                if socket.write_all(&d).is_err() {
                    if !shared.closed.swap(true, Ordering::SeqCst) {
                        let _ = session.stream_close(stream);
                    }
                    let _ = socket.shutdown(Shutdown::Both);
                    return;
                }
                shared.pending.fetch_sub(n, Ordering::SeqCst);
            }
            ToHost::Eof => {
                let _ = socket.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

/// Sends what the host end answers to the guest, then its end.
fn read_side(
    mut socket: UnixStream,
    stream: u32,
    session: SessionHandle,
    shared: Arc<Shared>,
    _slot: Arc<LiveSlot>,
) {
    let mut buf = vec![0u8; STREAM_CHUNK];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => {
                if !shared.closed.load(Ordering::SeqCst) {
                    let _ = session.stream_eof(stream);
                }
                return;
            }
            Ok(n) => {
                if shared.closed.load(Ordering::SeqCst)
                    || session.stream_data(stream, &buf[..n]).is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                if !shared.closed.swap(true, Ordering::SeqCst) {
                    let _ = session.stream_close(stream);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_agent_proto::{Client, Exec, Frame, FrameBuffer};
    use std::time::{Duration, Instant};

    /// Hands out one end of a fresh socket pair per connection and keeps the other (the
    /// "host service") for the test.
    #[derive(Default)]
    struct Pairs(Mutex<Vec<(ForwardKind, UnixStream)>>);

    impl ForwardConnector for Pairs {
        fn connect(&self, kind: ForwardKind) -> Option<UnixStream> {
            let (ours, theirs) = UnixStream::pair().ok()?;
            self.0.lock().unwrap().push((kind, theirs));
            Some(ours)
        }
    }

    /// The agent's end of the connection: reads the frames the host sends.
    struct AgentEnd {
        stream: UnixStream,
        frames: FrameBuffer,
    }

    impl AgentEnd {
        fn next(&mut self) -> Option<Frame> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut buf = [0u8; 65536];
            loop {
                if let Some(f) = self.frames.next_frame().unwrap() {
                    return Some(f);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                self.stream.set_read_timeout(Some(left)).unwrap();
                match self.stream.read(&mut buf) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.frames.push(&buf[..n]),
                }
            }
        }

        /// The next frame that is not stream data (data frames are collected into `data`).
        fn next_control(&mut self, data: &mut Vec<u8>) -> Message {
            loop {
                let f = self.next().expect("a frame from the host");
                match f.message {
                    Message::StreamData { data: d, .. } => data.extend(d),
                    m => return m,
                }
            }
        }
    }

    fn setup(agent: bool, git: bool) -> (GuestStreams, AgentEnd, Arc<Pairs>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut client = Client::new(host).unwrap();
        let handle = client.start(Exec::default()).unwrap();
        let mut end = AgentEnd {
            stream: guest,
            frames: FrameBuffer::new(),
        };
        assert!(matches!(end.next().unwrap().message, Message::Exec(_)));
        let pairs = Arc::new(Pairs::default());
        let fwd = GuestForwarding {
            agent,
            git_credentials: git,
            gitconfig: None,
            connector: pairs.clone(),
        };
        (GuestStreams::new(handle, fwd, None), end, pairs)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_stream_is_relayed_both_ways_with_half_closes() {
        let (mut streams, mut end, pairs) = setup(false, true);
        streams.handle(Message::StreamOpen {
            stream: 5,
            kind: StreamKind::GitCredential,
        });
        streams.handle(Message::StreamData {
            stream: 5,
            data: b"action=get\n".to_vec(),
        });
        streams.handle(Message::StreamEof { stream: 5 });
        wait_until("the connection", || pairs.0.lock().unwrap().len() == 1);
        let (kind, mut far) = pairs.0.lock().unwrap().pop().unwrap();
        assert_eq!(kind, ForwardKind::GitCredential);
        let mut request = String::new();
        far.read_to_string(&mut request).unwrap();
        assert_eq!(request, "action=get\n");
        far.write_all(b"password=x\n").unwrap();
        drop(far);
        let mut answer = Vec::new();
        assert_eq!(
            end.next_control(&mut answer),
            Message::StreamEof { stream: 5 }
        );
        assert_eq!(answer, b"password=x\n");
        wait_until("the stream's threads to end", || streams.live() == 0);
    }

    /// What the guest cannot do: open a kind the session does not forward, reuse an open
    /// stream's id, or hold more than MAX_STREAMS at once; none of it reaches the host.
    #[test]
    fn streams_the_session_did_not_ask_for_are_refused() {
        let (mut streams, mut end, pairs) = setup(true, false);
        let mut data = Vec::new();
        streams.handle(Message::StreamOpen {
            stream: 1,
            kind: StreamKind::GitCredential,
        });
        assert_eq!(
            end.next_control(&mut data),
            Message::StreamClose { stream: 1 }
        );
        for id in 10..10 + MAX_STREAMS as u32 {
            streams.handle(Message::StreamOpen {
                stream: id,
                kind: StreamKind::SshAgent,
            });
        }
        streams.handle(Message::StreamOpen {
            stream: 99,
            kind: StreamKind::SshAgent,
        });
        assert_eq!(
            end.next_control(&mut data),
            Message::StreamClose { stream: 99 },
            "more than MAX_STREAMS at once"
        );
        wait_until("the connections", || {
            pairs.0.lock().unwrap().len() == MAX_STREAMS
        });
        streams.handle(Message::StreamOpen {
            stream: 10,
            kind: StreamKind::SshAgent,
        });
        assert_eq!(
            end.next_control(&mut data),
            Message::StreamClose { stream: 10 },
            "an id in use"
        );
        assert!(pairs
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|(k, _)| *k == ForwardKind::SshAgent));
        assert_eq!(pairs.0.lock().unwrap().len(), MAX_STREAMS);
        assert!(data.is_empty());
        // The session's end closes every host socket.
        drop(streams);
        for (_, mut far) in pairs.0.lock().unwrap().drain(..) {
            far.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut rest = Vec::new();
            assert!(far.read_to_end(&mut rest).is_ok() && rest.is_empty());
        }
    }

    #[test]
    fn a_host_end_that_does_not_read_is_cut_off() {
        let (mut streams, mut end, pairs) = setup(true, false);
        streams.handle(Message::StreamOpen {
            stream: 2,
            kind: StreamKind::SshAgent,
        });
        wait_until("the connection", || pairs.0.lock().unwrap().len() == 1);
        for _ in 0..(4 * MAX_STREAM_BUFFER / STREAM_CHUNK) {
            streams.handle(Message::StreamData {
                stream: 2,
                data: vec![0; STREAM_CHUNK],
            });
        }
        let mut data = Vec::new();
        assert_eq!(
            end.next_control(&mut data),
            Message::StreamClose { stream: 2 }
        );
        wait_until("the stream's threads to end", || streams.live() == 0);
    }
}
