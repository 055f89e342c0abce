//! The inside half of `[secrets]` (`berth-builtin:write-secrets OWNER`): run as root inside
//! by `up`, it reads the secrets from its stdin (`NAME\n`, `LENGTH\n`, then LENGTH bytes,
//! repeated) and writes each as `/run/secrets/NAME`, mode 0400, owned by OWNER (the
//! `[shell]` user; empty: root), replacing the previous set. It refuses to write unless
//! `/run/secrets` is a tmpfs reached without a symlink (the one the container was started
//! with), so a secret never lands on a disk, whatever the environment did to its `/run`.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Where the secrets are.
pub use berth_agent_proto::SECRETS_DIR;
/// Largest secret accepted.
pub const MAX_SECRET: usize = 1 << 20;

fn fail(msg: String) -> i32 {
    let _ = writeln!(io::stderr(), "{msg}");
    1
}

fn read_entry(input: &mut impl BufRead) -> Result<Option<(String, Vec<u8>)>, String> {
    let mut name = String::new();
    if input.read_line(&mut name).map_err(|e| e.to_string())? == 0 {
        return Ok(None);
    }
    let name = name.trim_end_matches('\n').to_string();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err("bad secret name".into());
    }
    let mut len = String::new();
    input.read_line(&mut len).map_err(|e| e.to_string())?;
    let len: usize = len.trim_end().parse().map_err(|_| "bad secret length")?;
    if len > MAX_SECRET {
        return Err(format!("secret {name} is larger than 1 MiB"));
    }
    let mut value = vec![0u8; len];
    input.read_exact(&mut value).map_err(|e| e.to_string())?;
    Ok(Some((name, value)))
}

/// Opens `/run/NAME` without following a link and checks it is a tmpfs (what berth
/// mounted there), so what is written into it never lands on a disk.
pub(super) fn open_run_tmpfs(name: &str) -> Result<OwnedFd, String> {
    let path = format!("/run/{name}");
    let dir_flags = nix::fcntl::OFlag::O_DIRECTORY
        | nix::fcntl::OFlag::O_NOFOLLOW
        | nix::fcntl::OFlag::O_CLOEXEC;
    let run = nix::fcntl::open("/run", dir_flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("cannot open /run: {e}"))?;
    // SAFETY: a descriptor just opened, owned by nobody else.
    let run = unsafe { OwnedFd::from_raw_fd(run) };
    let fd = nix::fcntl::openat(
        Some(run.as_raw_fd()),
        name,
        dir_flags,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: a descriptor just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let fs = nix::sys::statfs::fstatfs(&fd).map_err(|e| format!("cannot inspect {path}: {e}"))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(format!(
            "{path} is not the tmpfs berth mounted: nothing is written to it (restart the environment: berth down && berth up)"
        ));
    }
    Ok(fd)
}

fn owner(user: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let who = berth_agent_proto::users::resolve(Some(user), &passwd, &group)?;
    Ok((who.uid, who.gid))
}

/// Writes `value` as `name` in `dir` (one of berth's tmpfs folders): under a temporary name
/// created without following a link, given to `owner` (when set) and exactly `mode` (the
/// umask may have taken bits away), then renamed into place. `what` names the file in errors.
pub(super) fn write_replacing(
    dir: &OwnedFd,
    name: &str,
    value: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    what: &str,
) -> Result<(), String> {
    let tmp = format!(".{name}.new");
    let _ = nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    );
    let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        mode,
    )
    .map_err(|e| format!("cannot write {what}: {e}"))?;
    // SAFETY: a descriptor just opened, owned by nobody else.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(
            f.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| format!("cannot give {what} to its user: {e}"))?;
    }
    nix::sys::stat::fchmod(f.as_raw_fd(), mode)
        .map_err(|e| format!("cannot set the mode of {what}: {e}"))?;
    f.write_all(value)
        .map_err(|e| format!("cannot write {what}: {e}"))?;
    nix::fcntl::renameat(
        Some(dir.as_raw_fd()),
        tmp.as_str(),
        Some(dir.as_raw_fd()),
        name,
    )
    .map_err(|e| format!("cannot write {what}: {e}"))
}

/// The builtin; see the module's documentation. Returns the exit code.
pub fn write_stdin(user: &str) -> i32 {
    let dir = match open_run_tmpfs("secrets") {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let (uid, gid) = match owner(if user.is_empty() { "0" } else { user }) {
        Ok(o) => o,
        Err(e) => return fail(format!("secrets: {e}")),
    };
    if let Err(e) = nix::sys::stat::fchmod(
        dir.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o755),
    ) {
        return fail(format!("cannot set the mode of {SECRETS_DIR}: {e}"));
    }
    let mut input = io::BufReader::new(io::stdin().lock());
    let mut names = Vec::new();
    loop {
        match read_entry(&mut input) {
            Ok(Some((name, value))) => {
                let what = format!("secret {name}");
                if let Err(e) = write_replacing(&dir, &name, &value, 0o400, Some((uid, gid)), &what)
                {
                    return fail(e);
                }
                names.push(name);
            }
            Ok(None) => break,
            Err(e) => return fail(format!("secrets: {e}")),
        }
    }
    // Secrets no longer configured go.
    if let Ok(entries) = std::fs::read_dir(SECRETS_DIR) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !names.contains(&n) {
                let _ = nix::unistd::unlinkat(
                    Some(dir.as_raw_fd()),
                    n.as_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                );
            }
        }
    }
    0
}
