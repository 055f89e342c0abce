//! Compose's variable interpolation (`${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR:+alternative}`, `$VAR`, `$$`), applied to every string value of
//! the file before it is converted, from the variables of `berth init`'s environment and the
//! `.env` file beside the compose file (the environment wins, as in docker compose).

use std::collections::BTreeMap;

use serde_norway::Value;

use super::ComposeError;

/// What interpolation found worth telling: variables that were not set.
#[derive(Debug, Default)]
pub struct Interpolation {
    /// Variables used without a default and not set: replaced by "" as compose does.
    pub unset: Vec<String>,
}

/// Replaces the variables in every string of `v` (mapping keys are left alone).
pub fn interpolate(
    v: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Interpolation,
) -> Result<(), ComposeError> {
    match v {
        Value::String(s) => *s = expand(s, lookup, found)?,
        Value::Sequence(items) => {
            for i in items {
                interpolate(i, lookup, found)?;
            }
        }
        Value::Mapping(m) => {
            for (_, value) in m.iter_mut() {
                interpolate(value, lookup, found)?;
            }
        }
        Value::Tagged(t) => interpolate(&mut t.value, lookup, found)?,
        _ => {}
    }
    Ok(())
}

/// One string with its variables replaced.
pub fn expand(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Interpolation,
) -> Result<String, ComposeError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let Some(end) = closing_brace(r) else {
                return Err(ComposeError::Interpolation {
                    value: s.to_string(),
                    why: "a `${` has no closing `}`".into(),
                });
            };
            out.push_str(&braced(&r[..end], s, lookup, found)?);
            rest = &r[end + 1..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 || rest.starts_with(|c: char| c.is_ascii_digit()) {
                out.push('$');
                continue;
            }
            let name = &rest[..len];
            out.push_str(&value_or_unset(name, lookup, found));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${`, allowing nested `${…}` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn braced(
    inner: &str,
    whole: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Interpolation,
) -> Result<String, ComposeError> {
    let len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(len);
    if name.is_empty() {
        return Err(ComposeError::Interpolation {
            value: whole.to_string(),
            why: format!("`${{{inner}}}` names no variable"),
        });
    }
    let value = lookup(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    // With `:`, an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    let Some(kind) = op.chars().next() else {
        return Ok(value_or_unset(name, lookup, found));
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' if set => Ok(value.unwrap_or_default()),
        '-' => expand(arg, lookup, found),
        '+' if set => expand(arg, lookup, found),
        '+' => Ok(String::new()),
        '?' if set => Ok(value.unwrap_or_default()),
        '?' => Err(ComposeError::RequiredVariable {
            name: name.to_string(),
            message: arg.to_string(),
        }),
        _ => Err(ComposeError::Interpolation {
            value: whole.to_string(),
            why: format!("`${{{inner}}}` is not a form compose knows (`${{VAR:-default}}`, `${{VAR:?message}}`, `${{VAR:+alt}}`)"),
        }),
    }
}

fn value_or_unset(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Interpolation,
) -> String {
    lookup(name).unwrap_or_else(|| {
        if !found.unset.iter().any(|n| n == name) {
            found.unset.push(name.to_string());
        }
        String::new()
    })
}

/// The variables of a `.env`/`env_file` file: `KEY=VALUE` lines, `#` comments, optional
/// `export `, values in single quotes (literal) or double quotes (with `\n`, `\"` escapes).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            inner.to_string()
        } else if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
            inner
                .replace("\\n", "\n")
                .replace("\\\"", "\"")
                .replace("\\\\", "\\")
        } else {
            // An unquoted value ends at ` #`.
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        vars.insert(k.trim().to_string(), value);
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> Result<(String, Vec<String>), ComposeError> {
        let lookup = |n: &str| match n {
            "USER" => Some("ann".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let mut found = Interpolation::default();
        expand(s, &lookup, &mut found).map(|v| (v, found.unset))
    }

    #[test]
    fn every_form_compose_knows() {
        assert_eq!(run("a $USER b").unwrap().0, "a ann b");
        assert_eq!(run("${USER}x").unwrap().0, "annx");
        assert_eq!(run("${NOPE:-def}").unwrap().0, "def");
        assert_eq!(run("${EMPTY:-def}").unwrap().0, "def");
        assert_eq!(run("${EMPTY-def}").unwrap().0, "");
        assert_eq!(run("${NOPE:-${USER}}").unwrap().0, "ann");
        assert_eq!(run("${USER:+yes}${NOPE:+no}").unwrap().0, "yes");
        assert_eq!(run("$$HOME costs $5").unwrap().0, "$HOME costs $5");
        let (v, unset) = run("x${NOPE}y").unwrap();
        assert_eq!((v.as_str(), unset), ("xy", vec!["NOPE".to_string()]));
    }

    #[test]
    fn required_and_malformed_variables_are_errors() {
        assert!(matches!(
            run("${DB_PASSWORD:?set DB_PASSWORD first}"),
            Err(ComposeError::RequiredVariable { name, message }) if name == "DB_PASSWORD" && message == "set DB_PASSWORD first"
        ));
        assert!(matches!(
            run("${USER"),
            Err(ComposeError::Interpolation { .. })
        ));
        assert!(matches!(
            run("${USER/x/y}"),
            Err(ComposeError::Interpolation { .. })
        ));
        // A multi-byte character where the operator goes is an error, not a panic.
        assert!(matches!(
            run("${USER€x}"),
            Err(ComposeError::Interpolation { .. })
        ));
    }

    #[test]
    fn env_files() {
        let vars = parse_env_file(
            "# comment\nexport A=1\nB = 'x y'\nC=\"a\\nb\"\nD=plain # note\nnot a line\n",
        );
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "x y");
        assert_eq!(vars["C"], "a\nb");
        assert_eq!(vars["D"], "plain");
        assert_eq!(vars.len(), 4);
    }
}
