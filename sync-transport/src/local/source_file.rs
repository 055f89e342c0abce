//! Reading a file to copy it: opened beneath the root (or by its final name in the folder this
//! thread keeps open), read no further than the size it had when opened (or when the caller
//! looked it up just before: then not looked at again here).

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use super::dir_fd_calls::openat2_beneath;
use super::{kept_folder, LocalTransport};
use crate::transport::{SourceFile, TransportError};
use crate::tree::{file_name, parent, Entry, EntryKind};

impl LocalTransport {
    /// Opens `rel` to copy it. `seen`: its entry as the caller just looked it up, returned as
    /// the entry at opening instead of a `fstat` (the caller's look after reading tells
    /// whether anything changed since; a folder or device put there meanwhile reads nothing
    /// as a file and is no regular file then).
    pub(super) fn open_source(
        &self,
        rel: &str,
        seen: Option<&Entry>,
    ) -> Result<(Entry, Box<dyn SourceFile>), TransportError> {
        self.check(rel)?;
        let flags = libc::O_RDONLY | libc::O_NONBLOCK;
        let folder = parent(rel);
        let fd = match kept_folder::get(self.key(), folder) {
            // The folder kept open by this thread: the final name alone (it was opened
            // beneath the root without following symlinks, as `open_beneath` would).
            Some(kept) => {
                let dir = match kept {
                    Some(d) => d,
                    None => {
                        let d = Arc::new(self.parent_fd(rel)?);
                        kept_folder::store(self.key(), folder, &d);
                        d
                    }
                };
                openat2_beneath(&dir, file_name(rel), flags)
            }
            None => self.open_beneath(rel, flags),
        }
        .map_err(|e| self.err("open", rel, e))?;
        let mut f = LocalSource {
            file: File::from(fd),
            left: 0,
        };
        let entry = match seen {
            Some(e) if e.kind == EntryKind::File => Entry {
                hash: None,
                ..e.clone()
            },
            _ => f.entry_now().map_err(|e| self.err("stat", rel, e))?,
        };
        f.left = entry.size;
        if entry.kind != EntryKind::File {
            return Err(self.err(
                "read",
                rel,
                io::Error::new(io::ErrorKind::NotFound, "not a regular file"),
            ));
        }
        Ok((entry, Box::new(f)))
    }
}

/// A file opened for copying; its entry is re-read from the descriptor. Reads stop after the
/// size the file had when opened (no `read` just to see the end): a file that grew meanwhile
/// has another size or mtime in [`SourceFile::entry_now`], and the copy is retried.
struct LocalSource {
    file: File,
    left: u64,
}

impl Read for LocalSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

impl SourceFile for LocalSource {
    fn entry_now(&mut self) -> io::Result<Entry> {
        let meta = self.file.metadata()?;
        Entry::from_metadata(&meta, None).ok_or_else(|| io::Error::other("not a regular file"))
    }
}
