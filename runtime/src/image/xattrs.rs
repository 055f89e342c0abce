//! Extended attributes on files named relative to a directory file descriptor, without
//! following symbolic links (libc has no `*at` variant, so `/proc/self/fd/N/NAME` is used:
//! the directory fd was itself opened without following links).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn at_path(dir: RawFd, name: &OsStr) -> io::Result<CString> {
    let mut bytes = format!("/proc/self/fd/{dir}/").into_bytes();
    bytes.extend_from_slice(name.as_bytes());
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Sets `key` on `dir/name` (not following a final symlink).
pub fn set_at(dir: RawFd, name: &OsStr, key: &str, value: &[u8]) -> io::Result<()> {
    let p = at_path(dir, name)?;
    set_path(&p, key, value)
}

/// Sets `key` on `path` (not following a final symlink).
pub fn set(path: &Path, key: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    set_path(&p, key, value)
}

/// Sets `key` on the directory `dir` itself.
pub fn set_fd(fd: RawFd, key: &str, value: &[u8]) -> io::Result<()> {
    let k = CString::new(key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: key is a valid C string; value pointer/length describe a live slice.
    let rc = unsafe { libc::fsetxattr(fd, k.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_path(p: &CString, key: &str, value: &[u8]) -> io::Result<()> {
    let k = CString::new(key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both C strings are valid and NUL-terminated; value describes a live slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `key` from `path` (not following a final symlink); an attribute that is not there
/// is not an error.
pub fn remove(path: &Path, key: &str) -> io::Result<()> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let p = CString::new(path.as_os_str().as_bytes()).map_err(invalid)?;
    let k = CString::new(key.as_bytes()).map_err(invalid)?;
    // SAFETY: both C strings are valid and NUL-terminated.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), k.as_ptr()) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA) => Ok(()),
        _ => Err(e),
    }
}

/// All extended attributes of `path` (not following a final symlink), sorted by name.
pub fn list(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let p = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a NULL buffer with size 0 asks for the needed size only.
    let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: names is a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let k = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: as above, a size query.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            continue;
        }
        let mut val = vec![0u8; len as usize];
        // SAFETY: val is a writable buffer of the given length.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if got < 0 {
            continue;
        }
        val.truncate(got as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), val));
    }
    out.sort();
    Ok(out)
}

/// One attribute of `path` (not following a final symlink), if set; errors read as unset.
pub fn get(path: &Path, key: &str) -> Option<Vec<u8>> {
    read(path, key).ok().flatten()
}

/// One attribute of `path` (not following a final symlink): `None` when it is not set or the
/// filesystem has none; a real error otherwise.
pub fn read(path: &Path, key: &str) -> io::Result<Option<Vec<u8>>> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let p = CString::new(path.as_os_str().as_bytes()).map_err(invalid)?;
    let k = CString::new(key.as_bytes()).map_err(invalid)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings; the buffer pointer/length describe a live allocation.
        let n =
            unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            // Larger than the buffer (a long ACL): ask for the size, then read again.
            Some(libc::ERANGE) => {
                // SAFETY: a size query with a null buffer of length 0.
                let size =
                    unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), std::ptr::null_mut(), 0) };
                if size < 0 {
                    return Err(io::Error::last_os_error());
                }
                buf = vec![0u8; size as usize + 64];
            }
            _ => return Err(e),
        }
    }
}
