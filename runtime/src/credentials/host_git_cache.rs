//! The host's git configuration as the last `git config` found it, kept in the home
//! (`host-git-cache.json`) with a stamp of everything that answer depended on, so that `berth
//! run` and `up` do not start the host's git (about 2 ms of CPU and 160 page faults) when
//! nothing changed.
//!
//! The stamp (kept as its SHA-256) holds: the uid; every `GIT_*` variable and `HOME`,
//! `XDG_CONFIG_HOME`; the `git` that `PATH` finds (path, device, inode, size, mtime, ctime:
//! not the rest of `PATH`, which shells and tools change freely); and the same of every
//! file git reads its configuration from outside a repository, present or absent (system:
//! `GIT_CONFIG_SYSTEM` or `/etc/gitconfig` and `<prefix>/etc/gitconfig`; global:
//! `GIT_CONFIG_GLOBAL` or `$XDG_CONFIG_HOME/git/config` (`~/.config/git/config`) and
//! `~/.gitconfig`). An answer that came through an `include` or `includeIf` (whose files
//! the stamp does not follow) is never kept, nor one whose files changed within the last
//! two seconds (a change in the same clock tick as the stamp would go unseen): git runs
//! every time then, as without the cache.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host_git::{self, HostGitConfig};
use crate::state;

/// In the home's root.
pub const CACHE_FILE: &str = "host-git-cache.json";

/// A file's identity and times, `None` when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct FileStamp {
    path: PathBuf,
    stamp: Option<[i64; 7]>,
}

impl FileStamp {
    fn of(path: PathBuf) -> FileStamp {
        let stamp = std::fs::metadata(&path).ok().map(|m| {
            [
                m.dev() as i64,
                m.ino() as i64,
                m.size() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ]
        });
        FileStamp { path, stamp }
    }

    /// Changed within `secs` of `now` (seconds since the epoch), by mtime or ctime.
    fn recent(&self, now: i64, secs: i64) -> bool {
        self.stamp
            .is_some_and(|s| now - s[3] < secs || now - s[5] < secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Key {
    uid: u32,
    /// Bytes of `NAME=value`, sorted.
    env: Vec<Vec<u8>>,
    files: Vec<FileStamp>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    /// SHA-256 of the [`Key`] the answer was found under.
    key: String,
    name: Option<String>,
    email: Option<String>,
    has_helper: bool,
}

/// What decides the host's answer, taken from `vars` (the process environment).
fn key_of(vars: impl Iterator<Item = (OsString, OsString)>) -> Key {
    let mut env: Vec<Vec<u8>> = Vec::new();
    let (mut home, mut xdg, mut path) = (None, None, None);
    let (mut sys_file, mut global_file) = (None, None);
    for (k, v) in vars {
        let name = k.to_string_lossy().into_owned();
        if name == "PATH" {
            // Only the git it finds matters (stamped below), not the rest of the search path.
            path = Some(v);
            continue;
        }
        let keep = name.starts_with("GIT_") || matches!(name.as_str(), "HOME" | "XDG_CONFIG_HOME");
        if !keep {
            continue;
        }
        match name.as_str() {
            "HOME" => home = Some(PathBuf::from(&v)),
            "XDG_CONFIG_HOME" if !v.is_empty() => xdg = Some(PathBuf::from(&v)),
            "GIT_CONFIG_SYSTEM" => sys_file = Some(PathBuf::from(&v)),
            "GIT_CONFIG_GLOBAL" => global_file = Some(PathBuf::from(&v)),
            _ => {}
        }
        let mut entry = k.into_vec();
        entry.push(b'=');
        entry.extend(v.into_vec());
        env.push(entry);
    }
    env.sort();
    let git = path.as_ref().and_then(|p| find_in_path(p, "git"));
    let mut files = vec![FileStamp::of(git.clone().unwrap_or_default())];
    match sys_file {
        Some(f) => files.push(FileStamp::of(f)),
        None => {
            files.push(FileStamp::of("/etc/gitconfig".into()));
            // A git built with another prefix reads `<prefix>/etc/gitconfig` (the prefix of
            // the binary a link in `PATH` leads to, and of the link itself).
            let real = git.as_deref().and_then(|g| std::fs::canonicalize(g).ok());
            for bin in [git.as_deref(), real.as_deref()].into_iter().flatten() {
                if let Some(prefix) = bin.parent().and_then(Path::parent) {
                    let f = prefix.join("etc/gitconfig");
                    if !files.iter().any(|s| s.path == f) {
                        files.push(FileStamp::of(f));
                    }
                }
            }
        }
    }
    match global_file {
        Some(f) => files.push(FileStamp::of(f)),
        None => {
            let xdg = xdg.or_else(|| home.as_ref().map(|h| h.join(".config")));
            if let Some(x) = xdg {
                files.push(FileStamp::of(x.join("git/config")));
            }
            if let Some(h) = &home {
                files.push(FileStamp::of(h.join(".gitconfig")));
            }
        }
    }
    Key {
        uid: nix::unistd::getuid().as_raw(),
        env,
        files,
    }
}

/// The first executable `name` in the `PATH` value `path`, as `Command` would find it.
fn find_in_path(path: &OsString, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The host's git configuration: from the cache in `cache_dir` when nothing it depends on
/// changed, else from one `git config` (then kept, when it may be; see the module doc).
pub fn read_config_cached(cache_dir: &Path) -> HostGitConfig {
    let now = crate::host::clock::now_secs() as i64;
    read_with(
        cache_dir,
        std::env::vars_os(),
        now,
        host_git::read_config_with_includes,
    )
}

/// [`read_config_cached`] with the environment `vars`, the time `now` (seconds since the
/// epoch) and `ask_git` (the answer, and whether it came through an include) given.
fn read_with(
    cache_dir: &Path,
    vars: impl Iterator<Item = (OsString, OsString)>,
    now: i64,
    ask_git: impl FnOnce() -> (HostGitConfig, bool),
) -> HostGitConfig {
    let path = cache_dir.join(CACHE_FILE);
    let key = key_of(vars);
    let digest = {
        use sha2::Digest as _;
        let bytes = serde_json::to_vec(&key).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    if let Ok(Some(c)) = state::read_json::<Cached>(&path) {
        if c.key == digest {
            return HostGitConfig {
                name: c.name,
                email: c.email,
                has_helper: c.has_helper,
            };
        }
    }
    let (config, included) = ask_git();
    if included || key.files.iter().any(|f| f.recent(now, 2)) {
        let _ = std::fs::remove_file(&path);
        return config;
    }
    let cached = Cached {
        key: digest,
        name: config.name.clone(),
        email: config.email.clone(),
        has_helper: config.has_helper,
    };
    // Best effort: without it, the next command asks git again.
    let _ = state::write_json_volatile(&path, &cached);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn set_old(p: &Path) {
        let t = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
        nix::sys::stat::utimensat(
            None,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// Later than any file's ctime: nothing counts as changed just now.
    const LATER: i64 = i64::MAX / 2;

    /// A berth home and a `HOME` of their own.
    struct Fixture {
        _dir: tempfile::TempDir,
        cache: PathBuf,
        home: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("berth");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        Fixture {
            cache,
            home,
            _dir: dir,
        }
    }

    fn vars(home: &Path, extra: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        let mut v = vec![
            (OsString::from("HOME"), home.as_os_str().to_owned()),
            (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
            (OsString::from("UNRELATED"), OsString::from("x")),
        ];
        v.extend(
            extra
                .iter()
                .map(|(k, val)| (OsString::from(k), OsString::from(val))),
        );
        v
    }

    fn answer(name: &str) -> (HostGitConfig, bool) {
        (
            HostGitConfig {
                name: Some(name.into()),
                email: None,
                has_helper: false,
            },
            false,
        )
    }

    #[test]
    fn the_answer_is_reused_until_a_file_or_variable_it_depends_on_changes() {
        let f = fixture();
        let gitconfig = f.home.join(".gitconfig");
        std::fs::write(&gitconfig, "[user]\n\tname = A\n").unwrap();
        let runs = Cell::new(0);
        let ask = |n: &'static str| {
            let runs = &runs;
            move || {
                runs.set(runs.get() + 1);
                answer(n)
            }
        };
        let name = |vars: Vec<(OsString, OsString)>, n: &'static str| {
            read_with(&f.cache, vars.into_iter(), LATER, ask(n)).name
        };
        let plain = || vars(&f.home, &[]);
        assert_eq!(name(plain(), "A").as_deref(), Some("A"));
        assert_eq!(name(plain(), "X").as_deref(), Some("A"));
        assert_eq!(runs.get(), 1, "unchanged: git is not asked again");
        // An unrelated variable changes nothing; a GIT_ variable does.
        assert_eq!(
            name(vars(&f.home, &[("UNRELATED2", "y")]), "X").as_deref(),
            Some("A")
        );
        assert_eq!(runs.get(), 1);
        let git_var = vars(&f.home, &[("GIT_CONFIG_COUNT", "1")]);
        assert_eq!(name(git_var, "B").as_deref(), Some("B"));
        assert_eq!(runs.get(), 2, "a GIT_ variable changed: git asked");
        assert_eq!(name(plain(), "A").as_deref(), Some("A"));
        assert_eq!(runs.get(), 3, "and back");
        // The global file edited (same size, old mtime given back: the ctime still moves).
        std::fs::write(&gitconfig, "[user]\n\tname = C\n").unwrap();
        set_old(&gitconfig);
        assert_eq!(name(plain(), "C").as_deref(), Some("C"));
        assert_eq!(runs.get(), 4, "the file changed: git asked");
        assert_eq!(name(plain(), "X").as_deref(), Some("C"));
        assert_eq!(runs.get(), 4, "and the new answer kept");
        // A file that did not exist appears (the XDG location).
        std::fs::create_dir_all(f.home.join(".config/git")).unwrap();
        std::fs::write(f.home.join(".config/git/config"), "").unwrap();
        assert_eq!(name(plain(), "D").as_deref(), Some("D"));
        assert_eq!(runs.get(), 5, "a new config file: git asked");
        // Another PATH that finds the same git: the same answer.
        let mut same_git = plain();
        same_git.retain(|(k, _)| k != "PATH");
        same_git.push(("PATH".into(), "/usr/local/nonexistent:/usr/bin:/bin".into()));
        assert_eq!(name(same_git, "X").as_deref(), Some("D"));
        assert_eq!(runs.get(), 5, "PATH changed, the git found did not");
        // Another git first in PATH.
        let bin = f.home.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("git"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let mut other_git = plain();
        other_git.retain(|(k, _)| k != "PATH");
        other_git.push(("PATH".into(), path.into()));
        assert_eq!(name(other_git.clone(), "E").as_deref(), Some("E"));
        assert_eq!(name(other_git, "X").as_deref(), Some("E"));
        assert_eq!(runs.get(), 6);
    }

    #[test]
    fn answers_through_includes_or_from_files_changed_just_now_are_not_kept() {
        let f = fixture();
        let v = || vars(&f.home, &[]).into_iter();
        let runs = Cell::new(0);
        let included = || {
            runs.set(runs.get() + 1);
            (answer("I").0, true)
        };
        read_with(&f.cache, v(), LATER, included);
        read_with(&f.cache, v(), LATER, included);
        assert_eq!(runs.get(), 2, "an include: git asked every time");
        assert!(!f.cache.join(CACHE_FILE).exists());
        // A config file changed just now.
        std::fs::write(f.home.join(".gitconfig"), "").unwrap();
        let plain = || {
            runs.set(runs.get() + 1);
            answer("P")
        };
        let now = crate::host::clock::now_secs() as i64;
        read_with(&f.cache, v(), now, plain);
        read_with(&f.cache, v(), now, plain);
        assert_eq!(runs.get(), 4, "a file changed within 2 s: not kept");
        // The same two seconds later is kept.
        read_with(&f.cache, v(), now + 3, plain);
        read_with(&f.cache, v(), now + 3, plain);
        assert_eq!(runs.get(), 5, "kept once the change is old enough");
    }

    #[test]
    fn git_is_found_in_path_as_command_finds_it() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("git"), "").unwrap(); // not executable: skipped
        std::fs::write(b.join("git"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(find_in_path(&path, "git"), Some(b.join("git")));
    }
}
