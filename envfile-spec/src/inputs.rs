//! `[image].inputs`: gitignore-style patterns naming the project files a build copies into
//! the image before its `setup` steps (`"pyproject.toml"`, `"package*.json"`, `"src/**/*.rs"`).
//!
//! Patterns are anchored at the project folder (a leading `/` changes nothing): `*` and `?`
//! match within one path component, `[abc]`/`[a-z]`/`[!x]` one character, `**` any number of
//! components; a pattern naming a folder takes every file below it; `!PATTERN` removes what
//! earlier patterns took. Only regular files and symlinks (copied as links, never followed)
//! are taken; `.git` folders are skipped. Reading only: the folder is listed, nothing written.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a pattern is not acceptable (checked before any folder is read).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let body = pattern.strip_prefix('!').unwrap_or(pattern);
    let body = body.trim_start_matches('/');
    if body.trim().is_empty() {
        return Err("the pattern names no file".into());
    }
    if body.split('/').any(|c| c == "..") {
        return Err("`..` would leave the project folder".into());
    }
    if body.contains('\\') {
        return Err("`\\` is not supported in patterns".into());
    }
    Ok(())
}

/// The files matching `patterns` under `project_dir`, as sorted relative paths. Also returns,
/// for each pattern (in order), whether it matched anything (a `!` pattern counts as matching
/// when it removed something or earlier patterns matched).
pub fn expand(project_dir: &Path, patterns: &[String]) -> io::Result<(Vec<PathBuf>, Vec<bool>)> {
    let mut taken: BTreeSet<PathBuf> = BTreeSet::new();
    let mut matched = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let (negate, body) = match pattern.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pattern.as_str()),
        };
        let components: Vec<&str> = body
            .trim_start_matches('/')
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut found = BTreeSet::new();
        walk(project_dir, Path::new(""), &components, &mut found)?;
        if negate {
            let before = taken.len();
            taken.retain(|p| !found.iter().any(|f| p.starts_with(f)));
            matched.push(before != taken.len() || !found.is_empty());
        } else {
            matched.push(!found.is_empty());
            taken.extend(found);
        }
    }
    Ok((taken.into_iter().collect(), matched))
}

fn walk(
    root: &Path,
    rel: &Path,
    components: &[&str],
    out: &mut BTreeSet<PathBuf>,
) -> io::Result<()> {
    let here = root.join(rel);
    let Some((first, rest)) = components.split_first() else {
        return take(root, rel, out);
    };
    if *first == "**" {
        walk(root, rel, rest, out)?;
        for (name, is_dir) in entries(&here)? {
            if is_dir {
                walk(root, &rel.join(&name), components, out)?;
            }
        }
        return Ok(());
    }
    for (name, is_dir) in entries(&here)? {
        if !component_matches(first, &name) {
            continue;
        }
        if rest.is_empty() || is_dir {
            walk(root, &rel.join(&name), rest, out)?;
        }
    }
    Ok(())
}

/// Takes `rel`: a file or symlink itself, a folder with every file below it.
fn take(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    if rel.as_os_str().is_empty() {
        // The project folder itself (`**` with nothing after it): everything.
        for (name, _) in entries(root)? {
            take(root, Path::new(&name), out)?;
        }
        return Ok(());
    }
    let meta = fs::symlink_metadata(root.join(rel))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        for (name, _) in entries(&root.join(rel))? {
            take(root, &rel.join(name), out)?;
        }
    } else if ft.is_file() || ft.is_symlink() {
        out.insert(rel.to_path_buf());
    }
    Ok(())
}

/// Names in `dir` (not following symlinks) with whether each is a real folder; `.git`
/// skipped, non-UTF-8 names skipped (patterns are UTF-8).
fn entries(dir: &Path) -> io::Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name == ".git" {
            continue;
        }
        out.push((name, e.file_type()?.is_dir()));
    }
    out.sort();
    Ok(out)
}

/// Matches one path component against a glob component (`*`, `?`, `[…]`).
pub fn component_matches(glob: &str, name: &str) -> bool {
    // A leading `.` is matched only literally, as in shells and gitignore.
    if name.starts_with('.') && !glob.starts_with('.') {
        return false;
    }
    matches(
        &glob.chars().collect::<Vec<_>>(),
        &name.chars().collect::<Vec<_>>(),
    )
}

fn matches(g: &[char], n: &[char]) -> bool {
    match g.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| matches(&g[1..], &n[i..])),
        Some('?') => !n.is_empty() && matches(&g[1..], &n[1..]),
        Some('[') => {
            let Some(close) = g.iter().skip(2).position(|c| *c == ']').map(|p| p + 2) else {
                return n.first() == Some(&'[') && matches(&g[1..], &n[1..]);
            };
            let Some(&c) = n.first() else { return false };
            let set = &g[1..close];
            let (negated, set) = match set.first() {
                Some('!') | Some('^') => (true, &set[1..]),
                _ => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negated && matches(&g[close + 1..], &n[1..])
        }
        Some(&l) => n.first() == Some(&l) && matches(&g[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "package.json",
            "package-lock.json",
            "README.md",
            "src/a.rs",
            "src/deep/b.rs",
            "src/deep/c.txt",
            "sub/package.json",
            ".git/config",
            ".env",
        ] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        std::os::unix::fs::symlink("/etc/shadow", d.path().join("link.json")).unwrap();
        d
    }

    fn names(d: &Path, pats: &[&str]) -> (Vec<String>, Vec<bool>) {
        let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
        let (files, matched) = expand(d, &pats).unwrap();
        (
            files
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            matched,
        )
    }

    #[test]
    fn patterns_are_anchored_at_the_project_folder() {
        let d = project();
        let (f, m) = names(d.path(), &["package*.json"]);
        assert_eq!(f, ["package-lock.json", "package.json"]);
        assert_eq!(m, [true]);
        let (f, _) = names(d.path(), &["/README.md", "src/*.rs"]);
        assert_eq!(f, ["README.md", "src/a.rs"]);
    }

    #[test]
    fn double_star_folders_negation_and_no_match() {
        let d = project();
        let (f, _) = names(d.path(), &["src/**/*.rs"]);
        assert_eq!(f, ["src/a.rs", "src/deep/b.rs"]);
        let (f, _) = names(d.path(), &["src/", "!src/deep/c.txt"]);
        assert_eq!(f, ["src/a.rs", "src/deep/b.rs"]);
        let (f, _) = names(d.path(), &["**/package.json"]);
        assert_eq!(f, ["package.json", "sub/package.json"]);
        let (f, m) = names(d.path(), &["Cargo.lock", "*.md"]);
        assert_eq!(f, ["README.md"]);
        assert_eq!(m, [false, true]);
        // `*` does not take dot files, `.git` is never taken, a symlink is taken as a link.
        let (f, _) = names(d.path(), &["*"]);
        assert!(!f.iter().any(|n| n.starts_with('.')), "{f:?}");
        assert!(f.contains(&"link.json".to_string()));
        let (f, _) = names(d.path(), &[".*"]);
        assert_eq!(f, [".env"]);
    }

    #[test]
    fn glob_components() {
        assert!(component_matches("package*.json", "package-lock.json"));
        assert!(!component_matches("package*.json", "package.jsonx"));
        assert!(component_matches("file?.[a-c]", "file1.b"));
        assert!(!component_matches("file?.[!a-c]", "file1.b"));
        assert!(component_matches("[", "["));
    }

    #[test]
    fn bad_patterns() {
        assert!(check_pattern("../secret").is_err());
        assert!(check_pattern("a/../../b").is_err());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("/").is_err());
        assert!(check_pattern("!").is_err());
        assert!(check_pattern("package*.json").is_ok());
    }
}
