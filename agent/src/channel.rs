//! Finds and opens the control channel: the virtio-serial port named `berth.0` (qemu), else
//! the virtio-console `/dev/hvc0` (berth's own VMM), in raw mode.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;

pub const PORT_NAME: &str = "berth.0";

pub enum Channel {
    /// A socket handed over by the caller: EOF ends the agent.
    Stream(OwnedFd),
    /// A virtio port: EOF/hangup means the host disconnected; wait for the next connection.
    Port(OwnedFd),
}

impl Channel {
    pub fn fd(&self) -> &OwnedFd {
        match self {
            Channel::Stream(f) | Channel::Port(f) => f,
        }
    }

    pub fn survives_disconnect(&self) -> bool {
        matches!(self, Channel::Port(_))
    }
}

/// The device node of the virtio-serial port named `name`, if the port exists.
fn find_named_port(name: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    for e in dir.flatten() {
        let port_name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

fn open_rw(path: &str) -> io::Result<OwnedFd> {
    let p = sys::cstr(path)?;
    // SAFETY: valid path; the returned descriptor is owned below.
    let fd = sys::check(unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: open returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn make_raw(fd: &OwnedFd) {
    // SAFETY: termios calls on a descriptor we own, with a local struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
}

/// How many control channels berth offers (`berth.0`..; one host client each).
pub const MAX_CHANNELS: usize = 8;

/// Waits up to `timeout` for the first control channel, then opens all that exist: the
/// virtio-serial ports `berth.N` (qemu), else `/dev/hvcN` (berth's VMM: one virtio-console per
/// channel).
pub fn open_control_channels(timeout: Duration) -> io::Result<Vec<Channel>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let want_hvc = cmdline
        .split_whitespace()
        .any(|a| a == "berth.channel=hvc0" || a == "berth.channel=hvc");
    let deadline = Instant::now() + timeout;
    loop {
        let named = find_named_port(PORT_NAME).is_some();
        if named || (want_hvc && std::path::Path::new("/dev/hvc0").exists()) {
            // The other ports are announced right after the first; give them a moment.
            std::thread::sleep(Duration::from_millis(300));
            let mut out = Vec::new();
            for i in 0..MAX_CHANNELS {
                if named {
                    if let Some(fd) =
                        find_named_port(&format!("berth.{i}")).and_then(|dev| open_rw(&dev).ok())
                    {
                        out.push(Channel::Port(fd));
                    }
                } else if let Ok(fd) = open_rw(&format!("/dev/hvc{i}")) {
                    make_raw(&fd);
                    out.push(Channel::Port(fd));
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no control channel: neither a virtio-serial port named {PORT_NAME} nor /dev/hvc0 appeared \
                     (is virtio_console loaded? CONFIG_VIRTIO_CONSOLE)"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
