//! Whiteouts as overlayfs reads them: `.wh.NAME` becomes a character device 0:0 named NAME,
//! `.wh..wh..opq` the opaque attribute on its directory (`trusted.overlay.opaque=y`, or
//! `user.overlay.opaque=y` without root).

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::stat::{self, Mode, SFlag};

use super::Unpacker;
use crate::image::error::ImageError;
use crate::image::xattrs;

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

impl Unpacker<'_> {
    /// An entry that is a whiteout (`.wh.NAME`) or an opaque marker (`.wh..wh..opq`) in the
    /// directory `parent`: made into what overlayfs reads. `None` for any other entry.
    pub(super) fn whiteout(
        &mut self,
        parent: RawFd,
        name: &[u8],
        path: &Path,
    ) -> Option<Result<(), ImageError>> {
        if name == OPAQUE_MARKER.as_bytes() {
            return Some(
                xattrs::set_fd(parent, self.opts.opaque_xattr(), b"y")
                    .map_err(|e| self.io_entry(path, e)),
            );
        }
        let hidden = OsStr::from_bytes(name.strip_prefix(WHITEOUT_PREFIX.as_bytes())?);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Some(Err(
                self.unsafe_entry(path, "is a whiteout without a valid name")
            ));
        }
        Some(
            self.clear(parent, hidden, false)
                .map_err(|e| self.io_entry(path, e))
                .and_then(|_| {
                    stat::mknodat(Some(parent), hidden, SFlag::S_IFCHR, Mode::empty(), 0)
                        .map_err(|e| self.io_entry(path, io::Error::from(e)))
                }),
        )
    }
}
