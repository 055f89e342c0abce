//! The layer's tar stream read ahead on a thread of its own: decompression runs there while
//! the unpacker creates and writes the files, so a layer unpacks on two cores (as `tar -xzf`
//! does with its `gzip` child) instead of one. The diff-id's sha256 is taken on the
//! unpacker's side, chunk by chunk as it arrives: decompression is the longest serial part
//! of a pull, and hashing beside it made that thread a third longer while the unpacker's
//! thread, which mostly waits on the kernel, had room for it.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest as _, Sha256};

use super::super::digest::Digest;

/// Bytes read from the source per message.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the unpacker (bounds the memory to `DEPTH * CHUNK`).
const DEPTH: usize = 8;

/// The unpacker's side: the stream's bytes as the reading thread produced them. Ends (reads
/// 0) when the source ended, or returns the source's error. Every chunk received is hashed
/// whole (whether or not it is read out): [`AheadReader::finish`] gives the stream's sha256.
pub(super) struct AheadReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the reading thread, to be filled again.
    spent: Sender<Vec<u8>>,
    chunk: Chunk,
    hasher: Sha256,
    received: u64,
}

/// Bytes received from another thread, read out in pieces.
#[derive(Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    pos: usize,
}

impl Chunk {
    /// Whether every byte was read out.
    pub fn is_spent(&self) -> bool {
        self.pos == self.bytes.len()
    }

    /// Takes `next` to read out; returns the spent buffer (to be filled again).
    pub fn replace(&mut self, next: Vec<u8>) -> Vec<u8> {
        self.pos = 0;
        std::mem::replace(&mut self.bytes, next)
    }

    /// The bytes not read out yet.
    pub fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Marks `amount` more bytes as read out (at most those left).
    pub fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.bytes.len());
    }

    /// Copies out as many of the bytes left as `buf` holds.
    pub fn copy_to(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        n
    }
}

/// The reading thread (joined to see whether it panicked: its reader then just ends).
pub(super) type Filling<'scope> = ScopedJoinHandle<'scope, ()>;

/// Starts reading `source` on a thread of `scope`. Dropping the returned reader stops the
/// thread at its next chunk (its send fails), so the scope never waits on an unpacker that
/// gave up.
pub(super) fn read_ahead<'scope, R: Read + Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    source: R,
) -> (AheadReader, Filling<'scope>) {
    let (tx, rx) = mpsc::sync_channel(DEPTH);
    let (spent, recycled) = mpsc::channel();
    let thread = scope.spawn(move || fill(source, &tx, &recycled));
    let reader = AheadReader {
        rx,
        spent,
        chunk: Chunk::default(),
        hasher: Sha256::new(),
        received: 0,
    };
    (reader, thread)
}

/// Reads `source` to its end (or an error, passed on) in chunks sent to `tx`.
fn fill<R: Read>(
    mut source: R,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    recycled: &Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        let got = loop {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let last = !matches!(got, Ok(n) if n == CHUNK);
        let msg = got.map(|n| {
            buf.truncate(n);
            buf
        });
        let empty = matches!(&msg, Ok(b) if b.is_empty());
        if (!empty && tx.send(msg).is_err()) || last {
            break;
        }
    }
}

impl AheadReader {
    /// The sha256 and length of every byte received (all of the stream once `read`
    /// returned 0).
    pub(super) fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.received)
    }
}

impl Read for AheadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunk.is_spent() {
            let next = match self.rx.recv() {
                Ok(Ok(next)) => next,
                Ok(Err(e)) => return Err(e),
                // The source ended: its thread finished and dropped its sender.
                Err(_) => return Ok(0),
            };
            self.hasher.update(&next);
            self.received += next.len() as u64;
            let spent = self.chunk.replace(next);
            if spent.capacity() > 0 {
                // The reading thread may have ended: then the buffer is simply freed.
                let _ = self.spent.send(spent);
            }
        }
        Ok(self.chunk.copy_to(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that returns its bytes a few at a time, then fails if asked to.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if self.fail_at_end {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt gzip"));
                }
                return Ok(0);
            }
            let n = buf.len().min(7919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Counts the bytes read from `inner`.
    struct Counted<'a, R> {
        inner: R,
        read: &'a std::sync::atomic::AtomicU64,
    }

    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn passes_every_byte_in_order_and_hashes_them() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let source = Trickle {
                data: data.clone(),
                at: 0,
                fail_at_end: false,
            };
            let (got, hashed) = std::thread::scope(|s| {
                let (mut r, filling) = read_ahead(s, source);
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                filling.join().unwrap();
                (got, r.finish())
            });
            assert_eq!(got, data, "{len} bytes");
            assert_eq!(hashed, (Digest::of(&data), len as u64));
        }
    }

    #[test]
    fn passes_the_sources_error_on() {
        let source = Trickle {
            data: vec![1; CHUNK + 10],
            at: 0,
            fail_at_end: true,
        };
        let err = std::thread::scope(|s| {
            let (mut r, _) = read_ahead(s, source);
            r.read_to_end(&mut Vec::new()).unwrap_err()
        });
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_unpacker_that_stops_early_does_not_hang_the_reader() {
        let read = std::sync::atomic::AtomicU64::new(0);
        let source = Counted {
            inner: io::repeat(0).take(100 * CHUNK as u64),
            read: &read,
        };
        std::thread::scope(|s| {
            let (mut r, filling) = read_ahead(s, source);
            r.read_exact(&mut [0u8; 1000]).unwrap();
            drop(r);
            filling.join().unwrap();
            let len = read.load(std::sync::atomic::Ordering::Relaxed);
            assert!(len < 100 * CHUNK as u64, "the reader went on to the end");
        });
    }
}
