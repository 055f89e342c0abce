//! The image side of berth: registry pulls, the content-addressed blob store, safe layer
//! unpacking into a shared layer store, local bases, image records, export/import, the lock
//! file and cached build steps. [`ImageStore`] is the entry point.

pub mod blob_store;
pub mod digest;
pub mod error;
pub mod manifest;
pub mod progress;
pub mod unpack;
pub mod xattrs;

pub use digest::Digest;
pub use error::ImageError;

pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{n:x}")
}
