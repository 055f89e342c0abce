//! The stream shared by a [`RemoteTransport`](super::RemoteTransport)'s calls: the writing half,
//! the requests waiting for answers, the watch sinks, and the reader thread ([`pump`]) that
//! routes every incoming frame by request id.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::transport::{EventSink, TransportError, WatchEvent};
use crate::wire::{read_frame, write_data, write_frame, Frame, Msg};

/// Frames buffered per request before the reader thread waits for its consumer.
const QUEUE: usize = 64;

pub(super) struct Shared {
    pub(super) label: String,
    pub(super) writer: Mutex<Box<dyn Write + Send>>,
    pub(super) replies: Mutex<HashMap<u32, SyncSender<Frame>>>,
    pub(super) sinks: Mutex<HashMap<u32, Arc<EventSink>>>,
    pub(super) next_id: AtomicU32,
    /// Why the stream ended, once it has.
    pub(super) closed: Mutex<Option<String>>,
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) fn lost(&self, rel: &str) -> TransportError {
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

    pub(super) fn register(&self) -> (u32, Receiver<Frame>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        lock(&self.replies).insert(id, tx);
        (id, rx)
    }

    pub(super) fn unregister(&self, id: u32) {
        lock(&self.replies).remove(&id);
    }

    pub(super) fn write(
        &self,
        w: &mut dyn Write,
        frame: &Frame,
        rel: &str,
    ) -> Result<(), TransportError> {
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

    pub(super) fn write_data(
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
    pub(super) fn recv(&self, rx: &Receiver<Frame>, rel: &str) -> Result<Frame, TransportError> {
        rx.recv().map_err(|_| self.lost(rel))
    }

    /// The next message for a request; an `Error` message becomes the error it carries.
    pub(super) fn recv_msg(&self, rx: &Receiver<Frame>, rel: &str) -> Result<Msg, TransportError> {
        match self.recv(rx, rel)? {
            Frame::Msg {
                msg: Msg::Error { error },
                ..
            } => Err(error.into()),
            Frame::Msg { msg, .. } => Ok(msg),
            Frame::Data { .. } => Err(self.unexpected(rel, "data")),
        }
    }

    pub(super) fn unexpected(&self, rel: &str, what: &str) -> TransportError {
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
    pub(super) fn call(&self, msg: Msg, rel: &str) -> Result<Msg, TransportError> {
        let (id, rx) = self.register();
        let r = self
            .write(&mut **lock(&self.writer), &Frame::Msg { id, msg }, rel)
            .and_then(|()| self.recv_msg(&rx, rel));
        self.unregister(id);
        r
    }
}

/// Reads frames until the stream ends and routes them.
pub(super) fn pump(shared: Arc<Shared>, mut reader: Box<dyn Read + Send>) {
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
