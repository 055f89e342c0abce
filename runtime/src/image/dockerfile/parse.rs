//! The Dockerfile syntax: parser directives (`# escape=`), comments, line continuations,
//! instructions with their `--flags`, exec form (`["a", "b"]`) and shell form, and heredocs
//! (`RUN <<EOF`, `COPY <<EOF /dest`). Every piece keeps the line and column it came from,
//! so errors can point at `Dockerfile:LINE:COL`. Variables are expanded later
//! ([`super::words`]), per instruction, as BuildKit does.

use super::error::{Located, Pos};

/// One instruction, continuations joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Upper case (`RUN`, `COPY`, ...).
    pub keyword: String,
    /// Where the keyword starts.
    pub pos: Pos,
    pub flags: Vec<Flag>,
    pub args: Args,
    /// Where the arguments (after the flags) start.
    pub args_pos: Pos,
    pub heredocs: Vec<Heredoc>,
}

/// `--name=value` (or `--name` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub pos: Pos,
}

/// What follows the keyword and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// `["cmd", "arg"]`.
    Exec(Vec<String>),
    /// Everything else, as written (continuations joined).
    Shell(String),
}

impl Args {
    /// The text of the shell form; for the exec form its JSON.
    pub fn text(&self) -> String {
        match self {
            Args::Shell(s) => s.clone(),
            Args::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
        }
    }
}

/// A here-document: `<<EOF` (or `<<-EOF`, `<<"EOF"`) and the lines up to `EOF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// Its content, each line ending with a newline.
    pub body: String,
    /// Unquoted name: variables in the body are expanded (by the shell for `RUN`).
    pub expand: bool,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

/// Instructions whose arguments may hold heredocs.
const HEREDOC_KEYWORDS: [&str; 3] = ["RUN", "COPY", "ADD"];

/// Parses `source`.
pub fn parse(source: &str) -> Result<Dockerfile, Located> {
    let lines: Vec<&str> = source.split('\n').collect();
    let mut escape = '\\';
    let mut i = 0;
    // Parser directives: only at the very top, before any other line (comment or not).
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(Located::new(
                        Pos {
                            line: i + 1,
                            col: 1,
                        },
                        format!("invalid escape character `{other}`"),
                        "use `# escape=\\` or `# escape=``",
                    ))
                }
            };
        }
        i += 1;
    }
    let mut instructions = Vec::new();
    while i < lines.len() {
        let line = lines[i].trim_end_matches('\r');
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        // Join the continuation lines, remembering where each piece came from.
        let mut logical = LogicalLine::default();
        let mut at = i;
        loop {
            let raw = lines[at].trim_end_matches('\r');
            let (piece, continued) = strip_continuation(raw, escape);
            let start_col = if at == i {
                raw.len() - trimmed.len()
            } else {
                0
            };
            logical.push(&piece[start_col.min(piece.len())..], at + 1, start_col + 1);
            at += 1;
            if !continued {
                break;
            }
            // Empty and comment lines inside a continuation are dropped.
            while at < lines.len() {
                let t = lines[at].trim();
                if t.is_empty() || t.starts_with('#') {
                    at += 1;
                } else {
                    break;
                }
            }
            if at >= lines.len() {
                break;
            }
        }
        i = at;
        let mut ins = instruction(&logical)?;
        if HEREDOC_KEYWORDS.contains(&ins.keyword.as_str()) {
            let rest = match &ins.args {
                Args::Shell(s) => s.clone(),
                Args::Exec(_) => String::new(),
            };
            for (name, strip_tabs, expand) in heredoc_markers(&rest) {
                let mut body = String::new();
                let mut found = false;
                while i < lines.len() {
                    let l = lines[i].trim_end_matches('\r');
                    i += 1;
                    let l = if strip_tabs {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    };
                    if l == name {
                        found = true;
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                if !found {
                    return Err(Located::new(
                        ins.args_pos,
                        format!("heredoc `{name}` is never closed"),
                        format!("end it with a line holding only `{name}`"),
                    ));
                }
                ins.heredocs.push(Heredoc { name, body, expand });
            }
        }
        instructions.push(ins);
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// `# key=value` at the top of the file.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?;
    let (k, v) = rest.split_once('=')?;
    let k = k.trim().to_ascii_lowercase();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    Some((k, v.trim().to_string()))
}

/// The line without a trailing escape character (and the blanks after it), and whether
/// there was one.
fn strip_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(s) => (s.to_string(), true),
        None => (line.to_string(), false),
    }
}

/// An instruction's text joined from physical lines, with each byte's origin.
#[derive(Default)]
struct LogicalLine {
    text: String,
    /// (offset in `text`, line, column of that offset).
    pieces: Vec<(usize, usize, usize)>,
}

impl LogicalLine {
    fn push(&mut self, piece: &str, line: usize, col: usize) {
        self.pieces.push((self.text.len(), line, col));
        self.text.push_str(piece);
    }

    fn pos(&self, offset: usize) -> Pos {
        let (start, line, col) = self
            .pieces
            .iter()
            .rev()
            .find(|(s, _, _)| *s <= offset)
            .copied()
            .unwrap_or((0, 1, 1));
        Pos {
            line,
            col: col
                + self.text[start..offset.min(self.text.len())]
                    .chars()
                    .count(),
        }
    }
}

fn instruction(l: &LogicalLine) -> Result<Instruction, Located> {
    let text = &l.text;
    let kw_end = text.find(char::is_whitespace).unwrap_or(text.len());
    let keyword = text[..kw_end].to_ascii_uppercase();
    let pos = l.pos(0);
    if !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(Located::new(
            pos,
            format!("`{}` is not an instruction", &text[..kw_end]),
            "each line starts with an instruction such as FROM, RUN or COPY (a `\\` at the end of the line before continues it)",
        ));
    }
    let mut at = skip_blanks(text, kw_end);
    let mut flags = Vec::new();
    while text[at..].starts_with("--") {
        let end = text[at..]
            .find(char::is_whitespace)
            .map_or(text.len(), |e| at + e);
        let word = &text[at + 2..end];
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (word.to_string(), None),
        };
        flags.push(Flag {
            name,
            value,
            pos: l.pos(at),
        });
        at = skip_blanks(text, end);
    }
    let args_pos = l.pos(at);
    let rest = text[at..].trim_end();
    let args = if rest.starts_with('[') {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Exec(v),
            Err(_) => Args::Shell(rest.to_string()),
        }
    } else {
        Args::Shell(rest.to_string())
    };
    Ok(Instruction {
        keyword,
        pos,
        flags,
        args,
        args_pos,
        heredocs: Vec::new(),
    })
}

fn skip_blanks(text: &str, mut at: usize) -> usize {
    while text[at..].starts_with([' ', '\t']) {
        at += 1;
    }
    at
}

/// The heredoc markers in `text`, in order: (name, strip leading tabs, expand variables).
pub fn heredoc_markers(text: &str) -> Vec<(String, bool, bool)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c == b'<' && b.get(i + 1) == Some(&b'<') && b.get(i + 2) != Some(&b'<') => {
                let mut j = i + 2;
                let strip = b.get(j) == Some(&b'-');
                if strip {
                    j += 1;
                }
                let q = match b.get(j) {
                    Some(&c @ (b'\'' | b'"')) => {
                        j += 1;
                        Some(c)
                    }
                    _ => None,
                };
                let start = j;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                if j > start && q.is_none_or(|q| b.get(j) == Some(&q)) {
                    out.push((text[start..j].to_string(), strip, q.is_none()));
                    i = j + usize::from(q.is_some());
                    continue;
                }
            }
            None => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Dockerfile {
        parse(s).unwrap()
    }

    #[test]
    fn continuations_comments_flags_and_forms() {
        let d = p("# syntax=docker/dockerfile:1\n\nFROM debian AS build\n# a comment\nRUN --mount=type=cache,target=/c \\\n    # inside\n    apt-get update && \\\n    make\nCMD [\"/bin/app\", \"-v\"]\nENTRYPOINT [not json\n");
        assert_eq!(d.escape, '\\');
        assert_eq!(d.instructions.len(), 4);
        let from = &d.instructions[0];
        assert_eq!(from.keyword, "FROM");
        assert_eq!(from.pos, Pos { line: 3, col: 1 });
        assert_eq!(from.args, Args::Shell("debian AS build".into()));
        let run = &d.instructions[1];
        assert_eq!(run.pos, Pos { line: 5, col: 1 });
        assert_eq!(run.flags[0].name, "mount");
        assert_eq!(run.flags[0].value.as_deref(), Some("type=cache,target=/c"));
        assert_eq!(run.flags[0].pos, Pos { line: 5, col: 5 });
        assert_eq!(
            run.args,
            Args::Shell("apt-get update &&     make".into()),
            "{run:?}"
        );
        assert_eq!(run.args_pos, Pos { line: 7, col: 5 });
        assert_eq!(
            d.instructions[2].args,
            Args::Exec(vec!["/bin/app".into(), "-v".into()])
        );
        assert_eq!(d.instructions[3].args, Args::Shell("[not json".into()));
    }

    #[test]
    fn heredocs_take_the_lines_up_to_their_end_marker() {
        let d = p("FROM x\nRUN <<EOF\necho $HOME\nset -e\nEOF\nCOPY <<-'A' <<B /dest/\n\tone\n\tA\ntwo\nB\nUSER me\n");
        let run = &d.instructions[1];
        assert_eq!(run.heredocs.len(), 1);
        assert_eq!(run.heredocs[0].body, "echo $HOME\nset -e\n");
        assert!(run.heredocs[0].expand);
        let copy = &d.instructions[2];
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "A");
        assert_eq!(copy.heredocs[0].body, "one\n");
        assert!(!copy.heredocs[0].expand);
        assert_eq!(copy.heredocs[1].body, "two\n");
        assert_eq!(d.instructions[3].keyword, "USER");
        assert_eq!(d.instructions[3].pos.line, 11);
    }

    #[test]
    fn heredoc_markers_inside_quotes_are_text() {
        assert!(heredoc_markers("echo '<<EOF'").is_empty());
        assert_eq!(heredoc_markers("cat <<EOF > f").len(), 1);
        assert!(heredoc_markers("cat <<< word").is_empty());
    }

    #[test]
    fn the_escape_directive_changes_the_continuation_character() {
        let d = p("# escape=`\nFROM x\nRUN echo a `\n  b\n");
        assert_eq!(d.escape, '`');
        assert_eq!(d.instructions[1].args, Args::Shell("echo a   b".into()));
    }

    #[test]
    fn errors_point_at_their_line() {
        let e = parse("FROM x\nRUN <<EOF\nno end\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 5 });
        assert!(e.message.contains("never closed"));
        let e = parse("FROM x\n  {oops\n").unwrap_err();
        assert_eq!(e.pos, Pos { line: 2, col: 3 });
        let e = parse("# escape=x\nFROM x\n").unwrap_err();
        assert_eq!(e.pos.line, 1);
    }
}
