//! A terminal's window size (rows, columns), read and set the same way by the container's
//! supervisor and client side (PTYs of `shell`/`exec -t`) and by the VM agent.

use std::os::fd::RawFd;

/// Sets a terminal's window size; a descriptor that is not a terminal is left alone.
pub fn set(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct, which lives for the call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// (rows, columns) of a terminal; `None` for a descriptor that is not one, or has no size.
pub fn get(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass, which lives for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn a_size_set_on_a_pty_is_read_back_and_a_pipe_has_none() {
        let (mut m, mut s) = (0, 0);
        // SAFETY: valid out-pointers; name, termios and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh descriptors we now own.
        let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        set(m.as_raw_fd(), 33, 111);
        assert_eq!(get(s.as_raw_fd()), Some((33, 111)));
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(get(r.as_raw_fd()), None);
    }
}
