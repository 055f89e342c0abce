//! The SFTP server behind the `sftp` subsystem (and OpenSSH 9's `scp`). It runs *inside*
//! the environment as a builtin of the exec path (see [`super`]: as the `[shell]` user, in
//! the shell's workdir) and speaks on its stdin/stdout, which the SSH side relays to the
//! channel, so every file operation happens with that user's rights in the environment's
//! own filesystem view (nothing is resolved on the host).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use russh_sftp::protocol::{
    Attrs, Data, File as SftpFile, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode,
    Version,
};
use russh_sftp::server::StatusReply;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest read answered at once (OpenSSH's sftp-server limit).
const MAX_READ: u32 = 256 * 1024;

enum Open {
    File(File),
    /// A directory: its listing, sent once, then EOF.
    Dir {
        path: PathBuf,
        sent: bool,
    },
}

struct Server {
    handles: HashMap<String, Open>,
    next: u64,
}

fn reply(e: io::Error) -> StatusReply {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
}

/// `ls -l`'s line for a directory listing (what `sftp`'s `ls -l` prints).
fn long_name(name: &str, meta: &fs::Metadata) -> String {
    let mode = meta.mode();
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(10);
    perms.push(kind);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let (y, m, d) = civil_date(meta.mtime().div_euclid(86400));
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{perms} {:>3} {:<8} {:<8} {:>8} {} {:>2} {:>5} {name}",
        meta.nlink(),
        meta.uid(),
        meta.gid(),
        meta.size(),
        MONTHS[(m - 1) as usize],
        d,
        y
    )
}

/// (year, month, day) of a day number since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `path` made absolute against the working directory, `.` and `..` folded.
fn absolute(path: &str) -> PathBuf {
    let p = if path.is_empty() { "." } else { path };
    let base = if Path::new(p).is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
    };
    let mut out = base;
    for c in Path::new(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn apply_attrs(path: Option<&Path>, file: Option<&File>, a: &FileAttributes) -> io::Result<()> {
    use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    if let Some(size) = a.size {
        match (file, path) {
            (Some(f), _) => f.set_len(size)?,
            (None, Some(p)) => OpenOptions::new().write(true).open(p)?.set_len(size)?,
            _ => {}
        }
    }
    if let Some(mode) = a.permissions {
        let perms = fs::Permissions::from_mode(mode & 0o7777);
        match (file, path) {
            (Some(f), _) => f.set_permissions(perms)?,
            (None, Some(p)) => fs::set_permissions(p, perms)?,
            _ => {}
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        match (file, path) {
            (Some(f), _) => std::os::unix::fs::fchown(f, a.uid, a.gid)?,
            (None, Some(p)) => std::os::unix::fs::chown(p, a.uid, a.gid)?,
            _ => {}
        }
    }
    if let (Some(at), Some(mt)) = (a.atime, a.mtime) {
        let (at, mt) = (
            TimeSpec::new(i64::from(at), 0),
            TimeSpec::new(i64::from(mt), 0),
        );
        match (file, path) {
            (Some(f), _) => {
                futimens(std::os::fd::AsRawFd::as_raw_fd(f), &at, &mt).map_err(io::Error::from)?
            }
            (None, Some(p)) => utimensat(None, p, &at, &mt, UtimensatFlags::FollowSymlink)
                .map_err(io::Error::from)?,
            _ => {}
        }
    }
    Ok(())
}

impl Server {
    fn add(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    fn file(&mut self, handle: &str) -> Result<&mut File, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusCode::Failure.with_message("no open file with this handle")),
        }
    }
}

impl russh_sftp::server::Handler for Server {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.with_message("not supported by berth's SFTP server")
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let mut o = OpenOptions::new();
        o.read(pflags.contains(OpenFlags::READ))
            .write(pflags.contains(OpenFlags::WRITE) || pflags.contains(OpenFlags::APPEND))
            .append(pflags.contains(OpenFlags::APPEND))
            .truncate(pflags.contains(OpenFlags::TRUNCATE))
            .mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
        if pflags.contains(OpenFlags::EXCLUDE) {
            o.create_new(true);
        } else if pflags.contains(OpenFlags::CREATE) {
            o.create(true);
        }
        let f = o.open(absolute(&filename)).map_err(reply)?;
        Ok(Handle {
            id,
            handle: self.add(Open::File(f)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message("no such handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = self.file(&handle)?;
        f.seek(SeekFrom::Start(offset)).map_err(reply)?;
        let mut data = vec![0u8; len.min(MAX_READ) as usize];
        let n = loop {
            match f.read(&mut data) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(reply(e)),
            }
        };
        if n == 0 && !data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        data.truncate(n);
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        let f = self.file(&handle)?;
        f.seek(SeekFrom::Start(offset)).map_err(reply)?;
        f.write_all(&data).map_err(reply)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = fs::symlink_metadata(absolute(&path)).map_err(reply)?;
        Ok(Attrs {
            id,
            attrs: (&m).into(),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let m = fs::metadata(absolute(&path)).map_err(reply)?;
        Ok(Attrs {
            id,
            attrs: (&m).into(),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let m = match self.handles.get(&handle) {
            Some(Open::File(f)) => f.metadata().map_err(reply)?,
            Some(Open::Dir { path, .. }) => fs::metadata(path).map_err(reply)?,
            None => return Err(StatusCode::Failure.with_message("no such handle")),
        };
        Ok(Attrs {
            id,
            attrs: (&m).into(),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply_attrs(Some(&absolute(&path)), None, &attrs).map_err(reply)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        match self.handles.get(&handle) {
            Some(Open::File(f)) => apply_attrs(None, Some(f), &attrs).map_err(reply)?,
            Some(Open::Dir { path, .. }) => apply_attrs(Some(path), None, &attrs).map_err(reply)?,
            None => return Err(StatusCode::Failure.with_message("no such handle")),
        }
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = absolute(&path);
        // Fails now (not at the first readdir) for a missing or unreadable directory.
        fs::read_dir(&path).map_err(reply)?;
        Ok(Handle {
            id,
            handle: self.add(Open::Dir { path, sent: false }),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir { path, sent }) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("no open directory with this handle"));
        };
        if *sent {
            return Err(StatusCode::Eof.into());
        }
        *sent = true;
        let mut files = Vec::new();
        for name in [".", ".."] {
            if let Ok(m) = fs::symlink_metadata(path.join(name)) {
                let mut f = SftpFile::new(name, (&m).into());
                f.longname = long_name(name, &m);
                files.push(f);
            }
        }
        for e in fs::read_dir(&*path).map_err(reply)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(m) = e.path().symlink_metadata() {
                let mut f = SftpFile::new(name.clone(), (&m).into());
                f.longname = long_name(&name, &m);
                files.push(f);
            }
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        fs::remove_file(absolute(&filename)).map_err(reply)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mut b = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(
            &mut b,
            attrs.permissions.map_or(0o777, |m| m & 0o7777),
        );
        b.create(absolute(&path)).map_err(reply)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        fs::remove_dir(absolute(&path)).map_err(reply)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = absolute(&path);
        // A path that does not exist yet (an upload's target) is answered as written.
        let real = fs::canonicalize(&p).unwrap_or(p);
        let name = real.to_string_lossy().into_owned();
        Ok(Name {
            id,
            files: vec![SftpFile::dummy(name)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = (absolute(&oldpath), absolute(&newpath));
        // SFTP v3's rename does not replace an existing target.
        if fs::symlink_metadata(&to).is_ok() {
            return Err(StatusCode::Failure.with_message(format!("{newpath} exists")));
        }
        fs::rename(from, to).map_err(reply)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = fs::read_link(absolute(&path)).map_err(reply)?;
        Ok(Name {
            id,
            files: vec![SftpFile::dummy(target.to_string_lossy().into_owned())],
        })
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH's client sends (target, link) in this order (its long-standing swap).
        std::os::unix::fs::symlink(&linkpath, absolute(&targetpath)).map_err(reply)?;
        Ok(ok(id))
    }
}

/// stdin/stdout as one stream that reports the end of the session when dropped, and
/// answers end-of-file after a read error (so the SFTP loop ends instead of retrying).
struct Stdio {
    input: tokio::io::Stdin,
    output: tokio::io::Stdout,
    failed: bool,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Stdio {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

impl AsyncRead for Stdio {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.input).poll_read(cx, buf) {
            Poll::Ready(Err(_)) => {
                self.failed = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Stdio {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.output).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.output).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.output).poll_shutdown(cx)
    }
}

/// Serves SFTP on stdin/stdout until the client closes it; the exit code.
pub fn serve_stdio() -> i32 {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("berth sftp server: cannot start its event loop");
        return 1;
    };
    let code = runtime.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stdio = Stdio {
            input: tokio::io::stdin(),
            output: tokio::io::stdout(),
            failed: false,
            done: Some(tx),
        };
        let server = Server {
            handles: HashMap::new(),
            next: 0,
        };
        russh_sftp::server::run(stdio, server).await;
        let _ = rx.await;
        0
    });
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_paths() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(absolute("/a/./b/../c"), PathBuf::from("/a/c"));
        assert_eq!(absolute("/../.."), PathBuf::from("/"));
    }
}
