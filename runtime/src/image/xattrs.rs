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

/// One attribute of `path` (not following a final symlink), if set.
pub fn get(path: &Path, key: &str) -> Option<Vec<u8>> {
    list(path)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}
