//! berth's own recursive inotify watcher (see [`super::watch_tree`]).
//!
//! One reader thread per watched tree. The mask holds only what the engine acts on: no
//! `IN_OPEN`, `IN_ACCESS` or `IN_CLOSE_NOWRITE`, so the engine's own reads do not echo back as
//! events. `IN_MODIFY` is kept: a file written while held open (a log) or truncated by path
//! must not wait for a close that may never come; the debounce folds its events per path.
//! Folders that appear get watches before they are reported (deep), so whatever is created in
//! them right away is either seen by the engine's scan of the folder or reported by the watch.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::own_renames::WatcherRunning;
use crate::transport::{Barrier, EventSink, WatchEvent};
use crate::tree::{is_temp_name, join, parent};

/// The events watched on every folder.
const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_ATTRIB
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;
/// Flags of every `inotify_add_watch`: folders only, symlinks never followed (but the root's),
/// no events for files already unlinked.
const ADD_FLAGS: u32 = libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW | libc::IN_EXCL_UNLINK;

/// Why the watch could not start.
#[derive(Debug)]
pub enum StartError {
    /// `inotify_init1` failed (EMFILE: the instance limit).
    Init(io::Error),
    /// `inotify_add_watch` hit the watch limit (ENOSPC).
    Limit(io::Error),
    /// Anything else (the root cannot be watched, the thread cannot start...).
    Other(io::Error),
}

/// The running watcher; dropping it stops and joins the reader thread, which closes the
/// inotify descriptor.
pub struct InotifyWatch {
    /// An eventfd shared with the thread; any write stops it.
    stop: Arc<OwnedFd>,
    barriers: Arc<BarrierRequests>,
    thread: Option<JoinHandle<()>>,
}

impl InotifyWatch {
    /// The [`Barrier`] of this watch: the function runs on the reader thread after it has
    /// read the inotify queue to its end and reported every event in it.
    pub fn barrier(&self) -> Barrier {
        let b = self.barriers.clone();
        Box::new(move |f| b.request(f))
    }
}

/// Functions waiting for the reader thread to empty the queue, and the eventfd that wakes it.
struct BarrierRequests {
    wake: OwnedFd,
    waiting: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl BarrierRequests {
    fn request(&self, f: Box<dyn FnOnce() + Send>) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8-byte counter increment an eventfd expects from a valid buffer.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the wake counter and takes the waiting functions: every one of them was
    /// requested before the queue is read next.
    fn take(&self) -> Vec<Box<dyn FnOnce() + Send>> {
        let mut count = [0u8; 8];
        // SAFETY: reads the 8-byte counter of a non-blocking eventfd into a valid buffer.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                count.as_mut_ptr().cast(),
                count.len(),
            )
        };
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn new_eventfd(flags: i32) -> Result<OwnedFd, StartError> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(StartError::Other(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Drop for InotifyWatch {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8-byte counter increment an eventfd expects from a valid buffer.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watch descriptors and the relative folder each one watches.
struct Tree {
    fd: OwnedFd,
    root: PathBuf,
    wds: HashMap<i32, String>,
    /// The renames of the transport writing this tree, whose events are dropped
    /// ([`crate::own_renames`]), and the cookies of those seen leaving their temporary name
    /// (→ the path they are renamed to).
    own: Option<WatcherRunning>,
    own_moves: HashMap<u32, String>,
}

impl Tree {
    /// Adds watches to `rel` and every folder below it (symlinks are not followed). Folders
    /// that vanish meanwhile are skipped; the watch limit is an error.
    fn add_recursive(&mut self, rel: &str) -> Result<(), StartError> {
        let mut stack = vec![rel.to_string()];
        while let Some(rel) = stack.pop() {
            let path = if rel.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&rel)
            };
            match self.add_one(&path, &rel) {
                Ok(()) => {}
                Err(StartError::Other(_)) if !rel.is_empty() => continue,
                Err(e) => return Err(e),
            }
            let Ok(entries) = fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    stack.push(if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    });
                }
            }
        }
        Ok(())
    }

    fn add_one(&mut self, path: &Path, rel: &str) -> Result<(), StartError> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| StartError::Other(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        // The root may be given through a link berth chose (`/proc/self/fd/N` of a folder
        // resolved beneath a container's root): it is followed; folders below never are.
        let flags = if rel.is_empty() {
            ADD_FLAGS & !libc::IN_DONT_FOLLOW
        } else {
            ADD_FLAGS
        };
        // SAFETY: `c` is a valid NUL-terminated path; the descriptor is an inotify instance.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), MASK | flags) };
        if wd < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENOSPC) {
                StartError::Limit(e)
            } else {
                StartError::Other(e)
            });
        }
        // An inode already watched (a folder renamed within the tree) keeps its descriptor.
        self.wds.insert(wd, rel.to_string());
        Ok(())
    }

    /// Removes the watches of `rel` and of every folder below it (moved out of its place).
    fn remove_recursive(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let gone: Vec<i32> = self
            .wds
            .iter()
            .filter(|(_, r)| r.as_str() == rel || r.starts_with(&prefix))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.wds.remove(&wd);
            // SAFETY: plain syscall on our inotify descriptor; an already gone watch is EINVAL.
            unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), wd) };
        }
    }
}

/// Starts watching `root`: every folder gets its watch before this returns. `own`: the renames
/// of the transport writing the tree, whose events are not reported ([`crate::own_renames`]).
pub fn start(
    root: &Path,
    sink: Arc<EventSink>,
    own: Option<WatcherRunning>,
) -> Result<InotifyWatch, StartError> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(StartError::Init(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut tree = Tree {
        fd,
        root: root.to_path_buf(),
        wds: HashMap::new(),
        own,
        own_moves: HashMap::new(),
    };
    tree.add_recursive("")?;
    let stop = Arc::new(new_eventfd(0)?);
    let barriers = Arc::new(BarrierRequests {
        wake: new_eventfd(libc::EFD_NONBLOCK)?,
        waiting: Mutex::new(Vec::new()),
    });
    let (thread_stop, thread_barriers) = (stop.clone(), barriers.clone());
    let thread = std::thread::Builder::new()
        .name("berth-inotify".into())
        .spawn(move || run(tree, &thread_stop, &thread_barriers, &sink))
        .map_err(StartError::Other)?;
    Ok(InotifyWatch {
        stop,
        barriers,
        thread: Some(thread),
    })
}

/// The reader thread: waits for events, barrier requests or the stop byte, reports events
/// until stopped. A barrier's functions run once a read found the queue empty.
fn run(mut tree: Tree, stop: &OwnedFd, barriers: &BarrierRequests, sink: &EventSink) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_events: Option<std::time::Instant> = None;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tree.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: barriers.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of three pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            sink(WatchEvent::Failed {
                message: format!("inotify: poll failed: {}", io::Error::last_os_error()),
                limit: false,
            });
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // Taken before the queue is read: everything queued before they were requested is
        // read by the loop below, up to the read that finds the queue empty.
        let due = if fds[2].revents != 0 {
            barriers.take()
        } else {
            Vec::new()
        };
        let mut got = false;
        loop {
            // SAFETY: reads into `buf`, whose length is passed.
            let len =
                unsafe { libc::read(tree.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        sink(WatchEvent::Failed {
                            message: format!("inotify: read failed: {e}"),
                            limit: false,
                        });
                        return;
                    }
                }
            }
            got |= len > 0;
            if !handle_buffer(&mut tree, &buf[..len as usize], sink) {
                return;
            }
            if due.is_empty() && !may_hold_more(len as usize, buf.len()) {
                // The queue was emptied by this read. Reading again at once would only
                // catch what arrived since: during a burst, one event per `read` (as many
                // reads as events); the pause below lets them gather instead.
                break;
            }
        }
        for f in due {
            f();
        }
        if got {
            // During a burst (events again within BURST of the previous ones), let the
            // events gather before reading again: read one by one, a writer's burst woke
            // this thread (and the engine) once per event, which cost more CPU than
            // synchronizing. The events of a single save are read as they come.
            let now = std::time::Instant::now();
            let burst = last_events.is_some_and(|t| now.duration_since(t) < BURST);
            last_events = Some(now);
            if burst {
                std::thread::sleep(COALESCE);
            }
        }
    }
}

/// Whether a `read` of `len` bytes into a buffer of `cap` may have left events queued: it
/// returns as many whole events as fit, so only when less room than the largest event was
/// left (its header and a name of up to 255 bytes, with its NUL, padded to 16 bytes).
fn may_hold_more(len: usize, cap: usize) -> bool {
    const LARGEST_EVENT: usize = std::mem::size_of::<libc::inotify_event>() + 256;
    cap.saturating_sub(len) < LARGEST_EVENT
}

/// Pause after reading events of a burst before waiting for more ([`run`]).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(1);
/// Events read this soon after the previous ones make a burst.
const BURST: std::time::Duration = std::time::Duration::from_millis(2);

/// One raw event from the buffer.
pub(crate) struct Raw<'a> {
    wd: i32,
    pub(crate) mask: u32,
    cookie: u32,
    pub(crate) name: &'a [u8],
}

/// Splits a buffer read from inotify into its events.
pub(crate) fn parse(buf: &[u8]) -> Vec<Raw<'_>> {
    const HEAD: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEAD <= buf.len() {
        // SAFETY: `HEAD` bytes are in bounds; read_unaligned copes with any alignment.
        let ev: libc::inotify_event =
            unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let end = (at + HEAD + ev.len as usize).min(buf.len());
        let name = &buf[at + HEAD..end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        out.push(Raw {
            wd: ev.wd,
            mask: ev.mask,
            cookie: ev.cookie,
            name,
        });
        at = end;
    }
    out
}

/// Reports the events of one buffer; `false` when the watch is over (its limit was hit).
fn handle_buffer(tree: &mut Tree, buf: &[u8], sink: &EventSink) -> bool {
    // The file last reported (watch, name, deep), to report a run of its events once.
    let mut last: Option<(i32, &[u8], bool)> = None;
    for raw in parse(buf) {
        if raw.mask & libc::IN_Q_OVERFLOW != 0 {
            // Folders created meanwhile may have no watch yet: add what is missing first.
            if let Err(e) = tree.add_recursive("") {
                return limit_reached(e, sink);
            }
            if let Some(own) = &tree.own {
                own.renames().forget_all();
            }
            tree.own_moves.clear();
            sink(WatchEvent::Rescan);
            continue;
        }
        if raw.mask & libc::IN_IGNORED != 0 {
            tree.wds.remove(&raw.wd);
            continue;
        }
        let Some(dir) = tree.wds.get(&raw.wd) else {
            continue;
        };
        if raw.name.is_empty() {
            // IN_DELETE_SELF / IN_MOVE_SELF: the parent's event reports the path; the root
            // itself going away needs a full look.
            if dir.is_empty() && raw.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF) != 0 {
                sink(WatchEvent::Rescan);
            }
            continue;
        }
        let Ok(name) = std::str::from_utf8(raw.name) else {
            continue;
        };
        let is_dir = raw.mask & libc::IN_ISDIR != 0;
        // The engine's own temporary files (most events of the side it writes to) are
        // dropped before anything is allocated for them. One leaving its name may be the
        // transport's rename into place: its arrival is dropped below.
        if !is_dir && is_temp_name(name) {
            if raw.mask & libc::IN_MOVED_FROM != 0 {
                if let Some((to, _)) = tree.own.as_ref().and_then(|o| o.renames().take(name)) {
                    if parent(&to) == dir.as_str() {
                        if tree.own_moves.len() >= 1024 {
                            tree.own_moves.clear();
                        }
                        tree.own_moves.insert(raw.cookie, to);
                    }
                }
            }
            continue;
        }
        // The old file of the transport's own exchange into place leaving for the temporary
        // name (checked before the run-of-events rule below, so that it is always counted).
        let file_left = (!is_dir && raw.mask & libc::IN_MOVED_FROM != 0).then(|| join(dir, name));
        if file_left
            .as_deref()
            .is_some_and(|rel| own_exchange_out(tree, rel))
        {
            continue;
        }
        // Creations, removals and renames may concern whole folders.
        let deep = raw.mask
            & (libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO)
            != 0;
        // The events of one write to a file (truncate, write, close) come one after another:
        // the path is reported once (the engine looks at it once anyway).
        if !is_dir && last.is_some_and(|(wd, n, d)| wd == raw.wd && n == raw.name && (d || !deep)) {
            continue;
        }
        let rel = file_left.unwrap_or_else(|| join(dir, name));
        if is_dir && raw.mask & libc::IN_MOVED_FROM != 0 {
            tree.remove_recursive(&rel);
        }
        if is_dir && raw.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
            if let Err(e) = tree.add_recursive(&rel) {
                return limit_reached(e, sink);
            }
        }
        if rel.split('/').any(is_temp_name) {
            continue;
        }
        if !is_dir && raw.mask & libc::IN_MOVED_TO != 0 && own_rename(tree, raw.cookie, &rel) {
            continue;
        }
        last = (!is_dir).then_some((raw.wd, raw.name, deep));
        sink(WatchEvent::Changed { rel, deep });
    }
    true
}

/// Whether the arrival of `rel` by the rename with `cookie` is the transport's own rename of
/// its temporary file to exactly this path (then not reported).
fn own_rename(tree: &mut Tree, cookie: u32, rel: &str) -> bool {
    if tree.own_moves.is_empty() {
        return false;
    }
    tree.own_moves.remove(&cookie).is_some_and(|to| to == rel)
}

/// Whether the file `rel` leaving its name is the first half of the transport's own exchange
/// into place (`RENAME_EXCHANGE` of the target with its temporary file, see
/// [`crate::own_renames`]): the old file moving to the temporary name. The kernel queues its
/// `IN_MOVED_FROM` and `IN_MOVED_TO` one at a time, and events of other writers may come
/// between them, so it is recognised by the exchange recorded for that path alone.
fn own_exchange_out(tree: &Tree, rel: &str) -> bool {
    tree.own
        .as_ref()
        .is_some_and(|own| own.renames().take_exchange_out(rel))
}

/// Reports a watch limit hit while adding watches to new folders; the watch stops.
fn limit_reached(e: StartError, sink: &EventSink) -> bool {
    match e {
        StartError::Limit(e) => {
            sink(WatchEvent::Failed {
                message: e.to_string(),
                limit: true,
            });
            false
        }
        // Only the root's watch can fail otherwise (it vanished): look at everything.
        StartError::Init(_) | StartError::Other(_) => {
            sink(WatchEvent::Rescan);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
    use std::time::Duration;

    fn watch(root: &Path) -> (InotifyWatch, Receiver<WatchEvent>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let sink: EventSink = Box::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        });
        let w = start(root, Arc::new(sink), None)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        (w, rx)
    }

    fn ch(rel: &str, deep: bool) -> WatchEvent {
        WatchEvent::Changed {
            rel: rel.into(),
            deep,
        }
    }

    /// Receives until `want` arrives (a generous bound so a stuck watcher fails the test
    /// instead of hanging it); returns what came before it.
    fn until(rx: &Receiver<WatchEvent>, want: &WatchEvent) -> Vec<WatchEvent> {
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(e) if &e == want => return seen,
                Ok(e) => seen.push(e),
                Err(e) => panic!("{want:?} never came ({e:?}); got {seen:?}"),
            }
        }
    }

    #[test]
    fn files_and_folders_created_modified_renamed_and_removed_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("old")).unwrap();
        fs::write(r.join("kept"), "k").unwrap();
        let (_w, rx) = watch(r);
        fs::write(r.join("f"), "1").unwrap();
        // Its write and close come right after and are folded into this report.
        until(&rx, &ch("f", true));
        fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
        until(&rx, &ch("f", false));
        fs::rename(r.join("f"), r.join("g")).unwrap();
        let before = until(&rx, &ch("g", true));
        assert!(before.contains(&ch("f", true)), "{before:?}");
        fs::remove_file(r.join("g")).unwrap();
        until(&rx, &ch("g", true));
        // A folder existing at the start is watched; a renamed one keeps being watched under
        // its new name.
        fs::write(r.join("old/x"), "").unwrap();
        until(&rx, &ch("old/x", true));
        fs::rename(r.join("old"), r.join("new")).unwrap();
        let before = until(&rx, &ch("new", true));
        assert!(before.contains(&ch("old", true)), "{before:?}");
        fs::write(r.join("new/y"), "").unwrap();
        until(&rx, &ch("new/y", true));
        fs::remove_file(r.join("new/x")).unwrap();
        fs::remove_file(r.join("new/y")).unwrap();
        fs::remove_dir(r.join("new")).unwrap();
        until(&rx, &ch("new", true));
        // Reads are not watched; temporary names are dropped.
        fs::write(r.join(".a.berth-sync-tmp-1-2"), "").unwrap();
        assert_eq!(fs::read(r.join("kept")).unwrap(), b"k");
        fs::write(r.join("last"), "").unwrap();
        let before = until(&rx, &ch("last", true));
        assert!(before.is_empty(), "{before:?}");
    }

    /// What a flush relies on: the barrier's function runs after the events of every change
    /// made before the request were reported, however many wait in the queue.
    #[test]
    fn a_barrier_runs_after_every_event_queued_before_it() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let (tx, rx) = mpsc::channel();
        let sink_tx = std::sync::Mutex::new(tx.clone());
        let sink: EventSink = Box::new(move |e| {
            let _ = sink_tx.lock().unwrap().send(e);
        });
        let w = start(r, Arc::new(sink), None)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        let barrier = w.barrier();
        let marker = |n: u32| WatchEvent::Failed {
            message: format!("barrier {n}"),
            limit: false,
        };
        for round in 0..2u32 {
            const FILES: usize = 1000;
            for i in 0..FILES {
                fs::write(r.join(format!("r{round}-{i}")), "x").unwrap();
            }
            let tx = tx.clone();
            barrier(Box::new(move || {
                let _ = tx.send(marker(round));
            }));
            let seen: std::collections::HashSet<String> = until(&rx, &marker(round))
                .into_iter()
                .filter_map(|e| match e {
                    WatchEvent::Changed { rel, .. } => Some(rel),
                    _ => None,
                })
                .collect();
            for i in 0..FILES {
                let rel = format!("r{round}-{i}");
                assert!(seen.contains(&rel), "{rel} reported after the barrier");
            }
        }
        // A barrier while nothing happens runs too.
        let tx2 = tx.clone();
        barrier(Box::new(move || {
            let _ = tx2.send(marker(9));
        }));
        assert!(until(&rx, &marker(9)).is_empty());
        drop(w);
    }

    #[test]
    fn a_burst_read_in_gathered_batches_reports_every_event() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let (_w, rx) = watch(r);
        // Three events per file (create, modify, close after writing), read while they come.
        const FILES: usize = 3000;
        for i in 0..FILES {
            fs::write(r.join(format!("f{i}")), "x").unwrap();
        }
        fs::write(r.join("last"), "").unwrap();
        let seen: std::collections::HashSet<String> = until(&rx, &ch("last", true))
            .into_iter()
            .filter_map(|e| match e {
                WatchEvent::Changed { rel, .. } => Some(rel),
                _ => None,
            })
            .collect();
        for i in 0..FILES {
            assert!(seen.contains(&format!("f{i}")), "f{i} never reported");
        }
    }

    /// One raw event as the kernel writes it (name padded with NULs to 16 bytes).
    fn raw_event(wd: i32, mask: u32, cookie: u32, name: &str) -> Vec<u8> {
        let len = (name.len() + 1).next_multiple_of(16);
        let head = libc::inotify_event {
            wd,
            mask,
            cookie,
            len: len as u32,
        };
        // SAFETY: `inotify_event` is a plain C struct; its bytes are read within its size.
        let mut out = unsafe {
            std::slice::from_raw_parts(
                (&head as *const libc::inotify_event).cast::<u8>(),
                std::mem::size_of::<libc::inotify_event>(),
            )
        }
        .to_vec();
        out.extend_from_slice(name.as_bytes());
        out.resize(out.len() + len - name.len(), 0);
        out
    }

    /// A tree of one watched folder `d` (watch 1) whose transport records its renames, the
    /// record, and a sink whose events `rx` receives.
    fn tree_of_own_renames() -> (
        Tree,
        Arc<crate::own_renames::OwnRenames>,
        EventSink,
        mpsc::Receiver<WatchEvent>,
    ) {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let own = Arc::new(crate::own_renames::OwnRenames::default());
        let tree = Tree {
            // SAFETY: `fd` is a new descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            root: PathBuf::from("/nonexistent"),
            wds: HashMap::from([(1, "d".to_string())]),
            own: Some(own.watcher_started()),
            own_moves: HashMap::new(),
        };
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let sink: EventSink = Box::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        });
        (tree, own, sink, rx)
    }

    #[test]
    fn a_files_run_of_events_is_reported_once_and_only_own_exact_renames_are_dropped() {
        let (mut tree, own, sink, rx) = tree_of_own_renames();
        let tmp = |n: &str| format!(".{n}.berth-sync-tmp-1-1");
        assert!(own.expect(&tmp("a"), "d/a"));
        assert!(own.expect(&tmp("b"), "d/b"));
        let events: Vec<Vec<u8>> = vec![
            // A write by path: truncate, write, close; a creation and its writes.
            raw_event(1, libc::IN_MODIFY, 0, "f"),
            raw_event(1, libc::IN_MODIFY, 0, "f"),
            raw_event(1, libc::IN_CLOSE_WRITE, 0, "f"),
            raw_event(1, libc::IN_CREATE, 0, "g"),
            raw_event(1, libc::IN_MODIFY, 0, "g"),
            raw_event(1, libc::IN_CLOSE_WRITE, 0, "g"),
            // Not deep, then deep: both reported.
            raw_event(1, libc::IN_MODIFY, 0, "h"),
            raw_event(1, libc::IN_DELETE, 0, "h"),
            // The transport's rename of its temporary file to the name it was staged for.
            raw_event(1, libc::IN_MOVED_FROM, 7, &tmp("a")),
            raw_event(1, libc::IN_MOVED_TO, 7, "a"),
            // Its temporary file moved by someone else to another name.
            raw_event(1, libc::IN_MOVED_FROM, 8, &tmp("b")),
            raw_event(1, libc::IN_MOVED_TO, 8, "x"),
            // A temporary-looking name the transport never staged.
            raw_event(1, libc::IN_MOVED_FROM, 9, &tmp("c")),
            raw_event(1, libc::IN_MOVED_TO, 9, "c"),
            // A later change of the renamed file.
            raw_event(1, libc::IN_MODIFY, 0, "a"),
        ];
        assert!(handle_buffer(&mut tree, &events.concat(), &sink));
        drop(sink);
        let got: Vec<WatchEvent> = rx.iter().collect();
        assert_eq!(
            got,
            vec![
                ch("d/f", false),
                ch("d/g", true),
                ch("d/h", false),
                ch("d/h", true),
                ch("d/x", true),
                ch("d/c", true),
                ch("d/a", false),
            ]
        );
    }

    /// The transport's exchange into place, its events split between reads and with another
    /// writer's event between the two halves of a move (the kernel queues them one at a
    /// time): dropped. The next leaving of the same path is someone else's: reported.
    #[test]
    fn an_exchange_with_others_events_between_its_halves_is_dropped_once() {
        let (mut tree, own, sink, rx) = tree_of_own_renames();
        let tmp = ".a.berth-sync-tmp-1-1";
        assert!(own.expect_exchange(tmp, "d/a"));
        let reads: Vec<Vec<Vec<u8>>> = vec![
            // The old `a` leaves for the temporary name; the read ends there.
            vec![raw_event(1, libc::IN_MOVED_FROM, 11, "a")],
            vec![
                // Another writer's event comes between the move's two halves.
                raw_event(1, libc::IN_MODIFY, 0, "c"),
                raw_event(1, libc::IN_MOVED_TO, 11, tmp),
                // The new file arrives under `a`.
                raw_event(1, libc::IN_MOVED_FROM, 12, tmp),
                raw_event(1, libc::IN_MOVED_TO, 12, "a"),
            ],
            // Someone else moves `a`, then `b`, out of the tree.
            vec![
                raw_event(1, libc::IN_MOVED_FROM, 13, "a"),
                raw_event(1, libc::IN_MOVED_FROM, 14, "b"),
            ],
        ];
        for r in reads {
            assert!(handle_buffer(&mut tree, &r.concat(), &sink));
        }
        drop(sink);
        let got: Vec<WatchEvent> = rx.iter().collect();
        assert_eq!(
            got,
            vec![ch("d/c", false), ch("d/a", true), ch("d/b", true)]
        );
    }

    #[test]
    fn only_a_read_that_filled_the_buffer_is_followed_by_another_at_once() {
        const CAP: usize = 64 * 1024;
        let head = std::mem::size_of::<libc::inotify_event>();
        // The queue was emptied: one event, or a buffer with room for the largest one.
        assert!(!may_hold_more(head + 16, CAP));
        assert!(!may_hold_more(CAP - head - 256, CAP));
        // Not room for the largest event left: more may be queued.
        assert!(may_hold_more(CAP - head - 255, CAP));
        assert!(may_hold_more(CAP, CAP));
    }

    #[test]
    fn a_root_given_as_a_descriptor_link_is_watched() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("sub")).unwrap();
        let dir = fs::File::open(t.path()).unwrap();
        let link = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let (_w, rx) = watch(&link);
        fs::write(t.path().join("sub/f"), "x").unwrap();
        until(&rx, &ch("sub/f", true));
        drop(dir);
    }

    #[test]
    fn a_file_written_while_held_open_is_reported_before_its_close() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let mut log = fs::File::create(r.join("log")).unwrap();
        let (_w, rx) = watch(r);
        log.write_all(b"a line\n").unwrap();
        until(&rx, &ch("log", false));
        drop(log);
    }

    #[test]
    fn a_folder_filled_right_after_its_creation_is_watched_throughout() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let (_w, rx) = watch(r);
        fs::create_dir_all(r.join("d/a/b/c")).unwrap();
        fs::write(r.join("d/a/b/c/early"), "").unwrap();
        // Events are read in order: once the root's event for "s1" is reported, every event
        // of the burst has been handled. The folder was reported as a subtree (after its
        // watch was added, so whatever was created in it afterwards has events of its own).
        fs::write(r.join("s1"), "").unwrap();
        let before = until(&rx, &ch("s1", true));
        assert!(before.contains(&ch("d", true)), "{before:?}");
        // Every folder of the subtree got a watch, however fast it was created: a file in
        // the deepest one is reported by itself.
        fs::write(r.join("d/a/b/c/late"), "").unwrap();
        fs::write(r.join("s2"), "").unwrap();
        let before = until(&rx, &ch("s2", true));
        assert!(before.contains(&ch("d/a/b/c/late", true)), "{before:?}");
        // Moved in from outside the tree: watched as well.
        let out = tempfile::tempdir().unwrap();
        fs::create_dir_all(out.path().join("m/n")).unwrap();
        fs::rename(out.path().join("m"), r.join("m")).unwrap();
        until(&rx, &ch("m", true));
        fs::write(r.join("m/n/z"), "").unwrap();
        until(&rx, &ch("m/n/z", true));
    }

    #[test]
    fn a_queue_overflow_asks_for_a_rescan() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::write(r.join("a"), "").unwrap();
        fs::write(r.join("b"), "").unwrap();
        let max: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The sink blocks on the first event until the queue has overflowed.
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let state = std::sync::Mutex::new((tx, Some(go_rx)));
        let sink: EventSink = Box::new(move |e| {
            let mut s = state.lock().unwrap();
            let _ = s.0.send(e);
            if let Some(go) = s.1.take() {
                let _ = go.recv();
            }
        });
        let _w = start(r, Arc::new(sink), None)
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        until(&rx, &ch("a", false));
        // Alternating files: identical consecutive events would be merged by the kernel.
        for i in 0..max + 10 {
            let (f, mode) = if i % 2 == 0 {
                ("a", 0o644)
            } else {
                ("b", 0o600)
            };
            fs::set_permissions(r.join(f), fs::Permissions::from_mode(mode)).unwrap();
        }
        go_tx.send(()).unwrap();
        until(&rx, &WatchEvent::Rescan);
    }

    #[test]
    fn dropping_the_watch_ends_its_thread() {
        let t = tempfile::tempdir().unwrap();
        let (w, rx) = watch(t.path());
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            drop(w);
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("drop returned (it joins the reader thread)");
        // The thread held the only reference to the sink: it is gone with the thread.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Err(RecvTimeoutError::Disconnected)
        );
    }
}
