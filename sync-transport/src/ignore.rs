//! Which paths a sync leaves alone: the mount's own `ignore` patterns plus every `.gitignore`
//! in the tree, with gitignore semantics (the `ignore` crate's matcher). A path is ignored when
//! either side's rules ignore it, so a folder one side ignores (say `node_modules/` built inside)
//! is never copied, changed or deleted on either side.
//!
//! berth's own temporary files ([`crate::tree::TEMP_MARKER`]) are always ignored. `.git` is
//! *not* ignored by default: it is synchronized like any folder, so `git status` and tools that
//! call `git describe` work on both sides. Add `.git/` to the mount's `ignore` to keep the two
//! repositories separate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::tree::{is_temp_name, is_within, TEMP_MARKER};

/// A pattern that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("ignore pattern {pattern:?} from {origin} is invalid: {reason}; fix or remove it")]
pub struct IgnoreError {
    pub pattern: String,
    pub origin: String,
    pub reason: String,
}

/// Compiled ignore rules for one sync.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    patterns: Vec<String>,
    mount: Gitignore,
    /// Folder (relative) → (texts seen, compiled matcher). Texts are kept to rebuild and to
    /// tell whether a `.gitignore` really changed.
    gitignores: BTreeMap<String, (Vec<String>, Gitignore)>,
}

impl IgnoreRules {
    /// Rules from a mount's `ignore` list (gitignore syntax, relative to the synced root).
    pub fn new(patterns: &[String]) -> Result<Self, IgnoreError> {
        let mut b = GitignoreBuilder::new("/");
        for p in patterns {
            b.add_line(None, p).map_err(|e| IgnoreError {
                pattern: p.clone(),
                origin: "the mount's `ignore` list".into(),
                reason: e.to_string(),
            })?;
        }
        let mount = b.build().map_err(|e| IgnoreError {
            pattern: patterns.join(", "),
            origin: "the mount's `ignore` list".into(),
            reason: e.to_string(),
        })?;
        Ok(IgnoreRules {
            patterns: patterns.to_vec(),
            mount,
            gitignores: BTreeMap::new(),
        })
    }

    /// The mount patterns these rules were made from.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Adds the text of a `.gitignore` found in folder `dir`. Returns whether the rules
    /// changed (the same text added twice for one folder counts once). Lines that do not
    /// parse are skipped, as git does.
    pub fn add_gitignore(&mut self, dir: &str, text: &str) -> bool {
        let entry = self
            .gitignores
            .entry(dir.to_string())
            .or_insert_with(|| (Vec::new(), Gitignore::empty()));
        if entry.0.iter().any(|t| t == text) {
            return false;
        }
        entry.0.push(text.to_string());
        entry.1 = compile(dir, &entry.0);
        true
    }

    /// Rules with exactly these `.gitignore` texts (folder → texts from both sides).
    pub fn with_gitignores(&self, sets: &[&BTreeMap<String, String>]) -> IgnoreRules {
        let mut r = IgnoreRules {
            patterns: self.patterns.clone(),
            mount: self.mount.clone(),
            gitignores: BTreeMap::new(),
        };
        for set in sets {
            for (dir, text) in set.iter() {
                r.add_gitignore(dir, text);
            }
        }
        r
    }

    /// The `.gitignore` texts these rules hold, per folder.
    pub fn gitignore_texts(&self) -> BTreeMap<String, Vec<String>> {
        self.gitignores
            .iter()
            .map(|(d, (t, _))| (d.clone(), t.clone()))
            .collect()
    }

    /// Whether `rel` (a normal relative path) is ignored. `is_dir` says whether it is a folder;
    /// a path inside an ignored folder is ignored too.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        if rel.split('/').any(is_temp_name) || rel.contains(TEMP_MARKER) {
            return true;
        }
        if self
            .mount
            .matched_path_or_any_parents(rel, is_dir)
            .is_ignore()
        {
            return true;
        }
        // Walk the path from the root down: a folder ignored by any .gitignore hides what is
        // below it; for the path itself the deepest .gitignore with an opinion decides.
        // (Every scanned entry is checked: the prefixes are slices of `rel`, not new strings.)
        if self.gitignores.is_empty() {
            return false;
        }
        let ends = rel
            .match_indices('/')
            .map(|(i, _)| i)
            .chain(std::iter::once(rel.len()));
        for end in ends {
            let sub = &rel[..end];
            let sub_is_dir = end < rel.len() || is_dir;
            let mut verdict = None;
            for (dir, (_, gi)) in &self.gitignores {
                if !is_within(sub, dir) || sub == *dir {
                    continue;
                }
                let local = if dir.is_empty() {
                    sub
                } else {
                    &sub[dir.len() + 1..]
                };
                let m = gi.matched(local, sub_is_dir);
                if m.is_ignore() {
                    verdict = Some(true);
                } else if m.is_whitelist() {
                    verdict = Some(false);
                }
            }
            if verdict == Some(true) {
                return true;
            }
        }
        false
    }
}

fn compile(dir: &str, texts: &[String]) -> Gitignore {
    let mut b = GitignoreBuilder::new("/");
    let from = PathBuf::from(if dir.is_empty() {
        ".gitignore".to_string()
    } else {
        format!("{dir}/.gitignore")
    });
    for text in texts {
        for line in text.lines() {
            let _ = b.add_line(Some(from.clone()), line);
        }
    }
    b.build().unwrap_or_else(|_| Gitignore::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(p: &[&str]) -> IgnoreRules {
        IgnoreRules::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn mount_patterns_match_folders_and_their_content() {
        let r = rules(&["target/", "node_modules/", "*.log"]);
        assert!(r.is_ignored("target", true));
        assert!(r.is_ignored("target/debug/x", false));
        assert!(r.is_ignored("web/node_modules/a/b.js", false));
        assert!(r.is_ignored("a/b.log", false));
        assert!(
            !r.is_ignored("target", false),
            "target/ only matches folders"
        );
        assert!(!r.is_ignored("src/main.rs", false));
        assert!(
            !r.is_ignored(".git/config", false),
            ".git is synced by default"
        );
    }

    #[test]
    fn temp_files_are_always_ignored() {
        let r = rules(&[]);
        assert!(r.is_ignored("a/.x.berth-sync-tmp-1-2", false));
        assert!(!r.is_ignored("a/x", false));
    }

    #[test]
    fn gitignore_files_apply_below_their_folder() {
        let mut r = rules(&[]);
        assert!(r.add_gitignore("", "/build\n*.o\n!keep.o\n"));
        assert!(!r.add_gitignore("", "/build\n*.o\n!keep.o\n"));
        assert!(r.add_gitignore("sub", "gen/\n"));
        assert!(r.is_ignored("build", true));
        assert!(r.is_ignored("build/x", false));
        assert!(!r.is_ignored("sub/build", true), "anchored pattern");
        assert!(r.is_ignored("sub/a.o", false));
        assert!(!r.is_ignored("sub/keep.o", false));
        assert!(r.is_ignored("sub/gen/x.rs", false));
        assert!(
            !r.is_ignored("gen/x.rs", false),
            "sub's rules do not apply at the root"
        );
    }

    #[test]
    fn deeper_gitignore_can_reinclude() {
        let mut r = rules(&[]);
        r.add_gitignore("", "*.txt\n");
        r.add_gitignore("docs", "!*.txt\n");
        assert!(r.is_ignored("a.txt", false));
        assert!(!r.is_ignored("docs/a.txt", false));
    }

    #[test]
    fn bad_mount_pattern_is_reported() {
        let e = IgnoreRules::new(&["a[z-a]".to_string()]).unwrap_err();
        assert!(e.to_string().contains("a[z-a]"), "{e}");
    }
}
