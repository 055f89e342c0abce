//! The span-keeping readers: a table being checked ([`Tbl`]: its contents, where it is, its
//! path in the key table) and the checks of single values (strings, enumerations, integers,
//! sizes, arrays, commands, tables, `env` maps), each reporting a wrong type or value with the
//! span of the offending key or value. Also unknown keys, with a suggestion.

use std::collections::BTreeMap;

use toml_edit::{Item, TableLike, Value};

use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::keys::{self, KeyType};
use crate::size::{self, parse_size};

/// A kind of number with a unit (sizes, durations), read by [`Checker::quantity`].
pub(super) struct Quantity {
    /// What it is, with its article, in messages (`a size`).
    pub(super) noun: &'static str,
    /// The error of a value that cannot be read.
    pub(super) kind: ErrorKind,
    /// Reads the string form.
    pub(super) parse: fn(&str) -> Result<u64, String>,
    /// What one of a TOML integer is worth (1 byte; 1000 ms for a second).
    pub(super) per_integer: u64,
    /// The expected type, for `wrong-type`.
    pub(super) expected: &'static str,
    pub(super) units_help: &'static str,
    /// The help for zero.
    pub(super) zero_help: &'static str,
}

/// Sizes in bytes.
pub(super) const SIZE: Quantity = Quantity {
    noun: "a size",
    kind: ErrorKind::BadSize,
    parse: |s| parse_size(s).map_err(|e| e.to_string()),
    per_integer: 1,
    expected: "a size (a string such as \"2GiB\", or a number of bytes)",
    units_help: size::UNITS_HELP,
    zero_help: "give a size above zero, e.g. \"512MiB\", or remove the key",
};

/// A table being checked: its contents, where it is, and its path in the key table.
pub(super) struct Tbl<'d> {
    pub(super) t: &'d dyn TableLike,
    /// Where to point when the whole table is meant (its header line, or the inline table).
    pub(super) span: Span,
    /// Path in [`keys::KEYS`] (`""`, `"image"`, `"mounts[]"`, `"services.*"`).
    pub(super) spec: &'static str,
    /// Path shown in messages (`image`, `mounts`, `services.db`).
    pub(super) display: String,
}

impl<'d> Tbl<'d> {
    pub(super) fn key_display(&self, key: &str) -> String {
        if self.display.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.display)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<(&'d Item, Span)> {
        let (k, item) = self.t.get_key_value(key)?;
        if item.is_none() {
            return None;
        }
        let span = item
            .as_value()
            .and_then(Value::span)
            .or_else(|| k.span())
            .unwrap_or_else(|| self.span.clone());
        Some((item, span))
    }

    pub(super) fn key_span(&self, key: &str) -> Span {
        self.t
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .unwrap_or_else(|| self.span.clone())
    }
}

impl Checker<'_> {
    pub(super) fn unknown_keys(&mut self, tbl: &Tbl<'_>) {
        let allowed = keys::children(tbl.spec);
        let top_level = keys::children("");
        for (key, _) in tbl.t.iter() {
            if allowed.contains(&key) {
                continue;
            }
            let span = tbl.key_span(key);
            let shown = show_key(key);
            let top_scalar = !tbl.spec.is_empty()
                && top_level.contains(&key)
                && matches!(
                    keys::spec(key).map(|s| s.ty),
                    Some(KeyType::String | KeyType::Enum(_) | KeyType::StringArray)
                );
            let help = if top_scalar {
                Some(format!(
                    "`{key}` is a top-level key: in TOML every key after a `[table]` header belongs to that table, so move `{key} = …` above the first `[table]`"
                ))
            } else if let Some(s) = keys::suggest(key, &allowed) {
                Some(format!("did you mean `{s}`?"))
            } else if allowed.is_empty() {
                None
            } else {
                Some(format!("known keys here: {}", allowed.join(", ")))
            };
            let place = if tbl.display.is_empty() {
                String::new()
            } else {
                format!(" in `[{}]`", tbl.display)
            };
            self.error(
                ErrorKind::UnknownKey,
                span,
                format!("unknown key `{shown}`{place}"),
                help,
            );
        }
    }

    pub(super) fn wrong_type(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
        expected: &str,
        help: Option<String>,
    ) {
        let found = type_with_article(item);
        let help = help.or_else(|| match (expected, item.as_value()) {
            (e, Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_)))
                if e.starts_with("a string") =>
            {
                Some("put the value in double quotes".to_string())
            }
            (e, Some(Value::String(s)))
                if (e.starts_with("an integer") || e.starts_with("a number"))
                    && s.value().trim().parse::<f64>().is_ok() =>
            {
                Some("write the number without quotes".to_string())
            }
            _ => None,
        });
        self.error(
            ErrorKind::WrongType,
            span,
            format!("`{what}` must be {expected}, found {found}"),
            help,
        );
    }

    pub(super) fn string(&mut self, item: &Item, span: Span, what: &str) -> Option<String> {
        match item.as_str() {
            Some(s) => self.clean_string(s, span, what),
            None => {
                self.wrong_type(item, span, what, "a string", None);
                None
            }
        }
    }

    fn clean_string(&mut self, s: &str, span: Span, what: &str) -> Option<String> {
        if s.contains('\0') {
            self.error(
                ErrorKind::InvalidValue,
                span,
                format!("`{what}` contains a NUL character"),
                Some("remove the \\u0000 escape".into()),
            );
            return None;
        }
        Some(s.to_string())
    }

    pub(super) fn non_empty_string(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
    ) -> Option<String> {
        let s = self.string(item, span.clone(), what)?;
        if s.trim().is_empty() {
            self.error(
                ErrorKind::EmptyValue,
                span,
                format!("`{what}` is empty"),
                Some("give it a value or remove the key".into()),
            );
            return None;
        }
        Some(s)
    }

    pub(super) fn enumeration(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
        allowed: &[&'static str],
    ) -> Option<&'static str> {
        let s = self.string(item, span.clone(), what)?;
        if let Some(&v) = allowed.iter().find(|&&a| a == s) {
            return Some(v);
        }
        let list = allowed
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let help = match keys::suggest(&s, allowed) {
            Some(close) => format!("did you mean \"{close}\"? allowed values: {list}"),
            None => format!("allowed values: {list}"),
        };
        self.error(
            ErrorKind::BadEnum,
            span,
            format!("`{what}` must be one of {list}; found {s:?}"),
            Some(help),
        );
        None
    }

    pub(super) fn integer(&mut self, item: &Item, span: Span, what: &str) -> Option<i64> {
        match item.as_integer() {
            Some(i) => Some(i),
            None => {
                self.wrong_type(item, span, what, "an integer", None);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, item: &Item, span: Span, what: &str) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                let help = Some(
                    if item.as_str().is_some_and(|s| s == "true" || s == "false") {
                        "write true or false without quotes"
                    } else {
                        "write true or false"
                    }
                    .to_string(),
                );
                self.wrong_type(item, span, what, "a boolean (true or false)", help);
                None
            }
        }
    }

    /// A size: a string with a unit, or an integer number of bytes. Zero is refused.
    pub(super) fn size(&mut self, item: &Item, span: Span, what: &str) -> Option<u64> {
        self.quantity(item, span, what, &SIZE)
    }

    /// A number with a unit ([`Quantity`]): a string read by its parser, or a TOML integer
    /// in its integer unit. Zero is refused.
    pub(super) fn quantity(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
        q: &Quantity,
    ) -> Option<u64> {
        let value = match item.as_value() {
            Some(Value::String(s)) => match (q.parse)(s.value()) {
                Ok(v) => v,
                Err(e) => {
                    self.error(
                        q.kind,
                        span,
                        format!("`{what}` is not {}: {e}", q.noun),
                        Some(q.units_help.into()),
                    );
                    return None;
                }
            },
            Some(Value::Integer(i)) => {
                match u64::try_from(*i.value()).map(|n| n.checked_mul(q.per_integer)) {
                    Ok(Some(v)) => v,
                    bad => {
                        let why = if bad.is_err() {
                            "negative"
                        } else {
                            "too large"
                        };
                        self.error(
                            q.kind,
                            span,
                            format!("`{what}` is {why}"),
                            Some(q.units_help.into()),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.wrong_type(item, span, what, q.expected, Some(q.units_help.into()));
                return None;
            }
        };
        if value == 0 {
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!("`{what}` is zero"),
                Some(q.zero_help.into()),
            );
            return None;
        }
        Some(value)
    }

    /// An array of strings (each element checked); `non_empty_items` refuses "" elements.
    pub(super) fn string_array(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
        non_empty_items: bool,
    ) -> Option<Vec<(String, Span)>> {
        let Some(arr) = item.as_array() else {
            let help = item
                .as_str()
                .map(|s| format!("write a list: {} = [{:?}]", last_part(what), s));
            self.wrong_type(item, span, what, "an array of strings", help);
            return None;
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            let vspan = v.span().unwrap_or_else(|| span.clone());
            match v.as_str() {
                Some(s) => {
                    let Some(s) = self.clean_string(s, vspan.clone(), what) else {
                        continue;
                    };
                    if non_empty_items && s.trim().is_empty() {
                        self.error(
                            ErrorKind::EmptyValue,
                            vspan,
                            format!("`{what}` has an empty element"),
                            Some("remove the empty string".into()),
                        );
                        continue;
                    }
                    out.push((s, vspan));
                }
                None => {
                    let found = value_type_with_article(v);
                    let help = matches!(v, Value::Integer(_) | Value::Float(_) | Value::Boolean(_))
                        .then(|| "put the value in double quotes".to_string());
                    self.error(
                        ErrorKind::WrongType,
                        vspan,
                        format!("every element of `{what}` must be a string, found {found}"),
                        help,
                    );
                }
            }
        }
        Some(out)
    }

    pub(super) fn string_list(
        &mut self,
        tbl: &Tbl<'_>,
        key: &str,
        non_empty_items: bool,
    ) -> Vec<String> {
        let what = tbl.key_display(key);
        match tbl.get(key) {
            Some((item, span)) => self
                .string_array(item, span, &what, non_empty_items)
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            None => Vec::new(),
        }
    }

    /// A command: a non-empty array of strings, or one string run with `/bin/sh -c`.
    pub(super) fn command(&mut self, item: &Item, span: Span, what: &str) -> Option<Vec<String>> {
        if let Some(s) = item.as_str() {
            let s = self.clean_string(s, span.clone(), what)?;
            if s.trim().is_empty() {
                self.error(
                    ErrorKind::EmptyCommand,
                    span,
                    format!("`{what}` is an empty command"),
                    Some("give the program to run, e.g. [\"/bin/bash\", \"-l\"]".into()),
                );
                return None;
            }
            return Some(vec!["/bin/sh".into(), "-c".into(), s]);
        }
        if item.as_array().is_none() {
            self.wrong_type(
                item,
                span,
                what,
                "an array of strings (or one string for /bin/sh -c)",
                None,
            );
            return None;
        }
        let parts = self.string_array(item, span.clone(), what, false)?;
        match parts.first() {
            None => {
                self.error(
                    ErrorKind::EmptyCommand,
                    span,
                    format!("`{what}` is an empty command"),
                    Some("give the program and its arguments, e.g. [\"/bin/bash\", \"-l\"]".into()),
                );
                None
            }
            Some((first, fspan)) if first.trim().is_empty() => {
                self.error(
                    ErrorKind::EmptyCommand,
                    fspan.clone(),
                    format!("`{what}` starts with an empty program name"),
                    Some("the first element is the program to run".into()),
                );
                None
            }
            Some(_) => Some(parts.into_iter().map(|(s, _)| s).collect()),
        }
    }

    pub(super) fn table<'d>(
        &mut self,
        item: &'d Item,
        span: Span,
        what: &str,
        example: &str,
    ) -> Option<&'d dyn TableLike> {
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.wrong_type(item, span, what, "a table", Some(example.to_string()));
                None
            }
        }
    }

    pub(super) fn sub_table<'d>(
        &mut self,
        parent: &Tbl<'d>,
        key: &'static str,
        example: &str,
    ) -> Option<Tbl<'d>> {
        self.sub_table_at(parent, key, key, example)
    }

    /// [`Self::sub_table`] of a table below the top level: `spec` is its path in the key
    /// table (`"services.*.resources"`); messages name it after its parent (`services.db.resources`).
    pub(super) fn sub_table_at<'d>(
        &mut self,
        parent: &Tbl<'d>,
        key: &str,
        spec: &'static str,
        example: &str,
    ) -> Option<Tbl<'d>> {
        let (item, _) = parent.get(key)?;
        let span = self.item_head(item, parent.key_span(key));
        let display = parent.key_display(key);
        let t = self.table(item, span.clone(), &display, example)?;
        let tbl = Tbl {
            t,
            span,
            spec,
            display,
        };
        self.unknown_keys(&tbl);
        Some(tbl)
    }

    /// Where to point for a table-like item: a `[table]` header line, an inline table, or
    /// (for implicit and dotted tables) its key.
    pub(super) fn item_head(&self, item: &Item, key_span: Span) -> Span {
        match item {
            Item::Table(t) => t.span().map(|s| self.head(s)).unwrap_or(key_span),
            Item::Value(v) => v.span().unwrap_or(key_span),
            Item::ArrayOfTables(a) => a.span().map(|s| self.head(s)).unwrap_or(key_span),
            Item::None => key_span,
        }
    }

    /// The elements of an array of tables (`[[mounts]]` or `mounts = [{…}, {…}]`).
    pub(super) fn table_array<'d>(&mut self, parent: &Tbl<'d>, key: &'static str) -> Vec<Tbl<'d>> {
        let spec = match key {
            "mounts" => "mounts[]",
            _ => "ports[]",
        };
        self.table_array_at(parent, key, spec)
    }

    /// [`Self::table_array`] with the elements' path in the key table given
    /// (`"services.*.mounts[]"`); messages name the array after its parent (`services.db.mounts`).
    pub(super) fn table_array_at<'d>(
        &mut self,
        parent: &Tbl<'d>,
        key: &str,
        spec: &'static str,
    ) -> Vec<Tbl<'d>> {
        let Some((item, span)) = parent.get(key) else {
            return Vec::new();
        };
        let shown = parent.key_display(key);
        let mut out = Vec::new();
        match item {
            Item::ArrayOfTables(aot) => {
                for t in aot.iter() {
                    let tspan = t.span().map(|s| self.head(s)).unwrap_or(span.clone());
                    out.push(Tbl {
                        t,
                        span: tspan,
                        spec,
                        display: shown.clone(),
                    });
                }
            }
            Item::Value(Value::Array(arr)) => {
                for v in arr.iter() {
                    let vspan = v.span().unwrap_or(span.clone());
                    match v.as_inline_table() {
                        Some(t) => out.push(Tbl {
                            t,
                            span: vspan,
                            spec,
                            display: shown.clone(),
                        }),
                        None => {
                            let found = value_type_with_article(v);
                            self.error(
                                ErrorKind::WrongType,
                                vspan,
                                format!(
                                    "every element of `{shown}` must be a table, found {found}"
                                ),
                                Some(format!(
                                    "write each entry as a [[{shown}]] table or as {{ … }}"
                                )),
                            );
                        }
                    }
                }
            }
            other => {
                let hspan = self.item_head(other, parent.key_span(key));
                self.wrong_type(
                    other,
                    hspan,
                    &shown,
                    "an array of tables",
                    Some(format!(
                        "write each entry under its own [[{shown}]] header (double brackets)"
                    )),
                );
            }
        }
        for t in &out {
            self.unknown_keys(t);
        }
        out
    }

    pub(super) fn env_map(
        &mut self,
        item: &Item,
        span: Span,
        what: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let span = self.item_head(item, span);
        let Some(t) = self.table(
            item,
            span,
            what,
            "write variables as NAME = \"value\" under [env]",
        ) else {
            return out;
        };
        for (key, value) in t.iter() {
            let kspan = t
                .get_key_value(key)
                .and_then(|(k, _)| k.span())
                .unwrap_or(0..0);
            let vspan = value.span().unwrap_or(kspan.clone());
            if !is_env_name(key) {
                self.error(
                    ErrorKind::BadEnvName,
                    kspan,
                    format!(
                        "`{}` is not a valid environment variable name",
                        show_key(key)
                    ),
                    Some(
                        "use letters, digits and `_`, not starting with a digit (e.g. MY_VAR)"
                            .into(),
                    ),
                );
                continue;
            }
            let full = format!("{what}.{key}");
            match value.as_str() {
                Some(s) => {
                    if let Some(s) = self.clean_string(s, vspan, &full) {
                        out.insert(key.to_string(), s);
                    }
                }
                None => {
                    let help = matches!(
                        value.as_value(),
                        Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_))
                    )
                    .then(|| {
                        format!(
                            "environment values are text: write {key} = \"{}\"",
                            value_text(value)
                        )
                    });
                    self.wrong_type(value, vspan, &full, "a string", help);
                }
            }
        }
        out
    }
}

pub(super) fn show_key(k: &str) -> String {
    if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        format!("{k:?}")
    } else {
        k.to_string()
    }
}

fn last_part(what: &str) -> &str {
    what.rsplit('.').next().unwrap_or(what)
}

fn type_with_article(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_type_with_article(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_type_with_article(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

fn value_text(item: &Item) -> String {
    match item.as_value() {
        Some(Value::Integer(i)) => i.value().to_string(),
        Some(Value::Float(f)) => f.value().to_string(),
        Some(Value::Boolean(b)) => b.value().to_string(),
        _ => String::new(),
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
