//! Writing a blob file: [`BlobWriter`] (a stream stored under its digest once complete, see
//! [`super::blob_store::BlobStore::writer`]) and the [`WritebackFile`] both it and a download
//! write through, which hands its pages to the disk as it goes so the final `fsync` is short.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::error::ImageError;

/// Bytes written to a blob file between two requests to the kernel to start writing them
/// to disk: the `fsync` that ends the blob then waits for the last few MiB only, instead of
/// for the whole blob, which was written back while the rest arrived.
pub(super) const WRITEBACK_STEP: u64 = 8 << 20;

/// A blob file being written, whose pages are handed to the disk every
/// [`WRITEBACK_STEP`] bytes (`sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts the write-out,
/// does not wait for it).
pub(super) struct WritebackFile {
    pub(super) file: File,
    /// Offset up to which write-out was started.
    started: u64,
    /// Offset of the next write.
    at: u64,
}

impl WritebackFile {
    pub(super) fn new(file: File, at: u64) -> Self {
        WritebackFile {
            file,
            started: at,
            at,
        }
    }

    /// Continues at `at` (after a truncation or seek).
    pub(super) fn reset(&mut self, at: u64) {
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

/// A blob being written (see [`super::blob_store::BlobStore::writer`]).
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
    /// A writer into the new file `tmp` (removed unless committed), stored into `dir`;
    /// `hashing`: whether it computes the digest of what it is given.
    pub(super) fn create(tmp: PathBuf, dir: PathBuf, hashing: bool) -> Result<Self, ImageError> {
        let (guard, file) = TempFile::create_new(&tmp)?;
        let out = io::BufWriter::with_capacity(1 << 20, WritebackFile::new(file, 0));
        Ok(BlobWriter {
            w: if hashing {
                BlobSink::Hashing(super::digest::Hashing::new(out))
            } else {
                BlobSink::Plain(out, 0)
            },
            tmp,
            dir,
            _guard: guard,
        })
    }

    /// Stores what was written under its digest (durably), unless `expected` is given and
    /// differs: then nothing is stored and the mismatch is the error. Returns the digest
    /// and size. (A writer from [`super::blob_store::BlobStore::writer_unhashed`] has no
    /// digest of its own: it is stored only when `expected` is given and its size is
    /// `expected`'s.)
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), ImageError> {
        self.commit_with(expected, |_, _| {})
    }

    /// [`BlobWriter::commit`], telling `known` the digest and size once they are known and
    /// checked, before the file is synced and renamed in (work that needs only the digest
    /// goes on meanwhile: closing an upload of the same bytes).
    pub fn commit_with(
        self,
        expected: Option<&Digest>,
        known: impl FnOnce(&Digest, u64),
    ) -> Result<(Digest, u64), ImageError> {
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
        known(&digest, size);
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
    pub copy: &'a mut (dyn Write + Send),
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

impl TempFile {
    /// Creates the new file `path` (never an existing one) with its guard.
    pub(crate) fn create_new(path: &Path) -> Result<(TempFile, File), ImageError> {
        let guard = TempFile(Some(path.to_path_buf()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ImageError::io(path))?;
        Ok((guard, file))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::blob_store::tests::store;

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
}
