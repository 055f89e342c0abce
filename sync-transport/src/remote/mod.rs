//! [`RemoteTransport`]: a [`Transport`] whose side is on the far end of a byte stream served
//! by [`crate::serve::serve`] (a VM guest's folder, over an agent session).
//!
//! A reader thread takes every incoming frame and routes it by request id: to the call
//! waiting for it, to the file being read, or (watch events) to the engine's sink. Calls may
//! come from several threads at once; a file being staged holds the writing half until its
//! last chunk is out, so the server sees each transfer in one piece.
//!
//! Large files go as deltas ([`crate::delta`]) when the destination already has a version:
//! towards the far side, [`Transport::stage_file`] asks for its block signatures first; from
//! the far side, [`Transport::read_file`] sends the signatures of the local copy (the
//! `basis` transport, i.e. the engine's other side) and receives copy ops and literals.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::delta::{self, DELTA_MAX, DELTA_MIN};
use crate::ignore::IgnoreRules;
use crate::transport::{
    EventSink, SourceFile, Staged, Transport, TransportError, WatchEvent, Watching,
};
use crate::tree::{Entry, Scan};
use crate::wire::{read_frame, write_data, write_frame, Frame, Msg, WireRules, CHUNK, VERSION};

/// Frames buffered per request before the reader thread waits for its consumer.
const QUEUE: usize = 64;

struct Shared {
    label: String,
    writer: Mutex<Box<dyn Write + Send>>,
    replies: Mutex<HashMap<u32, SyncSender<Frame>>>,
    sinks: Mutex<HashMap<u32, Arc<EventSink>>>,
    next_id: AtomicU32,
    /// Why the stream ended, once it has.
    closed: Mutex<Option<String>>,
    sent: AtomicU64,
    received: AtomicU64,
}

/// The far side of a sync, reached over a byte stream.
pub struct RemoteTransport {
    shared: Arc<Shared>,
    describe: String,
    basis: Option<Arc<dyn Transport>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn lost(&self, rel: &str) -> TransportError {
        let why = lock(&self.closed)
            .clone()
            .unwrap_or_else(|| "the sync channel closed".into());
        TransportError::Io {
            side: self.label.clone(),
            op: "reach",
            path: rel.to_string(),
            source: io::Error::new(io::ErrorKind::BrokenPipe, why),
        }
    }

    fn register(&self) -> (u32, Receiver<Frame>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        lock(&self.replies).insert(id, tx);
        (id, rx)
    }

    fn unregister(&self, id: u32) {
        lock(&self.replies).remove(&id);
    }

    fn write(&self, w: &mut dyn Write, frame: &Frame, rel: &str) -> Result<(), TransportError> {
        match write_frame(w, frame) {
            Ok(n) => {
                self.sent.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                lock(&self.closed).get_or_insert_with(|| format!("the sync channel broke: {e}"));
                Err(self.lost(rel))
            }
        }
    }

    fn write_data(
        &self,
        w: &mut dyn Write,
        id: u32,
        data: &[u8],
        rel: &str,
    ) -> Result<(), TransportError> {
        match write_data(w, id, data) {
            Ok(n) => {
                self.sent.fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                lock(&self.closed).get_or_insert_with(|| format!("the sync channel broke: {e}"));
                Err(self.lost(rel))
            }
        }
    }

    /// The next frame for a request.
    fn recv(&self, rx: &Receiver<Frame>, rel: &str) -> Result<Frame, TransportError> {
        rx.recv().map_err(|_| self.lost(rel))
    }

    /// The next message for a request; an `Error` message becomes the error it carries.
    fn recv_msg(&self, rx: &Receiver<Frame>, rel: &str) -> Result<Msg, TransportError> {
        match self.recv(rx, rel)? {
            Frame::Msg {
                msg: Msg::Error { error },
                ..
            } => Err(error.into()),
            Frame::Msg { msg, .. } => Ok(msg),
            Frame::Data { .. } => Err(self.unexpected(rel, "data")),
        }
    }

    fn unexpected(&self, rel: &str, what: &str) -> TransportError {
        TransportError::Io {
            side: self.label.clone(),
            op: "reach",
            path: rel.to_string(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the sync server answered with unexpected {what}; is it the same berth version?"),
            ),
        }
    }

    /// Sends `msg` and waits for its one answer.
    fn call(&self, msg: Msg, rel: &str) -> Result<Msg, TransportError> {
        let (id, rx) = self.register();
        let r = self
            .write(&mut **lock(&self.writer), &Frame::Msg { id, msg }, rel)
            .and_then(|()| self.recv_msg(&rx, rel));
        self.unregister(id);
        r
    }
}

/// Reads frames until the stream ends and routes them.
fn pump(shared: Arc<Shared>, mut reader: Box<dyn Read + Send>) {
    let why = loop {
        match read_frame(&mut reader) {
            Ok(Some((frame, n))) => {
                shared.received.fetch_add(n as u64, Ordering::Relaxed);
                let id = match &frame {
                    Frame::Msg { id, .. } | Frame::Data { id, .. } => *id,
                };
                if let Frame::Msg {
                    msg: Msg::Event { event },
                    ..
                } = &frame
                {
                    let sink = lock(&shared.sinks).get(&id).cloned();
                    if let Some(sink) = sink {
                        sink(WatchEvent::from(event.clone()));
                    }
                    continue;
                }
                let tx = lock(&shared.replies).get(&id).cloned();
                if let Some(tx) = tx {
                    if tx.send(frame).is_err() {
                        // Its reader was dropped (a file read given up): skip the rest.
                        shared.unregister(id);
                    }
                }
            }
            Ok(None) => break "the sync channel closed".to_string(),
            Err(e) => break format!("the sync channel failed: {e}"),
        }
    };
    lock(&shared.closed).get_or_insert(why.clone());
    lock(&shared.replies).clear();
    let sinks: Vec<_> = lock(&shared.sinks).drain().map(|(_, s)| s).collect();
    for s in sinks {
        s(WatchEvent::Failed {
            message: why.clone(),
            limit: false,
        });
    }
}

impl RemoteTransport {
    /// Talks to a server on `reader`/`writer` (says hello and checks the protocol version).
    /// `label` names the side in messages (`env /work`).
    pub fn connect(
        label: &str,
        reader: Box<dyn Read + Send>,
        writer: Box<dyn Write + Send>,
    ) -> Result<Self, TransportError> {
        let shared = Arc::new(Shared {
            label: label.to_string(),
            writer: Mutex::new(writer),
            replies: Mutex::new(HashMap::new()),
            sinks: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: Mutex::new(None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        });
        let pumped = shared.clone();
        std::thread::Builder::new()
            .name("sync-remote".into())
            .spawn(move || pump(pumped, reader))
            .map_err(|source| TransportError::Io {
                side: label.to_string(),
                op: "open",
                path: String::new(),
                source,
            })?;
        match shared.call(Msg::Hello { version: VERSION }, "")? {
            Msg::HelloAck { version, describe } if version == VERSION => Ok(RemoteTransport {
                describe: format!("{label} ({describe})"),
                shared,
                basis: None,
            }),
            Msg::HelloAck { version, .. } => Err(TransportError::Io {
                side: label.to_string(),
                op: "open",
                path: String::new(),
                source: io::Error::other(format!(
                    "the sync server speaks protocol {version}, this berth {VERSION}; use the same berth version on both sides"
                )),
            }),
            _ => Err(shared.unexpected("", "a message")),
        }
    }

    /// Files read from the far side are sent as deltas against this transport's version of
    /// the same path (the engine's other side), when it has one that is large enough.
    pub fn with_basis(mut self, basis: Arc<dyn Transport>) -> Self {
        self.basis = Some(basis);
        self
    }

    /// Bytes written to the stream so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the stream so far.
    pub fn bytes_received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Why the stream ended, once it has (the sync must then stop and be restarted).
    pub fn closed(&self) -> Option<String> {
        lock(&self.shared.closed).clone()
    }

    fn entry(&self, msg: Msg, rel: &str) -> Result<Entry, TransportError> {
        match self.shared.call(msg, rel)? {
            Msg::Applied { entry } => Ok(entry),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    fn done(&self, msg: Msg, rel: &str) -> Result<(), TransportError> {
        match self.shared.call(msg, rel)? {
            Msg::Done => Ok(()),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    fn staged(&self, msg: Msg, rel: &str) -> Result<Staged, TransportError> {
        match msg {
            Msg::Staged {
                rel,
                temp_name,
                token,
            } => Ok(Staged {
                rel,
                temp_name,
                handle: Some(Box::new(token)),
            }),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    /// Sends one stage stream: `content` whole, or `ops` of a delta. Returns the server's answer.
    fn send_stage(
        &self,
        rel: &str,
        mode: u32,
        mtime_ns: i64,
        body: StageBody<'_>,
    ) -> Result<Result<Msg, TransportError>, TransportError> {
        let sh = &self.shared;
        let (id, rx) = sh.register();
        let mut read_error = None;
        let sent = (|| -> Result<(), TransportError> {
            let mut w = lock(&sh.writer);
            let delta = matches!(body, StageBody::Delta { .. });
            sh.write(
                &mut **w,
                &Frame::Msg {
                    id,
                    msg: Msg::StageBegin {
                        rel: rel.into(),
                        mode,
                        mtime_ns,
                        delta,
                    },
                },
                rel,
            )?;
            let mut sha256 = None;
            match body {
                StageBody::Reader(data) => {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match data.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => sh.write_data(&mut **w, id, &buf[..n], rel)?,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                read_error = Some(e);
                                break;
                            }
                        }
                    }
                }
                StageBody::Delta { ops, sha } => {
                    for op in ops {
                        match op {
                            delta::Op::Copy { start, count } => sh.write(
                                &mut **w,
                                &Frame::Msg {
                                    id,
                                    msg: Msg::CopyBlocks {
                                        start: *start,
                                        count: *count,
                                    },
                                },
                                rel,
                            )?,
                            delta::Op::Literal(b) => {
                                for c in b.chunks(CHUNK) {
                                    sh.write_data(&mut **w, id, c, rel)?;
                                }
                            }
                        }
                    }
                    sha256 = Some(sha);
                }
            }
            sh.write(
                &mut **w,
                &Frame::Msg {
                    id,
                    msg: Msg::StageEnd {
                        ok: read_error.is_none(),
                        sha256,
                    },
                },
                rel,
            )
        })();
        let r = sent.map(|()| sh.recv_msg(&rx, rel));
        sh.unregister(id);
        let answer = r?;
        if let Some(e) = read_error {
            if let Ok(m) = &answer {
                if let Ok(s) = self.staged(m.clone(), rel) {
                    self.discard(s);
                }
            }
            return Err(TransportError::Io {
                side: "source".into(),
                op: "read",
                path: rel.into(),
                source: e,
            });
        }
        Ok(answer)
    }
}

enum StageBody<'a> {
    Reader(&'a mut dyn Read),
    Delta { ops: &'a [delta::Op], sha: String },
}

impl Transport for RemoteTransport {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn scan(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError> {
        let rules = WireRules {
            patterns: rules.patterns().to_vec(),
            gitignores: rules.gitignore_texts().into_iter().collect(),
        };
        match self.shared.call(
            Msg::Scan {
                rel: rel.into(),
                rules,
            },
            rel,
        )? {
            Msg::Scanned { scan } => Ok(scan),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    fn stat(&self, rel: &str) -> Result<Option<Entry>, TransportError> {
        match self.shared.call(Msg::Stat { rel: rel.into() }, rel)? {
            Msg::Looked { entry } => Ok(entry),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    fn hash(&self, rel: &str) -> Result<Option<String>, TransportError> {
        match self.shared.call(Msg::Hash { rel: rel.into() }, rel)? {
            Msg::Hashed { hash } => Ok(hash),
            _ => Err(self.shared.unexpected(rel, "a message")),
        }
    }

    fn read_file(&self, rel: &str) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        let old = self.basis.as_ref().and_then(|b| delta::basis(&**b, rel));
        let sigs = old.as_deref().map(delta::signatures);
        let block = sigs.as_ref().map(|s| s.block).unwrap_or(0);
        let sh = &self.shared;
        let (id, rx) = sh.register();
        let sent = sh.write(
            &mut **lock(&sh.writer),
            &Frame::Msg {
                id,
                msg: Msg::ReadFile {
                    rel: rel.into(),
                    sigs,
                },
            },
            rel,
        );
        let opened = sent.and_then(|()| sh.recv_msg(&rx, rel));
        match opened {
            Ok(Msg::Opened { entry }) => Ok((
                entry,
                Box::new(RemoteSource {
                    shared: sh.clone(),
                    id,
                    rel: rel.to_string(),
                    rx,
                    old,
                    block,
                    pending: Vec::new(),
                    pos: 0,
                    hasher: Sha256::new(),
                    end: None,
                }),
            )),
            Ok(_) => {
                sh.unregister(id);
                Err(sh.unexpected(rel, "a message"))
            }
            Err(e) => {
                sh.unregister(id);
                Err(e)
            }
        }
    }

    fn stage_file(
        &self,
        rel: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime_ns: i64,
    ) -> Result<Staged, TransportError> {
        // A new content below the delta threshold travels whole: no round trip for the old
        // file's signatures (most files of a source tree).
        let read_err = |source| TransportError::Io {
            side: "source".into(),
            op: "read",
            path: rel.into(),
            source,
        };
        let mut head = Vec::new();
        (&mut *data)
            .take(DELTA_MIN)
            .read_to_end(&mut head)
            .map_err(read_err)?;
        if (head.len() as u64) < DELTA_MIN {
            let answer =
                self.send_stage(rel, mode, mtime_ns, StageBody::Reader(&mut &head[..]))??;
            return self.staged(answer, rel);
        }
        let mut chained = io::Cursor::new(head).chain(data);
        let data: &mut dyn Read = &mut chained;
        let sigs = match self.shared.call(Msg::Signatures { rel: rel.into() }, rel)? {
            Msg::Sigs { sigs } => sigs,
            _ => return Err(self.shared.unexpected(rel, "a message")),
        };
        let Some(sigs) = sigs else {
            let answer = self.send_stage(rel, mode, mtime_ns, StageBody::Reader(data))??;
            return self.staged(answer, rel);
        };
        // Hold the new content (up to the delta limit) to match it against the old blocks.
        let mut content = Vec::new();
        let read = (&mut *data)
            .take(DELTA_MAX + 1)
            .read_to_end(&mut content)
            .map_err(read_err)?;
        if read as u64 > DELTA_MAX {
            let mut rest = io::Cursor::new(content).chain(data);
            let answer = self.send_stage(rel, mode, mtime_ns, StageBody::Reader(&mut rest))??;
            return self.staged(answer, rel);
        }
        let ops = delta::diff(&sigs, &content);
        let sha = hex::encode(Sha256::digest(&content));
        match self.send_stage(rel, mode, mtime_ns, StageBody::Delta { ops: &ops, sha })? {
            Ok(answer) => self.staged(answer, rel),
            // The old file changed since its signatures were taken (the rebuilt file did not
            // match): send it whole.
            Err(_) => {
                let answer =
                    self.send_stage(rel, mode, mtime_ns, StageBody::Reader(&mut &content[..]))??;
                self.staged(answer, rel)
            }
        }
    }

    fn stage_symlink(&self, rel: &str, target: &str) -> Result<Staged, TransportError> {
        let m = self.shared.call(
            Msg::StageSymlink {
                rel: rel.into(),
                target: target.into(),
            },
            rel,
        )?;
        self.staged(m, rel)
    }

    fn commit(&self, mut staged: Staged, expect: Option<&Entry>) -> Result<Entry, TransportError> {
        let token = take_token(&mut staged);
        self.entry(
            Msg::Commit {
                token,
                expect: expect.cloned(),
            },
            &staged.rel,
        )
    }

    fn discard(&self, mut staged: Staged) {
        let token = take_token(&mut staged);
        let _ = self.done(Msg::Discard { token }, &staged.rel);
    }

    fn remove(&self, rel: &str, expect: &Entry) -> Result<(), TransportError> {
        self.done(
            Msg::Remove {
                rel: rel.into(),
                expect: expect.clone(),
            },
            rel,
        )
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), TransportError> {
        self.done(
            Msg::Rename {
                from: from.into(),
                to: to.into(),
            },
            from,
        )
    }

    fn mkdir(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        self.entry(
            Msg::Mkdir {
                rel: rel.into(),
                mode,
            },
            rel,
        )
    }

    fn set_mode(&self, rel: &str, mode: u32) -> Result<Entry, TransportError> {
        self.entry(
            Msg::SetMode {
                rel: rel.into(),
                mode,
            },
            rel,
        )
    }

    fn watch(&self, sink: EventSink, force_poll: bool) -> Result<Watching, TransportError> {
        let sh = &self.shared;
        let (id, rx) = sh.register();
        // The sink is in place before the server can send the first event.
        lock(&sh.sinks).insert(id, Arc::new(sink));
        let r = sh
            .write(
                &mut **lock(&sh.writer),
                &Frame::Msg {
                    id,
                    msg: Msg::Watch { force_poll },
                },
                "",
            )
            .and_then(|()| sh.recv_msg(&rx, ""));
        sh.unregister(id);
        match r {
            Ok(Msg::Watching { polling }) => Ok(Watching {
                guard: Box::new(Unwatch {
                    shared: sh.clone(),
                    id,
                }),
                polling,
            }),
            Ok(_) => {
                lock(&sh.sinks).remove(&id);
                Err(sh.unexpected("", "a message"))
            }
            Err(e) => {
                lock(&sh.sinks).remove(&id);
                Err(e)
            }
        }
    }
}

impl Drop for RemoteTransport {
    /// Ends the stream towards the server (the reader thread shares the rest of the state),
    /// so it stops and the reader thread sees the end.
    fn drop(&mut self) {
        *lock(&self.shared.writer) = Box::new(io::sink());
    }
}

fn take_token(staged: &mut Staged) -> u64 {
    staged
        .handle
        .take()
        .and_then(|h| h.downcast::<u64>().ok())
        .map(|t| *t)
        .unwrap_or(0)
}

/// Stops a remote watch when dropped.
struct Unwatch {
    shared: Arc<Shared>,
    id: u32,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        lock(&self.shared.sinks).remove(&self.id);
        if lock(&self.shared.closed).is_none() {
            let _ = self.shared.call(Msg::Unwatch { watch: self.id }, "");
        }
    }
}

/// A file being read from the far side.
struct RemoteSource {
    shared: Arc<Shared>,
    id: u32,
    rel: String,
    rx: Receiver<Frame>,
    /// The local version the far side sends a delta against.
    old: Option<Vec<u8>>,
    block: u32,
    pending: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    end: Option<Result<Entry, String>>,
}

impl RemoteSource {
    fn fill(&mut self) -> io::Result<bool> {
        let frame = self.rx.recv().map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                self.shared.lost(&self.rel).to_string(),
            )
        })?;
        match frame {
            Frame::Data { data, .. } => self.pending = data,
            Frame::Msg {
                msg: Msg::CopyBlocks { start, count },
                ..
            } => {
                let old = self.old.as_deref().unwrap_or(&[]);
                self.pending = delta::copy_range(old, self.block, start, count)
                    .map_err(io::Error::other)?
                    .to_vec();
            }
            Frame::Msg {
                msg: Msg::ReadEnd { entry_now, sha256 },
                ..
            } => {
                self.shared.unregister(self.id);
                let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
                self.end = Some(entry_now);
                if sha256.is_some_and(|want| want != got) {
                    return Err(io::Error::other(format!(
                        "{}: the file rebuilt from a delta does not match its sha256",
                        self.rel
                    )));
                }
                return Ok(false);
            }
            Frame::Msg {
                msg: Msg::Error { error },
                ..
            } => {
                self.shared.unregister(self.id);
                self.end = Some(Err("read failed".into()));
                return Err(io::Error::other(TransportError::from(error).to_string()));
            }
            Frame::Msg { .. } => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unexpected message in a file transfer",
                ))
            }
        }
        self.pos = 0;
        Ok(true)
    }
}

impl Read for RemoteSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.pending.len() {
            if self.end.is_some() || !self.fill()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.hasher.update(&buf[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl SourceFile for RemoteSource {
    fn entry_now(&mut self) -> io::Result<Entry> {
        if self.end.is_none() {
            io::copy(self, &mut io::sink())?;
        }
        match self.end.clone() {
            Some(Ok(e)) => Ok(e),
            Some(Err(m)) => Err(io::Error::other(m)),
            None => Err(io::Error::other("the file transfer did not finish")),
        }
    }
}

impl Drop for RemoteSource {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::EntryKind;
    use crate::LocalTransport;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    /// A RemoteTransport talking to a LocalTransport on `root` through a socketpair.
    fn remote(root: &Path) -> (RemoteTransport, std::thread::JoinHandle<Result<(), String>>) {
        let (a, b) = UnixStream::pair().unwrap();
        let root = root.to_path_buf();
        let server = std::thread::spawn(move || {
            let t = LocalTransport::open("env", &root).map_err(|e| e.to_string())?;
            let mut r = a.try_clone().unwrap();
            serve(&mut r, Box::new(a), &t).map_err(|e| e.to_string())
        });
        let client = RemoteTransport::connect(
            "env",
            Box::new(b.try_clone().unwrap()),
            Box::new(ShutdownOnDrop(b)),
        )
        .unwrap();
        (client, server)
    }

    /// The writing half of a socket: dropping it tells the peer the stream ended (the
    /// reader thread keeps its own descriptor of the same socket open).
    struct ShutdownOnDrop(UnixStream);

    impl Write for ShutdownOnDrop {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }

    impl Drop for ShutdownOnDrop {
        fn drop(&mut self) {
            let _ = self.0.shutdown(std::net::Shutdown::Write);
        }
    }

    use crate::serve::serve;

    use crate::delta::test_data as data;

    #[test]
    fn every_operation_works_across_the_wire() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("src/target")).unwrap();
        fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(root.join("src/target/x.o"), "o").unwrap();
        fs::write(root.join(".gitignore"), "*.log\n").unwrap();
        fs::write(root.join("a.log"), "log").unwrap();
        let (t, server) = remote(root);
        assert!(t.describe().starts_with("env ("), "{}", t.describe());

        // scan with the mount's patterns and .gitignore
        let rules = IgnoreRules::new(&["target/".into()]).unwrap();
        let scan = t.scan("", &rules).unwrap();
        let names: Vec<_> = scan.entries.keys().cloned().collect();
        assert_eq!(names, [".gitignore", "src", "src/main.rs"]);
        assert_eq!(scan.gitignores.get("").map(|s| s.as_str()), Some("*.log\n"));

        // stat, hash, read
        let e = t.stat("src/main.rs").unwrap().unwrap();
        assert_eq!((e.kind, e.size), (EntryKind::File, 13));
        assert!(t.stat("missing").unwrap().is_none());
        assert_eq!(
            t.hash("src/main.rs").unwrap().unwrap(),
            hex::encode(Sha256::digest(b"fn main() {}\n"))
        );
        let (opened, mut f) = t.read_file("src/main.rs").unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "fn main() {}\n");
        assert!(f.entry_now().unwrap().same_state(&opened));

        // stage + commit a new file, with mode and mtime
        let staged = t
            .stage_file(
                "new/dir/f.txt",
                &mut &b"hello"[..],
                0o751,
                1_000_000_000_123,
            )
            .unwrap();
        assert!(!root.join("new/dir/f.txt").exists());
        let written = t.commit(staged, None).unwrap();
        assert_eq!(fs::read(root.join("new/dir/f.txt")).unwrap(), b"hello");
        assert_eq!(written.mode, 0o751);
        assert_eq!(written.mtime_ns, 1_000_000_000_123);
        // commit refuses when the target is not what was expected: Changed, transient
        let staged = t
            .stage_file("new/dir/f.txt", &mut &b"x"[..], 0o644, 0)
            .unwrap();
        let err = t.commit(staged, None).unwrap_err();
        assert!(matches!(err, TransportError::Changed { .. }), "{err}");
        assert!(err.is_transient());
        // discard leaves nothing behind
        let staged = t.stage_file("d.txt", &mut &b"x"[..], 0o644, 0).unwrap();
        t.discard(staged);

        // symlinks: staged as links, never followed
        let staged = t.stage_symlink("link", "/etc").unwrap();
        t.commit(staged, None).unwrap();
        assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("/etc"));
        let err = t.stat("link/passwd").unwrap_err();
        assert!(matches!(err, TransportError::Escapes { .. }), "{err}");
        let err = t
            .stage_file("link/evil", &mut &b"x"[..], 0o644, 0)
            .unwrap_err();
        assert!(matches!(err, TransportError::Escapes { .. }), "{err}");
        // a missing file reads as NotFound: transient
        let err = t.read_file("nope").map(|_| ()).unwrap_err();
        assert!(err.is_transient(), "{err}");

        // mkdir, set_mode, rename, remove
        let d = t.mkdir("made", 0o700).unwrap();
        assert_eq!(d.kind, EntryKind::Dir);
        t.set_mode("made", 0o755).unwrap();
        assert_eq!(
            fs::metadata(root.join("made"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        t.rename("new/dir/f.txt", "made/g.txt").unwrap();
        assert!(root.join("made/g.txt").exists());
        let e = t.stat("made/g.txt").unwrap().unwrap();
        let err = t
            .remove("made", &t.stat("made").unwrap().unwrap())
            .unwrap_err();
        assert!(matches!(err, TransportError::NotEmpty { .. }), "{err}");
        t.remove("made/g.txt", &e).unwrap();
        assert!(!root.join("made/g.txt").exists());

        let leftovers: Vec<_> = walk(root)
            .into_iter()
            .filter(|p| crate::tree::is_temp_name(p))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        drop(t);
        server.join().unwrap().unwrap();
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(root).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    #[test]
    fn watch_events_arrive_and_stop_with_the_guard() {
        let tmp = tempfile::tempdir().unwrap();
        let (t, server) = remote(tmp.path());
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let w = t
            .watch(
                Box::new(move |ev| {
                    let _ = lock(&tx).send(ev);
                }),
                false,
            )
            .unwrap();
        fs::write(tmp.path().join("touched"), "1").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left).expect("a watch event") {
                WatchEvent::Changed { rel, .. } if rel == "touched" => break,
                _ => {}
            }
        }
        drop(w);
        drop(t);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_large_file_changed_by_one_byte_travels_as_a_small_delta_both_ways() {
        const SIZE: usize = 8 << 20;
        let env = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let old = data(SIZE, 1);
        fs::write(env.path().join("big.bin"), &old).unwrap();
        let host_t: Arc<dyn Transport> =
            Arc::new(LocalTransport::open("host", host.path()).unwrap());
        let (t, server) = remote(env.path());
        let t = t.with_basis(host_t.clone());

        // host → env: the env keeps its old version; only the changed block is sent.
        let mut new = old.clone();
        new[SIZE / 2] ^= 0xff;
        let before = t.bytes_sent();
        let expect = t.stat("big.bin").unwrap();
        let staged = t.stage_file("big.bin", &mut &new[..], 0o644, 0).unwrap();
        t.commit(staged, expect.as_ref()).unwrap();
        let sent = t.bytes_sent() - before;
        assert_eq!(fs::read(env.path().join("big.bin")).unwrap(), new);
        assert!(sent < 512 << 10, "sent {sent} bytes for a 1-byte change");

        // env → host: the host has `new`; the env's file gets an insertion in the middle.
        fs::write(host.path().join("big.bin"), &new).unwrap();
        let mut newer = new.clone();
        newer.splice(SIZE / 3..SIZE / 3, b"inserted".iter().copied());
        fs::write(env.path().join("big.bin"), &newer).unwrap();
        let before = t.bytes_received();
        let (_, mut f) = t.read_file("big.bin").unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        f.entry_now().unwrap();
        let received = t.bytes_received() - before;
        assert!(got == newer, "rebuilt content differs");
        assert!(received < 512 << 10, "received {received} bytes");

        // Without a local version, the whole file comes (and still matches).
        fs::remove_file(host.path().join("big.bin")).unwrap();
        let before = t.bytes_received();
        let (_, mut f) = t.read_file("big.bin").unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(got == newer);
        assert!(t.bytes_received() - before > SIZE as u64);
        drop(f);
        drop(t);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_small_new_content_is_sent_whole_without_asking_for_signatures() {
        let env = tempfile::tempdir().unwrap();
        // A large old file would answer a signature request with thousands of block sums.
        fs::write(env.path().join("f.bin"), data(2 << 20, 5)).unwrap();
        let (t, server) = remote(env.path());
        let expect = t.stat("f.bin").unwrap();
        let before = t.bytes_received();
        let staged = t.stage_file("f.bin", &mut &b"small"[..], 0o644, 0).unwrap();
        let received = t.bytes_received() - before;
        t.commit(staged, expect.as_ref()).unwrap();
        assert_eq!(fs::read(env.path().join("f.bin")).unwrap(), b"small");
        assert!(
            received < 4096,
            "received {received} bytes: the old file's signatures were asked for"
        );
        drop(t);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_delta_against_an_old_file_that_changed_falls_back_to_the_whole_file() {
        let env = tempfile::tempdir().unwrap();
        let old = data(2 << 20, 3);
        fs::write(env.path().join("f"), &old).unwrap();
        let (t, server) = remote(env.path());
        // Replaced under the transfer by something else of another size: the server's
        // rebuilt file fails its sha256 check, and the client sends the content whole.
        struct Swap<'a> {
            data: &'a [u8],
            path: std::path::PathBuf,
            swapped: bool,
        }
        impl Read for Swap<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if !self.swapped {
                    self.swapped = true;
                    fs::write(&self.path, data(3 << 20, 9)).unwrap();
                }
                self.data.read(buf)
            }
        }
        let mut new = old.clone();
        new[10] ^= 1;
        let mut src = Swap {
            data: &new,
            path: env.path().join("f"),
            swapped: false,
        };
        let staged = t.stage_file("f", &mut src, 0o644, 0).unwrap();
        t.commit(staged, t.stat("f").unwrap().as_ref()).unwrap();
        assert!(fs::read(env.path().join("f")).unwrap() == new);
        drop(t);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_server_that_goes_away_fails_calls_instead_of_hanging() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            // Answer the hello, then vanish.
            let mut r = a.try_clone().unwrap();
            let (f, _) = read_frame(&mut r).unwrap().unwrap();
            let Frame::Msg { id, .. } = f else { panic!() };
            let mut w = a;
            write_frame(
                &mut w,
                &Frame::Msg {
                    id,
                    msg: Msg::HelloAck {
                        version: VERSION,
                        describe: "x".into(),
                    },
                },
            )
            .unwrap();
        });
        let t =
            RemoteTransport::connect("env", Box::new(b.try_clone().unwrap()), Box::new(b)).unwrap();
        server.join().unwrap();
        let err = t.stat("a").unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(t.closed().is_some());
    }

    #[test]
    fn corrupt_requests_end_the_server_with_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let t = LocalTransport::open("env", tmp.path()).unwrap();
        for bytes in [
            vec![0u8, 0, 0, 9, KIND_DATA_TEST, 0, 0, 0, 1, 1, 2, 3, 4],
            vec![0, 0, 0, 3, 1],
            vec![0, 0, 1],
        ] {
            let r = serve(&mut &bytes[..], Box::new(io::sink()), &t);
            assert!(r.is_err(), "{bytes:?}");
        }
    }

    const KIND_DATA_TEST: u8 = crate::wire::KIND_DATA;
}
