//! What a process started inside an environment keeps of its parent's descriptors: nothing
//! above the ones it is given. Used in forked children (the container's `fork_exec` and
//! supervisor, the VM agent's `spawn`) between `fork` and `exec`, so only raw syscalls.

/// Closes every descriptor from `first` up, close-on-exec or not. Kernels without
/// close_range(2) (before 5.9) get one close(2) per possible descriptor, up to the soft
/// limit of open files (at least 4096, at most 2^20).
pub fn close_from(first: u32) {
    // SAFETY: close_range only closes descriptors; the caller keeps none at or above `first`.
    if unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) } == 0 {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as u32
    } else {
        0
    };
    for fd in first..soft.max(4096) {
        // SAFETY: closing a descriptor number; ones not open answer EBADF.
        unsafe { libc::close(fd as i32) };
    }
}
