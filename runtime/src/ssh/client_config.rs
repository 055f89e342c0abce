//! What OpenSSH's client needs to reach an environment through berth: `Host berth-NAME`
//! entries (`berth ssh-config`), the known-hosts file berth keeps with each environment's
//! host key, the `ssh` command line of `berth ssh`, and `berth ssh-config --install` (an
//! `Include`d file under `~/.ssh`, one `Include` line added to `~/.ssh/config`).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::SshError;
use crate::state::BerthHome;

/// The `Host` name of environment `name`.
pub fn host_alias(name: &str) -> String {
    format!("berth-{name}")
}

/// The known-hosts file berth keeps (one line per environment it configured).
pub fn known_hosts_path(home: &BerthHome) -> PathBuf {
    home.root().join("ssh").join("known_hosts")
}

/// One environment as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub env_name: String,
    /// The `[shell]` user, when the berth.toml names one.
    pub user: Option<String>,
    /// `ssh-ed25519 AAAA…`
    pub host_key: String,
}

/// `s` in single quotes for the `sh -c` that runs a ProxyCommand.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `%` is the ssh_config token character: doubled to stay literal.
fn escape_tokens(s: &str) -> String {
    s.replace('%', "%%")
}

/// The ProxyCommand: this berth (`berth_exe`) on this berth home, `ssh --stdio NAME`.
fn proxy_command(berth_exe: &Path, home: &BerthHome, env_name: &str) -> String {
    format!(
        "env BERTH_HOME={} {} ssh --stdio {}",
        shell_quote(&home.root().to_string_lossy()),
        shell_quote(&berth_exe.to_string_lossy()),
        shell_quote(env_name)
    )
}

/// ssh_config text for `entries`.
pub fn ssh_config_text(berth_exe: &Path, home: &BerthHome, entries: &[HostEntry]) -> String {
    let known = known_hosts_path(home);
    let mut out = String::from("# Written by `berth ssh-config`: SSH into berth environments.\n");
    for e in entries {
        let alias = host_alias(&e.env_name);
        out.push_str(&format!("\nHost {alias}\n"));
        out.push_str(&format!(
            "  ProxyCommand {}\n",
            escape_tokens(&proxy_command(berth_exe, home, &e.env_name))
        ));
        if let Some(u) = &e.user {
            out.push_str(&format!("  User {u}\n"));
        }
        out.push_str(&format!("  HostKeyAlias {alias}\n"));
        out.push_str(&format!(
            "  UserKnownHostsFile \"{}\"\n",
            escape_tokens(&known.to_string_lossy())
        ));
        out.push_str("  StrictHostKeyChecking yes\n");
        out.push_str("  CheckHostIP no\n");
    }
    out
}

/// `ssh`'s arguments for `berth ssh NAME [CMD…]`: the options of the entry above on its
/// command line (no config file needed), then the command.
pub fn ssh_command(
    berth_exe: &Path,
    home: &BerthHome,
    entry: &HostEntry,
    command: &[String],
) -> Vec<OsString> {
    let alias = host_alias(&entry.env_name);
    let mut args: Vec<OsString> = vec![
        "-o".into(),
        format!(
            "ProxyCommand={}",
            escape_tokens(&proxy_command(berth_exe, home, &entry.env_name))
        )
        .into(),
        "-o".into(),
        format!("HostKeyAlias={alias}").into(),
        "-o".into(),
        format!(
            "UserKnownHostsFile={}",
            escape_tokens(&known_hosts_path(home).to_string_lossy())
        )
        .into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "CheckHostIP=no".into(),
    ];
    if let Some(u) = &entry.user {
        args.push("-l".into());
        args.push(u.into());
    }
    args.push(alias.into());
    args.extend(command.iter().map(OsString::from));
    args
}

/// Writes the host keys of `entries` into berth's known-hosts file, keeping the lines of
/// other environments (replaced atomically, under a lock against a concurrent update).
pub fn write_known_hosts(home: &BerthHome, entries: &[HostEntry]) -> Result<(), SshError> {
    let path = known_hosts_path(home);
    let dir = path.parent().unwrap_or(home.root()).to_path_buf();
    fs::create_dir_all(&dir)
        .map_err(|e| SshError::io(&format!("cannot create {}", dir.display()), e))?;
    let lock_path = dir.join("known_hosts.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| SshError::io(&format!("cannot open {}", lock_path.display()), e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| SshError::io(&format!("cannot lock {}", lock_path.display()), e.into()),
    )?;
    let old = fs::read_to_string(&path).unwrap_or_default();
    let ours: Vec<String> = entries.iter().map(|e| host_alias(&e.env_name)).collect();
    let mut text: String = old
        .lines()
        .filter(|l| {
            let host = l.split_whitespace().next().unwrap_or("");
            !ours.iter().any(|a| a == host)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for e in entries {
        text.push_str(&format!("{} {}\n", host_alias(&e.env_name), e.host_key));
    }
    if text == old {
        return Ok(());
    }
    replace_file(&path, text.as_bytes(), 0o644)
}

/// Replaces `path` with `bytes` (a temporary file beside it, renamed over it).
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SshError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.berth-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let r = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|_| fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(SshError::io(&format!("cannot write {}", path.display()), e));
    }
    Ok(())
}

/// What [`install_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The file holding berth's entries.
    pub file: PathBuf,
    /// `~/.ssh/config`.
    pub config: PathBuf,
    /// Whether the `Include` line was added now (false: it was there).
    pub include_added: bool,
    /// The copy of `~/.ssh/config` made before adding it.
    pub backup: Option<PathBuf>,
}

/// The file `--install` writes, under `ssh_dir` (`~/.ssh`).
pub fn installed_file(ssh_dir: &Path) -> PathBuf {
    ssh_dir.join("berth_config")
}

fn is_our_include(line: &str, file: &Path) -> bool {
    let mut words = line.split_whitespace();
    let is_include = words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("include"));
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    is_include
        && words.any(|w| {
            let w = w.trim_matches('"');
            Path::new(w) == file
                || Some(w.to_string()) == name
                || w == format!("~/.ssh/{}", name.clone().unwrap_or_default())
        })
}

/// Writes `text` to `~/.ssh/berth_config` and makes `~/.ssh/config` include it: one
/// `Include` line at its top (an `Include` after a `Host` block would only apply to that
/// block), added once, after copying the file to `config.berth-backup`. Nothing else in
/// the user's config is changed.
pub fn install_config(ssh_dir: &Path, text: &str) -> Result<Installed, SshError> {
    if !ssh_dir.exists() {
        fs::create_dir_all(ssh_dir)
            .and_then(|_| fs::set_permissions(ssh_dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| SshError::io(&format!("cannot create {}", ssh_dir.display()), e))?;
    }
    let file = installed_file(ssh_dir);
    replace_file(&file, text.as_bytes(), 0o600)?;
    let config = ssh_dir.join("config");
    let existing = match fs::read(&config) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(SshError::io(
                &format!("cannot read {}", config.display()),
                e,
            ))
        }
    };
    let old = existing.clone().unwrap_or_default();
    if String::from_utf8_lossy(&old)
        .lines()
        .any(|l| is_our_include(l, &file))
    {
        return Ok(Installed {
            file,
            config,
            include_added: false,
            backup: None,
        });
    }
    let mut backup = None;
    let mode = match fs::metadata(&config) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(_) => 0o600,
    };
    if existing.is_some() {
        let b = ssh_dir.join("config.berth-backup");
        replace_file(&b, &old, mode)?;
        backup = Some(b);
    }
    let mut new = format!(
        "# Added by `berth ssh-config --install` (berth's entries: {}).\nInclude \"{}\"\n\n",
        file.display(),
        file.display()
    )
    .into_bytes();
    new.extend_from_slice(&old);
    replace_file(&config, &new, mode)?;
    Ok(Installed {
        file,
        config,
        include_added: true,
        backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> HostEntry {
        HostEntry {
            env_name: "web".into(),
            user: Some("dev".into()),
            host_key: "ssh-ed25519 AAAAC3Nza".into(),
        }
    }

    #[test]
    fn config_text_names_proxy_alias_user_and_known_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::at(dir.path().join("h%1")).unwrap();
        let text = ssh_config_text(Path::new("/opt/it's/berth"), &home, &[entry()]);
        assert!(text.contains("\nHost berth-web\n"), "{text}");
        assert!(
            text.contains(r"ssh --stdio 'web'") && text.contains(r"'/opt/it'\''s/berth'"),
            "{text}"
        );
        assert!(text.contains("h%%1"), "{text}");
        assert!(
            text.contains("  User dev\n  HostKeyAlias berth-web\n"),
            "{text}"
        );
        assert!(text.contains("StrictHostKeyChecking yes"), "{text}");
    }

    #[test]
    fn known_hosts_keeps_other_environments() {
        let dir = tempfile::tempdir().unwrap();
        let home = BerthHome::at(dir.path()).unwrap();
        let mut other = entry();
        other.env_name = "db".into();
        write_known_hosts(&home, &[other]).unwrap();
        write_known_hosts(&home, &[entry()]).unwrap();
        let mut changed = entry();
        changed.host_key = "ssh-ed25519 NEW".into();
        write_known_hosts(&home, &[changed]).unwrap();
        let text = fs::read_to_string(known_hosts_path(&home)).unwrap();
        assert_eq!(
            text,
            "berth-db ssh-ed25519 AAAAC3Nza\nberth-web ssh-ed25519 NEW\n"
        );
    }

    #[test]
    fn install_adds_one_include_with_a_backup_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        fs::create_dir(&ssh).unwrap();
        let mine = "Host *\n  ServerAliveInterval 30\n";
        fs::write(ssh.join("config"), mine).unwrap();
        let first = install_config(&ssh, "Host berth-web\n").unwrap();
        assert!(first.include_added);
        assert_eq!(fs::read_to_string(first.backup.unwrap()).unwrap(), mine);
        let config = fs::read_to_string(ssh.join("config")).unwrap();
        assert!(config.ends_with(mine), "{config}");
        assert_eq!(config.matches("Include").count(), 1, "{config}");
        let second = install_config(&ssh, "Host berth-db\n").unwrap();
        assert!(!second.include_added);
        assert_eq!(fs::read_to_string(ssh.join("config")).unwrap(), config);
        assert_eq!(
            fs::read_to_string(installed_file(&ssh)).unwrap(),
            "Host berth-db\n"
        );
    }

    #[test]
    fn install_without_a_config_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        let r = install_config(&ssh, "Host berth-web\n").unwrap();
        assert!(r.include_added && r.backup.is_none());
        let mode = fs::metadata(&ssh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(fs::read_to_string(ssh.join("config"))
            .unwrap()
            .contains("Include"));
    }
}
