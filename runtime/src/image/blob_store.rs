//! The content-addressed blob store: `blobs/sha256/<hex>`. Every blob is written to a
//! partial file under `tmp/`, hashed while written, verified (digest and size) and only then
//! renamed in, so a blob in the store is always complete and correct. Partial files survive
//! a killed download and are resumed by the next one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::error::ImageError;
use crate::state::{BerthHome, FileLock, LockMode};

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
}

impl BlobStore {
    pub fn new(home: &BerthHome) -> Self {
        BlobStore {
            dir: home.blobs_dir(),
            tmp: home.tmp_dir(),
            locks: home.locks_dir().join("blobs"),
        }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.path(digest);
        fs::read(&p).map_err(ImageError::io(p))
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        let rd = fs::read_dir(&self.dir).map_err(ImageError::io(&self.dir))?;
        Ok(rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                Digest::parse(&format!("sha256:{}", name.to_string_lossy())).ok()
            })
            .collect())
    }

    /// Removes the per-blob download locks. Only while no download can run (under the
    /// store's exclusive lock, as `prune` holds it).
    pub fn remove_download_locks(&self) {
        let _ = crate::state::remove_tree(&self.locks);
    }

    pub fn remove(&self, digest: &Digest) -> Result<(), ImageError> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ImageError::io(p)(e)),
            _ => Ok(()),
        }
    }

    /// Stores `bytes` (small blobs: manifests, configs) after checking them against
    /// `expected` when given. Returns the digest.
    pub fn put_bytes(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
        origin: &str,
    ) -> Result<Digest, ImageError> {
        let digest = Digest::of(bytes);
        if let Some(exp) = expected {
            if *exp != digest {
                return Err(ImageError::DigestMismatch {
                    digest: exp.to_string(),
                    origin: origin.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        if !self.contains(&digest) {
            crate::state::atomic_write(&self.path(&digest), bytes)?;
        }
        Ok(digest)
    }

    /// Copies a stream into the store, returning its digest and size; the content decides
    /// the name.
    pub fn put_stream(
        &self,
        mut reader: impl Read,
        origin: &str,
    ) -> Result<(Digest, u64), ImageError> {
        let tmp = self.tmp.join(format!(
            "blob-import-{}-{}",
            std::process::id(),
            super::unique_suffix()
        ));
        let guard = TempFile(Some(tmp.clone()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(ImageError::io(&tmp))?;
        let mut w = super::digest::Hashing::new(io::BufWriter::with_capacity(1 << 20, file));
        io::copy(&mut reader, &mut w).map_err(|e| ImageError::Io {
            path: PathBuf::from(origin),
            source: e,
        })?;
        let (bw, digest, size) = w.finish();
        let file = bw
            .into_inner()
            .map_err(|e| ImageError::io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(ImageError::io(&tmp))?;
        drop(file);
        let dest = self.path(&digest);
        if !dest.exists() {
            fs::rename(&tmp, &dest).map_err(ImageError::io(&dest))?;
        }
        drop(guard);
        Ok((digest, size))
    }

    /// Opens (or resumes) the partial download of `digest`. Only one process writes a given
    /// partial file at a time: the others wait here, and then usually find the blob stored.
    pub fn begin(
        &self,
        digest: &Digest,
        expected_size: u64,
        origin: &str,
    ) -> Result<PartialBlob, ImageError> {
        let path = self.tmp.join(format!("blob-{}.partial", digest.hex()));
        let lock = FileLock::acquire(&self.locks.join(digest.hex()), LockMode::Exclusive)?;
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
            store: self.clone(),
            digest: digest.clone(),
            expected_size,
            origin: origin.to_string(),
            path,
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            hasher,
            len,
            _lock: lock,
        })
    }
}

/// A blob being downloaded: append bytes, then [`PartialBlob::commit`].
pub struct PartialBlob {
    store: BlobStore,
    digest: Digest,
    expected_size: u64,
    origin: String,
    path: PathBuf,
    file: Option<io::BufWriter<File>>,
    hasher: Sha256,
    len: u64,
    _lock: FileLock,
}

impl PartialBlob {
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

    /// Writes buffered bytes to the partial file.
    pub fn flush(&mut self) -> Result<(), ImageError> {
        let f = self.file.as_mut().expect("open until commit");
        f.flush().map_err(ImageError::io(&self.path))
    }

    /// Drops what was there (the server ignored a range request).
    pub fn restart(&mut self) -> Result<(), ImageError> {
        let f = self.file.as_mut().expect("open until commit");
        f.flush().map_err(ImageError::io(&self.path))?;
        f.get_mut().set_len(0).map_err(ImageError::io(&self.path))?;
        f.get_mut()
            .seek(SeekFrom::Start(0))
            .map_err(ImageError::io(&self.path))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        if self.len + bytes.len() as u64 > self.expected_size {
            let actual = self.len + bytes.len() as u64;
            self.discard();
            return Err(ImageError::SizeMismatch {
                digest: self.digest.to_string(),
                origin: self.origin.clone(),
                expected: self.expected_size,
                actual,
            });
        }
        let f = self.file.as_mut().expect("open until commit");
        f.write_all(bytes).map_err(ImageError::io(&self.path))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Verifies size and digest and renames the blob into the store; on a mismatch the
    /// partial file is deleted.
    pub fn commit(mut self) -> Result<PathBuf, ImageError> {
        let mut f = self.file.take().expect("open until commit");
        f.flush().map_err(ImageError::io(&self.path))?;
        let file = f
            .into_inner()
            .map_err(|e| ImageError::io(&self.path)(e.into_error()))?;
        if self.len != self.expected_size {
            let actual = self.len;
            self.discard();
            return Err(ImageError::SizeMismatch {
                digest: self.digest.to_string(),
                origin: self.origin.clone(),
                expected: self.expected_size,
                actual,
            });
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
        file.sync_all().map_err(ImageError::io(&self.path))?;
        drop(file);
        let dest = self.store.path(&self.digest);
        fs::rename(&self.path, &dest).map_err(ImageError::io(&dest))?;
        Ok(dest)
    }

    /// Gives up without keeping anything (the blob arrived by another way).
    pub fn abandon(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        self.file = None;
        let _ = fs::remove_file(&self.path);
    }
}

/// Removes a temporary file on drop (if it still exists).
pub(crate) struct TempFile(pub(crate) Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Verifies a stored file against its digest (used by imports and `image ls --verify`).
pub fn file_digest(path: &Path) -> Result<(Digest, u64), ImageError> {
    let f = File::open(path).map_err(ImageError::io(path))?;
    let mut h = super::digest::Hashing::new(io::BufReader::with_capacity(1 << 20, f));
    io::copy(&mut h, &mut io::sink()).map_err(ImageError::io(path))?;
    let (_, d, n) = h.finish();
    Ok((d, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, BlobStore) {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let s = BlobStore::new(&home);
        (d, s)
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
        let path = p.commit().unwrap();
        assert_eq!(fs::read(path).unwrap(), data);
        assert!(s.contains(&digest));
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
