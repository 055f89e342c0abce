//! Paths in a berth.toml: host paths (`~/…`, relative to the project folder, checked to exist),
//! absolute paths inside the environment, and the host paths no mount may expose without
//! `unsafe_host_path = true`.

use std::path::{Component, Path, PathBuf};

use super::{Checker, Span};
use crate::diagnostic::ErrorKind;

impl Checker<'_> {
    /// A host path from the file: `~/…` is under $HOME, a relative path is under the folder of
    /// the berth.toml; the result is absolute and lexically normalized.
    pub(super) fn host_path(&self, s: &str) -> PathBuf {
        let p = if s == "~" || s.starts_with("~/") {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/".into());
            home.join(s.trim_start_matches('~').trim_start_matches('/'))
        } else {
            self.project_dir.join(s)
        };
        normalize_path(&p)
    }

    /// Checks that a host path exists (as a folder when `dir`, as a file when `Some(false)`).
    pub(super) fn existing_path(
        &mut self,
        s: &str,
        span: Span,
        what: &str,
        want_dir: Option<bool>,
    ) -> Option<PathBuf> {
        if s.trim().is_empty() {
            self.error(
                ErrorKind::EmptyValue,
                span,
                format!("`{what}` is an empty path"),
                Some("use \".\" for the folder of the berth.toml".into()),
            );
            return None;
        }
        let path = self.host_path(s);
        match std::fs::metadata(&path) {
            Err(_) => {
                self.error(
                    ErrorKind::PathNotFound,
                    span,
                    format!("`{what}`: {} does not exist", path.display()),
                    Some(format!(
                        "create it, or fix the path (relative paths start at {})",
                        self.project_dir.display()
                    )),
                );
                None
            }
            Ok(m) if want_dir == Some(true) && !m.is_dir() => {
                self.error(
                    ErrorKind::PathNotFound,
                    span,
                    format!("`{what}`: {} is not a folder", path.display()),
                    Some("point it at a folder".into()),
                );
                None
            }
            Ok(m) if want_dir == Some(false) && m.is_dir() => {
                self.error(
                    ErrorKind::PathNotFound,
                    span,
                    format!("`{what}`: {} is a folder, not a file", path.display()),
                    Some("point it at a file".into()),
                );
                None
            }
            Ok(_) => Some(path),
        }
    }

    /// An absolute path inside the environment, normalized; `mount` refuses `/` and `..`.
    pub(super) fn guest_path(
        &mut self,
        s: &str,
        span: Span,
        what: &str,
        mount: bool,
    ) -> Option<String> {
        if !s.starts_with('/') {
            self.error(
                ErrorKind::RelativePath,
                span,
                format!("`{what}` must be an absolute path inside the environment, found {s:?}"),
                Some(format!(
                    "start it with `/`, e.g. \"/{}\"",
                    s.trim_start_matches("./")
                )),
            );
            return None;
        }
        let mut parts = Vec::new();
        for part in s.split('/') {
            match part {
                "" | "." => {}
                ".." if mount => {
                    self.error(
                        ErrorKind::BadMountTarget,
                        span,
                        format!("`{what}` contains `..`: {s:?}"),
                        Some("write the target without `..` components".into()),
                    );
                    return None;
                }
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        if mount && parts.is_empty() {
            self.error(
                ErrorKind::BadMountTarget,
                span,
                format!("`{what}` is the root folder: a mount cannot replace the whole environment"),
                Some("mount into a folder such as \"/work\"; use [image].from = \"rootfs:…\" to provide a root filesystem".into()),
            );
            return None;
        }
        Some(format!("/{}", parts.join("/")))
    }
}

/// Host paths no environment gets without `unsafe_host_path = true`: the host's kernel
/// filesystems (a process inside could reconfigure or read the host through them).
pub const UNSAFE_HOST_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Why the mount source `written` (resolved lexically to `path`) is unsafe, or `None`.
/// Reads only: the symbolic links on the way are resolved to see where a relative source
/// really leads. `berth up` checks again when it mounts (a link may change in between).
pub fn unsafe_source(written: &str, path: &Path, project_dir: &Path) -> Option<String> {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    for p in [path, resolved.as_path()] {
        if p == Path::new("/") {
            return Some("is the host's root folder".into());
        }
        if let Some(k) = UNSAFE_HOST_PATHS.iter().find(|k| p.starts_with(k)) {
            return Some(format!("is inside {k}, a kernel filesystem of the host"));
        }
    }
    let relative = !(written.starts_with('/') || written == "~" || written.starts_with("~/"));
    if relative {
        if !path.starts_with(project_dir) {
            return Some(format!(
                "leads outside the project folder {} through `..` (to {})",
                project_dir.display(),
                path.display()
            ));
        }
        let project =
            std::fs::canonicalize(project_dir).unwrap_or_else(|_| project_dir.to_path_buf());
        if !resolved.starts_with(&project) {
            return Some(format!(
                "leads outside the project folder {} through a symbolic link (to {})",
                project_dir.display(),
                resolved.display()
            ));
        }
    }
    None
}

/// Lexical normalization: drops `.`, resolves `..` against earlier components, never touches
/// the file system (symlinks are kept as written).
pub fn normalize_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
