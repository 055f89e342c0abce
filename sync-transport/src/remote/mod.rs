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
//!
//! The stream and its reader thread are in [`request_router`], a file read from the far side
//! in [`remote_source`].

mod remote_source;
#[cfg(test)]
mod remote_tests;
mod request_router;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::delta::{self, DELTA_MAX, DELTA_MIN};
use crate::ignore::IgnoreRules;
use crate::transport::{EventSink, SourceFile, Staged, Transport, TransportError, Watching};
use crate::tree::{Entry, Scan};
use crate::wire::{Frame, Msg, WireRules, CHUNK, VERSION};
use remote_source::RemoteSource;
use request_router::{lock, pump, Shared};

/// The far side of a sync, reached over a byte stream.
pub struct RemoteTransport {
    shared: Arc<Shared>,
    describe: String,
    basis: Option<Arc<dyn Transport>>,
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
                barrier: None,
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
