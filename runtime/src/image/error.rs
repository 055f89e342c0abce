//! Errors of the image side: registry, blob store, layer unpack, image records, bases.

use std::io;
use std::path::PathBuf;

use crate::state::StateError;

/// Everything that can go wrong while getting, storing or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("invalid image reference: {0}")]
    Reference(#[from] envfile_spec::reference::ReferenceError),
    #[error("`{0}` is not a valid digest: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error("cannot reach registry {registry} ({url}): {source}; check the address and your network, or pass --insecure for a plain-HTTP registry")]
    Http {
        registry: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry} did not {what} within {seconds} s ({url}); it may be down, overloaded or unreachable from here: try again later, check the address, or allow more time with {var}=SECONDS")]
    RegistryTimeout {
        registry: String,
        url: String,
        what: &'static str,
        seconds: f64,
        var: &'static str,
    },
    #[error("{var}={value:?} is not valid: expected {expected}; fix or unset it")]
    InvalidSetting {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{what} needs {need} bytes, but only {free} bytes are free on the filesystem of {path}; nothing was kept. Free some space (`berth image prune` removes unused images) or set BERTH_HOME to a larger filesystem")]
    NoSpace {
        what: String,
        need: u64,
        free: u64,
        path: PathBuf,
    },
    #[error("registry {registry} answered {status} for {url}: {body}")]
    RegistryStatus {
        registry: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("registry {registry} refused access to {repository} ({detail}); log in with `berth login {registry}` (berth reads docker's ~/.docker/config.json and credential helpers, and podman's auth.json) or check the repository name")]
    Unauthorized {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry} refused the login ({detail}); check the user name and password: nothing was saved")]
    LoginRefused { registry: String, detail: String },
    #[error("registry credentials in {path}: {detail}")]
    CredentialFile { path: PathBuf, detail: String },
    #[error("credential helper {helper} {detail}")]
    CredentialHelper { helper: String, detail: String },
    #[error("{reference} was not found in registry {registry}; check the name and tag")]
    ManifestNotFound { registry: String, reference: String },
    #[error("{what} from registry {registry} is not a supported image ({media_type}); berth reads OCI and Docker v2 schema 2 images")]
    UnsupportedMediaType {
        registry: String,
        what: String,
        media_type: String,
    },
    #[error("{reference} has no image for platform {platform} (available: {available}); choose another image or platform")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("blob {digest} from {origin} is corrupt: its content hashes to {actual}; the download was deleted, try again (if it persists the registry serves damaged data)")]
    DigestMismatch {
        digest: String,
        origin: String,
        actual: String,
    },
    #[error("blob {digest} from {origin} has {actual} bytes, expected {expected}; the download was deleted, try again")]
    SizeMismatch {
        digest: String,
        origin: String,
        expected: u64,
        actual: u64,
    },
    #[error("layer {layer} is unsafe: entry `{entry}` {reason}; nothing was written outside the layer store, the layer was discarded")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error("layer {layer} cannot be unpacked: entry `{entry}`: {source}")]
    UnpackEntry {
        layer: String,
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} is not a valid tar stream: {source}")]
    BadArchive {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer} unpacks to content with diff-id {actual}, but the image config says {expected}; the image is inconsistent, the layer was discarded")]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("{what} is malformed: {detail}")]
    Malformed { what: String, detail: String },
    #[error("no image named `{0}` in the local store; see `berth image ls`")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Base(String),
    #[error("build step `{step}` failed: {detail}")]
    Build { step: String, detail: String },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    pub(crate) fn malformed(what: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        ImageError::Malformed {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}
