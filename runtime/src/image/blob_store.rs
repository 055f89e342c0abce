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
        let guard = TempFile(Some(tmp.clone()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(ImageError::io(&tmp))?;
        let out = io::BufWriter::with_capacity(1 << 20, WritebackFile::new(file, 0));
        Ok(BlobWriter {
            w: if hashing {
                BlobSink::Hashing(super::digest::Hashing::new(out))
            } else {
                BlobSink::Plain(out, 0)
            },
            tmp,
            dir: self.dir.clone(),
            _guard: guard,
        })
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
        PartialBlob {
            store: self.clone(),
            digest: digest.clone(),
            expected_size,
            origin: origin.to_string(),
            path: self.partial_path(digest),
            file: None,
            keep: false,
            hasher: Sha256::new(),
            len: 0,
            tee: None,
            _lock: None,
        }
    }
}

/// Bytes written to a blob file between two requests to the kernel to start writing them
/// to disk: the `fsync` that ends the blob then waits for the last few MiB only, instead of
/// for the whole blob, which was written back while the rest arrived.
const WRITEBACK_STEP: u64 = 8 << 20;

/// A blob file being written, whose pages are handed to the disk every
/// [`WRITEBACK_STEP`] bytes (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts the write-out,
/// does not wait for it).
struct WritebackFile {
    file: File,
    /// Offset up to which write-out was started.
    started: u64,
    /// Offset of the next write.
    at: u64,
}

impl WritebackFile {
    fn new(file: File, at: u64) -> Self {
        WritebackFile {
            file,
            started: at,
            at,
        }
    }

    /// Continues at `at` (after a truncation or seek).
    fn reset(&mut self, at: u64) {
        self.started = at;
        self.at = at;
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.at += n as u64;
        if self.at - self.started >= WRITEBACK_STEP {
            start_writeback(&self.file, self.started, self.at - self.started);
            self.started = self.at;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to disk, without
/// waiting. Only a hint: the blob's `fsync` is what makes it durable, so an error here
/// changes nothing.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a file descriptor this process owns and keeps open for
    // the call; it reads no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// A blob being downloaded: append bytes, then [`PartialBlob::commit`].
pub struct PartialBlob {
    store: BlobStore,
    digest: Digest,
    expected_size: u64,
    origin: String,
    path: PathBuf,
    /// The partial file; `None` once committed or dropped, and for a transient blob.
    file: Option<io::BufWriter<WritebackFile>>,
    /// Whether the blob is written to disk and stored (else only verified and teed:
    /// [`BlobStore::begin_transient`]).
    keep: bool,
    hasher: Sha256,
    len: u64,
    tee: Option<BlobTee>,
    _lock: Option<FileLock>,
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

    /// Also passes every byte appended from now on to the returned reader (to unpack while
    /// downloading). Only for a fresh download: `None` when bytes are already there. The
    /// reader ends cleanly only after [`PartialBlob::commit`] verified the blob; an
    /// interrupted, restarted or corrupt download makes it fail instead.
    pub fn tee(&mut self) -> Option<TeeReader> {
        if self.len > 0 {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(32);
        self.tee = Some(BlobTee {
            tx: Some(tx),
            intact: true,
        });
        Some(TeeReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        })
    }

    /// Whether the tee (if any) saw every byte of the blob exactly once.
    pub fn tee_intact(&self) -> bool {
        self.tee.as_ref().is_some_and(|t| t.intact)
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
            let actual = self.len + bytes.len() as u64;
            self.discard();
            return Err(ImageError::SizeMismatch {
                digest: self.digest.to_string(),
                origin: self.origin.clone(),
                expected: self.expected_size,
                actual,
            });
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
    /// partial file is deleted. A transient blob ([`BlobStore::begin_transient`]) is only
    /// verified (its tee then ends cleanly) and `None` returned: nothing is stored.
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
        let Some(file) = file.filter(|_| self.keep) else {
            if let Some(t) = self.tee.as_mut() {
                t.end();
            }
            return Ok(None);
        };
        file.sync_all().map_err(ImageError::io(&self.path))?;
        drop(file);
        let dest = self.store.path(&self.digest);
        fs::rename(&self.path, &dest).map_err(ImageError::io(&dest))?;
        if let Some(t) = self.tee.as_mut() {
            t.end();
        }
        Ok(Some(dest))
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

enum TeeMsg {
    Data(Vec<u8>),
    /// The blob was verified: the stream is complete.
    End,
}

/// The sending side of [`PartialBlob::tee`]. Dropping it without `end` aborts the reader.
struct BlobTee {
    tx: Option<std::sync::mpsc::SyncSender<TeeMsg>>,
    intact: bool,
}

impl BlobTee {
    fn send(&mut self, bytes: &[u8]) {
        if let Some(tx) = &self.tx {
            if tx.send(TeeMsg::Data(bytes.to_vec())).is_err() {
                // The reader stopped (its unpack failed); the download goes on.
                self.tx = None;
            }
        }
    }
    fn abort(&mut self) {
        self.tx = None;
        self.intact = false;
    }
    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(TeeMsg::End);
        }
    }
}

/// Reads the bytes of a blob as they are downloaded.
pub struct TeeReader {
    rx: std::sync::mpsc::Receiver<TeeMsg>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for TeeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(TeeMsg::Data(d)) => {
                    self.chunk = d;
                    self.pos = 0;
                }
                Ok(TeeMsg::End) => self.done = true,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download was interrupted or did not verify",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blob being written (see [`BlobStore::writer`]).
pub struct BlobWriter {
    w: BlobSink,
    tmp: PathBuf,
    dir: PathBuf,
    _guard: TempFile,
}

/// Where a [`BlobWriter`]'s bytes go: hashed on the way, or only counted.
enum BlobSink {
    Hashing(super::digest::Hashing<io::BufWriter<WritebackFile>>),
    Plain(io::BufWriter<WritebackFile>, u64),
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.w {
            BlobSink::Hashing(w) => w.write(buf),
            BlobSink::Plain(w, count) => {
                let n = w.write(buf)?;
                *count += n as u64;
                Ok(n)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.w {
            BlobSink::Hashing(w) => w.flush(),
            BlobSink::Plain(w, _) => w.flush(),
        }
    }
}

impl BlobWriter {
    /// Stores what was written under its digest (durably), unless `expected` is given and
    /// differs: then nothing is stored and the mismatch is the error. Returns the digest
    /// and size. (A writer from [`BlobStore::writer_unhashed`] has no digest of its own:
    /// it is stored only when `expected` is given and its size is `expected`'s.)
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), ImageError> {
        let BlobWriter {
            w,
            tmp,
            dir,
            _guard,
        } = self;
        let (bw, digest, size) = match w {
            BlobSink::Hashing(w) => w.finish(),
            BlobSink::Plain(..) => {
                return Err(ImageError::Base(format!(
                    "{}: an unhashed blob is stored only with commit_verified",
                    tmp.display()
                )))
            }
        };
        if let Some(exp) = expected {
            if *exp != digest {
                return Err(ImageError::DigestMismatch {
                    digest: exp.to_string(),
                    origin: tmp.display().to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        store_written(bw, &tmp, &dir, &digest)?;
        Ok((digest, size))
    }

    /// Stores what was written under `digest`, which the caller computed over exactly the
    /// bytes it wrote here (`size` of them: checked), without hashing them again.
    pub fn commit_verified(self, digest: &Digest, size: u64) -> Result<(), ImageError> {
        let BlobWriter {
            w,
            tmp,
            dir,
            _guard,
        } = self;
        let (bw, count) = match w {
            BlobSink::Hashing(w) => {
                let (bw, actual, count) = w.finish();
                if actual != *digest {
                    return Err(ImageError::DigestMismatch {
                        digest: digest.to_string(),
                        origin: tmp.display().to_string(),
                        actual: actual.to_string(),
                    });
                }
                (bw, count)
            }
            BlobSink::Plain(bw, count) => (bw, count),
        };
        if count != size {
            return Err(ImageError::SizeMismatch {
                digest: digest.to_string(),
                origin: tmp.display().to_string(),
                expected: size,
                actual: count,
            });
        }
        store_written(bw, &tmp, &dir, digest)
    }
}

/// Flushes, syncs and renames a written blob file in as `digest`.
fn store_written(
    bw: io::BufWriter<WritebackFile>,
    tmp: &Path,
    dir: &Path,
    digest: &Digest,
) -> Result<(), ImageError> {
    let file = bw
        .into_inner()
        .map_err(|e| ImageError::io(tmp)(e.into_error()))?
        .file;
    file.sync_all().map_err(ImageError::io(tmp))?;
    drop(file);
    let dest = dir.join(digest.hex());
    if !dest.exists() {
        fs::rename(tmp, &dest).map_err(ImageError::io(&dest))?;
    }
    Ok(())
}

/// A reader that writes every byte it reads to `copy` as well.
pub struct TeeRead<'a, R> {
    pub inner: R,
    pub copy: &'a mut dyn Write,
}

impl<R: Read> Read for TeeRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
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
    fn a_copy_made_while_reading_is_stored_only_when_it_matches() {
        let (_d, s) = store();
        let data = b"the bytes someone else reads".to_vec();
        let digest = Digest::of(&data);
        let leftovers = || fs::read_dir(s.tmp_dir()).unwrap().count();
        let before = leftovers();
        // A wrong expectation stores nothing and leaves no temporary file.
        let mut w = s.writer().unwrap();
        let mut read = Vec::new();
        TeeRead {
            inner: &data[..],
            copy: &mut w,
        }
        .read_to_end(&mut read)
        .unwrap();
        assert_eq!(read, data);
        let wrong = Digest::of(b"other");
        assert!(matches!(
            w.commit(Some(&wrong)),
            Err(ImageError::DigestMismatch { .. })
        ));
        assert!(!s.contains(&wrong) && !s.contains(&digest));
        assert_eq!(leftovers(), before);
        // The right one is stored under its digest.
        let mut w = s.writer().unwrap();
        std::io::copy(
            &mut TeeRead {
                inner: &data[..],
                copy: &mut w,
            },
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!(
            w.commit(Some(&digest)).unwrap(),
            (digest.clone(), data.len() as u64)
        );
        assert_eq!(s.read(&digest).unwrap(), data);
        assert_eq!(leftovers(), before);
    }

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
    fn large_blobs_written_back_early_and_an_unhashed_copy_are_stored_intact() {
        let (_d, s) = store();
        // Over two write-back steps, in odd pieces.
        let data: Vec<u8> = (0..(2 * WRITEBACK_STEP as usize + 12_345))
            .map(|i| (i % 253) as u8)
            .collect();
        let digest = Digest::of(&data);
        let mut p = s.begin(&digest, data.len() as u64, "t").unwrap();
        for piece in data.chunks(3_000_001) {
            p.append(piece).unwrap();
        }
        assert_eq!(fs::read(p.commit().unwrap().unwrap()).unwrap(), data);
        s.remove(&digest).unwrap();
        // The unhashed copy: stored under the digest its reader computed, checked by size.
        let mut w = s.writer_unhashed().unwrap();
        w.write_all(&data).unwrap();
        assert!(matches!(
            w.commit_verified(&digest, data.len() as u64 + 1),
            Err(ImageError::SizeMismatch { .. })
        ));
        assert!(!s.contains(&digest));
        let mut w = s.writer_unhashed().unwrap();
        w.write_all(&data).unwrap();
        w.commit_verified(&digest, data.len() as u64).unwrap();
        assert_eq!(s.read(&digest).unwrap(), data);
        // A hashing writer still checks the digest it is told.
        let mut w = s.writer().unwrap();
        w.write_all(b"x").unwrap();
        assert!(w.commit_verified(&digest, 1).is_err());
        let mut w = s.writer_unhashed().unwrap();
        w.write_all(b"x").unwrap();
        assert!(
            w.commit(None).is_err(),
            "an unhashed blob has no digest of its own"
        );
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

    #[test]
    fn tee_sees_a_verified_blob_and_fails_on_a_corrupt_or_restarted_one() {
        let (_d, s) = store();
        let data = b"streamed while downloading".to_vec();
        let digest = Digest::of(&data);
        let mut p = s.begin(&digest, data.len() as u64, "t").unwrap();
        let mut r = p.tee().unwrap();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        p.append(&data[..5]).unwrap();
        p.append(&data[5..]).unwrap();
        assert!(p.tee_intact());
        p.commit().unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), data);

        let bad = Digest::of(b"other");
        let mut p = s.begin(&bad, 5, "t").unwrap();
        let mut r = p.tee().unwrap();
        let reader = std::thread::spawn(move || r.read_to_end(&mut Vec::new()));
        p.append(b"wrong").unwrap();
        assert!(p.commit().is_err());
        assert!(
            reader.join().unwrap().is_err(),
            "a corrupt blob must not read as complete"
        );

        let mut p = s.begin(&bad, 5, "t").unwrap();
        let mut r = p.tee().unwrap();
        let reader = std::thread::spawn(move || r.read_to_end(&mut Vec::new()));
        p.append(b"ot").unwrap();
        p.restart().unwrap();
        assert!(!p.tee_intact());
        drop(p);
        assert!(reader.join().unwrap().is_err());
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
