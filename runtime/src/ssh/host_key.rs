//! The environment's SSH host key: one ed25519 key per environment, made on first use and
//! kept in the environment's folder (`ssh_host_ed25519_key`, mode 0600, OpenSSH's format),
//! so it stays the same across `down`/`up` and goes with `destroy`. It is never written to
//! `env.json`: only its public half leaves the file (into the known-hosts file berth keeps).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use super::error::SshError;

/// The key file's name in the environment's folder.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

fn key_path(env_dir: &Path) -> PathBuf {
    env_dir.join(HOST_KEY_FILE)
}

/// The environment's host key, made (once, also when two connections race) if missing.
pub fn load_or_create(env_dir: &Path) -> Result<PrivateKey, SshError> {
    let path = key_path(env_dir);
    if let Some(key) = load(&path)? {
        return Ok(key);
    }
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| SshError::io("cannot read random bytes from /dev/urandom", e))?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| SshError::HostKey(format!("cannot encode the new host key: {e}")))?;
    // Written aside (0600 from the start) and linked in: a racing connection either finds
    // no key or a whole one, and the first link wins.
    let tmp = env_dir.join(format!(".{HOST_KEY_FILE}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(SshError::io(
            &format!("cannot write the host key {}", tmp.display()),
            e,
        ));
    }
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load(&path)?.ok_or_else(|| {
            SshError::HostKey(format!("{} vanished while being read", path.display()))
        }),
        Err(e) => Err(SshError::io(
            &format!("cannot store the host key as {}", path.display()),
            e,
        )),
    }
}

/// The key in `path`, `None` when there is none; refuses a file others can read.
fn load(path: &Path) -> Result<Option<PrivateKey>, SshError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SshError::io(&format!("cannot read {}", path.display()), e)),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        return Err(SshError::HostKey(format!(
            "{} is not a private regular file (mode {:o}); remove it and berth makes a new host key (clients then see a changed key: run `berth ssh-config` again)",
            path.display(),
            meta.permissions().mode() & 0o7777
        )));
    }
    let text = fs::read_to_string(path)
        .map_err(|e| SshError::io(&format!("cannot read {}", path.display()), e))?;
    PrivateKey::from_openssh(&text).map(Some).map_err(|e| {
        SshError::HostKey(format!(
            "{} is not an OpenSSH private key ({e}); remove it and berth makes a new one",
            path.display()
        ))
    })
}

/// The public half, as a known_hosts / authorized_keys line body (`ssh-ed25519 AAAA…`).
pub fn public_line(key: &PrivateKey) -> Result<String, SshError> {
    key.public_key()
        .to_openssh()
        .map_err(|e| SshError::HostKey(format!("cannot encode the host key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(public_line(&a).unwrap(), public_line(&b).unwrap());
        assert!(public_line(&a).unwrap().starts_with("ssh-ed25519 "));
        // Nothing left aside.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(key_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a private regular file"), "{err}");
    }
}
