//! Replacing a file without a new inode: a replaced file's old inode, which the engine's
//! exchange into place left at its temporary name, is taken as the temporary file of the
//! next file written in the same kept folder ([`super::kept_folder`]), instead of being
//! freed while a new one is allocated.
//!
//! Why: on ext4 without a journal (as a machine's `/` may be), every inode allocated skips,
//! one buffer-cache lookup each, the free inodes of its block group that were freed in the
//! last 60 to 300 s (`recently_deleted` in `fs/ext4/ialloc.c`). A change of N files by
//! temporary file + rename frees N inodes and allocates N more in the same group: the
//! allocations cost O(N²) lookups when the group also has free space behind them. With the
//! old inode taken for the next file, a folder's files cost one allocation and one free.
//!
//! The old inode is taken only when nothing but its temporary name reaches it, so that no
//! one sees its content change: a write lease is granted only when no other descriptor (open
//! file, mapping, running program) holds the inode; it has exactly one link; the owner a new
//! file would get (or one the transport sets anyway); no extended attributes (an ACL or a
//! label of the old file must not carry over). Anything else: it is unlinked, as a rename
//! over it would have freed it, and a new temporary file is made.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::dir_fd_calls::{openat2_beneath, unlink_at};

/// `fcntl` command choosing the signal a lease break sends (`<fcntl.h>`, Linux; the `libc`
/// crate does not name it).
const F_SETSIG: libc::c_int = 10;

/// The spare left at `name` in `dir`, emptied and with the mode `create_mode` (what a new
/// temporary file is created with), when it may be written as a new file: `owner_set_later`
/// when the transport gives every file its owner itself; otherwise the spare must already
/// belong to this process's user and group. Otherwise it is unlinked and `None`.
pub(super) fn take(
    dir: &OwnedFd,
    name: &str,
    owner_set_later: bool,
    create_mode: u32,
) -> Option<File> {
    let f = reusable(dir, name, owner_set_later, create_mode);
    if f.is_none() {
        let _ = unlink_at(dir, name, false);
    }
    f
}

fn reusable(dir: &OwnedFd, name: &str, owner_set_later: bool, create_mode: u32) -> Option<File> {
    // The name is in a folder the other side may write: only a regular file is opened (a
    // FIFO would wait for a reader, a device node would run its driver's open), so it is
    // looked at through an `O_PATH` descriptor first, which opens nothing.
    let path = File::from(openat2_beneath(dir, name, libc::O_PATH | libc::O_NOFOLLOW).ok()?);
    let meta = path.metadata().ok()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return None;
    }
    // SAFETY: geteuid and getegid take no arguments and cannot fail.
    let ours = unsafe { (libc::geteuid(), libc::getegid()) };
    if !owner_set_later && (meta.uid(), meta.gid()) != ours {
        return None;
    }
    // The same inode, now for writing (a name lookup could meet another file).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", path.as_raw_fd()))
        .ok()?;
    drop(path);
    // No more access for anyone than a new temporary file gives, before the check that no
    // one holds it: whoever opened it under the old mode is seen by that check, and whoever
    // opens it later gets no more than a new temporary file would give.
    if meta.mode() & 0o7777 != create_mode {
        f.set_permissions(std::fs::Permissions::from_mode(create_mode))
            .ok()?;
    }
    if !held_by_nobody_else(&f) || has_xattrs(&f) {
        return None;
    }
    f.set_len(0).ok()?;
    Some(f)
}

/// Whether no descriptor but `f` (open for writing only) holds the inode: a write lease is
/// granted only then (the kernel counts every open file, mapping and running program of it).
/// The lease is given back at once: from then on only the temporary name reaches the inode.
/// Not the file's owner without `CAP_LEASE`, leases disabled, a filesystem without them:
/// `false`.
///
/// Someone opening the temporary name between the two calls breaks the lease, which signals
/// the holder: `SIGURG` (ignored unless handled; berth handles it nowhere) instead of the
/// default `SIGIO`, which would end this process.
fn held_by_nobody_else(f: &File) -> bool {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    if unsafe { libc::fcntl(f.as_raw_fd(), F_SETSIG, libc::SIGURG) } != 0 {
        return false;
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    if rc != 0 {
        return false;
    }
    // SAFETY: as above; gives back the lease just taken.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    true
}

/// Whether the file has any extended attribute (or they cannot be listed).
fn has_xattrs(f: &File) -> bool {
    // SAFETY: with a null buffer and size 0, flistxattr only returns the size of the list.
    let n = unsafe { libc::flistxattr(f.as_raw_fd(), std::ptr::null_mut(), 0) };
    match n {
        0 => false,
        n if n > 0 => true,
        _ => io::Error::last_os_error().raw_os_error() != Some(libc::ENOTSUP),
    }
}
