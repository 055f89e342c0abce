//! Entry points: find a berth.toml, read it, check it, and turn it into a [`Plan`].

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::checker::{normalize_path, Checker};
use crate::diagnostic::{ErrorKind, Report, Severity};
use crate::plan::Plan;

/// The name of the file berth looks for.
pub const FILE_NAME: &str = "berth.toml";

/// Largest berth.toml [`load`] reads.
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// A valid berth.toml: its plan, and the warnings it produced (possibly none).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub plan: Plan,
    /// Only warnings; empty when the file is clean.
    pub warnings: Report,
}

/// Reads and checks the berth.toml at `path`. On failure the report holds every error (and
/// warning) of the file; a file that cannot be read gives a report with one `unreadable`
/// diagnostic.
pub fn load(path: &Path) -> Result<Loaded, Report> {
    let unreadable = |message: String, help: &str| {
        let mut report = Report::new(path.to_path_buf(), String::new());
        report.push(
            ErrorKind::Unreadable,
            Severity::Error,
            0..0,
            message,
            Some(help.to_string()),
        );
        report
    };
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| {
        // Bounded, so that `-f /dev/zero` or a huge file cannot exhaust memory.
        f.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes)
    });
    match read {
        Err(e) => Err(unreadable(
            format!("cannot read {}: {e}", path.display()),
            "check that the file exists and that you may read it",
        )),
        Ok(n) if n as u64 > MAX_FILE_SIZE => Err(unreadable(
            format!(
                "{} is larger than {} MiB",
                path.display(),
                MAX_FILE_SIZE >> 20
            ),
            "a berth.toml is a small text file; check that -f names the right file",
        )),
        Ok(_) => parse(&bytes, path),
    }
}

/// Checks the contents of a berth.toml. `file` is where it lives (made absolute against the
/// current directory when relative): relative host paths in it resolve against its folder,
/// and diagnostics name it as given.
pub fn parse(bytes: &[u8], file: &Path) -> Result<Loaded, Report> {
    let source = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(e) => {
            let mut report = Report::new(
                file.to_path_buf(),
                String::from_utf8_lossy(bytes).into_owned(),
            );
            let at = e.valid_up_to();
            let bad_len = e.error_len().unwrap_or(1);
            report.push(
                ErrorKind::NotUtf8,
                Severity::Error,
                at..at + bad_len,
                format!("the file is not valid UTF-8 (invalid byte at offset {at})"),
                Some("save the file as UTF-8".into()),
            );
            return Err(report);
        }
    };
    let mut report = Report::new(file.to_path_buf(), source.clone());
    let doc = match toml_edit::ImDocument::parse(source.as_str()) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            report.push(
                ErrorKind::TomlSyntax,
                Severity::Error,
                span,
                format!("this is not valid TOML: {message}"),
                Some("see https://toml.io for the syntax; strings need double quotes".into()),
            );
            return Err(report);
        }
    };
    let abs_file = absolute(file);
    let project_dir = abs_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut checker = Checker::new(report, &source, project_dir);
    let plan = checker.check(doc.as_table(), abs_file);
    let mut report = checker.report;
    report.sort();
    if report.has_errors() {
        Err(report)
    } else {
        Ok(Loaded {
            plan,
            warnings: report,
        })
    }
}

/// The berth.toml in `start_dir` or its nearest parent folder, as Cargo finds Cargo.toml.
/// The result is absolute.
pub fn discover(start_dir: &Path) -> Option<PathBuf> {
    let mut dir = absolute(start_dir);
    loop {
        let candidate = dir.join(FILE_NAME);
        if candidate.is_file() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        normalize_path(p)
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        normalize_path(&cwd.join(p))
    }
}
