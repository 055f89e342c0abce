//! Folders a copy thread keeps open while it works through the files of one folder
//! ([`crate::transport::Transport::keep_folder`]): the parent descriptor is opened (with the
//! same `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` as always) once for the group instead
//! of once per file, and each file is then reached by its final name alone. Kept per thread
//! and per transport, only between `keep_folder` and `release_folder`. A kept folder also
//! holds the temporary name of a replaced file's old inode, for the next file written there
//! ([`super::spare_inode`]); releasing the folder unlinks it.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;

/// One kept folder: the transport (its address), the folder's relative path, and its
/// descriptor once a call opened it.
struct Kept {
    transport: usize,
    folder: String,
    fd: Option<Arc<OwnedFd>>,
    /// A replaced file's old inode, at this temporary name in the folder.
    spare: Option<String>,
    /// Whether keeping old inodes pays on the folder's filesystem (not on tmpfs).
    spares: bool,
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
            spare: None,
            spares: false,
        });
    });
}

/// Closes what `keep` let this thread keep for `transport`; returns the folder's descriptor
/// and the spare's temporary name left there, for the caller to unlink.
pub(super) fn release(transport: usize) -> Option<(Arc<OwnedFd>, String)> {
    KEPT.with_borrow_mut(|kept| {
        let i = kept.iter().position(|k| k.transport == transport)?;
        let k = kept.remove(i);
        Some((k.fd?, k.spare?))
    })
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
            k.spares = spares_pay(fd);
        }
    });
}

/// Takes the spare's temporary name kept in `folder` (when it is the kept one).
pub(super) fn take_spare(transport: usize, folder: &str) -> Option<String> {
    KEPT.with_borrow_mut(|kept| {
        kept.iter_mut()
            .find(|k| k.transport == transport && k.folder == folder && k.fd.is_some())
            .and_then(|k| k.spare.take())
    })
}

/// Keeps `name` as the spare of the kept `folder`. `false` (nothing kept) when `folder` is
/// not the kept one or already has a spare: the caller unlinks it.
pub(super) fn put_spare(transport: usize, folder: &str, name: &str) -> bool {
    KEPT.with_borrow_mut(|kept| {
        match kept.iter_mut().find(|k| {
            k.transport == transport && k.folder == folder && k.fd.is_some() && k.spare.is_none()
        }) {
            Some(k) => {
                k.spare = Some(name.to_string());
                true
            }
            None => false,
        }
    })
}

/// Whether `folder` is the one kept open for `transport` on this thread, on a filesystem
/// where its replaced files' old inodes are kept for the next ones ([`super::spare_inode`]).
pub(super) fn keeps_spares(transport: usize, folder: &str) -> bool {
    KEPT.with_borrow(|kept| {
        kept.iter()
            .any(|k| k.transport == transport && k.folder == folder && k.fd.is_some() && k.spares)
    })
}

/// Whether keeping old inodes pays in the folder `fd`: not on tmpfs, where an inode costs
/// little and the checks a spare needs (a lease, a reopen) cost more than a new file
/// (`sync_bench` on tmpfs, 10,000 files: engine CPU median 0.99x rsync's with spares,
/// 0.94x without).
fn spares_pay(fd: &OwnedFd) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|s| s.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC)
}
