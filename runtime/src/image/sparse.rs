//! Sparse files in layers: [`write_sparse`] leaves every all-zero block of a file as a hole
//! (the old GNU sparse format, type `S`, is read by the `tar` crate itself, which yields its
//! holes as zeros), and the rest reads GNU tar's PAX sparse formats (`--format=posix
//! --sparse`), which the `tar` crate passes on as ordinary files: 0.0 (`GNU.sparse.offset` /
//! `numbytes` pairs), 0.1 (`GNU.sparse.map`) and 1.0 (the map at the start of the member's
//! data).
//!
//! A map is untrusted input: segments must be in order, must not overlap and must lie within
//! the declared size; their data must fit the member; the map itself is bounded.

use std::fs::File;
use std::io::{self, Read, Write};

/// Most segments a map may have (GNU tar writes one per data region).
const MAX_SEGMENTS: usize = 1 << 20;

/// The sparse layout of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMember {
    /// The member's real name (0.1, 1.0), replacing the `GNUSparseFile.<pid>/…` of the header.
    pub name: Option<Vec<u8>>,
    /// The file's length.
    pub real_size: u64,
    /// (offset, length) of each data region, in order; `None` until read from the data (1.0).
    pub segments: Option<Vec<(u64, u64)>>,
}

/// The sparse layout the PAX records `keys` (in order) declare, or `None` for an ordinary
/// member.
pub fn from_pax(keys: &[(String, Vec<u8>)]) -> Result<Option<SparseMember>, String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).trim().to_string();
    let number = |k: &str, v: &[u8]| -> Result<u64, String> {
        text(v)
            .parse::<u64>()
            .map_err(|_| format!("has a sparse record {k}={:?} that is not a number", text(v)))
    };
    let mut major = None;
    let mut name = None;
    let mut size = None;
    let mut map: Option<Vec<u64>> = None;
    let mut pairs: Vec<u64> = Vec::new();
    for (k, v) in keys {
        match k.as_str() {
            "GNU.sparse.major" => major = Some(number(k, v)?),
            "GNU.sparse.name" => name = Some(v.clone()),
            "GNU.sparse.realsize" | "GNU.sparse.size" => size = Some(number(k, v)?),
            "GNU.sparse.map" => {
                let t = text(v);
                let nums: Result<Vec<u64>, _> = if t.is_empty() {
                    Ok(Vec::new())
                } else {
                    t.split(',').map(|n| n.trim().parse::<u64>()).collect()
                };
                map = Some(nums.map_err(|_| {
                    format!("has a sparse map {t:?} that is not a list of numbers")
                })?);
            }
            "GNU.sparse.offset" | "GNU.sparse.numbytes" => {
                if pairs.len() / 2 >= MAX_SEGMENTS {
                    return Err("has a sparse map with too many segments".into());
                }
                pairs.push(number(k, v)?);
            }
            _ => {}
        }
    }
    let Some(real_size) = size else {
        return Ok(None);
    };
    let segments = match (major, map) {
        (Some(1), _) => None,
        (Some(m), _) if m != 0 => {
            return Err(format!(
                "uses sparse format {m}.x, which berth does not know"
            ))
        }
        (_, Some(m)) => Some(pairs_of(&m)?),
        _ => Some(pairs_of(&pairs)?),
    };
    Ok(Some(SparseMember {
        name,
        real_size,
        segments,
    }))
}

fn pairs_of(nums: &[u64]) -> Result<Vec<(u64, u64)>, String> {
    if !nums.len().is_multiple_of(2) {
        return Err("has a sparse map with an odd number of values".into());
    }
    if nums.len() / 2 > MAX_SEGMENTS {
        return Err("has a sparse map with too many segments".into());
    }
    Ok(nums.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// Reads the 1.0 map from the start of the member's data: the number of segments, then
/// offset and length of each, one decimal number per line, padded to a 512-byte block.
/// Returns the segments and the bytes consumed.
pub fn read_map_1_0(r: &mut impl Read) -> Result<(Vec<(u64, u64)>, u64), String> {
    let mut consumed: u64 = 0;
    let mut line = |consumed: &mut u64| -> Result<u64, String> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)
                .map_err(|e| format!("has a truncated sparse map ({e})"))?;
            *consumed += 1;
            match b[0] {
                b'\n' => break,
                d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
                _ => return Err("has a sparse map that is not decimal numbers".into()),
            }
        }
        String::from_utf8_lossy(&digits)
            .parse::<u64>()
            .map_err(|_| "has a sparse map with an empty or too large number".to_string())
    };
    let count = line(&mut consumed)?;
    if count > MAX_SEGMENTS as u64 {
        return Err("has a sparse map with too many segments".into());
    }
    let mut segments = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let off = line(&mut consumed)?;
        let len = line(&mut consumed)?;
        segments.push((off, len));
    }
    let pad = (512 - consumed % 512) % 512;
    std::io::copy(&mut r.by_ref().take(pad), &mut std::io::sink())
        .map_err(|e| format!("has a truncated sparse map ({e})"))?;
    Ok((segments, consumed + pad))
}

/// Checks that `segments` are in order, do not overlap, lie within `real_size` and that their
/// data (`sum of lengths`) is exactly `data_len`, the member's data after its map.
pub fn check(segments: &[(u64, u64)], real_size: u64, data_len: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for &(off, len) in segments {
        let seg_end = off
            .checked_add(len)
            .ok_or("has a sparse segment beyond any file size")?;
        if off < end || seg_end > real_size {
            return Err(format!(
                "has a sparse segment {off}+{len} that overlaps another or lies beyond the file's {real_size} bytes"
            ));
        }
        end = seg_end;
        total = total.saturating_add(len);
    }
    if total != data_len {
        return Err(format!(
            "has sparse segments of {total} bytes but carries {data_len} bytes of data"
        ));
    }
    Ok(())
}

/// Granularity of hole detection: a filesystem block.
const SPARSE_BLOCK: usize = 4096;
static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

/// Writes `chunk` at the file's position, seeking over whole blocks of zeros instead of
/// writing them (the file must be extended to its length afterwards). Returns the bytes
/// written. The comparisons are `memcmp` against a zero buffer: fast even unoptimized.
pub fn write_sparse(file: &mut File, chunk: &[u8]) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    if chunk.len() <= ZEROS.len() && chunk == &ZEROS[..chunk.len()] {
        file.seek(SeekFrom::Current(chunk.len() as i64))?;
        return Ok(0);
    }
    let mut written = 0u64;
    let mut data_start: Option<usize> = None;
    let mut i = 0;
    while i < chunk.len() {
        let end = (i + SPARSE_BLOCK).min(chunk.len());
        let block = &chunk[i..end];
        let zero = block == &ZEROS[..block.len()];
        match (zero, data_start) {
            (false, None) => data_start = Some(i),
            (true, Some(s)) => {
                file.write_all(&chunk[s..i])?;
                written += (i - s) as u64;
                data_start = None;
                file.seek(SeekFrom::Current(block.len() as i64))?;
            }
            (true, None) => {
                file.seek(SeekFrom::Current(block.len() as i64))?;
            }
            (false, Some(_)) => {}
        }
        i = end;
    }
    if let Some(s) = data_start {
        file.write_all(&chunk[s..])?;
        written += (chunk.len() - s) as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Digest;
    use crate::image::unpack::{unpack_bounded, UnpackOptions};
    use std::fs;

    fn kv(k: &str, v: &str) -> (String, Vec<u8>) {
        (k.to_string(), v.as_bytes().to_vec())
    }

    #[test]
    fn reads_the_three_pax_layouts_and_refuses_bad_maps() {
        assert_eq!(from_pax(&[kv("path", "x")]).unwrap(), None);
        let v00 = from_pax(&[
            kv("GNU.sparse.size", "100"),
            kv("GNU.sparse.numblocks", "2"),
            kv("GNU.sparse.offset", "10"),
            kv("GNU.sparse.numbytes", "5"),
            kv("GNU.sparse.offset", "100"),
            kv("GNU.sparse.numbytes", "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v00.segments, Some(vec![(10, 5), (100, 0)]));
        let v01 = from_pax(&[
            kv("GNU.sparse.size", "100"),
            kv("GNU.sparse.name", "d/big"),
            kv("GNU.sparse.map", "10,5,100,0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(v01.name.as_deref(), Some(&b"d/big"[..]));
        assert_eq!(v01.segments, Some(vec![(10, 5), (100, 0)]));
        let v10 = from_pax(&[
            kv("GNU.sparse.major", "1"),
            kv("GNU.sparse.minor", "0"),
            kv("GNU.sparse.name", "big"),
            kv("GNU.sparse.realsize", "100"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((v10.real_size, v10.segments), (100, None));
        assert!(from_pax(&[kv("GNU.sparse.size", "x")]).is_err());
        assert!(from_pax(&[kv("GNU.sparse.size", "1"), kv("GNU.sparse.map", "1,2,3")]).is_err());
        assert!(from_pax(&[kv("GNU.sparse.major", "7"), kv("GNU.sparse.realsize", "1")]).is_err());

        let mut data = b"2\n10\n5\n100\n0\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"hello");
        let mut r = &data[..];
        let (segs, used) = read_map_1_0(&mut r).unwrap();
        assert_eq!((segs, used), (vec![(10, 5), (100, 0)], 512));
        assert_eq!(r, b"hello");
        assert!(read_map_1_0(&mut &b"2\n10\n"[..]).is_err());
        assert!(read_map_1_0(&mut &b"99999999999\n"[..]).is_err());
        assert!(read_map_1_0(&mut &b"1\n-1\n"[..]).is_err());

        assert!(check(&[(10, 5), (100, 0)], 100, 5).is_ok());
        assert!(check(&[(10, 5), (12, 1)], 100, 6).is_err(), "overlap");
        assert!(check(&[(99, 5)], 100, 5).is_err(), "beyond the size");
        assert!(check(&[(10, 5)], 100, 6).is_err(), "data length");
        assert!(check(&[(u64::MAX, 5)], u64::MAX, 5).is_err(), "overflow");
    }

    /// A GNU sparse tar (GNU tar `--sparse`, Debian's tar) of a `size`-byte file holding
    /// `marker` at `offset` and holes elsewhere.
    fn gnu_sparse_tar(size: u64, offset: u64, marker: &[u8], extra: &[&str]) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let f = fs::File::create(d.path().join("big")).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(marker, offset).unwrap();
        drop(f);
        let out = std::process::Command::new("tar")
            .args(["--sparse", "--format=gnu", "-cf", "-", "-C"])
            .args(extra)
            .arg(d.path())
            .arg("big")
            .output()
            .expect("GNU tar (package tar) is needed for the sparse tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn a_sparse_member_of_10_gib_is_written_sparse() {
        use std::os::unix::fs::MetadataExt;
        const SIZE: u64 = 10 << 30;
        let tar = gnu_sparse_tar(SIZE, 5 << 30, b"marker in the middle", &[]);
        assert!(
            tar.len() < 1 << 20,
            "the tar itself is small: {}",
            tar.len()
        );
        let d = tempfile::tempdir().unwrap();
        let r = unpack_bounded(
            &tar[..],
            d.path(),
            "sha256:sparse",
            UnpackOptions::for_current_user(),
            64 << 20,
        )
        .unwrap();
        let m = fs::metadata(d.path().join("big")).unwrap();
        assert_eq!(m.len(), SIZE);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes allocated for a file of one short marker",
            m.blocks() * 512
        );
        assert_eq!(r.diff_id, Digest::of(&tar));
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 20];
        fs::File::open(d.path().join("big"))
            .unwrap()
            .read_exact_at(&mut buf, 5 << 30)
            .unwrap();
        assert_eq!(&buf, b"marker in the middle");
    }

    #[test]
    fn pax_sparse_members_of_every_version_unpack_sparse_under_their_real_name() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        const SIZE: u64 = 10 << 30;
        for version in ["0.0", "0.1", "1.0"] {
            let d = tempfile::tempdir().unwrap();
            fs::create_dir(d.path().join("sub")).unwrap();
            let f = fs::File::create(d.path().join("sub/big")).unwrap();
            f.set_len(SIZE).unwrap();
            f.write_all_at(b"first", 4096).unwrap();
            f.write_all_at(b"middle", 5 << 30).unwrap();
            drop(f);
            let out = std::process::Command::new("tar")
                .args(["--sparse", "--format=posix"])
                .arg(format!("--sparse-version={version}"))
                .args(["-cf", "-", "-C"])
                .arg(d.path())
                .arg("sub/big")
                .output()
                .expect("GNU tar (package tar) is needed for the sparse tests");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let tar = out.stdout;
            let dest = tempfile::tempdir().unwrap();
            unpack_bounded(
                &tar[..],
                dest.path(),
                "sha256:pax-sparse",
                UnpackOptions::for_current_user(),
                64 << 20,
            )
            .unwrap_or_else(|e| panic!("sparse {version}: {e}"));
            let big = dest.path().join("sub/big");
            let m = fs::metadata(&big).unwrap_or_else(|e| {
                panic!(
                    "sparse {version}: no sub/big ({e}); unpacked: {:?}",
                    fs::read_dir(dest.path())
                        .unwrap()
                        .flatten()
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>()
                )
            });
            assert_eq!(m.len(), SIZE, "sparse {version}");
            assert!(
                m.blocks() * 512 < 1 << 20,
                "sparse {version}: {} bytes",
                m.blocks() * 512
            );
            let f = fs::File::open(&big).unwrap();
            let mut a = [0u8; 5];
            f.read_exact_at(&mut a, 4096).unwrap();
            let mut b = [0u8; 6];
            f.read_exact_at(&mut b, 5 << 30).unwrap();
            assert_eq!((&a, &b), (b"first", b"middle"), "sparse {version}");
            let names: Vec<_> = fs::read_dir(dest.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert_eq!(names, ["sub"], "sparse {version}: no GNUSparseFile.* left");
        }
    }

    #[test]
    fn zeros_of_a_dense_entry_become_holes_and_data_around_them_is_exact() {
        use std::os::unix::fs::MetadataExt;
        let mut data = vec![0u8; 3 << 20];
        data[..5000].fill(7);
        data[(2 << 20) + 100..(2 << 20) + 9000].fill(9);
        *data.last_mut().unwrap() = 1;
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, "f", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let d = tempfile::tempdir().unwrap();
        unpack_bounded(
            &tar[..],
            d.path(),
            "sha256:zeros",
            UnpackOptions::for_current_user(),
            64 << 20,
        )
        .unwrap();
        let p = d.path().join("f");
        assert_eq!(fs::read(&p).unwrap(), data);
        assert!(fs::metadata(&p).unwrap().blocks() * 512 < 1 << 20);
    }
}
