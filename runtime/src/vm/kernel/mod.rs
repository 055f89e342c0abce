//! VM kernels: `debian:PACKAGE[=VERSION]` fetched from the Debian archive by berth itself (no
//! apt needed), or a kernel image on the host; and berth's initramfs for them.

pub mod archive;
pub mod deb;
pub mod http;
pub mod initramfs;
pub mod signature;
pub mod store;

use std::path::PathBuf;

pub use archive::Mirror;
pub use store::{Kernel, KernelStore};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{url} failed verification: {reason}; the mirror may be out of sync, try again later or set BERTH_DEBIAN_MIRROR")]
    Checksum { url: String, reason: String },
    #[error("archive index {url}: {reason}")]
    Index { url: String, reason: String },
    #[error("kernel package {package} not found on {mirror}; check the name (e.g. debian:linux-image-cloud-amd64) and version")]
    NotFound { package: String, mirror: String },
    #[error("the kernel package cannot be unpacked: {reason}")]
    Package { reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{url} is not signed by a trusted key ({keyrings}): {reason}; check that BERTH_DEBIAN_MIRROR is a Debian mirror, or for a mirror with keys of its own put its keyring in BERTH_DEBIAN_KEYRING (`:`-separated files)")]
    Signature {
        url: String,
        keyrings: String,
        reason: String,
    },
    #[error("the archive keyring {path} does not exist; install it (Debian: apt-get install debian-archive-keyring) or name your keyring files in BERTH_DEBIAN_KEYRING (`:`-separated)")]
    Keyring { path: PathBuf },
    #[error("gpgv is needed to check the signature of {url} before trusting its checksums; install it (Debian: apt-get install gpgv)")]
    NoGpgv { url: String },
    #[error("kernel image {0} does not exist; fix [vm].kernel in berth.toml")]
    MissingImage(PathBuf),
}
