//! The content-addressed blob store: `blobs/sha256/<hex>`. Every blob is written to a
//! partial file under `tmp/`, hashed while written, verified (digest and size) and only then
//! renamed in, so a blob in the store is always complete and correct. Partial files survive
//! a killed download and are resumed by the next one.
//!
//! Downloads are [`PartialBlob`]s (`blob_download.rs`), streams written in are
//! [`BlobWriter`]s (`blob_writer.rs`); this file holds the store itself.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use super::blob_download::PartialBlob;
pub use super::blob_tee::TeeReader;
pub(crate) use super::blob_writer::TempFile;
pub use super::blob_writer::{BlobWriter, TeeRead};
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

    /// The staging folder partial downloads are written to.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.tmp.join(format!("blob-{}.partial", digest.hex()))
    }

    /// Bytes an interrupted download of `digest` left (resumed by the next one).
    pub fn partial_len(&self, digest: &Digest) -> u64 {
        fs::metadata(self.partial_path(digest))
            .map(|m| m.len())
            .unwrap_or(0)
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
        let mut w = self.writer()?;
        io::copy(&mut reader, &mut w).map_err(|e| ImageError::Io {
            path: PathBuf::from(origin),
            source: e,
        })?;
        w.commit(None)
    }

    /// A blob written as a stream (by [`BlobStore::put_stream`], or as a copy of bytes
    /// something else reads, see [`TeeRead`]): stored under its digest by
    /// [`BlobWriter::commit`], gone when dropped before.
    pub fn writer(&self) -> Result<BlobWriter, ImageError> {
        self.new_writer(true)
    }

    /// A [`BlobStore::writer`] that does not hash what it is given: for a copy of bytes
    /// whose digest the reader computes anyway (an unpacked layer's tar: the unpacker
    /// hashes it for its diff-id), stored with [`BlobWriter::commit_verified`] — one
    /// SHA-256 pass over the layer instead of two.
    pub fn writer_unhashed(&self) -> Result<BlobWriter, ImageError> {
        self.new_writer(false)
    }

    fn new_writer(&self, hashing: bool) -> Result<BlobWriter, ImageError> {
        let tmp = self.tmp.join(format!(
            "blob-import-{}-{}",
            std::process::id(),
            super::unique_suffix()
        ));
        BlobWriter::create(tmp, self.dir.clone(), hashing)
    }

    /// Opens (or resumes) the partial download of `digest`. Only one process writes a given
    /// partial file at a time: the others wait here, and then usually find the blob stored.
    pub fn begin(
        &self,
        digest: &Digest,
        expected_size: u64,
        origin: &str,
    ) -> Result<PartialBlob, ImageError> {
        let path = self.partial_path(digest);
        let lock = FileLock::acquire(&self.locks.join(digest.hex()), LockMode::Exclusive)?;
        PartialBlob::resume(self.dir.clone(), path, lock, digest, expected_size, origin)
    }

    /// A download that is verified (size and digest) but not kept: for a blob that is only
    /// the way to something else (a cache layer's compressed blob, whose uncompressed tar
    /// is what the store keeps), read through [`PartialBlob::tee`]. Nothing is written to
    /// disk, so nothing is resumed either: an interrupted download starts over.
    pub fn begin_transient(
        &self,
        digest: &Digest,
        expected_size: u64,
        origin: &str,
    ) -> PartialBlob {
        PartialBlob::transient(
            self.dir.clone(),
            self.partial_path(digest),
            digest,
            expected_size,
            origin,
        )
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
pub(super) mod tests {
    use super::*;

    /// A blob store in a home of its own (the folder goes with the first value).
    pub(in crate::image) fn store() -> (tempfile::TempDir, BlobStore) {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let s = BlobStore::new(&home);
        (d, s)
    }
}
