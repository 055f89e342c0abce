//! Pushing an uncompressed layer of the store (as berth's builds leave them): compressed
//! (deterministically, see [`super::parallel_gzip`]) while the compressed bytes are
//! uploaded, instead of compressing all of it first and sending it after.
//!
//! A layer compressed before (`push/compressed/` remembers which blob it gave) has a known
//! digest: it goes the ordinary way ([`push_blob`]: existence check, mount, upload). A layer
//! never compressed has no digest until the last byte is out, so there is nothing to check
//! or mount (as skopeo and docker do for a layer they compress): one thread compresses into
//! the blob store (hashing as it writes) and hands fixed-size chunks to the uploading thread,
//! which `PATCH`es each as soon as it is full while the next is being compressed, and closes
//! the upload with the digest once the compressor has stored the blob.
//!
//! An interrupted upload is written down in the upload journal under the layer's own digest
//! and the compression format ([`STREAM_FORMAT`]): the next push compresses again (the same
//! bytes), skips what the registry already holds and sends the rest. Should the registry's
//! upload not end in the same digest after all (another berth's format, a session the
//! registry mangled), the blob is stored complete by then and is sent again from the start.

use std::io::Read;
use std::sync::mpsc;

use super::digest::Digest;
use super::error::ImageError;
use super::progress::TransferProgress;
use super::push::LayerCompression;
use super::registry::RegistryClient;
use super::store::ImageStore;
use super::upload::{push_blob, BlobOutcome, LocalBlob, UploadJournal, CHUNK_SIZE_VAR};
use crate::host::fault_injection::checkpoint;

/// Bytes per `PATCH` of a layer compressed while it is sent, unless [`CHUNK_SIZE_VAR`]
/// says otherwise: small enough that the last chunk, sent after compression ended, costs
/// little; large enough that requests cost nothing noticeable.
pub const STREAM_CHUNK: u64 = 8 << 20;

/// Compressed chunks waiting for the uploader (memory: this many chunks).
const QUEUE: usize = 2;

/// The chunk size for compressing uploads: [`CHUNK_SIZE_VAR`] when set, else
/// [`STREAM_CHUNK`].
fn stream_chunk(chunk: u64) -> u64 {
    match std::env::var(CHUNK_SIZE_VAR) {
        Ok(v) if !v.trim().is_empty() => chunk,
        _ => STREAM_CHUNK,
    }
}

/// Where the blob a layer compresses to went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedPush {
    pub digest: Digest,
    pub size: u64,
    pub outcome: BlobOutcome,
}

/// What the uploading thread did with the stream.
enum Streamed {
    /// Everything from the resume offset on was sent; the upload waits for its digest.
    Sent { location: String, sent: u64 },
    /// Everything fit in the first chunk, which was held back to go in one request.
    Whole { location: String, bytes: Vec<u8> },
    /// The registry refused a chunk's range: the blob is sent again once it is stored.
    Refused,
}

impl ImageStore {
    /// Puts the compression of the uncompressed layer `layer` into the client's repository:
    /// the remembered compressed blob the ordinary way (`mount_from`: repositories to mount
    /// it from), or — never compressed before — compressed while it is uploaded. The
    /// compressed blob ends in the store and is remembered either way.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_compressing(
        &self,
        client: &RegistryClient,
        journal: &UploadJournal,
        layer: &Digest,
        compression: LayerCompression,
        chunk: u64,
        mount_from: &[String],
        progress: &mut dyn TransferProgress,
    ) -> Result<CompressedPush, ImageError> {
        if let Some((digest, size)) = self.remembered_compression(layer, compression) {
            return self.push_stored(client, journal, digest, size, mount_from, chunk, progress);
        }
        let chunk = stream_chunk(chunk) as usize;
        let format = compression.format();
        let src = self.blobs.path(layer);
        let file = std::fs::File::open(&src).map_err(ImageError::io(&src))?;
        // Continue an interrupted upload of this layer where the registry says it stands.
        let mut resumed_at = 0;
        let location = match journal.load_as(client, layer, Some(format)) {
            Some(loc) => match client.upload_offset(&loc)? {
                Some(n) => {
                    resumed_at = n;
                    loc
                }
                None => client.start_upload()?,
            },
            None => client.start_upload()?,
        };
        journal.save_as(client, layer, Some(format), &location)?;

        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        // The blob's digest and size, as soon as it is compressed (before it is synced).
        let (known_tx, known_rx) = mpsc::channel::<(Digest, u64)>();
        let origin = src.display().to_string();
        let (compressed, closed) = std::thread::scope(|s| {
            let compressor = s.spawn(move || -> Result<(Digest, u64), ImageError> {
                let mut encoder = compression.encoder(file, &origin)?;
                let mut blob = self.blobs.writer()?;
                // The uploader gone (it failed): the rest is still compressed and stored,
                // so the next push has the blob and its digest.
                let mut uploader = Some(tx);
                loop {
                    let mut buf = Vec::with_capacity(chunk);
                    (&mut encoder)
                        .take(chunk as u64)
                        .read_to_end(&mut buf)
                        .map_err(ImageError::io(&origin))?;
                    if buf.is_empty() {
                        break;
                    }
                    std::io::Write::write_all(&mut blob, &buf).map_err(ImageError::io(&origin))?;
                    let full = buf.len() == chunk;
                    if let Some(tx) = &uploader {
                        if tx.send(buf).is_err() {
                            uploader = None;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                drop(uploader);
                let (digest, size) = blob.commit_with(None, |digest, size| {
                    let _ = known_tx.send((digest.clone(), size));
                })?;
                self.remember_compression(layer, compression, &digest, size)?;
                Ok((digest, size))
            });
            let streamed = send_stream(
                client, journal, layer, format, location, resumed_at, &rx, progress,
            );
            // The compressor must not wait on a full queue for an uploader that stopped.
            drop(rx);
            // Closing the upload needs only the digest: it goes while the blob is synced
            // to the store.
            let closed = match (streamed, known_rx.recv()) {
                (Ok(streamed), Ok((digest, size))) => Some(close_stream(
                    client, streamed, &digest, size, resumed_at, progress,
                )),
                (Err(e), _) => Some(Err(e)),
                // The compressor failed: its error is the answer.
                (Ok(_), Err(_)) => None,
            };
            let compressed = compressor.join().unwrap_or_else(|_| {
                Err(ImageError::Base(format!(
                    "compressing layer {} panicked",
                    layer.short()
                )))
            });
            (compressed, closed)
        });
        let (digest, size) = compressed?;
        let outcome = match closed {
            Some(Ok(Some(outcome))) => outcome,
            Some(Err(e)) => return Err(e),
            // What was sent does not end in this blob (or the registry refused a chunk):
            // the blob is stored now, send all of it.
            Some(Ok(None)) | None => {
                journal.remove_as(client, layer, Some(format));
                return self.push_stored(
                    client,
                    journal,
                    digest,
                    size,
                    &[],
                    chunk as u64,
                    progress,
                );
            }
        };
        journal.remove_as(client, layer, Some(format));
        Ok(CompressedPush {
            digest,
            size,
            outcome,
        })
    }
}

/// Closes the upload the stream went to, as the blob `digest` (`size` bytes): its outcome,
/// or `None` when it must be sent again whole (a chunk was refused, or what an earlier
/// berth sent before `resumed_at` was not these bytes after all).
fn close_stream(
    client: &RegistryClient,
    streamed: Streamed,
    digest: &Digest,
    size: u64,
    resumed_at: u64,
    progress: &mut dyn TransferProgress,
) -> Result<Option<BlobOutcome>, ImageError> {
    match streamed {
        Streamed::Whole { location, bytes } => {
            client.finish_upload(&location, digest, &bytes)?;
            progress.advance(bytes.len() as u64);
            Ok(Some(BlobOutcome::Uploaded {
                bytes: size,
                resumed_at: 0,
            }))
        }
        Streamed::Sent { location, sent } => match client.finish_upload(&location, digest, &[]) {
            Ok(()) => Ok(Some(BlobOutcome::Uploaded {
                bytes: sent,
                resumed_at,
            })),
            Err(ImageError::RegistryStatus { status: 400, .. }) if resumed_at > 0 => {
                client.cancel_upload(&location);
                Ok(None)
            }
            Err(e) => Err(e),
        },
        Streamed::Refused => Ok(None),
    }
}

impl ImageStore {
    /// Puts the compressed blob `digest` of the store, `size` bytes, into the client's
    /// repository the ordinary way ([`push_blob`]: existence check, mount, upload).
    #[allow(clippy::too_many_arguments)]
    fn push_stored(
        &self,
        client: &RegistryClient,
        journal: &UploadJournal,
        digest: Digest,
        size: u64,
        mount_from: &[String],
        chunk: u64,
        progress: &mut dyn TransferProgress,
    ) -> Result<CompressedPush, ImageError> {
        let blob = LocalBlob::stored(&self.blobs, &digest, size);
        let outcome = push_blob(client, journal, &blob, mount_from, chunk, progress)?;
        Ok(CompressedPush {
            digest,
            size,
            outcome,
        })
    }
}

/// The uploading side: `PATCH`es the compressed chunks arriving on `rx` from byte
/// `resumed_at` on (the bytes before are the registry's already), writing the upload's
/// location down after each. The first chunk is held until a second one comes: a blob
/// that fits in one chunk goes in the closing request (two requests in all).
#[allow(clippy::too_many_arguments)]
fn send_stream(
    client: &RegistryClient,
    journal: &UploadJournal,
    layer: &Digest,
    format: &str,
    mut location: String,
    resumed_at: u64,
    rx: &mpsc::Receiver<Vec<u8>>,
    progress: &mut dyn TransferProgress,
) -> Result<Streamed, ImageError> {
    progress.advance(resumed_at);
    let mut held: Option<Vec<u8>> = None;
    // Stream offset of the next chunk to arrive, and what was sent.
    let mut pos = 0u64;
    let mut sent = 0u64;
    let mut send = |buf: &[u8], at: u64, location: &mut String| -> Result<bool, ImageError> {
        let end = at + buf.len() as u64;
        if end <= resumed_at {
            return Ok(true);
        }
        let skip = resumed_at.saturating_sub(at);
        let part = &buf[skip as usize..];
        match client.upload_chunk(location, at + skip, part)? {
            Some(next) => {
                *location = next;
                sent += part.len() as u64;
                journal.save_as(client, layer, Some(format), location)?;
                progress.advance(part.len() as u64);
                checkpoint("push-chunk");
                Ok(true)
            }
            None => Ok(false),
        }
    };
    for buf in rx.iter() {
        let len = buf.len() as u64;
        if pos == 0 && resumed_at == 0 {
            held = Some(buf);
            pos += len;
            continue;
        }
        if let Some(first) = held.take() {
            if !send(&first, 0, &mut location)? {
                return Ok(Streamed::Refused);
            }
        }
        if !send(&buf, pos, &mut location)? {
            return Ok(Streamed::Refused);
        }
        pos += len;
    }
    if let Some(bytes) = held {
        return Ok(Streamed::Whole { location, bytes });
    }
    Ok(Streamed::Sent { location, sent })
}
