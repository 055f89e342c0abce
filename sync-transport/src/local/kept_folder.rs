//! Folders a copy thread keeps open while it works through the files of one folder
//! ([`crate::transport::Transport::keep_folder`]): the parent descriptor is opened (with the
//! same `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` as always) once for the group instead
//! of once per file, and each file is then reached by its final name alone. Kept per thread
//! and per transport, only between `keep_folder` and `release_folder`.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// One kept folder: the transport (its address), the folder's relative path, and its
/// descriptor once a call opened it.
struct Kept {
    transport: usize,
    folder: String,
    fd: Option<Arc<OwnedFd>>,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// From now on (on this thread) calls of `transport` for entries of `folder` may keep it
/// open.
pub(super) fn keep(transport: usize, folder: &str) {
    KEPT.with_borrow_mut(|kept| {
        kept.retain(|k| k.transport != transport);
        kept.push(Kept {
            transport,
            folder: folder.to_string(),
            fd: None,
        });
    });
}

/// Closes what `keep` let this thread keep for `transport`.
pub(super) fn release(transport: usize) {
    KEPT.with_borrow_mut(|kept| kept.retain(|k| k.transport != transport));
}

/// Whether `folder` is the one kept for `transport` on this thread, and its descriptor if
/// already opened: `None` not kept, `Some(None)` kept but not open yet.
pub(super) fn get(transport: usize, folder: &str) -> Option<Option<Arc<OwnedFd>>> {
    KEPT.with_borrow(|kept| {
        kept.iter()
            .find(|k| k.transport == transport && k.folder == folder)
            .map(|k| k.fd.clone())
    })
}

/// Stores the descriptor of the kept `folder` (a no-op when `folder` is not the kept one).
pub(super) fn store(transport: usize, folder: &str, fd: &Arc<OwnedFd>) {
    KEPT.with_borrow_mut(|kept| {
        if let Some(k) = kept
            .iter_mut()
            .find(|k| k.transport == transport && k.folder == folder)
        {
            k.fd = Some(fd.clone());
        }
    });
}
