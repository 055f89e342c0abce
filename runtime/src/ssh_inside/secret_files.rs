//! The inside half of `[secrets]` (`berth-builtin:write-secrets OWNER`): run as root inside
//! by `up`, it reads the secrets from its stdin (`NAME\n`, `LENGTH\n`, then LENGTH bytes,
//! repeated) and writes each as `/run/secrets/NAME`, mode 0400, owned by OWNER (the
//! `[shell]` user; empty: root), replacing the previous set. It refuses to write unless
//! `/run/secrets` is a tmpfs reached without a symlink (the one the container was started
//! with), so a secret never lands on a disk, whatever the environment did to its `/run`.

use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;

use berth_inside_files::run_tmpfs::{self, write_replacing};

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

fn owner(user: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let who = berth_agent_proto::users::resolve(Some(user), &passwd, &group)?;
    Ok((who.uid, who.gid))
}

/// The builtin; see the module's documentation. Returns the exit code.
pub fn write_stdin(user: &str) -> i32 {
    let dir = match run_tmpfs::open(SECRETS_DIR) {
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
                let _ = run_tmpfs::remove(&dir, &n);
            }
        }
    }
    0
}
