//! Errors of the Dockerfile builder: each one that comes from the file points at
//! `Dockerfile:LINE:COL` and shows the line.

use std::path::PathBuf;

use super::super::error::ImageError;

/// A place in the Dockerfile (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// Something in the file itself: syntax, an unsupported instruction or flag, a bad
    /// reference.
    #[error("{file}:{line}:{col}: {message}\n{snippet}\n{hint}", line = pos.line, col = pos.col)]
    At {
        file: String,
        pos: Pos,
        message: String,
        snippet: String,
        hint: String,
    },
    #[error("cannot read {path}: {source}; check the `dockerfile`/`context` path")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// What the parser and the planner report before the file name and line text are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub pos: Pos,
    pub message: String,
    pub hint: String,
}

impl Located {
    pub fn new(pos: Pos, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Located {
            pos,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The full error, with the line of `source` it points at and a caret under the column.
    pub fn in_file(self, file: &str, source: &str) -> DockerfileError {
        let text = source
            .lines()
            .nth(self.pos.line.saturating_sub(1))
            .unwrap_or("");
        let caret = " ".repeat(self.pos.col.saturating_sub(1).min(text.len()));
        let snippet = format!("  {:>4} | {text}\n       | {caret}^", self.pos.line);
        DockerfileError::At {
            file: file.to_string(),
            pos: self.pos,
            message: self.message,
            snippet,
            hint: self.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_shows_file_line_column_the_line_and_a_caret() {
        let e = Located::new(
            Pos { line: 2, col: 1 },
            "unknown instruction `FOO`",
            "remove it",
        )
        .in_file("Dockerfile", "FROM x\nFOO bar\n");
        let s = e.to_string();
        assert!(
            s.starts_with("Dockerfile:2:1: unknown instruction `FOO`"),
            "{s}"
        );
        assert!(s.contains("   2 | FOO bar\n       | ^"), "{s}");
        assert!(s.ends_with("remove it"), "{s}");
    }
}
