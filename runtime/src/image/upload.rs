//! The push side of the OCI distribution API: blob existence checks (`HEAD`), cross-repository
//! mounts (`POST …/uploads/?mount=&from=`), monolithic uploads (`POST` then one `PUT` with the
//! blob) and chunked ones (`POST`, `PATCH` per chunk with `Content-Range`, `PUT ?digest=`),
//! manifests. A chunked upload in progress is written down in `push/uploads/` of the berth
//! home after every chunk (the upload's URL only, never a credential), so a push killed
//! mid-way continues where the registry says the upload stands, or starts the blob over
//! when the registry forgot it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use envfile_spec::reference::ImageReference;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blob_store::BlobStore;
use super::digest::Digest;
use super::error::ImageError;
use super::progress::TransferProgress;
use super::registry::{RegistryClient, RegistryOptions};
use crate::host::fault_injection::checkpoint;
use crate::state::{read_json, write_json};

/// Environment variable: bytes per `PATCH` of a chunked upload (blobs up to this size go
/// in one request).
pub const CHUNK_SIZE_VAR: &str = "BERTH_PUSH_CHUNK_SIZE";
/// Default chunk: large enough that the per-request cost vanishes, small enough that an
/// interrupted upload loses little.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;

/// The chunk size from [`CHUNK_SIZE_VAR`] (at least 64 KiB), or the default.
pub fn chunk_size_from_env() -> Result<u64, ImageError> {
    match std::env::var(CHUNK_SIZE_VAR) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
            Ok(n) if (64 << 10..=1 << 32).contains(&n) => Ok(n),
            _ => Err(ImageError::InvalidSetting {
                var: CHUNK_SIZE_VAR,
                value: v,
                expected: "a number of bytes from 65536 to 4294967296",
            }),
        },
        _ => Ok(DEFAULT_CHUNK_SIZE),
    }
}

/// What a cross-repository mount did.
pub enum Mount {
    /// The blob is now in the repository.
    Mounted,
    /// The registry did not mount it but opened an upload session at this URL instead.
    Upload(String),
}

/// How a blob got into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// It was there already (nothing sent).
    Existed,
    /// Mounted from another repository of the registry (nothing sent).
    Mounted,
    /// Sent; `resumed_at` is the offset an interrupted upload continued from (0: fresh).
    Uploaded { bytes: u64, resumed_at: u64 },
}

impl RegistryClient {
    /// A client allowed to push to `reference`'s repository and to mount blobs from
    /// `mount_from` (other repositories of the same registry).
    pub fn for_push(
        reference: &ImageReference,
        opts: &RegistryOptions,
        mount_from: &[String],
    ) -> Result<Self, ImageError> {
        let mut c = RegistryClient::new(reference, opts)?;
        c.scopes
            .push(format!("repository:{}:pull,push", c.repository));
        for r in mount_from {
            let s = format!("repository:{r}:pull");
            if r != &c.repository && !c.scopes.contains(&s) {
                c.scopes.push(s);
            }
        }
        Ok(c)
    }

    /// The registry's address (`registry`), for journals.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository pushed to.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Whether `url` is on this registry (so credentials may go with it).
    pub(super) fn same_origin(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// An upload URL from a `Location` header (relative ones are on the registry). A
    /// location on another host is refused: berth sends credentials only to the registry.
    fn location(
        &self,
        resp: &reqwest::blocking::Response,
        url: &str,
    ) -> Result<String, ImageError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ImageError::RegistryStatus {
                registry: self.registry.clone(),
                url: url.to_string(),
                status: resp.status().as_u16(),
                body: "the answer has no Location header for the upload".into(),
            })?;
        let abs = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            format!("{}/{loc}", self.base)
        };
        if !self.same_origin(&abs) {
            return Err(ImageError::RegistryStatus {
                registry: self.registry.clone(),
                url: url.to_string(),
                status: resp.status().as_u16(),
                body: format!("the upload was sent to another host ({abs}); berth uploads only to the registry itself"),
            });
        }
        Ok(abs)
    }

    fn blob_url(&self, digest: &Digest) -> String {
        format!("{}/v2/{}/blobs/{}", self.base, self.repository, digest)
    }

    /// `HEAD` of a blob: whether the repository has it.
    pub fn blob_exists(&self, digest: &Digest) -> Result<bool, ImageError> {
        let url = self.blob_url(digest);
        let resp = self.request(Method::HEAD, &url, HeaderMap::new(), None)?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&url, resp)),
        }
    }

    /// Asks the registry to mount `digest` from repository `from`.
    pub fn mount_blob(&self, digest: &Digest, from: &str) -> Result<Mount, ImageError> {
        let url = format!(
            "{}/v2/{}/blobs/uploads/?mount={}&from={}",
            self.base, self.repository, digest, from
        );
        let resp = self.request(Method::POST, &url, length_zero(), None)?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&resp, &url)?)),
            _ => Err(self.status_error(&url, resp)),
        }
    }

    /// Opens an upload session; returns its URL.
    pub fn start_upload(&self) -> Result<String, ImageError> {
        let url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let resp = self.request(Method::POST, &url, length_zero(), None)?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&url, resp));
        }
        self.location(&resp, &url)
    }

    /// How many bytes an open upload session holds, `None` when the registry no longer
    /// knows it.
    pub fn upload_offset(&self, location: &str) -> Result<Option<u64>, ImageError> {
        let resp = self.request(Method::GET, location, HeaderMap::new(), None)?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Some(range_end(&resp).unwrap_or(0))),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            _ => Err(self.status_error(location, resp)),
        }
    }

    /// Sends `bytes` at `offset` of the session; returns the session's next URL, or
    /// `None` when the registry refuses the range (the session must start over).
    pub fn upload_chunk(
        &self,
        location: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Option<String>, ImageError> {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let range = format!("{}-{}", offset, offset + bytes.len() as u64 - 1);
        h.insert(
            "content-range",
            HeaderValue::from_str(&range).expect("ascii"),
        );
        let resp = self.request(Method::PATCH, location, h, Some(bytes))?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::NO_CONTENT | StatusCode::CREATED => {
                Ok(Some(self.location(&resp, location)?))
            }
            StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.status_error(location, resp)),
        }
    }

    /// Closes the session with `digest`, sending `tail` (the whole blob for a monolithic
    /// upload, nothing after chunks).
    pub fn finish_upload(
        &self,
        location: &str,
        digest: &Digest,
        tail: &[u8],
    ) -> Result<(), ImageError> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_LENGTH, HeaderValue::from(tail.len() as u64));
        let resp = self.request(Method::PUT, &url, h, Some(tail))?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.status_error(&url, resp));
        }
        Ok(())
    }

    /// Closes an upload session that will not be used (best effort: the registry expires
    /// it anyway).
    pub fn cancel_upload(&self, location: &str) {
        let _ = self.request(Method::DELETE, location, HeaderMap::new(), None);
    }

    /// Stores a manifest or index under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), ImageError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, reference
        );
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| {
                ImageError::malformed("manifest media type", media_type.to_string())
            })?,
        );
        let resp = self.request(Method::PUT, &url, h, Some(bytes))?;
        if !resp.status().is_success() {
            return Err(self.status_error(&url, resp));
        }
        Ok(())
    }
}

/// Creates `dir` and missing parents with mode 0700 (the home's own folders are private).
pub(super) fn private_dirs(dir: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ImageError::io(dir))
}

fn length_zero() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    h
}

/// The byte count an upload holds from its `Range: 0-<last>` header (distribution writes
/// `0-0` for an empty session too; a wrong guess is caught by the next chunk's range check).
fn range_end(resp: &reqwest::blocking::Response) -> Option<u64> {
    let v = resp.headers().get("range")?.to_str().ok()?;
    parse_range_end(v)
}

fn parse_range_end(v: &str) -> Option<u64> {
    let v = v.trim().trim_start_matches("bytes=");
    let (start, end) = v.split_once('-')?;
    let (start, end) = (
        start.trim().parse::<u64>().ok()?,
        end.trim().parse::<u64>().ok()?,
    );
    if start != 0 {
        return None;
    }
    Some(if end == 0 { 0 } else { end + 1 })
}

/// Open chunked uploads of this berth home, one file per (registry, repository, blob).
pub struct UploadJournal {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct OpenUpload {
    registry: String,
    repository: String,
    digest: Digest,
    location: String,
    /// An upload of `digest` (an uncompressed layer) compressed while it was sent, with this
    /// compression format (the blob's own digest was not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compressed_as: Option<String>,
}

impl UploadJournal {
    pub fn new(dir: PathBuf) -> Self {
        UploadJournal { dir }
    }

    fn path(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        compressed_as: Option<&str>,
    ) -> PathBuf {
        let mut key = format!("{}/{}@{}", client.registry, client.repository, digest);
        if let Some(c) = compressed_as {
            key.push_str(" compressed as ");
            key.push_str(c);
        }
        self.dir
            .join(format!("{}.json", hex::encode(Sha256::digest(key))))
    }

    fn load(&self, client: &RegistryClient, digest: &Digest) -> Option<String> {
        self.load_as(client, digest, None)
    }

    /// The open upload of `digest` (compressed as `compressed_as` while it is sent, when
    /// given) to the client's repository.
    pub(super) fn load_as(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        compressed_as: Option<&str>,
    ) -> Option<String> {
        let rec: OpenUpload = read_json(&self.path(client, digest, compressed_as))
            .ok()
            .flatten()?;
        (rec.registry == client.registry
            && rec.repository == client.repository
            && &rec.digest == digest
            && rec.compressed_as.as_deref() == compressed_as
            && client.same_origin(&rec.location))
        .then_some(rec.location)
    }

    fn save(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        location: &str,
    ) -> Result<(), ImageError> {
        self.save_as(client, digest, None, location)
    }

    pub(super) fn save_as(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        compressed_as: Option<&str>,
        location: &str,
    ) -> Result<(), ImageError> {
        private_dirs(&self.dir)?;
        let rec = OpenUpload {
            registry: client.registry.clone(),
            repository: client.repository.clone(),
            digest: digest.clone(),
            location: location.to_string(),
            compressed_as: compressed_as.map(str::to_string),
        };
        Ok(write_json(&self.path(client, digest, compressed_as), &rec)?)
    }

    fn remove(&self, client: &RegistryClient, digest: &Digest) {
        self.remove_as(client, digest, None)
    }

    pub(super) fn remove_as(
        &self,
        client: &RegistryClient,
        digest: &Digest,
        compressed_as: Option<&str>,
    ) {
        let _ = std::fs::remove_file(self.path(client, digest, compressed_as));
    }
}

/// A blob of the local store to put into a repository.
pub struct LocalBlob<'a> {
    pub path: PathBuf,
    pub digest: &'a Digest,
    pub size: u64,
}

impl<'a> LocalBlob<'a> {
    /// The blob `digest` (of `size` bytes) of the store `blobs`.
    pub fn stored(blobs: &BlobStore, digest: &'a Digest, size: u64) -> Self {
        LocalBlob {
            path: blobs.path(digest),
            digest,
            size,
        }
    }
}

/// Puts `blob` into the client's repository: nothing when it is there, a mount from one of
/// `mount_from` when the registry allows, else an upload (continuing an interrupted one of
/// this home when the registry still has it).
pub fn push_blob(
    client: &RegistryClient,
    journal: &UploadJournal,
    blob: &LocalBlob<'_>,
    mount_from: &[String],
    chunk: u64,
    progress: &mut dyn TransferProgress,
) -> Result<BlobOutcome, ImageError> {
    let (path, digest, size) = (blob.path.as_path(), blob.digest, blob.size);
    if client.blob_exists(digest)? {
        journal.remove(client, digest);
        return Ok(BlobOutcome::Existed);
    }
    // A registry that cannot mount from a source opens an upload session instead: it is
    // closed when another source remains to try, else used for the upload.
    let sources: Vec<&String> = mount_from
        .iter()
        .rev()
        .filter(|f| *f != client.repository())
        .take(3)
        .collect();
    let mut session = None;
    for (i, from) in sources.iter().enumerate() {
        match client.mount_blob(digest, from)? {
            Mount::Mounted => {
                journal.remove(client, digest);
                return Ok(BlobOutcome::Mounted);
            }
            Mount::Upload(loc) if i + 1 < sources.len() => client.cancel_upload(&loc),
            Mount::Upload(loc) => session = Some(loc),
        }
    }
    let mut file = File::open(path).map_err(ImageError::io(path))?;
    let mut resumed_at = 0;
    let (mut location, mut offset) = match journal.load(client, digest) {
        Some(loc) => match client.upload_offset(&loc)? {
            Some(n) if n <= size => {
                resumed_at = n;
                (loc, n)
            }
            _ => (client.start_upload()?, 0),
        },
        None => match session.take() {
            Some(loc) => (loc, 0),
            None => (client.start_upload()?, 0),
        },
    };
    if offset == 0 && size <= chunk {
        // Monolithic: the whole blob with the closing PUT.
        let mut bytes = Vec::with_capacity(size as usize);
        file.by_ref()
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(ImageError::io(path))?;
        client.finish_upload(&location, digest, &bytes)?;
        progress.advance(size);
        journal.remove(client, digest);
        return Ok(BlobOutcome::Uploaded {
            bytes: size,
            resumed_at: 0,
        });
    }
    journal.save(client, digest, &location)?;
    progress.advance(offset);
    let mut sent = 0u64;
    let mut buf = Vec::with_capacity(chunk.min(size) as usize);
    let mut restarted = false;
    while offset < size {
        let n = chunk.min(size - offset);
        buf.clear();
        file.seek(SeekFrom::Start(offset))
            .map_err(ImageError::io(path))?;
        file.by_ref()
            .take(n)
            .read_to_end(&mut buf)
            .map_err(ImageError::io(path))?;
        if buf.len() as u64 != n {
            return Err(ImageError::Base(format!(
                "blob {digest} in {} shrank while it was pushed; run the push again",
                path.display()
            )));
        }
        match client.upload_chunk(&location, offset, &buf)? {
            Some(next) => {
                location = next;
                offset += n;
                sent += n;
                journal.save(client, digest, &location)?;
                progress.advance(n);
                checkpoint("push-chunk");
            }
            None if !restarted => {
                // The registry holds another range than it said: start this blob over.
                restarted = true;
                resumed_at = 0;
                location = client.start_upload()?;
                offset = 0;
                journal.save(client, digest, &location)?;
            }
            None => {
                return Err(ImageError::Base(format!(
                    "registry {} refused the upload of blob {digest} twice at offset {offset}; try again later",
                    client.registry()
                )))
            }
        }
    }
    client.finish_upload(&location, digest, &[])?;
    journal.remove(client, digest);
    Ok(BlobOutcome::Uploaded {
        bytes: sent,
        resumed_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_upload_ranges() {
        assert_eq!(parse_range_end("0-0"), Some(0));
        assert_eq!(parse_range_end("0-1023"), Some(1024));
        assert_eq!(parse_range_end("bytes=0-9"), Some(10));
        assert_eq!(parse_range_end("5-9"), None);
        assert_eq!(parse_range_end("junk"), None);
    }

    #[test]
    fn uploads_never_leave_the_registry_and_the_journal_holds_no_credentials() {
        let r = ImageReference::parse("127.0.0.1:5999/team/app:v1").unwrap();
        let c = RegistryClient::for_push(&r, &RegistryOptions::default(), &["team/base".into()])
            .unwrap();
        assert!(c.same_origin("http://127.0.0.1:5999/v2/team/app/blobs/uploads/x"));
        assert!(!c.same_origin("http://127.0.0.1:59990/v2/x"));
        assert!(!c.same_origin("http://evil.example/v2/x"));
        assert!(!c.same_origin("http://127.0.0.1:5999.evil.example/v2/x"));
        assert_eq!(
            c.scopes,
            ["repository:team/app:pull,push", "repository:team/base:pull"]
        );
        let d = tempfile::tempdir().unwrap();
        let j = UploadJournal::new(d.path().join("uploads"));
        let digest = Digest::of(b"x");
        let loc = "http://127.0.0.1:5999/v2/team/app/blobs/uploads/u?_state=s";
        j.save(&c, &digest, loc).unwrap();
        assert_eq!(j.load(&c, &digest).as_deref(), Some(loc));
        // A journal pointing elsewhere is not followed.
        j.save(&c, &digest, "http://evil.example/v2/x").unwrap();
        assert_eq!(j.load(&c, &digest), None);
        j.remove(&c, &digest);
        assert_eq!(j.load(&c, &digest), None);
    }
}
