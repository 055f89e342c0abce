//! Whether the host's git configuration may have changed since `up` last read it, without
//! running git: [`ConfigStamp`] records the files git read (the origins `git config
//! --show-origin --list` named, the files their `include.path`/`includeIf.*.path` entries
//! name, and the standard locations, present or not) by device, inode, size, change and
//! modification time, and the variables that steer git's configuration (`GIT_CONFIG*`,
//! `HOME`, `XDG_CONFIG_HOME`). A warm `up` runs git again only when one of them differs.
//!
//! Racy edits: a file changed within [`RACY`] of the stamp could change again with the same
//! times and size (coarse file system clocks), so no stamp is recorded then and the next
//! `up` reads again.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Files changed this recently are not trusted to show their next change.
const RACY: Duration = Duration::from_secs(2);

/// What a file looked like: device, inode, size, ctime and mtime (ns); `None`: missing.
type FileState = Option<[i64; 5]>;

/// See the module's documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStamp {
    /// `[credentials] git` and `git_credentials` of the `up` that read it.
    policy: (bool, bool),
    env: Vec<(String, String)>,
    files: Vec<(PathBuf, FileState)>,
}

/// The variables that steer which files git reads (and what they say), sorted.
pub fn steering_env(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vars
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| k.starts_with("GIT_CONFIG") || k == "HOME" || k == "XDG_CONFIG_HOME")
        .collect();
    env.sort();
    env
}

/// The files git reads without being told by another file: the system file, the global
/// ones, and what `GIT_CONFIG_SYSTEM`/`GIT_CONFIG_GLOBAL` name.
pub fn standard_files(env: &[(String, String)]) -> Vec<PathBuf> {
    let var = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
    let mut files = vec![PathBuf::from("/etc/gitconfig")];
    for k in ["GIT_CONFIG_SYSTEM", "GIT_CONFIG_GLOBAL"] {
        if let Some(v) = var(k).filter(|v| !v.is_empty()) {
            files.push(PathBuf::from(v));
        }
    }
    match (var("XDG_CONFIG_HOME"), var("HOME")) {
        (Some(x), _) if !x.is_empty() => files.push(Path::new(x).join("git/config")),
        (_, Some(h)) => files.push(Path::new(h).join(".config/git/config")),
        _ => {}
    }
    if let Some(h) = var("HOME") {
        files.push(Path::new(h).join(".gitconfig"));
    }
    files
}

/// The files `git config --show-origin --null --list` output says git read, and those their
/// include entries name (resolved as git does: `~/` from `home`, relative to the including
/// file's folder).
pub fn files_read(listing: &[u8], home: Option<&str>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut fields = listing.split(|b| *b == 0);
    while let (Some(origin), Some(entry)) = (fields.next(), fields.next()) {
        let Some(path) = std::str::from_utf8(origin)
            .ok()
            .and_then(|o| o.strip_prefix("file:"))
        else {
            continue;
        };
        let path = PathBuf::from(path);
        let Some((key, value)) = std::str::from_utf8(entry)
            .ok()
            .and_then(|e| e.split_once('\n'))
        else {
            files.push(path);
            continue;
        };
        let include =
            key == "include.path" || (key.starts_with("includeif.") && key.ends_with(".path"));
        if include && !value.is_empty() {
            let target = match (value.strip_prefix("~/"), home) {
                (Some(rest), Some(h)) => Path::new(h).join(rest),
                _ if Path::new(value).is_absolute() => PathBuf::from(value),
                _ => path.parent().unwrap_or(Path::new("/")).join(value),
            };
            files.push(target);
        }
        files.push(path);
    }
    files
}

fn state_of(path: &Path) -> FileState {
    let m = std::fs::metadata(path).ok()?;
    Some([
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    ])
}

fn ns_since_epoch(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl ConfigStamp {
    /// The stamp of `files` (deduplicated) under `env` and `policy` as of `now`; `None`
    /// when one of them changed within [`RACY`] of `now`.
    pub fn take(
        policy: (bool, bool),
        env: Vec<(String, String)>,
        mut files: Vec<PathBuf>,
        now: SystemTime,
    ) -> Option<ConfigStamp> {
        files.sort();
        files.dedup();
        let racy_after = ns_since_epoch(now) - RACY.as_nanos() as i64;
        let files: Vec<(PathBuf, FileState)> = files
            .into_iter()
            .map(|p| {
                let st = state_of(&p);
                (p, st)
            })
            .collect();
        if files
            .iter()
            .any(|(_, st)| st.is_some_and(|s| s[3].max(s[4]) > racy_after))
        {
            return None;
        }
        Some(ConfigStamp { policy, env, files })
    }

    /// Whether every file and variable is as stamped, under `policy` and `env` now.
    pub fn still_current(&self, policy: (bool, bool), env: &[(String, String)]) -> bool {
        self.policy == policy
            && self.env == env
            && self.files.iter().all(|(p, st)| state_of(p) == *st)
    }

    /// Whether `earlier` (the standard files, stamped before git ran) agrees with this.
    pub fn agrees_with(&self, earlier: &ConfigStamp) -> bool {
        earlier
            .files
            .iter()
            .all(|f| self.files.iter().any(|g| g == f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(60)
    }

    fn home_env(home: &Path) -> Vec<(String, String)> {
        steering_env(
            [
                ("HOME".into(), home.as_os_str().to_owned()),
                ("PATH".into(), "/bin".into()),
            ]
            .into_iter(),
        )
    }

    #[test]
    fn a_changed_gitconfig_an_included_file_appearing_or_a_variable_is_noticed() {
        let home = tempfile::tempdir().unwrap();
        let gitconfig = home.path().join(".gitconfig");
        std::fs::write(&gitconfig, "[user]\n\tname = A\n[include]\n\tpath = inc\n").unwrap();
        let env = home_env(home.path());
        assert_eq!(env.len(), 1, "only steering variables: {env:?}");
        let listing = format!(
            "file:{g}\0user.name\nA\0file:{g}\0include.path\ninc\0command line:\0x.y\nz\0",
            g = gitconfig.display()
        );
        let read = files_read(listing.as_bytes(), Some(&home.path().to_string_lossy()));
        assert!(read.contains(&home.path().join("inc")), "{read:?}");
        let mut files = standard_files(&env);
        files.extend(read);
        let stamp = ConfigStamp::take((true, true), env.clone(), files.clone(), later()).unwrap();
        assert!(stamp.still_current((true, true), &env));
        assert!(!stamp.still_current((true, false), &env), "policy");

        // The same size, rewritten in place a moment later.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&gitconfig, "[user]\n\tname = B\n[include]\n\tpath = inc\n").unwrap();
        assert!(!stamp.still_current((true, true), &env));

        let stamp = ConfigStamp::take((true, true), env.clone(), files.clone(), later()).unwrap();
        std::fs::write(home.path().join("inc"), "[user]\n\temail = a@b\n").unwrap();
        assert!(
            !stamp.still_current((true, true), &env),
            "an include appeared"
        );

        let stamp = ConfigStamp::take((true, true), env.clone(), files.clone(), later()).unwrap();
        std::fs::create_dir_all(home.path().join(".config/git")).unwrap();
        std::fs::write(home.path().join(".config/git/config"), "").unwrap();
        assert!(
            !stamp.still_current((true, true), &env),
            "an XDG file appeared"
        );

        let stamp = ConfigStamp::take((true, true), env.clone(), files.clone(), later()).unwrap();
        let mut other = env.clone();
        other.push(("GIT_CONFIG_GLOBAL".into(), "/elsewhere".into()));
        assert!(!stamp.still_current((true, true), &other));

        // Just written: not trusted.
        assert!(ConfigStamp::take((true, true), env, files, SystemTime::now()).is_none());
    }

    #[test]
    fn include_paths_resolve_like_gits() {
        let listing = b"file:/h/.gitconfig\0include.path\n~/x\0file:/h/.gitconfig\0includeif.gitdir:/w/.path\n/abs\0file:/etc/gitconfig\0include.path\nrel/y\0";
        let read = files_read(listing, Some("/h"));
        for p in [
            "/h/x",
            "/abs",
            "/etc/rel/y",
            "/h/.gitconfig",
            "/etc/gitconfig",
        ] {
            assert!(read.contains(&PathBuf::from(p)), "{p}: {read:?}");
        }
    }
}
