//! A filesystem context of the new mount API (`fsopen` + `fsconfig` + `fsmount`, not wrapped
//! by nix 0.29): a filesystem configured key by key and mounted detached, attached nowhere
//! until [`attach_tree`](super::mount_api::attach_tree) puts it somewhere. The one place
//! berth makes these syscalls (the descriptor-layer overlay, the binary's read-only view).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// An open filesystem context.
pub struct FsContext(OwnedFd);

impl FsContext {
    /// A new context for filesystem type `fstype` (`fsopen`).
    pub fn open(fstype: &CStr) -> io::Result<FsContext> {
        // SAFETY: fsopen with a NUL-terminated type name; returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(FsContext(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: *const libc::c_char,
        value: *const libc::c_char,
        aux: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: fsconfig on our own context; `key` and `value` are null or NUL-terminated
        // strings the caller keeps alive for the call, `aux` a descriptor or 0.
        let rc =
            unsafe { libc::syscall(libc::SYS_fsconfig, self.0.as_raw_fd(), cmd, key, value, aux) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets option `key` to the string `value`.
    pub fn set_string(&self, key: &CStr, value: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
    }

    /// Sets the flag option `key` (one without a value, e.g. overlayfs's `volatile`).
    pub fn set_flag(&self, key: &CStr) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, key.as_ptr(), std::ptr::null(), 0)
    }

    /// Sets option `key` to the descriptor `fd` (e.g. overlayfs's `lowerdir+`, Linux 6.13+).
    pub fn set_fd(&self, key: &CStr, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.config(
            FSCONFIG_SET_FD,
            key.as_ptr(),
            std::ptr::null(),
            fd.as_raw_fd(),
        )
    }

    /// Creates the filesystem from the options set (`FSCONFIG_CMD_CREATE`).
    pub fn create(&self) -> io::Result<()> {
        self.config(FSCONFIG_CMD_CREATE, std::ptr::null(), std::ptr::null(), 0)
    }

    /// The created filesystem as a new detached mount with mount attributes `attrs`
    /// (`MOUNT_ATTR_*`).
    pub fn mount(&self, attrs: u32) -> io::Result<OwnedFd> {
        // SAFETY: fsmount of our created context; returns a new fd or -1.
        let m = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.0.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
    }

    /// The messages the kernel queued on the context (`e overlay: …` lines), oldest first.
    pub fn kernel_log(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..16 {
            // SAFETY: read into our own buffer from our own descriptor.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.push(
                String::from_utf8_lossy(&buf[..n as usize])
                    .trim_end()
                    .to_string(),
            );
        }
        out
    }
}
