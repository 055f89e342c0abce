//! Tests of staging a file: the exact mode in the end, no more access for anyone while
//! the temporary file is being written than the final file gives, and folders kept open.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::staging::temp_create_mode;
use super::LocalTransport;
use crate::transport::{Transport, TransportError};
use crate::tree::is_temp_name;

fn t(dir: &Path) -> LocalTransport {
    LocalTransport::open("test", dir).unwrap()
}

/// A source that, before giving its bytes, looks at the temporary file being written
/// in `dir` (its mode and owner: what another user could open during the copy).
struct PeekingSource<'a> {
    dir: &'a Path,
    data: &'a [u8],
    seen: Option<(u32, u32, u32)>,
}

impl Read for PeekingSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.seen.is_none() {
            for e in fs::read_dir(self.dir)? {
                let e = e?;
                if is_temp_name(&e.file_name().to_string_lossy()) {
                    let m = fs::symlink_metadata(e.path())?;
                    self.seen = Some((m.mode() & 0o7777, m.uid(), m.gid()));
                }
            }
        }
        let n = self.data.len().min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn temporary_files_never_give_more_access_than_the_final_mode() {
    for chown_later in [false, true] {
        for mode in 0..=0o7777u32 {
            let t = temp_create_mode(mode, chown_later);
            assert_eq!(t & !mode, 0, "{mode:o} {chown_later}: {t:o} gives more");
            assert_eq!(t & 0o7000, 0, "{mode:o}: setid/sticky only after the owner");
            if chown_later {
                assert_eq!((t >> 3) & 0o7 & !(mode & 0o7), 0, "{mode:o}: {t:o}");
            }
        }
    }
    // Common modes need no chmod after the write.
    assert_eq!(temp_create_mode(0o644, true), 0o644);
    assert_eq!(temp_create_mode(0o755, true), 0o755);
    assert_eq!(temp_create_mode(0o640, false), 0o640);
}

#[test]
fn staged_files_get_exact_modes_and_no_early_access() {
    let d = tempfile::tempdir().unwrap();
    let tr = t(d.path());
    // Bits the umask takes from a created file, and setid bits, are still set exactly.
    for (i, mode) in [0o666, 0o777, 0o4755, 0o2750, 0o1644, 0o600, 0o644]
        .into_iter()
        .enumerate()
    {
        let rel = format!("m{i}");
        let s = tr.stage_file(&rel, &mut &b"x"[..], mode, 0).unwrap();
        let e = tr.commit(s, None).unwrap();
        assert_eq!(e.mode, mode, "{mode:o}");
        assert_eq!(Some(e), tr.stat(&rel).unwrap());
    }
    // Root's setuid/setgid bits are dropped when asked.
    if nix::unistd::geteuid().is_root() {
        let tr = t(d.path()).without_root_setid();
        let s = tr.stage_file("suid", &mut &b"x"[..], 0o6755, 0).unwrap();
        assert_eq!(tr.commit(s, None).unwrap().mode, 0o755);
    }
    // A file for another owner: until the owner is set, the group (this process's)
    // gets no more than everyone; a 0600 file is never readable by anyone else.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping the owner part: fchown to another user needs root");
        return;
    }
    let tr = t(d.path()).with_owner(65534, 65534);
    for (name, mode, during) in [
        ("private", 0o600, 0o600),
        ("group", 0o640, 0o600),
        ("shared", 0o644, 0o644),
        ("suid", 0o4750, 0o700),
    ] {
        let sub = d.path().join(format!("owned-{name}"));
        fs::create_dir(&sub).unwrap();
        let mut src = PeekingSource {
            dir: &sub,
            data: b"secret",
            seen: None,
        };
        let s = tr
            .stage_file(&format!("owned-{name}/f"), &mut src, mode, 0)
            .unwrap();
        let e = tr.commit(s, None).unwrap();
        let (m, uid, gid) = src.seen.expect("temporary file seen during the write");
        assert_eq!((m, uid, gid), (during, 0, 0), "{name} during the write");
        let meta = fs::symlink_metadata(sub.join("f")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (mode, 65534, 65534)
        );
        assert_eq!(e.mode, mode);
    }
}

#[test]
fn a_kept_folder_is_reused_and_never_swapped_for_a_symlink() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    fs::write(d.path().join("a/src"), b"one").unwrap();
    let tr = t(d.path());
    tr.keep_folder("a");
    let (_, mut src) = tr.read_file("a/src").unwrap();
    let s = tr.stage_file("a/1", &mut src, 0o644, 0).unwrap();
    tr.commit(s, None).unwrap();
    // The folder is swapped for a symlink to a folder outside while it is kept open: what
    // follows lands in the folder that was opened (now `b`), never behind the symlink.
    fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("a")).unwrap();
    fs::write(outside.path().join("src"), b"outside").unwrap();
    let (_, mut src) = tr.read_file("a/src").unwrap();
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"one", "read from the kept folder");
    let s = tr.stage_file("a/2", &mut &b"two"[..], 0o644, 0).unwrap();
    tr.commit(s, None).unwrap();
    assert_eq!(fs::read(d.path().join("b/2")).unwrap(), b"two");
    assert!(!outside.path().join("2").exists());
    // Other folders are looked up as always, and once released so is this one.
    assert!(matches!(
        tr.stage_file("a/x/3", &mut &b"3"[..], 0o644, 0),
        Err(TransportError::Escapes { .. })
    ));
    tr.release_folder();
    assert!(matches!(
        tr.stage_file("a/3", &mut &b"3"[..], 0o644, 0),
        Err(TransportError::Escapes { .. })
    ));
    assert!(matches!(
        tr.read_file("a/src").map(|_| ()),
        Err(TransportError::Escapes { .. })
    ));
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
}
