//! A file being read from the far side: its data frames, or copy ops against the local version
//! (a delta) and literals, checked against the sha256 the far side sends at the end.

use std::io::{self, Read};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::request_router::Shared;
use crate::delta;
use crate::transport::{SourceFile, TransportError};
use crate::tree::Entry;
use crate::wire::{Frame, Msg};

/// A file being read from the far side.
pub(super) struct RemoteSource {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u32,
    pub(super) rel: String,
    pub(super) rx: Receiver<Frame>,
    /// The local version the far side sends a delta against.
    pub(super) old: Option<Vec<u8>>,
    pub(super) block: u32,
    pub(super) pending: Vec<u8>,
    pub(super) pos: usize,
    pub(super) hasher: Sha256,
    pub(super) end: Option<Result<Entry, String>>,
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
