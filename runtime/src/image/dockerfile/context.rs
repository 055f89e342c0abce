//! The build context: `.dockerignore` rules (Go `filepath.Match` patterns per path segment,
//! `**` for any number of segments, `!` exceptions, a folder excluded with its content), the
//! sources a `COPY`/`ADD` names (globs allowed, never outside the context), and the content
//! hash of what they copy (part of the step's cache key).

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::super::context_digests::{hash_entry, ContextDigests};

/// The rules of a `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// (exception, pattern segments), in file order; the last match decides.
    rules: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    /// Reads `<context>/.dockerignore` (no file: nothing excluded).
    pub fn load(context: &Path) -> std::io::Result<Self> {
        match fs::read_to_string(context.join(".dockerignore")) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let segs = clean(pat);
            if segs.is_empty() {
                continue;
            }
            rules.push((neg, segs));
        }
        DockerIgnore { rules }
    }

    /// Whether `rel` (relative to the context, `/`-separated) is left out: the last rule
    /// matching it or one of its parent folders decides.
    pub fn excluded(&self, rel: &str) -> bool {
        let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut out = false;
        for (neg, pat) in &self.rules {
            let hit = (1..=segs.len()).any(|n| path_match(pat, &segs[..n]));
            if hit {
                out = !neg;
            }
        }
        out
    }
}

/// A pattern's segments: leading `/` and `.` dropped, `..` applied.
fn clean(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

/// Segments `pat` (with `**`) against path segments `path`.
pub fn path_match(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|k| path_match(&pat[1..], &path[k..])),
        Some(p) => !path.is_empty() && glob_match(p, path[0]) && path_match(&pat[1..], &path[1..]),
    }
}

/// Go's `filepath.Match` for one segment: `*`, `?`, `[a-z]`, `[^x]`, `\` escapes.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|k| go(&p[1..], &t[k..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some('[') => {
                let Some(&c) = t.first() else { return false };
                let mut i = 1;
                let neg = matches!(p.get(1), Some('^' | '!'));
                if neg {
                    i += 1;
                }
                let mut hit = false;
                let mut first = true;
                while i < p.len() && (p[i] != ']' || first) {
                    first = false;
                    let lo = if p[i] == '\\' && i + 1 < p.len() {
                        i += 1;
                        p[i]
                    } else {
                        p[i]
                    };
                    if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
                        if lo <= c && c <= p[i + 2] {
                            hit = true;
                        }
                        i += 3;
                    } else {
                        if lo == c {
                            hit = true;
                        }
                        i += 1;
                    }
                }
                i < p.len() && hit != neg && go(&p[i + 1..], &t[1..])
            }
            Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && go(&p[2..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// What a source pattern matched, relative to the tree it was looked up in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub rel: String,
    pub is_dir: bool,
}

/// The paths of the tree `root` that `pattern` names (a glob or a plain path), none
/// outside it and none excluded by `ignore`. A plain path that does not exist is an error;
/// a glob that matches nothing is too (as BuildKit).
pub fn match_sources(
    root: &Path,
    pattern: &str,
    ignore: &DockerIgnore,
) -> Result<Vec<Matched>, String> {
    if pattern.split('/').filter(|s| *s == "..").count() > 0 {
        let mut depth: i32 = 0;
        for s in pattern.split('/') {
            match s {
                "" | "." => {}
                ".." => depth -= 1,
                _ => depth += 1,
            }
            if depth < 0 {
                return Err(format!("`{pattern}` is outside the build context"));
            }
        }
    }
    let segs = clean(pattern);
    if segs.is_empty() {
        return Ok(vec![Matched {
            rel: String::new(),
            is_dir: true,
        }]);
    }
    let mut out = Vec::new();
    if segs.iter().any(|s| has_glob(s)) {
        walk_glob(root, "", &segs, ignore, &mut out);
        if out.is_empty() {
            return Err(format!("no file in the build context matches `{pattern}`"));
        }
        return Ok(out);
    }
    let mut at = root.to_path_buf();
    for (i, s) in segs.iter().enumerate() {
        at.push(s);
        let meta = fs::symlink_metadata(&at)
            .map_err(|_| format!("`{pattern}` does not exist in the build context"))?;
        if i + 1 < segs.len() && !meta.is_dir() {
            return Err(format!(
                "`{pattern}` goes through `{}`, which is not a folder (symlinks are not followed)",
                segs[..=i].join("/")
            ));
        }
    }
    let rel = segs.join("/");
    if ignore.excluded(&rel) {
        return Err(format!(
            "`{pattern}` is excluded by .dockerignore; remove the rule or the COPY"
        ));
    }
    let is_dir = fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir());
    out.push(Matched { rel, is_dir });
    Ok(out)
}

fn walk_glob(
    root: &Path,
    rel: &str,
    segs: &[String],
    ignore: &DockerIgnore,
    out: &mut Vec<Matched>,
) {
    let dir = root.join(rel);
    let Ok(rd) = fs::read_dir(&dir) else { return };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ignore.excluded(&child) {
            continue;
        }
        let parts: Vec<&str> = child.split('/').collect();
        let is_dir = fs::symlink_metadata(root.join(&child)).is_ok_and(|m| m.is_dir());
        if path_match(segs, &parts) {
            out.push(Matched {
                rel: child.clone(),
                is_dir,
            });
            continue;
        }
        let may_go_deeper = segs.iter().any(|s| s == "**") || parts.len() < segs.len();
        if is_dir && may_go_deeper {
            walk_glob(root, &child, segs, ignore, out);
        }
    }
}

/// Every path below (and including) `rel` in `root`, parents first, leaving out what
/// `ignore` excludes (the exclusion is checked against the path relative to `root`).
pub fn walk(root: &Path, rel: &str, ignore: &DockerIgnore) -> std::io::Result<Vec<String>> {
    Ok(walk_split(root, rel, ignore)?.0)
}

/// The paths below `rel` in `root` that `ignore` excludes (the top ones only: an excluded
/// folder stands for its content), sorted. A bind mount of `rel` hides them.
pub fn excluded_under(
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
) -> std::io::Result<Vec<String>> {
    Ok(walk_split(root, rel, ignore)?.1)
}

/// [`walk`]'s paths, and the excluded ones it left out.
fn walk_split(
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let mut out = vec![rel.to_string()];
    let mut excluded = Vec::new();
    let mut stack = vec![rel.to_string()];
    while let Some(r) = stack.pop() {
        let p = root.join(&r);
        if !fs::symlink_metadata(&p)?.is_dir() {
            continue;
        }
        let mut names: Vec<String> = fs::read_dir(&p)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut dirs = Vec::new();
        for n in names {
            let c = if r.is_empty() { n } else { format!("{r}/{n}") };
            if ignore.excluded(&c) {
                excluded.push(c);
                continue;
            }
            out.push(c.clone());
            if fs::symlink_metadata(root.join(&c))?.is_dir() {
                dirs.push(c);
            }
        }
        stack.extend(dirs.into_iter().rev());
    }
    out.sort();
    excluded.sort();
    Ok((out, excluded))
}

/// Hash of a Dockerfile and every file of its build context that `.dockerignore` keeps:
/// what `up` compares to know that a Dockerfile base must be built again. The files' content
/// hashes come from the memo of the berth home `home` where their stamps are unchanged
/// ([`ContextDigests`]).
pub fn content_key(dockerfile: &Path, context: &Path, home: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(fs::read(dockerfile)?);
    h.update(b"\0");
    let ignore = DockerIgnore::load(context)?;
    let digests = ContextDigests::load(home, context);
    for rel in walk(context, "", &ignore)? {
        hash_entry(&mut h, &rel, &inside(context, &rel), Some(&digests))?;
    }
    digests.save();
    Ok(hex::encode(h.finalize()))
}

/// The absolute path inside `root` of `rel` (`rel` already checked).
pub fn inside(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match_semantics() {
        assert!(glob_match("*.rs", "main.rs"));
        assert!(!glob_match("*.rs", "main.rc"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[^a-c]x", "bx"));
        assert!(glob_match("\\*", "*"));
    }

    #[test]
    fn a_walk_lists_what_it_leaves_out_for_the_bind_mask() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("src/node_modules/x")).unwrap();
        fs::write(r.join("src/a.js"), "").unwrap();
        fs::write(r.join("src/b.log"), "").unwrap();
        fs::write(r.join("top.log"), "").unwrap();
        let ig = DockerIgnore::parse("**/*.log\nsrc/node_modules\n");
        assert_eq!(walk(r, "src", &ig).unwrap(), ["src", "src/a.js"]);
        // The excluded folder stands for its content; only paths under `src`.
        assert_eq!(
            excluded_under(r, "src", &ig).unwrap(),
            ["src/b.log", "src/node_modules"]
        );
        assert_eq!(
            excluded_under(r, "", &ig).unwrap(),
            ["src/b.log", "src/node_modules", "top.log"]
        );
    }

    #[test]
    fn dockerignore_excludes_folders_with_their_content_and_honours_exceptions() {
        let ig = DockerIgnore::parse(
            "# comment\nnode_modules\n**/*.log\n/target\ndocs/*\n!docs/keep.md\n",
        );
        assert!(ig.excluded("node_modules"));
        assert!(ig.excluded("node_modules/x/y.js"));
        assert!(
            !ig.excluded("src/node_modules"),
            "a plain pattern is anchored at the root"
        );
        assert!(ig.excluded("a/b/c.log"));
        assert!(ig.excluded("c.log"));
        assert!(ig.excluded("target/debug/app"));
        assert!(ig.excluded("docs/other.md"));
        assert!(!ig.excluded("docs/keep.md"));
        assert!(!ig.excluded("src/main.rs"));
    }

    #[test]
    fn sources_globs_plain_paths_and_escapes() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src/sub")).unwrap();
        fs::write(d.path().join("src/a.rs"), "a").unwrap();
        fs::write(d.path().join("src/sub/b.rs"), "b").unwrap();
        fs::write(d.path().join("Cargo.toml"), "").unwrap();
        fs::write(d.path().join("Cargo.lock"), "").unwrap();
        fs::write(d.path().join("x.log"), "").unwrap();
        let ig = DockerIgnore::parse("*.log\n");
        let m = match_sources(d.path(), "Cargo.*", &ig).unwrap();
        let rels: Vec<_> = m.iter().map(|m| m.rel.as_str()).collect();
        assert_eq!(rels, ["Cargo.lock", "Cargo.toml"]);
        let m = match_sources(d.path(), "./src", &ig).unwrap();
        assert_eq!(
            m,
            [Matched {
                rel: "src".into(),
                is_dir: true
            }]
        );
        assert!(match_sources(d.path(), "../etc/passwd", &ig)
            .unwrap_err()
            .contains("outside the build context"));
        assert!(match_sources(d.path(), "missing.txt", &ig)
            .unwrap_err()
            .contains("does not exist"));
        assert!(match_sources(d.path(), "x.log", &ig)
            .unwrap_err()
            .contains(".dockerignore"));
        assert!(match_sources(d.path(), "*.py", &ig).is_err());
        assert_eq!(
            walk(d.path(), "src", &ig).unwrap(),
            ["src", "src/a.rs", "src/sub", "src/sub/b.rs"]
        );
    }
}
