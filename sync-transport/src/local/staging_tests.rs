//! Tests of staging a file: the exact mode in the end, no more access for anyone while
//! the temporary file is being written than the final file gives, and folders kept open.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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

/// An inode's identity: its number and its birth time (a number can be reused at once by a
/// new inode, which is born later).
type InodeId = (u64, std::time::SystemTime);

fn inode_id(m: &fs::Metadata) -> InodeId {
    (
        m.ino(),
        m.created().expect("the filesystem records birth times"),
    )
}

/// The files of `names` in `a/` replaced one after another in a kept folder; returns their
/// inodes before and after, and leaves the folder released.
fn replace_in_kept_folder(
    tr: &LocalTransport,
    root: &Path,
    names: &[&str],
) -> Vec<(InodeId, InodeId)> {
    let before: Vec<InodeId> = names
        .iter()
        .map(|n| inode_id(&fs::metadata(root.join("a").join(n)).unwrap()))
        .collect();
    // Births apart from the replacements' (birth times are as fine as the clock ticks).
    std::thread::sleep(std::time::Duration::from_millis(20));
    tr.keep_folder("a");
    for n in names {
        let rel = format!("a/{n}");
        let expect = tr.stat(&rel).unwrap().unwrap();
        let new = format!("new {n}");
        let s = tr
            .stage_file(&rel, &mut new.as_bytes(), 0o640, 1_000_000_000)
            .unwrap();
        let e = tr.commit(s, Some(&expect)).unwrap();
        assert_eq!((e.size, e.mode), (new.len() as u64, 0o640));
    }
    tr.release_folder();
    let after = names
        .iter()
        .map(|n| {
            let p = root.join("a").join(n);
            assert_eq!(fs::read_to_string(&p).unwrap(), format!("new {n}"));
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.mode() & 0o7777, m.mtime()), (0o640, 1));
            inode_id(&m)
        })
        .collect::<Vec<_>>();
    let left: Vec<_> = fs::read_dir(root.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| is_temp_name(n))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    before.into_iter().zip(after).collect()
}

/// Replacing the files of a folder allocates one inode, not one per file: each replaced
/// file's old inode, which nothing else reaches, becomes the next file (on ext4 without a
/// journal every allocation steps over the inodes freed recently, see `spare_inode`).
#[test]
fn a_folders_replaced_files_take_the_inodes_the_previous_replacements_left() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    for n in ["1", "2", "3"] {
        fs::write(
            d.path().join("a").join(n),
            format!("old {n} with more bytes"),
        )
        .unwrap();
    }
    let tr = t(d.path());
    let inodes = replace_in_kept_folder(&tr, d.path(), &["1", "2", "3"]);
    assert_eq!(inodes[1].1, inodes[0].0, "2 is written into 1's old inode");
    assert_eq!(inodes[2].1, inodes[1].0, "3 is written into 2's old inode");
}

/// An old inode still reached by anything but the temporary name (a reader's descriptor, a
/// mapping, another link, extended attributes) is never written into: it keeps its content
/// and is let go as a rename over it would.
#[test]
fn a_replaced_file_still_held_or_linked_elsewhere_keeps_its_content() {
    use std::io::{Seek, SeekFrom};
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    for n in ["1", "2", "3", "4", "5"] {
        fs::write(d.path().join("a").join(n), format!("old {n}")).unwrap();
    }
    let mut reader = fs::File::open(d.path().join("a/1")).unwrap();
    fs::hard_link(d.path().join("a/2"), d.path().join("linked")).unwrap();
    let tr = t(d.path());
    let inodes = replace_in_kept_folder(&tr, d.path(), &["1", "2", "3", "4"]);
    let mut got = String::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_string(&mut got).unwrap();
    assert_eq!(got, "old 1", "the reader's file was written into");
    assert_ne!(inodes[1].1, inodes[0].0, "1's old inode is still open");
    assert_eq!(
        fs::read_to_string(d.path().join("linked")).unwrap(),
        "old 2"
    );
    assert_ne!(inodes[2].1, inodes[1].0, "2's old inode has another link");
    // 3's old inode, held by nobody, is taken for 4.
    assert_eq!(inodes[3].1, inodes[2].0);
}

/// A non-blocking inotify descriptor watching `dir` for the events of `mask`.
fn watch_folder(dir: &Path, mask: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: inotify_init1 takes flags only; the descriptor is owned at once.
    let fd = unsafe {
        std::os::fd::OwnedFd::from_raw_fd(libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))
    };
    let dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a watch on a NUL-terminated path we own, on a descriptor we own.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir.as_ptr(), mask) };
    assert!(wd >= 0);
    fd
}

/// The inotify events on `dir` since `fd` was set to watch it: (mask, name) in order.
fn read_events(fd: &std::os::fd::OwnedFd) -> Vec<(u32, String)> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: read into a buffer we own, of its length, from a descriptor we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).unwrap_or(0);
    crate::inotify::parse(&buf[..n])
        .into_iter()
        .map(|e| (e.mask, String::from_utf8_lossy(e.name).into_owned()))
        .collect()
}

/// Another program watching the folder (a dev server's watcher) sees each replaced file's
/// name last arrive (`IN_MOVED_TO`), never leave: the exchange moves the old file away to
/// the temporary name first, then the new one in, as an editor's safe save does.
#[test]
fn other_watchers_see_each_replaced_file_arrive_last() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    for n in ["1", "2", "3"] {
        fs::write(d.path().join("a").join(n), format!("old {n}")).unwrap();
    }
    let tr = t(d.path());
    let fd = watch_folder(
        &d.path().join("a"),
        libc::IN_MOVED_FROM | libc::IN_MOVED_TO | libc::IN_CREATE | libc::IN_DELETE,
    );
    let inodes = replace_in_kept_folder(&tr, d.path(), &["1", "2", "3"]);
    // The inodes were reused (else this test would not see an exchange).
    assert!(inodes.iter().skip(1).any(|(before, after)| before != after));
    let events = read_events(&fd);
    for n in ["1", "2", "3"] {
        let of_name: Vec<u32> = events
            .iter()
            .filter(|(_, name)| name == n)
            .map(|(m, _)| *m)
            .collect();
        assert_eq!(
            of_name.last().map(|m| m & libc::IN_MOVED_TO != 0),
            Some(true),
            "{n}: {events:?}"
        );
    }
}

/// The spare's temporary name is in a folder the other side may write (an environment's
/// root): something put there instead of the old inode (a FIFO, a device node an image
/// brought) is never opened, only unlinked. Opening a FIFO for writing would wait for a
/// reader; opening a device runs its driver (a watchdog starts counting) as the engine's
/// user, host root.
#[test]
fn a_spare_swapped_for_something_else_is_never_opened() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    for n in ["1", "2"] {
        fs::write(d.path().join("a").join(n), format!("old {n}")).unwrap();
    }
    let tr = t(d.path());
    tr.keep_folder("a");
    let replace = |n: &str| {
        let rel = format!("a/{n}");
        let expect = tr.stat(&rel).unwrap().unwrap();
        let s = tr
            .stage_file(&rel, &mut &b"new"[..], 0o644, 1_000_000_000)
            .unwrap();
        tr.commit(s, Some(&expect)).unwrap();
    };
    replace("1");
    let spare = fs::read_dir(d.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| is_temp_name(n))
        .expect("1's old inode kept as the spare");
    let fifo = d.path().join("a").join(&spare);
    fs::remove_file(&fifo).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    // A reader, so that an open for writing would not wait forever but be seen.
    let _reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let watch = watch_folder(&d.path().join("a"), libc::IN_OPEN);
    replace("2");
    tr.release_folder();
    let opened: Vec<_> = read_events(&watch)
        .into_iter()
        .filter(|(_, n)| *n == spare)
        .collect();
    assert!(
        opened.is_empty(),
        "the FIFO at the spare's name was opened: {opened:?}"
    );
    assert!(
        !fifo.exists(),
        "the FIFO is unlinked as a spare would have been"
    );
    assert_eq!(fs::read_to_string(d.path().join("a/2")).unwrap(), "new");
}

/// On tmpfs an inode costs little: replaced files are renamed over as always, no old inode
/// is kept (the checks a spare needs would cost more than they save).
#[test]
fn on_tmpfs_replaced_files_take_new_inodes() {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs {
        eprintln!("SKIP: /dev/shm is not a tmpfs here");
        return;
    }
    let d = tempfile::tempdir_in(shm).unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    for n in ["1", "2", "3"] {
        fs::write(d.path().join("a").join(n), format!("old {n}")).unwrap();
    }
    let before: Vec<u64> = ["1", "2", "3"]
        .iter()
        .map(|n| fs::metadata(d.path().join("a").join(n)).unwrap().ino())
        .collect();
    let tr = t(d.path());
    tr.keep_folder("a");
    for n in ["1", "2", "3"] {
        let rel = format!("a/{n}");
        let expect = tr.stat(&rel).unwrap().unwrap();
        let s = tr.stage_file(&rel, &mut &b"new"[..], 0o644, 1).unwrap();
        tr.commit(s, Some(&expect)).unwrap();
    }
    tr.release_folder();
    for n in ["1", "2", "3"] {
        let ino = fs::metadata(d.path().join("a").join(n)).unwrap().ino();
        assert!(!before.contains(&ino), "{n} took an old inode");
    }
}
