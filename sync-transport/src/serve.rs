//! The server side of the [`crate::wire`] protocol: [`serve`] answers the requests read from
//! a byte stream with any [`Transport`] (inside a VM: a [`crate::LocalTransport`] on the
//! guest's folder, run by `berth-agent sync-serve`).
//!
//! Requests are handled one at a time, in order; watch events are written from the watcher's
//! thread as they come. When the stream ends, staged files that were never committed are
//! removed and watches stop.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::delta::{self, DELTA_MAX};
use crate::ignore::IgnoreRules;
use crate::transport::{Staged, Transport, TransportError, Watching};
use crate::wire::{
    read_frame, write_data, write_frame, ErrorMsg, Frame, Msg, WireError, CHUNK, VERSION,
};

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

/// Serves `transport` on `reader`/`writer` until the reader ends (`Ok`) or the stream breaks
/// or carries something malformed (`Err`).
pub fn serve(
    reader: &mut dyn Read,
    writer: Box<dyn Write + Send>,
    transport: &dyn Transport,
) -> Result<(), WireError> {
    let mut server = Server {
        t: transport,
        writer: Arc::new(Mutex::new(writer)),
        staged: HashMap::new(),
        watches: HashMap::new(),
        next_token: 1,
    };
    let result = server.run(reader);
    for (_, s) in server.staged.drain() {
        transport.discard(s);
    }
    server.watches.clear();
    result
}

struct Server<'t> {
    t: &'t dyn Transport,
    writer: SharedWriter,
    staged: HashMap<u64, Staged>,
    watches: HashMap<u32, Watching>,
    next_token: u64,
}

fn send(writer: &SharedWriter, frame: &Frame) -> Result<(), WireError> {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut **w, frame)?;
    Ok(())
}

fn error_msg(e: &TransportError) -> Msg {
    Msg::Error {
        error: ErrorMsg::from(e),
    }
}

impl Server<'_> {
    fn reply(&self, id: u32, msg: Msg) -> Result<(), WireError> {
        send(&self.writer, &Frame::Msg { id, msg })
    }

    fn answer(&self, id: u32, r: Result<Msg, TransportError>) -> Result<(), WireError> {
        self.reply(id, r.unwrap_or_else(|e| error_msg(&e)))
    }

    fn io_error(&self, op: &str, rel: &str, message: String) -> Msg {
        Msg::Error {
            error: ErrorMsg::Io {
                side: self.t.describe(),
                op: op.into(),
                path: rel.into(),
                message,
                errno: None,
            },
        }
    }

    fn run(&mut self, reader: &mut dyn Read) -> Result<(), WireError> {
        loop {
            let Some((frame, _)) = read_frame(reader)? else {
                return Ok(());
            };
            let (id, msg) = match frame {
                Frame::Msg { id, msg } => (id, msg),
                Frame::Data { id, .. } => {
                    return Err(WireError::Malformed(format!(
                        "data frame for {id} outside a file transfer"
                    )))
                }
            };
            self.handle(reader, id, msg)?;
        }
    }

    fn handle(&mut self, reader: &mut dyn Read, id: u32, msg: Msg) -> Result<(), WireError> {
        let t = self.t;
        match msg {
            Msg::Hello { version } => {
                if version != VERSION {
                    let m = self.io_error(
                        "open",
                        "",
                        format!("the sync peer speaks protocol {version}, this one {VERSION}; use the same berth version on both sides"),
                    );
                    return self.reply(id, m);
                }
                self.reply(
                    id,
                    Msg::HelloAck {
                        version: VERSION,
                        describe: t.describe(),
                    },
                )
            }
            Msg::Scan { rel, rules } => {
                let r = match IgnoreRules::new(&rules.patterns) {
                    Ok(mut r) => {
                        for (dir, texts) in &rules.gitignores {
                            for text in texts {
                                r.add_gitignore(dir, text);
                            }
                        }
                        t.scan(&rel, &r).map(|scan| Msg::Scanned { scan })
                    }
                    Err(e) => return self.reply(id, self.io_error("list", &rel, e.to_string())),
                };
                self.answer(id, r)
            }
            Msg::Stat { rel } => self.answer(id, t.stat(&rel).map(|entry| Msg::Looked { entry })),
            Msg::Hash { rel } => self.answer(id, t.hash(&rel).map(|hash| Msg::Hashed { hash })),
            Msg::ReadFile { rel, sigs } => self.read_file(id, &rel, sigs),
            Msg::Signatures { rel } => {
                let sigs = delta::basis(t, &rel).map(|old| delta::signatures(&old));
                self.reply(id, Msg::Sigs { sigs })
            }
            Msg::StageBegin {
                rel,
                mode,
                mtime_ns,
                delta,
            } => self.stage(reader, id, &rel, mode, mtime_ns, delta),
            Msg::StageSymlink { rel, target } => {
                let r = t.stage_symlink(&rel, &target).map(|s| self.keep(s));
                self.answer(id, r)
            }
            Msg::Commit { token, expect } => {
                let r = match self.staged.remove(&token) {
                    Some(s) => t
                        .commit(s, expect.as_ref())
                        .map(|entry| Msg::Applied { entry }),
                    None => {
                        let m = self.io_error(
                            "rename into place",
                            "",
                            format!("no staged entry {token}"),
                        );
                        return self.reply(id, m);
                    }
                };
                self.answer(id, r)
            }
            Msg::Discard { token } => {
                if let Some(s) = self.staged.remove(&token) {
                    t.discard(s);
                }
                self.reply(id, Msg::Done)
            }
            Msg::Remove { rel, expect } => {
                self.answer(id, t.remove(&rel, &expect).map(|()| Msg::Done))
            }
            Msg::Rename { from, to } => self.answer(id, t.rename(&from, &to).map(|()| Msg::Done)),
            Msg::Mkdir { rel, mode } => {
                self.answer(id, t.mkdir(&rel, mode).map(|entry| Msg::Applied { entry }))
            }
            Msg::SetMode { rel, mode } => self.answer(
                id,
                t.set_mode(&rel, mode).map(|entry| Msg::Applied { entry }),
            ),
            Msg::Watch { force_poll } => {
                let writer = self.writer.clone();
                let sink = Box::new(move |ev: crate::transport::WatchEvent| {
                    let _ = send(
                        &writer,
                        &Frame::Msg {
                            id,
                            msg: Msg::Event {
                                event: (&ev).into(),
                            },
                        },
                    );
                });
                match t.watch(sink, force_poll) {
                    Ok(w) => {
                        let polling = w.polling.clone();
                        self.watches.insert(id, w);
                        self.reply(id, Msg::Watching { polling })
                    }
                    Err(e) => self.reply(id, error_msg(&e)),
                }
            }
            Msg::Unwatch { watch } => {
                self.watches.remove(&watch);
                self.reply(id, Msg::Done)
            }
            other => Err(WireError::Malformed(format!(
                "unexpected message {} from the client",
                serde_json::to_string(&other).unwrap_or_default()
            ))),
        }
    }

    fn keep(&mut self, s: Staged) -> Msg {
        let token = self.next_token;
        self.next_token += 1;
        let m = Msg::Staged {
            rel: s.rel.clone(),
            temp_name: s.temp_name.clone(),
            token,
        };
        self.staged.insert(token, s);
        m
    }

    /// Streams the file: whole, or as delta ops against the client's `sigs`.
    fn read_file(
        &mut self,
        id: u32,
        rel: &str,
        sigs: Option<crate::wire::Signatures>,
    ) -> Result<(), WireError> {
        let (entry, mut file) = match self.t.read_file(rel) {
            Ok(f) => f,
            Err(e) => return self.reply(id, error_msg(&e)),
        };
        let size = entry.size;
        self.reply(id, Msg::Opened { entry })?;
        let read_error = |e: io::Error| self.io_error("read", rel, e.to_string());
        match sigs.filter(|_| size <= DELTA_MAX) {
            Some(sigs) => {
                let mut content = Vec::new();
                if let Err(e) = file.read_to_end(&mut content) {
                    return self.reply(id, read_error(e));
                }
                let sha256 = hex::encode(Sha256::digest(&content));
                for op in delta::diff(&sigs, &content) {
                    match op {
                        delta::Op::Copy { start, count } => {
                            self.reply(id, Msg::CopyBlocks { start, count })?
                        }
                        delta::Op::Literal(bytes) => {
                            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                            for chunk in bytes.chunks(CHUNK) {
                                write_data(&mut **w, id, chunk)?;
                            }
                        }
                    }
                }
                let entry_now = file.entry_now().map_err(|e| e.to_string());
                self.reply(
                    id,
                    Msg::ReadEnd {
                        entry_now,
                        sha256: Some(sha256),
                    },
                )
            }
            None => {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                            write_data(&mut **w, id, &buf[..n])?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return self.reply(id, read_error(e)),
                    }
                }
                let entry_now = file.entry_now().map_err(|e| e.to_string());
                self.reply(
                    id,
                    Msg::ReadEnd {
                        entry_now,
                        sha256: None,
                    },
                )
            }
        }
    }

    fn stage(
        &mut self,
        reader: &mut dyn Read,
        id: u32,
        rel: &str,
        mode: u32,
        mtime_ns: i64,
        delta: bool,
    ) -> Result<(), WireError> {
        let basis = if delta {
            delta::basis(self.t, rel)
        } else {
            None
        };
        let mut incoming = StageReader {
            reader,
            id,
            delta,
            basis: basis.as_deref(),
            pending: Vec::new(),
            pos: 0,
            hasher: Sha256::new(),
            ended: false,
            fatal: None,
        };
        let r = self.t.stage_file(rel, &mut incoming, mode, mtime_ns);
        // What the transport did not read (it failed early) is skipped to the stream's end.
        while !incoming.ended && incoming.fatal.is_none() {
            let _ = incoming.next();
        }
        if let Some(e) = incoming.fatal.take() {
            if let Ok(s) = r {
                self.t.discard(s);
            }
            return Err(e);
        }
        let r = r.map(|s| self.keep(s));
        self.answer(id, r)
    }
}

/// The content of a stage stream, as a reader for [`Transport::stage_file`].
struct StageReader<'a> {
    reader: &'a mut dyn Read,
    id: u32,
    delta: bool,
    basis: Option<&'a [u8]>,
    pending: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    ended: bool,
    /// The stream itself broke: the connection cannot go on.
    fatal: Option<WireError>,
}

impl StageReader<'_> {
    /// Reads the next frame of the stream into `pending`; `Ok(false)` at its end.
    fn next(&mut self) -> io::Result<bool> {
        let frame = match read_frame(self.reader) {
            Ok(Some((f, _))) => f,
            Ok(None) => {
                self.fatal = Some(WireError::Closed);
                return Err(io::Error::other(
                    "the sync channel closed during a transfer",
                ));
            }
            Err(e) => {
                let m = e.to_string();
                self.fatal = Some(e);
                return Err(io::Error::other(m));
            }
        };
        let bad = |this: &mut Self, what: String| {
            this.fatal = Some(WireError::Malformed(what.clone()));
            Err(io::Error::other(what))
        };
        match frame {
            Frame::Data { id, data } if id == self.id => {
                self.pending = data;
            }
            Frame::Msg {
                id,
                msg: Msg::CopyBlocks { start, count },
            } if id == self.id && self.delta => {
                let Some(basis) = self.basis else {
                    self.ended_with_error();
                    return Err(io::Error::other(
                        "the old file a delta refers to cannot be read",
                    ));
                };
                let block = delta::block_size(basis.len() as u64);
                match delta::copy_range(basis, block, start, count) {
                    Ok(b) => self.pending = b.to_vec(),
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
            Frame::Msg {
                id,
                msg: Msg::StageEnd { ok, sha256 },
            } if id == self.id => {
                self.ended = true;
                if !ok {
                    return Err(io::Error::other("the sender could not read the file"));
                }
                let got = hex::encode(std::mem::take(&mut self.hasher).finalize());
                if sha256.is_some_and(|want| want != got) {
                    return Err(io::Error::other(
                        "the file rebuilt from a delta does not match its sha256",
                    ));
                }
                return Ok(false);
            }
            Frame::Msg { id, msg } => {
                return bad(
                    self,
                    format!(
                        "unexpected {} for {id} during the transfer {}",
                        serde_json::to_string(&msg).unwrap_or_default(),
                        self.id
                    ),
                )
            }
            Frame::Data { id, .. } => {
                return bad(
                    self,
                    format!("data for {id} during the transfer {}", self.id),
                )
            }
        }
        self.pos = 0;
        Ok(true)
    }

    /// Marks the content as unusable; the rest of the stream is still skipped.
    fn ended_with_error(&mut self) {
        self.pending.clear();
        self.pos = 0;
    }
}

impl Read for StageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.pending.len() {
            if self.ended || !self.next()? {
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
