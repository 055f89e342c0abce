//! A blob being downloaded: [`PartialBlob`] appends to a partial file (resumed by the next
//! download after an interruption), hashes and verifies it before it is renamed into the
//! store, and can pass every byte on to a reader as it arrives ([`PartialBlob::tee`]: a
//! layer is unpacked while it downloads; the tee itself is `blob_tee.rs`).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::blob_tee::{tee, BlobTee, TeeReader};
use super::blob_writer::WritebackFile;
use super::digest::Digest;
use super::error::ImageError;
use crate::state::FileLock;

/// A blob being downloaded: append bytes, then [`PartialBlob::commit`].
pub struct PartialBlob {
    /// The store's folder the verified blob is renamed into.
    dir: PathBuf,
    digest: Digest,
    expected_size: u64,
    origin: String,
    path: PathBuf,
    /// The partial file; `None` once committed or dropped, and for a transient blob.
    file: Option<io::BufWriter<WritebackFile>>,
    /// Whether the blob is written to disk and stored (else only verified and teed:
    /// [`super::blob_store::BlobStore::begin_transient`]).
    keep: bool,
    hasher: Sha256,
    len: u64,
    tee: Option<BlobTee>,
    _lock: Option<FileLock>,
}

impl PartialBlob {
    /// Opens (or resumes) the partial download of `digest` at `path` (the caller holds
    /// `lock`, the one writer of that file); the verified blob goes into `dir`.
    pub(super) fn resume(
        dir: PathBuf,
        path: PathBuf,
        lock: FileLock,
        digest: &Digest,
        expected_size: u64,
        origin: &str,
    ) -> Result<Self, ImageError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(ImageError::io(&path))?;
        let mut len = file.metadata().map_err(ImageError::io(&path))?.len();
        let mut hasher = Sha256::new();
        if len > expected_size {
            file.set_len(0).map_err(ImageError::io(&path))?;
            len = 0;
        } else if len > 0 {
            // Re-hash what an earlier, interrupted download left.
            let mut buf = vec![0u8; 1 << 20];
            let mut left = len;
            file.seek(SeekFrom::Start(0))
                .map_err(ImageError::io(&path))?;
            while left > 0 {
                let n = file.read(&mut buf).map_err(ImageError::io(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
        file.seek(SeekFrom::Start(len))
            .map_err(ImageError::io(&path))?;
        Ok(PartialBlob {
            dir,
            digest: digest.clone(),
            expected_size,
            origin: origin.to_string(),
            path,
            file: Some(io::BufWriter::with_capacity(
                1 << 20,
                WritebackFile::new(file, len),
            )),
            keep: true,
            hasher,
            len,
            tee: None,
            _lock: Some(lock),
        })
    }

    /// A download verified but never written (see
    /// [`super::blob_store::BlobStore::begin_transient`]).
    pub(super) fn transient(
        dir: PathBuf,
        path: PathBuf,
        digest: &Digest,
        expected_size: u64,
        origin: &str,
    ) -> Self {
        PartialBlob {
            dir,
            digest: digest.clone(),
            expected_size,
            origin: origin.to_string(),
            path,
            file: None,
            keep: false,
            hasher: Sha256::new(),
            len: 0,
            tee: None,
            _lock: None,
        }
    }

    /// Bytes already present (where a resumed download starts).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Also passes every byte appended from now on to the returned reader (to unpack while
    /// downloading). Only for a fresh download: `None` when bytes are already there. The
    /// reader ends cleanly only after [`PartialBlob::commit`] verified the blob; an
    /// interrupted, restarted or corrupt download makes it fail instead.
    pub fn tee(&mut self) -> Option<TeeReader> {
        if self.len > 0 {
            return None;
        }
        let (writer, reader) = tee();
        self.tee = Some(writer);
        Some(reader)
    }

    /// Whether the tee (if any) saw every byte of the blob exactly once.
    pub fn tee_intact(&self) -> bool {
        self.tee.as_ref().is_some_and(|t| t.intact())
    }

    /// Writes buffered bytes to the partial file.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        match self.file.as_mut() {
            Some(f) => f.flush().map_err(ImageError::io(&self.path)),
            None => Ok(()),
        }
    }

    /// Drops what was there (the server ignored a range request).
    pub fn restart(&mut self) -> Result<(), ImageError> {
        if let Some(f) = self.file.as_mut() {
            f.flush().map_err(ImageError::io(&self.path))?;
            let w = f.get_mut();
            w.file.set_len(0).map_err(ImageError::io(&self.path))?;
            w.file
                .seek(SeekFrom::Start(0))
                .map_err(ImageError::io(&self.path))?;
            w.reset(0);
        }
        self.hasher = Sha256::new();
        self.len = 0;
        if let Some(t) = self.tee.as_mut() {
            t.abort();
        }
        Ok(())
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if self.len + bytes.len() as u64 > self.expected_size {
            return Err(self.size_mismatch(self.len + bytes.len() as u64));
        }
        if self.keep {
            let f = self.file.as_mut().expect("open until commit");
            f.write_all(bytes).map_err(ImageError::io(&self.path))?;
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        if let Some(t) = self.tee.as_mut() {
            t.send(bytes);
        }
        Ok(())
    }

    /// Verifies size and digest and renames the blob into the store; on a mismatch the
    /// partial file is deleted. A transient blob
    /// ([`super::blob_store::BlobStore::begin_transient`]) is only verified (its tee then
    /// ends cleanly) and `None` returned: nothing is stored.
    pub fn commit(mut self) -> Result<Option<PathBuf>, ImageError> {
        let file = match self.file.take() {
            Some(mut f) => {
                f.flush().map_err(ImageError::io(&self.path))?;
                let w = f
                    .into_inner()
                    .map_err(|e| ImageError::io(&self.path)(e.into_error()))?;
                Some(w.file)
            }
            None => None,
        };
        if self.len != self.expected_size {
            return Err(self.size_mismatch(self.len));
        }
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.digest {
            self.discard();
            return Err(ImageError::DigestMismatch {
                digest: self.digest.to_string(),
                origin: self.origin.clone(),
                actual: actual.to_string(),
            });
        }
        // Verified: the tee's reader may finish (its unpacker commit the layer) while the
        // blob is synced, instead of waiting for the disk.
        if let Some(t) = self.tee.as_mut() {
            t.end();
        }
        let Some(file) = file.filter(|_| self.keep) else {
            return Ok(None);
        };
        file.sync_all().map_err(ImageError::io(&self.path))?;
        drop(file);
        let dest = self.dir.join(self.digest.hex());
        fs::rename(&self.path, &dest).map_err(ImageError::io(&dest))?;
        Ok(Some(dest))
    }

    /// Deletes what was written: the blob is `actual` bytes, not the size expected.
    fn size_mismatch(&mut self, actual: u64) -> ImageError {
        self.discard();
        ImageError::SizeMismatch {
            digest: self.digest.to_string(),
            origin: self.origin.clone(),
            expected: self.expected_size,
            actual,
        }
    }

    /// Gives up without keeping anything (the blob arrived by another way).
    pub fn abandon(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        self.file = None;
        if let Some(t) = self.tee.as_mut() {
            t.abort();
        }
        if self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::blob_store::tests::store;

    #[test]
    fn a_transient_blob_is_verified_and_teed_but_never_written() {
        let (_d, s) = store();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let digest = Digest::of(&data);
        let files = || fs::read_dir(s.tmp_dir()).unwrap().count() + s.list().unwrap().len();
        let before = files();
        let mut p = s.begin_transient(&digest, data.len() as u64, "t");
        let mut tee = p.tee().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            tee.read_to_end(&mut got).map(|_| got)
        });
        for piece in data.chunks(70_000) {
            p.append(piece).unwrap();
            assert_eq!(files(), before, "nothing of a transient blob goes to disk");
        }
        assert!(p.tee_intact());
        assert_eq!(p.commit().unwrap(), None);
        assert_eq!(reader.join().unwrap().unwrap(), data);
        assert!(!s.contains(&digest) && files() == before);
        // A wrong blob fails the reader, and still leaves nothing.
        let mut p = s.begin_transient(&digest, 5, "t");
        let mut tee = p.tee().unwrap();
        let reader = std::thread::spawn(move || tee.read_to_end(&mut Vec::new()));
        p.append(b"other").unwrap();
        assert!(matches!(p.commit(), Err(ImageError::DigestMismatch { .. })));
        assert!(reader.join().unwrap().is_err());
        assert_eq!(files(), before);
    }

    #[test]
    fn a_layer_whose_download_trickles_in_a_byte_at_a_time_is_still_seen_as_gzip() {
        // The unpacker tells gzip from zstd from a plain tar by the first read of the tee:
        // it must hold the magic bytes even when the registry's first packet held one byte
        // (it held only that byte before the tee gathered bytes, and the gzip layer was then
        // unpacked as a plain tar, and failed).
        let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let (_d, s) = store();
        let digest = Digest::of(&gz);
        let mut p = s.begin(&digest, gz.len() as u64, "t").unwrap();
        let mut tee = p.tee().unwrap();
        let reader = std::thread::spawn(move || {
            let mut first = [0u8; 4];
            let n = tee.read(&mut first).unwrap();
            let mut rest = Vec::new();
            let r =
                crate::image::unpack::decompressed(io::Cursor::new(first[..n].to_vec()).chain(tee));
            r.unwrap().read_to_end(&mut rest).map(|_| (n, rest))
        });
        for byte in &gz[..64] {
            p.append(std::slice::from_ref(byte)).unwrap();
        }
        p.append(&gz[64..]).unwrap();
        p.commit().unwrap();
        let (first, unpacked) = reader.join().unwrap().unwrap();
        assert_eq!(first, 4, "the first read of the tee holds the magic bytes");
        assert!(unpacked == plain, "the layer was decompressed");
    }

    #[test]
    fn partial_download_resumes_and_verifies() {
        let (_d, s) = store();
        let data = b"hello world, this is a blob".to_vec();
        let digest = Digest::of(&data);
        let mut p = s.begin(&digest, data.len() as u64, "test").unwrap();
        p.append(&data[..10]).unwrap();
        drop(p); // interrupted
        let mut p = s.begin(&digest, data.len() as u64, "test").unwrap();
        assert_eq!(p.len(), 10);
        p.append(&data[10..]).unwrap();
        let path = p.commit().unwrap().unwrap();
        assert_eq!(fs::read(path).unwrap(), data);
        assert!(s.contains(&digest));
    }

    /// Reads `p`'s tee to its end on a thread of its own.
    fn read_tee(p: &mut PartialBlob) -> std::thread::JoinHandle<io::Result<Vec<u8>>> {
        let mut r = p.tee().unwrap();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        })
    }

    #[test]
    fn tee_sees_a_verified_blob_and_fails_on_a_corrupt_or_restarted_one() {
        let (_d, s) = store();
        let data = b"streamed while downloading".to_vec();
        let digest = Digest::of(&data);
        let mut p = s.begin(&digest, data.len() as u64, "t").unwrap();
        let reader = read_tee(&mut p);
        p.append(&data[..5]).unwrap();
        p.append(&data[5..]).unwrap();
        assert!(p.tee_intact());
        p.commit().unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), data);

        let bad = Digest::of(b"other");
        let mut p = s.begin(&bad, 5, "t").unwrap();
        let reader = read_tee(&mut p);
        p.append(b"wrong").unwrap();
        assert!(p.commit().is_err());
        assert!(
            reader.join().unwrap().is_err(),
            "a corrupt blob must not read as complete"
        );

        let mut p = s.begin(&bad, 5, "t").unwrap();
        let reader = read_tee(&mut p);
        p.append(b"ot").unwrap();
        p.restart().unwrap();
        assert!(!p.tee_intact());
        drop(p);
        assert!(reader.join().unwrap().is_err());
    }

    #[test]
    fn the_tee_ends_once_the_blob_is_verified_not_once_it_is_stored() {
        // The unpacker reading the tee need not wait for the blob's fsync and rename: its
        // stream ends cleanly as soon as the digest matched, even when storing then fails.
        let (_d, s) = store();
        let data = b"verified, then the store is gone".to_vec();
        let digest = Digest::of(&data);
        let mut p = s.begin(&digest, data.len() as u64, "t").unwrap();
        let reader = read_tee(&mut p);
        p.append(&data).unwrap();
        let dir = s.path(&digest).parent().unwrap().to_path_buf();
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            p.commit().is_err(),
            "the rename into {dir:?} cannot succeed"
        );
        assert_eq!(reader.join().unwrap().unwrap(), data);
    }

    #[test]
    fn corrupt_download_is_deleted_and_named() {
        let (d, s) = store();
        let digest = Digest::of(b"right");
        let mut p = s.begin(&digest, 5, "reg.example/x").unwrap();
        p.append(b"wrong").unwrap();
        let err = p.commit().unwrap_err().to_string();
        assert!(
            err.contains(digest.as_str()) && err.contains("reg.example/x"),
            "{err}"
        );
        assert!(!s.contains(&digest));
        let leftovers: Vec<_> = fs::read_dir(d.path().join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty());
        let mut p = s.begin(&digest, 3, "r").unwrap();
        assert!(matches!(
            p.append(b"toolong"),
            Err(ImageError::SizeMismatch { .. })
        ));
    }
}
