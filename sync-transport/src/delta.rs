//! rsync-style delta transfer for large files: the receiver sends [`signatures`] of its old
//! file (per block: a weak rolling checksum and a strong hash), the sender finds those blocks
//! in the new content with a rolling window ([`diff`]) and sends copy-block and literal
//! [`Op`]s, and the receiver rebuilds the new content from its old file and the literals
//! ([`apply_op`]). The result is checked against the new content's sha256 by the caller.
//!
//! Both sides hold the file in memory, so deltas are used only between [`DELTA_MIN`] and
//! [`DELTA_MAX`] bytes; other files are sent whole.

use std::collections::HashMap;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::transport::Transport;
use crate::tree::EntryKind;
use crate::wire::Signatures;

/// Files below this size are sent whole (a delta would not pay for its round trip).
pub const DELTA_MIN: u64 = 1 << 20;
/// Files above this size are sent whole (both sides would hold them in memory).
pub const DELTA_MAX: u64 = 256 << 20;

/// The current content of the file at `rel` on `t` when a delta against it may pay (a regular
/// file between [`DELTA_MIN`] and [`DELTA_MAX`] bytes), else `None`.
pub fn basis(t: &dyn Transport, rel: &str) -> Option<Vec<u8>> {
    let e = t.stat(rel).ok()??;
    if e.kind != EntryKind::File || e.size < DELTA_MIN || e.size > DELTA_MAX {
        return None;
    }
    let (_, mut f) = t.read_file(rel).ok()?;
    let mut v = Vec::with_capacity(e.size as usize);
    f.read_to_end(&mut v).ok()?;
    Some(v)
}

/// One step of rebuilding the new content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Blocks `start .. start + count` of the old file.
    Copy { start: u64, count: u64 },
    /// New bytes.
    Literal(Vec<u8>),
}

/// The block size for a file of `size` bytes: about its square root, a power of two between
/// 2 KiB and 64 KiB.
pub fn block_size(size: u64) -> u32 {
    let root = (size as f64).sqrt() as u64;
    root.next_power_of_two().clamp(2048, 65536) as u32
}

/// The rsync weak checksum of a window, updatable one byte at a time.
#[derive(Debug, Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(data: &[u8]) -> Self {
        let len = data.len() as u32;
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &x) in data.iter().enumerate() {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add((len - i as u32).wrapping_mul(u32::from(x)));
        }
        Rolling { a, b, len }
    }

    fn value(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }

    /// Slides the window one byte: `out` leaves at the front, `inn` enters at the back.
    fn roll(&mut self, out: u8, inn: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(inn));
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(u32::from(out)))
            .wrapping_add(self.a);
    }
}

fn weak(data: &[u8]) -> u32 {
    Rolling::new(data).value()
}

fn strong(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..16])
}

/// Block signatures of `old`.
pub fn signatures(old: &[u8]) -> Signatures {
    let block = block_size(old.len() as u64);
    Signatures {
        block,
        size: old.len() as u64,
        blocks: old
            .chunks(block as usize)
            .map(|b| (weak(b), strong(b)))
            .collect(),
    }
}

/// The ops that turn the old file described by `sigs` into `new`.
pub fn diff(sigs: &Signatures, new: &[u8]) -> Vec<Op> {
    let bs = sigs.block as usize;
    let mut ops: Vec<Op> = Vec::new();
    let full_blocks = (sigs.size / u64::from(sigs.block)) as usize;
    let mut by_weak: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, (w, _)) in sigs.blocks.iter().enumerate().take(full_blocks) {
        by_weak.entry(*w).or_default().push(k);
    }
    let push_copy = |ops: &mut Vec<Op>, k: u64| {
        if let Some(Op::Copy { start, count }) = ops.last_mut() {
            if *start + *count == k {
                *count += 1;
                return;
            }
        }
        ops.push(Op::Copy { start: k, count: 1 });
    };
    let push_literal = |ops: &mut Vec<Op>, bytes: &[u8]| {
        if !bytes.is_empty() {
            ops.push(Op::Literal(bytes.to_vec()));
        }
    };
    let n = new.len();
    let mut lit_start = 0;
    let mut i = 0;
    if bs > 0 && n >= bs && !by_weak.is_empty() {
        let mut roll = Rolling::new(&new[..bs]);
        while i + bs <= n {
            let found = by_weak.get(&roll.value()).and_then(|cands| {
                let s = strong(&new[i..i + bs]);
                cands.iter().copied().find(|&k| sigs.blocks[k].1 == s)
            });
            if let Some(k) = found {
                push_literal(&mut ops, &new[lit_start..i]);
                push_copy(&mut ops, k as u64);
                i += bs;
                lit_start = i;
                if i + bs <= n {
                    roll = Rolling::new(&new[i..i + bs]);
                }
                continue;
            }
            if i + bs < n {
                roll.roll(new[i], new[i + bs]);
            }
            i += 1;
        }
    }
    // The old file's short last block can only match at the very end.
    let tail_len = (sigs.size % u64::from(sigs.block.max(1))) as usize;
    if tail_len > 0 && n - lit_start >= tail_len {
        let k = sigs.blocks.len() - 1;
        let tail = &new[n - tail_len..];
        if sigs.blocks[k].0 == weak(tail) && sigs.blocks[k].1 == strong(tail) {
            push_literal(&mut ops, &new[lit_start..n - tail_len]);
            push_copy(&mut ops, k as u64);
            return ops;
        }
    }
    push_literal(&mut ops, &new[lit_start..]);
    ops
}

/// The bytes `op` stands for, given the receiver's `old` file and block size.
pub fn apply_op<'a>(old: &'a [u8], block: u32, op: &'a Op) -> Result<&'a [u8], String> {
    match op {
        Op::Literal(b) => Ok(b),
        Op::Copy { start, count } => copy_range(old, block, *start, *count),
    }
}

/// Blocks `start .. start + count` of `old`.
pub fn copy_range(old: &[u8], block: u32, start: u64, count: u64) -> Result<&[u8], String> {
    let bs = u64::from(block);
    let from = start.checked_mul(bs).filter(|f| *f < old.len() as u64);
    let to = start
        .checked_add(count)
        .and_then(|e| e.checked_mul(bs))
        .map(|e| e.min(old.len() as u64));
    match (from, to) {
        (Some(f), Some(t)) if bs > 0 && count > 0 => Ok(&old[f as usize..t as usize]),
        _ => Err(format!(
            "delta copies blocks {start}+{count} of {block} bytes from a file of {} bytes",
            old.len()
        )),
    }
}

/// Rebuilds the new content (used by tests and by the receivers).
pub fn apply(old: &[u8], block: u32, ops: &[Op]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for op in ops {
        out.extend_from_slice(apply_op(old, block, op)?);
    }
    Ok(out)
}

/// `n` pseudo-random bytes from `seed` (test content that does not compress or repeat).
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        test_data(n, seed)
    }

    fn literal_bytes(ops: &[Op]) -> usize {
        ops.iter()
            .map(|o| match o {
                Op::Literal(b) => b.len(),
                Op::Copy { .. } => 0,
            })
            .sum()
    }

    fn check(old: &[u8], new: &[u8]) -> usize {
        let sigs = signatures(old);
        let ops = diff(&sigs, new);
        assert_eq!(apply(old, sigs.block, &ops).unwrap(), new);
        literal_bytes(&ops)
    }

    #[test]
    fn rolling_matches_fresh_checksum() {
        let d = data(5000, 1);
        let mut r = Rolling::new(&d[..1000]);
        for i in 0..4000 {
            r.roll(d[i], d[i + 1000]);
            assert_eq!(r.value(), weak(&d[i + 1..i + 1001]), "{i}");
        }
    }

    #[test]
    fn identical_sends_no_literals() {
        let old = data(3 << 20, 2);
        assert_eq!(check(&old, &old), 0);
        // One merged copy op.
        let sigs = signatures(&old);
        assert_eq!(diff(&sigs, &old).len(), 1);
    }

    #[test]
    fn insert_in_the_middle() {
        let old = data(2 << 20, 3);
        let mut new = old.clone();
        new.splice(1_000_000..1_000_000, b"inserted bytes".iter().copied());
        let lit = check(&old, &new);
        assert!(lit < 2 * block_size(old.len() as u64) as usize, "{lit}");
    }

    #[test]
    fn append_and_truncate() {
        let old = data((2 << 20) + 123, 4);
        let mut appended = old.clone();
        appended.extend(data(5000, 5));
        assert!(check(&old, &appended) <= 5000 + 123);
        let truncated = &old[..1_500_000];
        assert!(check(&old, truncated) < block_size(old.len() as u64) as usize);
        assert_eq!(check(&old, &[]), 0);
    }

    #[test]
    fn totally_different_is_all_literal() {
        let old = data(1 << 20, 6);
        let new = data(1 << 20, 7);
        assert_eq!(check(&old, &new), new.len());
        // Shorter than a block on either side still works.
        assert_eq!(check(b"abc", b"abcd"), 4);
        assert_eq!(check(&[], b"xyz"), 3);
    }

    #[test]
    fn bad_copy_ops_are_errors() {
        let old = vec![0u8; 10_000];
        assert!(copy_range(&old, 4096, 3, 1).is_err());
        assert!(copy_range(&old, 4096, u64::MAX, 2).is_err());
        assert!(copy_range(&old, 4096, 0, 0).is_err());
        assert!(copy_range(&old, 0, 0, 1).is_err());
        assert_eq!(copy_range(&old, 4096, 2, 5).unwrap().len(), 10_000 - 8192);
    }
}
