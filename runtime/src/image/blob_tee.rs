//! The tee of a download ([`super::blob_download::PartialBlob::tee`]): every byte appended
//! to the blob is also passed to a reader on another thread (the layer's unpacker), through a
//! buffer the two share. The reader takes all that arrived since its last read in one go,
//! so while it is busy (decompressing) the network's small reads gather into large chunks
//! with one wake-up each, and while it waits every byte reaches it at once (a registry that
//! pauses does not hold back what it already sent). Two buffers of [`CAP`] bytes take turns
//! (the one being filled, the one being read), allocated once: the download waits while its
//! buffer is full, and each side wakes the other only when it waits.

use std::io::{self, BufRead, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::unpack::Chunk;

/// Bytes gathered for the reader at most (unless one append is larger): the download waits
/// while its buffer is full, so the tee holds at most two of them.
const CAP: usize = 1 << 20;
/// Bytes the reader's first read holds at least, unless the blob is shorter: enough for the
/// magic bytes the unpacker tells gzip, zstd and a plain tar apart by.
const FIRST: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// The blob was verified: what is pending is the rest of the stream.
    Verified,
    /// Interrupted, restarted or corrupt: the reader fails.
    Aborted,
}

struct Shared {
    /// Bytes appended and not yet taken by the reader.
    pending: Vec<u8>,
    /// A buffer the reader emptied, to be filled again instead of allocated.
    spare: Vec<u8>,
    end: End,
    /// The reader was dropped (its unpack failed): the download goes on without it.
    reader_gone: bool,
    /// Who waits for the other (to be woken only then).
    reader_waiting: bool,
    writer_waiting: bool,
}

struct Pipe {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Nothing is left half-changed by a panic under this lock.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }
}

/// A tee: the download's side and the reader's.
pub(super) fn tee() -> (BlobTee, TeeReader) {
    let pipe = Arc::new(Pipe {
        shared: Mutex::new(Shared {
            pending: Vec::new(),
            spare: Vec::new(),
            end: End::Open,
            reader_gone: false,
            reader_waiting: false,
            writer_waiting: false,
        }),
        changed: Condvar::new(),
    });
    let writer = BlobTee {
        pipe: Some(pipe.clone()),
        intact: true,
    };
    let reader = TeeReader {
        pipe,
        chunk: Chunk::default(),
        started: false,
        done: false,
    };
    (writer, reader)
}

/// The download's side of a tee. Dropping it without [`BlobTee::end`] aborts the reader.
pub(super) struct BlobTee {
    /// `None` once ended or aborted, or once the reader is gone.
    pipe: Option<Arc<Pipe>>,
    intact: bool,
}

impl BlobTee {
    /// Passes `bytes` on (waiting while the reader has not taken a full buffer yet).
    pub(super) fn send(&mut self, bytes: &[u8]) {
        let Some(pipe) = &self.pipe else { return };
        let mut s = pipe.lock();
        while !s.reader_gone && !s.pending.is_empty() && s.pending.len() + bytes.len() > CAP {
            s.writer_waiting = true;
            s = pipe.wait(s);
            s.writer_waiting = false;
        }
        if s.reader_gone {
            drop(s);
            self.pipe = None;
            return;
        }
        if s.pending.capacity() == 0 {
            s.pending = std::mem::take(&mut s.spare);
            s.pending.reserve_exact(CAP.max(bytes.len()));
        }
        s.pending.extend_from_slice(bytes);
        let wake = s.reader_waiting;
        drop(s);
        if wake {
            pipe.changed.notify_all();
        }
    }

    /// Whether the reader saw (or will see) every byte of the blob exactly once.
    pub(super) fn intact(&self) -> bool {
        self.intact
    }

    /// The blob was restarted or is given up: the reader fails.
    pub(super) fn abort(&mut self) {
        self.intact = false;
        self.finish(End::Aborted);
    }

    /// The blob was verified: the reader ends cleanly after the bytes pending.
    pub(super) fn end(&mut self) {
        self.finish(End::Verified);
    }

    fn finish(&mut self, end: End) {
        if let Some(pipe) = self.pipe.take() {
            pipe.lock().end = end;
            pipe.changed.notify_all();
        }
    }
}

impl Drop for BlobTee {
    fn drop(&mut self) {
        self.finish(End::Aborted);
    }
}

/// Reads the bytes of a blob as they are downloaded. As a [`BufRead`] it lends out what it
/// took, so a decompressor reads the bytes where they are, without another copy.
pub struct TeeReader {
    pipe: Arc<Pipe>,
    chunk: Chunk,
    /// Whether the first bytes were taken (see [`FIRST`]).
    started: bool,
    done: bool,
}

impl BufRead for TeeReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.chunk.is_spent() && !self.done {
            let need = if self.started { 1 } else { FIRST };
            let mut s = self.pipe.lock();
            while s.pending.len() < need && s.end == End::Open {
                s.reader_waiting = true;
                s = self.pipe.wait(s);
                s.reader_waiting = false;
            }
            if s.end == End::Aborted {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the download was interrupted or did not verify",
                ));
            }
            if s.pending.is_empty() {
                // Verified, and every byte was taken.
                self.done = true;
            } else {
                let mut spent = self.chunk.replace(std::mem::take(&mut s.pending));
                if s.spare.capacity() == 0 {
                    spent.clear();
                    s.spare = spent;
                }
                self.started = true;
            }
            let wake = s.writer_waiting;
            drop(s);
            if wake {
                self.pipe.changed.notify_all();
            }
        }
        Ok(self.chunk.rest())
    }

    fn consume(&mut self, amount: usize) {
        self.chunk.consume(amount);
    }
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.fill_buf()?;
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.chunk.consume(n);
        Ok(n)
    }
}

impl Drop for TeeReader {
    fn drop(&mut self) {
        self.pipe.lock().reader_gone = true;
        self.pipe.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn what_arrived_before_a_pause_reaches_the_reader_without_waiting_for_more() {
        let (mut tx, mut rx) = tee();
        let (got, seen) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1000];
            let mut n = 0;
            while n < 100 {
                n += rx.read(&mut buf[n..]).unwrap();
            }
            got.send(buf[..n].to_vec()).unwrap();
            rx
        });
        for piece in [&[1u8; 1][..], &[2; 3], &[3; 96]] {
            tx.send(piece);
        }
        // No more bytes, no end: the 100 bytes must arrive all the same.
        let bytes = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("bytes held back");
        assert_eq!(bytes.len(), 100);
        assert_eq!(&bytes[..5], &[1, 2, 2, 2, 3]);
        let mut rx = reader.join().unwrap();
        tx.end();
        assert_eq!(rx.read(&mut [0u8; 10]).unwrap(), 0, "ends once verified");
    }

    #[test]
    fn a_download_far_ahead_waits_and_a_gone_reader_releases_it() {
        let (mut tx, rx) = tee();
        let piece = vec![7u8; 64 * 1024];
        for _ in 0..CAP / piece.len() {
            tx.send(&piece);
        }
        // The next piece would wait for the reader: dropping it lets the download go on.
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(rx);
        });
        tx.send(&piece);
        tx.send(&piece);
        dropper.join().unwrap();
        assert!(tx.intact());
    }

    #[test]
    fn an_aborted_or_dropped_tee_fails_its_reader() {
        let (mut tx, mut rx) = tee();
        tx.send(b"some bytes");
        tx.abort();
        assert!(!tx.intact());
        assert!(rx.read_to_end(&mut Vec::new()).is_err());
        let (tx, mut rx) = tee();
        drop(tx);
        assert!(rx.read_to_end(&mut Vec::new()).is_err());
    }
}
