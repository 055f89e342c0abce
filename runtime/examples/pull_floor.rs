//! The floor of a pull, run by `bench/images.sh`: the CPU time of the work `berth image pull`
//! cannot leave out, done alone on one thread over the image's gzip layers (read into memory
//! first, not timed): the sha256 of each compressed blob (its digest), its decompression with
//! the decoder berth uses (flate2 over zlib-rs, gzip's crc32 included), and the sha256 of the
//! decompressed tar (its diff-id). Writing the files is not counted. Printed in CPU ms of this
//! thread (`/proc/thread-self/schedstat`), which a loaded machine changes less than wall time.
//!
//! Usage: `pull_floor BLOB...` (blobs that are not gzip, such as a config, are skipped).

use std::io::Read;

use sha2::{Digest as _, Sha256};

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat (Linux with schedstats)");
    s.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a run time in /proc/thread-self/schedstat")
}

/// CPU milliseconds `f` took on this thread, and its result.
fn cpu_ms<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let start = thread_cpu_ns();
    let out = f();
    ((thread_cpu_ns() - start) as f64 / 1e6, out)
}

/// Decompresses `gz`, passing every piece to `each`; returns the decompressed length.
fn inflate(gz: &[u8], mut each: impl FnMut(&[u8])) -> u64 {
    let mut out = vec![0u8; 256 * 1024];
    let mut d = flate2::bufread::MultiGzDecoder::new(gz);
    let mut total = 0;
    loop {
        let n = d.read(&mut out).expect("a valid gzip layer");
        if n == 0 {
            return total;
        }
        each(&out[..n]);
        total += n as u64;
    }
}

fn main() {
    let blobs: Vec<(String, Vec<u8>)> = std::env::args()
        .skip(1)
        .map(|p| {
            let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
            (p, b)
        })
        .filter(|(_, b)| b.starts_with(&[0x1f, 0x8b]))
        .collect();
    assert!(!blobs.is_empty(), "usage: pull_floor BLOB... (gzip layers)");
    let (mut digest, mut inflated, mut diff_id, mut largest) = (0.0, 0.0, 0.0, 0.0f64);
    let (mut compressed, mut tar) = (0u64, 0u64);
    for (_, gz) in &blobs {
        compressed += gz.len() as u64;
        digest += cpu_ms(|| Sha256::digest(gz)).0;
        let (alone, len) = cpu_ms(|| inflate(gz, |_| {}));
        let (hashed, _) = cpu_ms(|| {
            let mut h = Sha256::new();
            inflate(gz, |piece| h.update(piece));
            h.finalize()
        });
        tar += len;
        inflated += alone;
        diff_id += (hashed - alone).max(0.0);
        largest = largest.max(alone);
    }
    println!(
        "pull floor ({} gzip layers, {} MB compressed, {} MB of tar), CPU ms of one thread:",
        blobs.len(),
        compressed / 1_000_000,
        tar / 1_000_000
    );
    println!("  sha256 of the blobs (digests)        {digest:7.0}");
    println!(
        "  gunzip (zlib-rs, with crc32)         {inflated:7.0}   largest layer alone: {largest:.0}"
    );
    println!("  sha256 of the tars (diff-ids)        {diff_id:7.0}");
    println!(
        "  total                                {:7.0}",
        digest + inflated + diff_id
    );
}
