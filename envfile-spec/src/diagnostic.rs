//! Problems found in a berth.toml: the catalogue of kinds (each with a stable code), one
//! [`Diagnostic`] per problem with its exact place, and a [`Report`] that renders them all the
//! way rustc does (`error[code]: message`, `--> file:line:col`, the line, a caret underline).

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;

/// Every kind of problem the validator reports. [`ErrorKind::code`] is stable: scripts and
/// editors may match on it, and SPEC.md lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The file is not valid UTF-8.
    NotUtf8,
    /// The file is not valid TOML.
    TomlSyntax,
    /// A key berth does not know (often a typo).
    UnknownKey,
    /// A value of the wrong TOML type (a string where a number belongs, …).
    WrongType,
    /// A string that is not one of the allowed choices.
    BadEnum,
    /// A required key is absent.
    MissingKey,
    /// An empty string or list where something is needed.
    EmptyValue,
    /// A string holding a character berth cannot pass on (NUL, newline in a path, …).
    InvalidValue,
    /// An environment, service or volume name with characters outside the allowed set.
    BadName,
    /// A path inside the environment that is not absolute.
    RelativePath,
    /// A mount target that cannot be mounted on (`/`, or with `..`).
    BadMountTarget,
    /// Two mounts on the same target.
    DuplicateMountTarget,
    /// Two ports forwarded from the same host address, port and protocol.
    DuplicateHostPort,
    /// A port number outside 1..=65535.
    BadPort,
    /// A host address that is not an IP address.
    BadAddress,
    /// A size that cannot be read (`2GiB`, `512MiB`, `1G`, plain bytes are accepted).
    BadSize,
    /// A number outside its allowed range (cpus <= 0, pids = 0, …).
    OutOfRange,
    /// An image source that is not an OCI reference, `debootstrap:SUITE`, `rootfs:PATH` or `tar:PATH`.
    BadImage,
    /// A package name apt/apk/dnf would not accept (or that would be read as an option).
    BadPackage,
    /// A mirror URL that is not http(s):// or file://.
    BadUrl,
    /// A host path (mount source, rootfs, tar, kernel) that does not exist.
    PathNotFound,
    /// A mount source berth refuses without `unsafe_host_path = true`: `/`, `/proc`, `/sys`,
    /// `/dev`, or a relative source that leaves the project folder (`..`, a symbolic link).
    UnsafeMountSource,
    /// A key that is valid only elsewhere (`size` on a bind mount, `mirror` without debootstrap).
    MisplacedKey,
    /// A `devices` entry that is not an absolute path under `/dev`, or a malformed pattern.
    BadDevice,
    /// A `[vm]` table while `backend` is not `"vm"`.
    VmWithoutBackend,
    /// `backend = "vm"` without `[vm].kernel`.
    MissingKernel,
    /// A `kernel` value that is neither a path nor `debian:PACKAGE[=VERSION]`.
    BadKernel,
    /// A command list with no elements.
    EmptyCommand,
    /// An environment variable name outside `[A-Za-z_][A-Za-z0-9_]*`.
    BadEnvName,
    /// A duration that cannot be read (`30s`, `2m`, `500ms`, an integer of seconds).
    BadDuration,
    /// A service's `after` names no sidecar of the file.
    UnknownService,
    /// Sidecars whose `after` lists wait for each other in a circle.
    ServiceCycle,
    /// Two services that listen on the same port of the shared `localhost`.
    DuplicateServicePort,
    /// (warning) A setting that has no effect in this combination.
    IgnoredSetting,
    /// The file could not be read at all.
    Unreadable,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 35] = [
        ErrorKind::NotUtf8,
        ErrorKind::TomlSyntax,
        ErrorKind::UnknownKey,
        ErrorKind::WrongType,
        ErrorKind::BadEnum,
        ErrorKind::MissingKey,
        ErrorKind::EmptyValue,
        ErrorKind::InvalidValue,
        ErrorKind::BadName,
        ErrorKind::RelativePath,
        ErrorKind::BadMountTarget,
        ErrorKind::DuplicateMountTarget,
        ErrorKind::DuplicateHostPort,
        ErrorKind::BadPort,
        ErrorKind::BadAddress,
        ErrorKind::BadSize,
        ErrorKind::OutOfRange,
        ErrorKind::BadImage,
        ErrorKind::BadPackage,
        ErrorKind::BadUrl,
        ErrorKind::PathNotFound,
        ErrorKind::UnsafeMountSource,
        ErrorKind::MisplacedKey,
        ErrorKind::BadDevice,
        ErrorKind::VmWithoutBackend,
        ErrorKind::MissingKernel,
        ErrorKind::BadKernel,
        ErrorKind::EmptyCommand,
        ErrorKind::BadEnvName,
        ErrorKind::BadDuration,
        ErrorKind::UnknownService,
        ErrorKind::ServiceCycle,
        ErrorKind::DuplicateServicePort,
        ErrorKind::IgnoredSetting,
        ErrorKind::Unreadable,
    ];

    /// The stable code shown as `error[code]` and in `berth validate --json`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotUtf8 => "not-utf8",
            ErrorKind::TomlSyntax => "toml-syntax",
            ErrorKind::UnknownKey => "unknown-key",
            ErrorKind::WrongType => "wrong-type",
            ErrorKind::BadEnum => "bad-enum",
            ErrorKind::MissingKey => "missing-key",
            ErrorKind::EmptyValue => "empty-value",
            ErrorKind::InvalidValue => "invalid-value",
            ErrorKind::BadName => "bad-name",
            ErrorKind::RelativePath => "relative-path",
            ErrorKind::BadMountTarget => "bad-mount-target",
            ErrorKind::DuplicateMountTarget => "duplicate-mount-target",
            ErrorKind::DuplicateHostPort => "duplicate-host-port",
            ErrorKind::BadPort => "bad-port",
            ErrorKind::BadAddress => "bad-address",
            ErrorKind::BadSize => "bad-size",
            ErrorKind::OutOfRange => "out-of-range",
            ErrorKind::BadImage => "bad-image",
            ErrorKind::BadPackage => "bad-package",
            ErrorKind::BadUrl => "bad-url",
            ErrorKind::PathNotFound => "path-not-found",
            ErrorKind::UnsafeMountSource => "unsafe-mount-source",
            ErrorKind::MisplacedKey => "misplaced-key",
            ErrorKind::BadDevice => "bad-device",
            ErrorKind::VmWithoutBackend => "vm-without-backend",
            ErrorKind::MissingKernel => "missing-kernel",
            ErrorKind::BadKernel => "bad-kernel",
            ErrorKind::EmptyCommand => "empty-command",
            ErrorKind::BadEnvName => "bad-env-name",
            ErrorKind::BadDuration => "bad-duration",
            ErrorKind::UnknownService => "unknown-service",
            ErrorKind::ServiceCycle => "service-cycle",
            ErrorKind::DuplicateServicePort => "duplicate-service-port",
            ErrorKind::IgnoredSetting => "ignored-setting",
            ErrorKind::Unreadable => "unreadable",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem, with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: ErrorKind,
    pub severity: Severity,
    pub message: String,
    /// Byte offsets into the file.
    pub span: Range<usize>,
    /// 1-based line of `span.start`.
    pub line: usize,
    /// 1-based column of `span.start`, counted in characters.
    pub column: usize,
    /// How to fix it.
    pub help: Option<String>,
}

/// Line and column (both 1-based, column in characters) of byte `offset` in `source`.
/// Offsets past the end or inside a character are clamped, never a panic.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset);
    let before = &source[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, offset: usize) -> usize {
    let mut o = offset.min(s.len());
    while !s.is_char_boundary(o) {
        o -= 1;
    }
    o
}

/// All diagnostics of one file, with the text needed to show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The file as the user named it (shown in `-->` lines).
    pub file: PathBuf,
    /// The file's text (lossily decoded when it is not UTF-8).
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn new(file: PathBuf, source: String) -> Self {
        Report {
            file,
            source,
            diagnostics: Vec::new(),
        }
    }

    /// Adds a diagnostic at `span`, computing its line and column.
    pub fn push(
        &mut self,
        kind: ErrorKind,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let start = floor_char_boundary(&self.source, span.start);
        let end = floor_char_boundary(&self.source, span.end.max(start));
        let (line, column) = line_column(&self.source, start);
        self.diagnostics.push(Diagnostic {
            kind,
            severity,
            message: message.into(),
            span: start..end,
            line,
            column,
            help,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Sorts diagnostics by position (stable for equal positions).
    pub fn sort(&mut self) {
        self.diagnostics.sort_by_key(|d| (d.span.start, d.span.end));
    }

    /// Renders every diagnostic the way rustc does, followed by a summary line. `color` adds
    /// ANSI colors (the caller decides: a terminal and no `NO_COLOR`).
    pub fn render(&self, color: bool) -> String {
        let paint = Paint { on: color };
        let mut out = String::new();
        for d in &self.diagnostics {
            self.render_one(&mut out, d, paint);
            out.push('\n');
        }
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        let file = self.file.display();
        if errors > 0 {
            let _ = write!(
                out,
                "{}: {} has {}{}",
                paint.red_bold("error"),
                file,
                plural(errors, "error"),
                if warnings > 0 {
                    format!(" and {}", plural(warnings, "warning"))
                } else {
                    String::new()
                },
            );
            out.push('\n');
        } else if warnings > 0 {
            let _ = writeln!(
                out,
                "{}: {} has {}",
                paint.yellow_bold("warning"),
                file,
                plural(warnings, "warning")
            );
        }
        out
    }

    fn render_one(&self, out: &mut String, d: &Diagnostic, paint: Paint) {
        let head = match d.severity {
            Severity::Error => paint.red_bold(&format!("error[{}]", d.kind.code())),
            Severity::Warning => paint.yellow_bold(&format!("warning[{}]", d.kind.code())),
        };
        let _ = writeln!(out, "{head}{}", paint.bold(&format!(": {}", d.message)));
        if d.kind == ErrorKind::Unreadable {
            let _ = writeln!(out, " {} {}", paint.blue_bold("-->"), self.file.display());
            if let Some(help) = &d.help {
                let _ = writeln!(
                    out,
                    "  {} {}: {help}",
                    paint.blue_bold("="),
                    paint.bold("help")
                );
            }
            return;
        }
        let line_text = self.source.split('\n').nth(d.line - 1).unwrap_or("");
        let line_text = line_text.strip_suffix('\r').unwrap_or(line_text);
        let gutter = d.line.to_string().len();
        let pad = " ".repeat(gutter);
        let _ = writeln!(
            out,
            "{pad}{} {}:{}:{}",
            paint.blue_bold("-->"),
            self.file.display(),
            d.line,
            d.column
        );
        let bar = paint.blue_bold("|");
        let _ = writeln!(out, "{pad} {bar}");
        // Show the line with tabs expanded, and underline the span's part on this line.
        let span_text = self.source.get(d.span.clone()).unwrap_or("");
        let (shown, caret_start, caret_len) = underline(line_text, d.column, span_text);
        let _ = writeln!(
            out,
            "{} {bar} {shown}",
            paint.blue_bold(&d.line.to_string())
        );
        let marks = "^".repeat(caret_len.max(1));
        let marks = match d.severity {
            Severity::Error => paint.red_bold(&marks),
            Severity::Warning => paint.yellow_bold(&marks),
        };
        let _ = writeln!(out, "{pad} {bar} {}{marks}", " ".repeat(caret_start));
        if let Some(help) = &d.help {
            let _ = writeln!(
                out,
                "{pad} {} {}: {help}",
                paint.blue_bold("="),
                paint.bold("help")
            );
        }
    }
}

/// The displayed line (tabs as 4 spaces, control characters as `?`), the caret's start
/// column and its width, both in displayed characters.
fn underline(line: &str, column: usize, span_text: &str) -> (String, usize, usize) {
    let span_on_line = span_text.split('\n').next().unwrap_or("");
    let span_chars = span_on_line.chars().count();
    let mut shown = String::new();
    let mut caret_start = 0;
    let mut caret_len = 0;
    for (i, c) in line.chars().enumerate() {
        let width = if c == '\t' { 4 } else { 1 };
        if i + 1 == column {
            caret_start = shown.chars().count();
        }
        if i + 1 >= column && i + 1 < column + span_chars {
            caret_len += width;
        }
        match c {
            '\t' => shown.push_str("    "),
            c if c.is_control() => shown.push('?'),
            c => shown.push(c),
        }
    }
    if column > line.chars().count() {
        caret_start = shown.chars().count();
    }
    (shown, caret_start, caret_len)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[derive(Clone, Copy)]
struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn red_bold(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn yellow_bold(self, s: &str) -> String {
        self.wrap("1;33", s)
    }
    fn blue_bold(self, s: &str) -> String {
        self.wrap("1;34", s)
    }
    fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let s = "a = 1\nbé = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        // é is 2 bytes: byte 10 (`=`) is the 4th character of line 2
        assert_eq!(line_column(s, 9), (2, 3));
        assert_eq!(line_column(s, 10), (2, 4));
        // inside é: clamped to its start
        assert_eq!(line_column(s, 8), (2, 2));
        assert_eq!(line_column(s, 1000), (3, 1));
    }

    #[test]
    fn renders_like_rustc() {
        let mut r = Report::new(
            "berth.toml".into(),
            "name = \"x\"\n[imgae]\nfrom = \"a\"\n".into(),
        );
        r.push(
            ErrorKind::UnknownKey,
            Severity::Error,
            12..17,
            "unknown key `imgae`",
            Some("did you mean `image`?".into()),
        );
        let text = r.render(false);
        let expected = "error[unknown-key]: unknown key `imgae`\n --> berth.toml:2:2\n  |\n2 | [imgae]\n  |  ^^^^^\n  = help: did you mean `image`?\n\nerror: berth.toml has 1 error\n";
        assert_eq!(text, expected, "got:\n{text}");
        assert!(r.render(true).contains("\x1b[1;31m"));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // a reversed span is exactly what is tested
    fn spans_out_of_range_do_not_panic() {
        let mut r = Report::new("f".into(), "é".into());
        r.push(ErrorKind::TomlSyntax, Severity::Error, 1..99, "x", None);
        r.push(ErrorKind::TomlSyntax, Severity::Error, 50..3, "y", None);
        let _ = r.render(true);
    }
}
