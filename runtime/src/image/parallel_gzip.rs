//! gzip on every core, with output that does not depend on how many cores there are: the
//! input is cut into fixed [`CHUNK`]-byte pieces, each piece is compressed on its own (raw
//! deflate, sync-flushed so it ends on a byte boundary; the last one finishes the stream),
//! and the pieces are joined in order under one gzip header and trailer (the CRC-32 and
//! length of the whole input). The result is one ordinary gzip member, which every gzip
//! reader takes, and the same input always gives the same bytes, on one thread or sixteen
//! (pigz's `--independent` mode; klauspost/pgzip, which skopeo uses, cuts 1 MB blocks the
//! same way). Layer digests stay stable, so a second push of a layer finds it in the
//! registry and cache keys keep matching.

use std::io::{self, Read, Write};

/// Uncompressed bytes per independently compressed piece. Changing it changes every
/// compressed layer's digest: it is part of the format, not a tuning knob.
pub const CHUNK: usize = 1 << 20;

/// The deflate level: zlib-rs's fastest lazy-free strategy (deflate_fast, levels 2–3), about what
/// pgzip's default (klauspost's level 5, a fast matcher) costs and gives.
pub const LEVEL: u32 = 3;

/// Header: magic, deflate, no flags, no modification time, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// A reader giving the gzip compression of `inner`.
pub struct ParallelGzip<R> {
    inner: R,
    threads: usize,
    chunk: usize,
    crc: crc32fast::Hasher,
    len: u64,
    out: Vec<u8>,
    pos: usize,
    started: bool,
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
        ParallelGzip {
            inner,
            threads: threads.max(1),
            chunk,
            crc: crc32fast::Hasher::new(),
            len: 0,
            out: Vec::new(),
            pos: 0,
            started: false,
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

    /// Compresses the next batch of pieces (a few per thread) into `out`.
    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        if !self.started {
            self.started = true;
            self.out.extend_from_slice(&HEADER);
        }
        let mut chunks = Vec::with_capacity(self.threads * 2);
        let mut last = false;
        while chunks.len() < self.threads * 2 {
            let chunk = self.read_chunk()?;
            if chunk.len() < self.chunk {
                last = true;
                chunks.push(chunk);
                break;
            }
            chunks.push(chunk);
        }
        // A full last piece is only known to be last once the next read comes back empty:
        // that empty piece then finishes the stream (an empty final block, 2 bytes).
        let count = chunks.len();
        let compressed: Vec<io::Result<Vec<u8>>> = if self.threads == 1 || count == 1 {
            chunks
                .iter()
                .enumerate()
                .map(|(i, c)| deflate_piece(c, last && i + 1 == count))
                .collect()
        } else {
            let per = count.div_ceil(self.threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .chunks(per)
                    .enumerate()
                    .map(|(g, group)| {
                        s.spawn(move || {
                            group
                                .iter()
                                .enumerate()
                                .map(|(j, c)| deflate_piece(c, last && g * per + j + 1 == count))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(io::Error::other("a gzip thread panicked"))]
                        })
                    })
                    .collect()
            })
        };
        for piece in compressed {
            self.out.extend_from_slice(&piece?);
        }
        if last {
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
}
