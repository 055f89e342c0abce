//! Word splitting, quote removal and variable expansion of instruction arguments, as
//! BuildKit's shell lexer does it for every instruction but the commands of `RUN`, `CMD`
//! and `ENTRYPOINT` (the shell expands those): `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?message}`; single quotes keep
//! everything, double quotes keep blanks, the escape character escapes the next one.

/// Looks a variable up (build arguments and the environment so far).
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Splits `s` at unquoted blanks into words, quotes removed and variables expanded.
pub fn words(s: &str, escape: char, vars: Lookup<'_>) -> Result<Vec<String>, String> {
    lex(s, escape, vars, true)
}

/// `s` as one word (blanks kept), quotes removed and variables expanded.
pub fn word(s: &str, escape: char, vars: Lookup<'_>) -> Result<String, String> {
    Ok(lex(s, escape, vars, false)?.join(""))
}

fn lex(s: &str, escape: char, vars: Lookup<'_>, split: bool) -> Result<Vec<String>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    // A word that is empty only because a variable expanded to nothing disappears (as in
    // a shell); `""` stays an (empty) word.
    let mut quoted = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if split && (c == ' ' || c == '\t' || c == '\n') {
            if in_word && (quoted || !cur.is_empty()) {
                out.push(std::mem::take(&mut cur));
            }
            in_word = false;
            quoted = false;
            i += 1;
            continue;
        }
        in_word = true;
        if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                cur.push(n);
                i += 2;
            } else {
                cur.push(c);
                i += 1;
            }
            continue;
        }
        if c == '\'' || c == '"' {
            quoted = true;
        }
        match c {
            '\'' => {
                let end = find(&chars, i + 1, '\'')
                    .ok_or_else(|| "unmatched single quote".to_string())?;
                cur.extend(&chars[i + 1..end]);
                i = end + 1;
            }
            '"' => {
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err("unmatched double quote".into());
                    };
                    if c == '"' {
                        i += 1;
                        break;
                    }
                    let next = chars.get(i + 1).copied();
                    if c == escape
                        && (matches!(next, Some('"' | '$' | '\\')) || next == Some(escape))
                    {
                        cur.push(chars[i + 1]);
                        i += 2;
                    } else if c == '$' {
                        i = variable(&chars, i, escape, vars, &mut cur)?;
                    } else {
                        cur.push(c);
                        i += 1;
                    }
                }
            }
            '$' => i = variable(&chars, i, escape, vars, &mut cur)?,
            _ => {
                cur.push(c);
                i += 1;
            }
        }
    }
    if (in_word && (quoted || !cur.is_empty())) || !split {
        out.push(cur);
    }
    Ok(out)
}

fn find(chars: &[char], from: usize, c: char) -> Option<usize> {
    (from..chars.len()).find(|&j| chars[j] == c)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the variable at `chars[i] == '$'` into `out`; returns the index after it.
fn variable(
    chars: &[char],
    i: usize,
    escape: char,
    vars: Lookup<'_>,
    out: &mut String,
) -> Result<usize, String> {
    let mut j = i + 1;
    if chars.get(j) == Some(&'{') {
        // Find the matching brace (nested `${…}` in the default allowed).
        let mut depth = 1;
        let mut k = j + 1;
        while k < chars.len() {
            match chars[k] {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        if k >= chars.len() {
            return Err("missing `}` after `${`".into());
        }
        let inner: String = chars[j + 1..k].iter().collect();
        let name_end = inner.find(|c: char| !is_name(c)).unwrap_or(inner.len());
        let name = &inner[..name_end];
        if name.is_empty() {
            return Err(format!("bad substitution `${{{inner}}}`"));
        }
        let value = vars(name);
        let rest = &inner[name_end..];
        let (colon, op, arg) = if let Some(r) = rest.strip_prefix(':') {
            (true, r.chars().next(), r.get(1..).unwrap_or(""))
        } else {
            (false, rest.chars().next(), rest.get(1..).unwrap_or(""))
        };
        let set = match &value {
            Some(v) => !colon || !v.is_empty(),
            None => false,
        };
        let expanded = match op {
            None => value.unwrap_or_default(),
            Some('-') if set => value.unwrap_or_default(),
            Some('-') => word(arg, escape, vars)?,
            Some('+') if set => word(arg, escape, vars)?,
            Some('+') => String::new(),
            Some('?') if set => value.unwrap_or_default(),
            Some('?') => {
                return Err(format!(
                    "{name}: {}",
                    if arg.is_empty() { "is not set" } else { arg }
                ))
            }
            Some(_) => return Err(format!("unsupported substitution `${{{inner}}}`")),
        };
        out.push_str(&expanded);
        return Ok(k + 1);
    }
    while j < chars.len() && is_name(chars[j]) {
        j += 1;
    }
    if j == i + 1 {
        out.push('$');
        return Ok(j);
    }
    let name: String = chars[i + 1..j].iter().collect();
    out.push_str(&vars(&name).unwrap_or_default());
    Ok(j)
}

/// `s` with its variables expanded and everything else kept as it is (heredoc bodies).
pub fn expand_only(s: &str, vars: Lookup<'_>) -> Result<String, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
        } else if chars[i] == '$' {
            i = variable(&chars, i, '\\', vars, &mut out)?;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `KEY=VALUE` pairs (`ENV a=1 b="two words"`, `LABEL`, `ARG`); the legacy `ENV KEY value`
/// form when `legacy` is allowed and the first word has no `=`.
pub fn pairs(
    s: &str,
    escape: char,
    vars: Lookup<'_>,
    legacy: bool,
) -> Result<Vec<(String, String)>, String> {
    let first = s.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let rest = s.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(format!("`{first}` needs a value: `{first}=VALUE`"));
        }
        return Ok(vec![(first.to_string(), word(rest, escape, vars)?)]);
    }
    let mut out = Vec::new();
    for w in split_raw(s, escape) {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("`{w}` is not KEY=VALUE"));
        };
        let k = word(k, escape, vars)?;
        if k.is_empty() {
            return Err(format!("`{w}` has an empty name"));
        }
        out.push((k, word(v, escape, vars)?));
    }
    Ok(out)
}

/// Splits at unquoted blanks, keeping quotes and escapes (for pairs, expanded after).
fn split_raw(s: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            Some(_) => cur.push(c),
            None if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(n: &str) -> Option<String> {
        match n {
            "A" => Some("one".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_and_quotes_like_buildkit() {
        let w = |s| words(s, '\\', &vars).unwrap();
        assert_eq!(w("$A ${A}x '$A' \"$A b\""), ["one", "onex", "$A", "one b"]);
        assert_eq!(
            w("${NOPE:-d$A} ${EMPTY:-e} ${EMPTY-e} ${A:+alt}"),
            ["done", "e", "alt"]
        );
        assert_eq!(w("\\$A a\\ b"), ["$A", "a b"]);
        assert_eq!(word("a  $A", '\\', &vars).unwrap(), "a  one");
        assert!(words("${NOPE:?must be set}", '\\', &vars)
            .unwrap_err()
            .contains("must be set"));
        assert!(words("'open", '\\', &vars).is_err());
    }

    #[test]
    fn pairs_in_both_env_forms() {
        let p = |s, legacy| pairs(s, '\\', &vars, legacy).unwrap();
        assert_eq!(
            p("X=1 Y=\"two words\" Z=$A", true),
            [
                ("X".into(), "1".into()),
                ("Y".into(), "two words".into()),
                ("Z".into(), "one".into())
            ]
        );
        assert_eq!(
            p("KEY the rest $A", true),
            [("KEY".into(), "the rest one".into())]
        );
        assert!(pairs("novalue", '\\', &vars, false).is_err());
    }
}
