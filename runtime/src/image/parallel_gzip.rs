//! gzip on every core, with output that does not depend on how many cores there are: the
//! input is cut into fixed [`CHUNK`]-byte pieces, each piece is compressed on its own (raw
//! deflate, sync-flushed so it ends on a byte boundary; the last one finishes the stream),
//! and the pieces are joined in order under one gzip header and trailer (the CRC-32 and
//! length of the whole input). The result is one ordinary gzip member, which every gzip
//! reader takes, and the same input always gives the same bytes, on one thread or sixteen
//! (pigz's `--independent` mode; klauspost/pgzip, which skopeo uses, cuts 1 MB blocks the
//! same way). Layer digests stay stable, so a second push of a layer finds it in the
//! registry and cache keys keep matching.
//!
//! The pieces are a pipeline: worker threads compress the next pieces while the reader of
//! the output (hashing, writing, uploading it) takes the earlier ones, so neither waits for
//! the other as long as the window of pieces in flight is not empty.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Uncompressed bytes per independently compressed piece. Changing it changes every
/// compressed layer's digest: it is part of the format, not a tuning knob.
pub const CHUNK: usize = 1 << 20;

/// The deflate level: zlib-rs's fastest lazy-free strategy (deflate_fast, levels 2–3), about what
/// pgzip's default (klauspost's level 5, a fast matcher) costs and gives.
pub const LEVEL: u32 = 3;

/// What the compressed bytes depend on besides the input ([`CHUNK`], [`LEVEL`], the piece
/// layout): an interrupted upload of a compressed stream is continued only by a berth that
/// makes the same bytes.
pub const FORMAT: &str = "gzip-pieces-1MiB-level3-v1";

/// Header: magic, deflate, no flags, no modification time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// A piece to compress and where its result goes.
struct Job {
    data: Vec<u8>,
    last: bool,
    reply: SyncSender<io::Result<Vec<u8>>>,
}

/// Threads compressing pieces; they end when the job channel closes.
struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&rx);
                std::thread::spawn(move || loop {
                    // (The lock is held only to take a job, not while compressing it.)
                    let job = match rx.lock() {
                        Ok(g) => g.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let out = deflate_piece(&job.data, job.last);
                    // The reader may be gone (dropped mid-stream): nothing to deliver to.
                    let _ = job.reply.send(out);
                })
            })
            .collect();
        Pool {
            jobs: Some(tx),
            threads,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A reader giving the gzip compression of `inner`.
pub struct ParallelGzip<R> {
    inner: R,
    chunk: usize,
    /// Pieces compressed ahead of the reader.
    window: usize,
    /// `None`: one thread, pieces compressed inline.
    pool: Option<Pool>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    crc: crc32fast::Hasher,
    len: u64,
    out: Vec<u8>,
    pos: usize,
    /// The piece finishing the stream was handed out to be compressed.
    input_done: bool,
    /// The trailer is in `out`.
    done: bool,
}

impl<R: Read> ParallelGzip<R> {
    /// Compresses with one thread per available core (at most 16).
    pub fn new(inner: R) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(16);
        Self::with_threads(inner, threads)
    }

    pub fn with_threads(inner: R, threads: usize) -> Self {
        Self::with_chunk(inner, threads, CHUNK)
    }

    /// Pieces of `chunk` bytes (tests: small pieces, small inputs).
    fn with_chunk(inner: R, threads: usize, chunk: usize) -> Self {
        let threads = threads.max(1);
        ParallelGzip {
            inner,
            chunk,
            window: threads * 3,
            pool: (threads > 1).then(|| Pool::new(threads)),
            pending: VecDeque::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            out: HEADER.to_vec(),
            pos: 0,
            input_done: false,
            done: false,
        }
    }

    /// Reads up to a piece's bytes, short only at the end of the input.
    fn read_chunk(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = Vec::with_capacity(self.chunk);
        (&mut self.inner)
            .take(self.chunk as u64)
            .read_to_end(&mut chunk)?;
        self.crc.update(&chunk);
        self.len += chunk.len() as u64;
        Ok(chunk)
    }

    /// Hands pieces to the pool until the window is full or the input is all handed out.
    /// A piece shorter than [`CHUNK`] is the last; a full last piece is only known to be
    /// last once the next read comes back empty: that empty piece then finishes the stream
    /// (an empty final block, 2 bytes).
    fn submit(&mut self) -> io::Result<()> {
        while !self.input_done && self.pending.len() < self.window {
            let data = self.read_chunk()?;
            let last = data.len() < self.chunk;
            self.input_done = last;
            let (reply, rx) = mpsc::sync_channel(1);
            let job = Job { data, last, reply };
            match self.pool.as_ref().and_then(|p| p.jobs.as_ref()) {
                Some(jobs) => jobs
                    .send(job)
                    .map_err(|_| io::Error::other("the gzip threads are gone"))?,
                None => {
                    let _ = job.reply.send(deflate_piece(&job.data, job.last));
                }
            }
            self.pending.push_back(rx);
        }
        Ok(())
    }

    /// Puts the next compressed piece (and after the last, the trailer) into `out`.
    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        self.submit()?;
        let Some(next) = self.pending.pop_front() else {
            return Err(io::Error::other("no gzip piece in flight"));
        };
        let piece = next
            .recv()
            .map_err(|_| io::Error::other("a gzip thread panicked"))??;
        // Hand out the next piece before this one is read, so the pool stays busy.
        self.submit()?;
        self.out = piece;
        if self.input_done && self.pending.is_empty() {
            self.done = true;
            self.out
                .extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
            self.out.extend_from_slice(&(self.len as u32).to_le_bytes());
        }
        Ok(())
    }
}

/// Raw deflate of one piece: sync-flushed (ends byte-aligned, the stream goes on) or, for
/// the last piece, finished.
fn deflate_piece(data: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(LEVEL),
    );
    enc.write_all(data)?;
    if last {
        return enc.finish();
    }
    enc.flush()?;
    // Take the flushed bytes; dropping the encoder then finishes into the emptied buffer,
    // which is thrown away.
    Ok(std::mem::take(enc.get_mut()))
}

impl<R: Read> Read for ParallelGzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small pieces keep the inputs (and the debug build's time) small.
    const PIECE: usize = 4096;

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        ParallelGzip::with_chunk(data, threads, PIECE)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Text-like bytes that compress, with some variety so pieces differ.
    fn sample(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u32 = 1;
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let line = format!("line {} value {}\n", v.len() / 17, (x >> 16) % 1000);
            v.extend_from_slice(line.as_bytes());
        }
        v.truncate(len);
        v
    }

    #[test]
    fn the_output_is_one_gzip_member_that_decodes_to_the_input() {
        for len in [
            0,
            1,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            6 * PIECE,
            41 * PIECE + 777,
        ] {
            let data = sample(len);
            let gz = gzip(&data, 3);
            // A single-member reader (not MultiGzDecoder) reads all of it.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "length {len}");
            assert_eq!(&gz[..10], &HEADER);
        }
    }

    #[test]
    fn the_bytes_do_not_depend_on_the_number_of_threads() {
        let data = sample(40 * PIECE + 1_234);
        let one = gzip(&data, 1);
        for threads in [2, 3, 8] {
            assert!(gzip(&data, threads) == one, "{threads} threads");
        }
        // And the command-line gzip reads it too.
        let mut child = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&one).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        assert!(out.stdout == data);
    }

    #[test]
    fn a_reader_dropped_mid_stream_ends_its_threads() {
        let data = sample(30 * PIECE);
        let mut gz = ParallelGzip::with_chunk(&data[..], 4, PIECE);
        let mut some = [0u8; 100];
        gz.read_exact(&mut some).unwrap();
        // Dropping joins the pool: this returns (does not hang) with pieces in flight.
        drop(gz);
    }
}
