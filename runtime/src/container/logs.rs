//! Service logs: `envs/<id>/logs/<service>.log`, size-bounded. When a file would grow past the
//! limit it is renamed to `<service>.log.1` (replacing the previous one) and a new file starts,
//! so a service never uses more than twice the limit on disk.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Appends to one service's log through a directory fd (the supervisor no longer sees the
/// host path after pivot_root).
pub struct LogFile {
    dir: OwnedFd,
    name: String,
    limit: u64,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    pub fn new(dir: &OwnedFd, service: &str, limit: u64) -> io::Result<LogFile> {
        Ok(LogFile {
            dir: dir.try_clone()?,
            name: format!("{service}.log"),
            limit: limit.max(1024),
            file: None,
            size: 0,
        })
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let c = CString::new(self.name.as_str())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: openat relative to our directory fd with a NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_APPEND
                        | libc::O_CREAT
                        | libc::O_CLOEXEC
                        | libc::O_NOFOLLOW,
                    0o600,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd we own.
            let f = unsafe { File::from_raw_fd(fd) };
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let from = CString::new(self.name.as_str())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let to = CString::new(format!("{}.1", self.name))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: renameat within our directory fd.
        if unsafe {
            libc::renameat(
                self.dir.as_raw_fd(),
                from.as_ptr(),
                self.dir.as_raw_fd(),
                to.as_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.size = 0;
        Ok(())
    }

    /// Appends bytes, rotating first when they would push the file over the limit.
    pub fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.open()?;
            let room = self.limit.saturating_sub(self.size);
            if room == 0 {
                self.rotate()?;
                continue;
            }
            let n = (room as usize).min(bytes.len());
            let f = self.open()?;
            f.write_all(&bytes[..n])?;
            self.size += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// Creates `<state_dir>/logs` when missing (mode 0700) and opens it, refusing a symlink in its
/// place: the anchor every log file is opened from.
pub fn open_logs_dir(state_dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::DirBuilderExt;
    let path = state_dir.join("logs");
    match std::fs::DirBuilder::new().mode(0o700).create(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    crate::state::open_dir_nofollow(&path).map_err(|e| crate::state::refuse_link(&path, e))
}

/// Opens `name` in the open log folder `logs` (at `logs_path`, for messages) for appending,
/// created with mode 0600, refusing a symlink in its place (berth, as root, would otherwise
/// append to whatever file a planted link names).
pub fn open_for_append(logs: &File, logs_path: &Path, name: &str) -> io::Result<File> {
    use std::os::fd::AsFd;
    crate::state::open_beneath(
        logs.as_fd(),
        name,
        libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NOCTTY,
        0o600,
    )
    .map_err(|e| crate::state::refuse_link(&logs_path.join(name), e))
}

/// Opens `<state_dir>/logs/<name>` for reading without following a symlink on the way (the
/// log folder is writable by the environment's root user, so whatever is in it may have been
/// planted: berth runs as root and must not read a host file through it). `Ok(None)` when the
/// file does not exist.
pub fn open_log_file(state_dir: &Path, name: &str) -> io::Result<Option<File>> {
    let dir_path = state_dir.join("logs");
    let dir = match crate::state::open_dir_nofollow(&dir_path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::state::refuse_link(&dir_path, e)),
    };
    use std::os::fd::AsFd;
    match crate::state::open_beneath(dir.as_fd(), name, libc::O_RDONLY | libc::O_NOCTTY, 0) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::state::refuse_link(&dir_path.join(name), e)),
    }
}

/// The open log files of a service, oldest first (the rotated one, then the current one);
/// a planted symlink in their place is an error naming it.
pub fn open_service_logs(state_dir: &Path, service: &str) -> io::Result<Vec<File>> {
    let mut files = Vec::new();
    for name in [format!("{service}.log.1"), format!("{service}.log")] {
        if let Some(f) = open_log_file(state_dir, &name)? {
            files.push(f);
        }
    }
    Ok(files)
}

/// Names of services that have logs.
pub fn services_with_logs(state_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state_dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .map(str::to_string)
        })
        .filter(|n| n != "supervisor")
        .collect();
    v.sort();
    v
}

/// The whole kept output of a service.
pub fn read_service_log(state_dir: &Path, service: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    for mut f in open_service_logs(state_dir, service)? {
        f.read_to_end(&mut out)?;
    }
    Ok(out)
}

/// Follows a service's log like `tail -f`, across rotations: each [`poll`](Self::poll)
/// returns what was appended since the last one. Files are opened as by [`open_log_file`].
pub struct LogFollower {
    state_dir: PathBuf,
    name: String,
    /// Inode and offset of the file read so far.
    pos: Option<(u64, u64)>,
}

impl LogFollower {
    /// Starts at the current end (`from_start = false`) or with the whole kept log.
    pub fn new(state_dir: &Path, service: &str, from_start: bool) -> LogFollower {
        let mut f = LogFollower {
            state_dir: state_dir.to_path_buf(),
            name: format!("{service}.log"),
            pos: None,
        };
        if !from_start {
            if let Ok(Some(file)) = open_log_file(state_dir, &f.name) {
                if let Ok(m) = file.metadata() {
                    use std::os::unix::fs::MetadataExt;
                    f.pos = Some((m.ino(), m.len()));
                }
            }
        }
        f
    }

    /// New bytes since the last call (empty when nothing changed).
    pub fn poll(&mut self) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let rotated_name = format!("{}.1", self.name);
        let mut out = Vec::new();
        let read_from = |mut f: File, off: u64, out: &mut Vec<u8>| -> io::Result<u64> {
            f.seek(SeekFrom::Start(off))?;
            let n = f.read_to_end(out)?;
            Ok(off + n as u64)
        };
        let Some(current) = open_log_file(&self.state_dir, &self.name)? else {
            return Ok(out);
        };
        let cur_ino = current.metadata()?.ino();
        match self.pos {
            Some((ino, off)) if ino == cur_ino => {
                let end = read_from(current, off, &mut out)?;
                self.pos = Some((ino, end));
            }
            Some((ino, off)) => {
                // Rotated since the last poll: finish the old file, then read the new one.
                if let Some(old) = open_log_file(&self.state_dir, &rotated_name)? {
                    if old.metadata()?.ino() == ino {
                        read_from(old, off, &mut out)?;
                    }
                }
                let end = read_from(current, 0, &mut out)?;
                self.pos = Some((cur_ino, end));
            }
            None => {
                if let Some(old) = open_log_file(&self.state_dir, &rotated_name)? {
                    read_from(old, 0, &mut out)?;
                }
                let end = read_from(current, 0, &mut out)?;
                self.pos = Some((cur_ino, end));
            }
        }
        Ok(out)
    }
}

/// `berth logs` of a container: the last `tail` lines of each service's log (prefixed with
/// the service's name when there are several) on stdout, then, with `follow`, what is
/// appended until interrupted (rotation included).
pub fn print_logs(
    state_dir: &Path,
    services: &[String],
    tail: Option<usize>,
    follow: bool,
) -> super::error::Result<()> {
    let prefix = services.len() > 1;
    let mut out = std::io::stdout().lock();
    for s in services {
        let files = open_service_logs(state_dir, s)
            .map_err(|e| super::ContainerError::io(format!("cannot read the logs of {s}"), e))?;
        for l in last_lines(files, tail) {
            write_line(&mut out, prefix.then_some(s.as_str()), &l);
        }
    }
    let _ = out.flush();
    drop(out);
    if follow {
        follow_logs(state_dir, services, prefix);
    }
    Ok(())
}

fn write_line(out: &mut impl Write, service: Option<&str>, line: &str) {
    let _ = match service {
        Some(s) => writeln!(out, "{s} | {line}"),
        None => writeln!(out, "{line}"),
    };
}

/// The last `n` lines of the concatenation of `files` (all when `n` is `None`).
fn last_lines(files: Vec<File>, n: Option<usize>) -> Vec<String> {
    use std::io::BufRead;
    let mut keep: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for file in files {
        for line in io::BufReader::new(file).split(b'\n').map_while(Result::ok) {
            keep.push_back(String::from_utf8_lossy(&line).into_owned());
            if n.is_some_and(|n| keep.len() > n) {
                keep.pop_front();
            }
        }
    }
    keep.into()
}

/// Prints what is appended to each service's log until interrupted (rotation included).
fn follow_logs(dir: &Path, services: &[String], prefix: bool) -> ! {
    let mut followers: Vec<(LogFollower, Vec<u8>)> = services
        .iter()
        .map(|s| (LogFollower::new(dir, s, false), Vec::new()))
        .collect();
    loop {
        for ((f, partial), name) in followers.iter_mut().zip(services) {
            let Ok(bytes) = f.poll() else { continue };
            if bytes.is_empty() {
                continue;
            }
            partial.extend_from_slice(&bytes);
            let mut out = std::io::stdout().lock();
            while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                write_line(&mut out, prefix.then_some(name.as_str()), &text);
            }
            let _ = out.flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_the_limit_and_keeps_one_old_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = OwnedFd::from(File::open(d.path()).unwrap());
        let mut l = LogFile::new(&dir, "web", 1024).unwrap();
        l.append(&[b'a'; 1000]).unwrap();
        l.append(&[b'b'; 100]).unwrap();
        let cur = std::fs::read(d.path().join("web.log")).unwrap();
        let old = std::fs::read(d.path().join("web.log.1")).unwrap();
        assert_eq!(old.len(), 1024);
        assert_eq!(cur, vec![b'b'; 76]);
        l.append(&[b'c'; 3000]).unwrap();
        for f in ["web.log", "web.log.1"] {
            assert!(std::fs::metadata(d.path().join(f)).unwrap().len() <= 1024);
        }
        let state = d.path().parent().unwrap();
        let _ = state;
    }

    #[test]
    fn follower_sees_appends_and_rotations() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("logs")).unwrap();
        let dir = OwnedFd::from(File::open(d.path().join("logs")).unwrap());
        let mut l = LogFile::new(&dir, "s", 1024).unwrap();
        l.append(b"before\n").unwrap();
        let mut tail = LogFollower::new(d.path(), "s", false);
        let mut all = LogFollower::new(d.path(), "s", true);
        assert_eq!(tail.poll().unwrap(), b"");
        l.append(b"one\n").unwrap();
        assert_eq!(tail.poll().unwrap(), b"one\n");
        assert_eq!(all.poll().unwrap(), b"before\none\n");
        let big = vec![b'x'; 1500];
        l.append(&big).unwrap();
        let got = tail.poll().unwrap();
        assert_eq!(got, big, "rotation must not lose or repeat bytes");
        assert_eq!(tail.poll().unwrap(), b"");
    }

    #[test]
    fn reader_concatenates_old_then_current() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("logs")).unwrap();
        std::fs::write(d.path().join("logs/s.log.1"), "old\n").unwrap();
        std::fs::write(d.path().join("logs/s.log"), "new\n").unwrap();
        std::fs::write(d.path().join("logs/supervisor.log"), "x").unwrap();
        assert_eq!(read_service_log(d.path(), "s").unwrap(), b"old\nnew\n");
        assert_eq!(services_with_logs(d.path()), vec!["s".to_string()]);
    }

    #[test]
    fn planted_links_are_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "host secret\n").unwrap();
        let state = d.path().join("env");
        std::fs::create_dir_all(state.join("logs")).unwrap();
        std::fs::write(state.join("logs/s.log"), "mine\n").unwrap();
        std::os::unix::fs::symlink(&outside, state.join("logs/s.log.1")).unwrap();
        let e = read_service_log(&state, "s").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(e.to_string().contains("s.log.1"), "{e}");
        assert!(LogFollower::new(&state, "s", true).poll().is_err());
        // The log folder itself replaced by a link.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("s.log"), "host secret\n").unwrap();
        std::fs::remove_dir_all(state.join("logs")).unwrap();
        std::os::unix::fs::symlink(other.path(), state.join("logs")).unwrap();
        let e = read_service_log(&state, "s").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
