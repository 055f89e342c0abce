//! The libc calls of this crate, each wrapped small.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub(crate) fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}

pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the folder `path` (relative to `at`, or absolute) without following a link.
pub(crate) fn open_dir_at(at: RawFd, path: &str) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
    let fd = check(unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    })?;
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates the file `name` in `dir` (never an existing one, never through a link).
pub(crate) fn create_at(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid name relative to a directory descriptor we own.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: openat returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the entry `name` of `dir` (a folder only with `libc::AT_REMOVEDIR`).
pub(crate) fn unlink_at(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a valid name relative to a directory descriptor we own; never follows a link.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

pub(crate) fn fchown(fd: &OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown on a descriptor we own.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub(crate) fn fchmod(fd: &OwnedFd, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a descriptor we own.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// Writes all of `data` to `fd`.
pub(crate) fn write_all(fd: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: data is valid for data.len() bytes.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// 16 lowercase hex digits from the kernel's random source.
pub(crate) fn random_hex() -> io::Result<String> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn stat(fd: &OwnedFd) -> Option<libc::stat> {
    // SAFETY: a zeroed stat, filled by fstat below.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own into a valid stat.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0).then_some(st)
}

fn stat_at(dir: &OwnedFd, name: &str) -> Option<libc::stat> {
    let c = cstr(name).ok()?;
    // SAFETY: a zeroed stat, filled by fstatat below.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid name relative to a directory descriptor we own; links not followed.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (rc == 0).then_some(st)
}

/// Whether `a` and `b` are the same file.
pub(crate) fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (stat(a), stat(b)) {
        (Some(x), Some(y)) => (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino),
        _ => false,
    }
}

/// Whether the entry `name` of `dir` is the file `fd` (a link is not followed).
pub(crate) fn same_file_at(dir: &OwnedFd, name: &str, fd: &OwnedFd) -> bool {
    match (stat_at(dir, name), stat(fd)) {
        (Some(x), Some(y)) => (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino),
        _ => false,
    }
}

/// The type bits (`S_IFMT`) of the entry `name` of `dir`, a link not followed.
pub(crate) fn file_type_at(dir: &OwnedFd, name: &str) -> Option<libc::mode_t> {
    stat_at(dir, name).map(|st| st.st_mode & libc::S_IFMT)
}

/// Takes the exclusive lock of `fd`'s file, waiting while another holds it.
pub(crate) fn lock(fd: &OwnedFd) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r.map(drop),
        }
    }
}

/// Takes the exclusive lock of `fd`'s file if nobody holds it.
pub(crate) fn try_lock(fd: &OwnedFd) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
