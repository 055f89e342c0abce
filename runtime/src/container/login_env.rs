//! `[env]` for login shells: distributions' `/etc/profile` sets `PATH` from scratch (Debian's
//! does for every user), so a login shell (`berth shell` runs `/bin/sh -l`) would lose the
//! `PATH` of berth.toml. The supervisor writes `/etc/profile.d/berth-env.sh`, which
//! `/etc/profile` sources after its own assignments, exporting the `[env]` variables again.
//!
//! The file lives in the environment's writable layer (image layers stay untouched) and is
//! rewritten at every start, so it always matches the running plan; with an empty `[env]` it
//! is removed. Images without `/etc/profile.d` get none (nothing there would read it).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Where the snippet goes (inside the environment).
pub const PROFILE_SNIPPET: &str = "/etc/profile.d/berth-env.sh";

/// The snippet for `env`: one `export KEY='VALUE'` line per variable, values quoted for sh.
pub fn snippet(env: &BTreeMap<String, String>) -> String {
    let mut s = String::from(
        "# Written by berth at every start from berth.toml's [env]: /etc/profile resets some\n\
         # of these (PATH), and berth.toml's values win. Changes here are overwritten.\n",
    );
    for (k, v) in env {
        if !is_shell_name(k) {
            continue;
        }
        s.push_str(&format!("export {k}='{}'\n", v.replace('\'', r"'\''")));
    }
    s
}

fn is_shell_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Writes (or removes) the snippet under `root` (`/` once the supervisor entered the root
/// filesystem). A failure only costs login shells the `[env]` values, so it is reported to
/// the caller as a message, never fatal.
pub fn write(root: &Path, env: &BTreeMap<String, String>) -> Result<(), String> {
    let dir = root.join("etc/profile.d");
    let path = root.join(PROFILE_SNIPPET.trim_start_matches('/'));
    if !dir.is_dir() {
        return Ok(());
    }
    // Whatever is there (a file of an older start, a symlink the image placed) goes first;
    // the new file is created without following links.
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot replace {PROFILE_SNIPPET}: {e}")),
    }
    if env.is_empty() {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("cannot write {PROFILE_SNIPPET}: {e}"))?;
    f.write_all(snippet(env).as_bytes())
        .map_err(|e| format!("cannot write {PROFILE_SNIPPET}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_sh() {
        let env = BTreeMap::from([
            ("PATH".to_string(), "/opt/x/bin:/usr/bin".to_string()),
            ("Q".to_string(), "it's $HOME `x`".to_string()),
            ("not-a-name".to_string(), "skipped".to_string()),
        ]);
        let s = snippet(&env);
        assert!(s.contains("export PATH='/opt/x/bin:/usr/bin'\n"), "{s}");
        assert!(s.contains(r"export Q='it'\''s $HOME `x`'"), "{s}");
        assert!(!s.contains("not-a-name"), "{s}");
    }

    #[test]
    fn written_when_profile_d_exists_and_removed_for_an_empty_env() {
        let root = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        write(root.path(), &env).unwrap();
        assert!(!root.path().join("etc").exists(), "created /etc/profile.d");
        fs::create_dir_all(root.path().join("etc/profile.d")).unwrap();
        let target = root.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, root.path().join("etc/profile.d/berth-env.sh"))
            .unwrap();
        write(root.path(), &env).unwrap();
        assert!(!target.exists(), "followed the image's symlink");
        let text = fs::read_to_string(root.path().join("etc/profile.d/berth-env.sh")).unwrap();
        assert!(text.contains("export A='1'"), "{text}");
        write(root.path(), &BTreeMap::new()).unwrap();
        assert!(!root.path().join("etc/profile.d/berth-env.sh").exists());
    }
}
