//! Walks a parsed berth.toml by hand, section by section, and builds the normalized [`Plan`].
//! Every problem becomes a [`Diagnostic`](crate::Diagnostic) with the span of the offending key
//! or value; nothing stops at the first problem. The table of known keys is [`crate::keys`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use crate::diagnostic::{ErrorKind, Report, Severity};
use crate::inputs;
use crate::keys::{self, KeyType};
use crate::name;
use crate::plan::*;
use crate::reference::ImageReference;
use crate::size::{self, parse_size};

/// Default shell command.
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-l"];
/// Default guest memory of a VM.
pub const DEFAULT_VM_MEMORY: u64 = 1 << 30;
/// Default number of vCPUs of a VM.
pub const DEFAULT_VM_VCPUS: u32 = 1;
/// Largest `resources.cpus` accepted.
pub const MAX_CPUS: f64 = 4096.0;
/// Largest `vm.vcpus` accepted.
pub const MAX_VCPUS: i64 = 255;
/// Largest `resources.pids` accepted (Linux's own pid_max ceiling).
pub const MAX_PIDS: i64 = 4_194_304;

type Span = Range<usize>;

/// A table being checked: its contents, where it is, and its path in the key table.
struct Tbl<'d> {
    t: &'d dyn TableLike,
    /// Where to point when the whole table is meant (its header line, or the inline table).
    span: Span,
    /// Path in [`keys::KEYS`] (`""`, `"image"`, `"mounts[]"`, `"services.*"`).
    spec: &'static str,
    /// Path shown in messages (`image`, `mounts`, `services.db`).
    display: String,
}

impl<'d> Tbl<'d> {
    fn key_display(&self, key: &str) -> String {
        if self.display.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.display)
        }
    }

    fn get(&self, key: &str) -> Option<(&'d Item, Span)> {
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

    fn key_span(&self, key: &str) -> Span {
        self.t
            .get_key_value(key)
            .and_then(|(k, _)| k.span())
            .unwrap_or_else(|| self.span.clone())
    }
}

pub(crate) struct Checker<'a> {
    pub report: Report,
    source: &'a str,
    project_dir: PathBuf,
}

impl<'a> Checker<'a> {
    pub fn new(report: Report, source: &'a str, project_dir: PathBuf) -> Self {
        Checker {
            report,
            source,
            project_dir,
        }
    }

    fn error(&mut self, kind: ErrorKind, span: Span, msg: impl Into<String>, help: Option<String>) {
        self.report.push(kind, Severity::Error, span, msg, help);
    }

    fn warn(&mut self, kind: ErrorKind, span: Span, msg: impl Into<String>, help: Option<String>) {
        self.report.push(kind, Severity::Warning, span, msg, help);
    }

    /// The first line of a span (a table's header rather than its whole body).
    fn head(&self, span: Span) -> Span {
        let text = self.source.get(span.clone()).unwrap_or("");
        match text.find('\n') {
            Some(i) => span.start..span.start + i,
            None => span,
        }
    }

    /// Checks the whole document and returns the plan (meaningful only when no error was found).
    pub fn check(&mut self, root: &toml_edit::Table, file: PathBuf) -> Plan {
        let root = Tbl {
            t: root,
            span: 0..0,
            spec: "",
            display: String::new(),
        };
        self.unknown_keys(&root);

        let name = match root.get("name") {
            Some((item, span)) => match self.string(item, span.clone(), "name") {
                Some(n) => {
                    if let Err(why) = name::check_name(&n) {
                        self.error(
                            ErrorKind::BadName,
                            span,
                            format!("invalid environment name {n:?}: {why}"),
                            Some(format!(
                                "use lowercase letters, digits and `-`, e.g. name = \"{}\"",
                                name::derive_name(&n)
                            )),
                        );
                    }
                    n
                }
                None => String::new(),
            },
            None => name::derive_name(
                &self
                    .project_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        };

        // `backend_known` is false after a bad `backend` value: then the [vm] cross-checks
        // would only repeat that error.
        let (backend, backend_span, backend_known) = match root.get("backend") {
            Some((item, span)) => {
                match self.enumeration(item, span.clone(), "backend", keys::BACKENDS) {
                    Some("vm") => (BackendKind::Vm, Some(span), true),
                    Some(_) => (BackendKind::Container, Some(span), true),
                    None => (BackendKind::Container, Some(span), false),
                }
            }
            None => (BackendKind::Container, None, true),
        };

        let on_create = self.string_list(&root, "on_create", true);
        let on_up = self.string_list(&root, "on_up", true);
        let devices = self.devices(&root, backend);
        let mut image = self.image(&root);
        let env = match root.get("env") {
            Some((item, span)) => self.env_map(item, span, "env"),
            None => BTreeMap::new(),
        };
        let mounts = self.mounts(&root);
        if image.workdir.is_empty() {
            image.workdir = mounts
                .iter()
                .find(|m| {
                    matches!(m.kind, MountKind::Bind | MountKind::Sync)
                        && m.source.as_deref().map(Path::new) == Some(self.project_dir.as_path())
                })
                .map_or_else(|| "/".to_string(), |m| m.target.clone());
        }
        let network = self.network(&root);
        let ports = self.ports(&root, network.mode);
        let resources = self.resources(&root);
        let shell = self.shell(&root, &mounts);
        let services = self.services(&root, shell.workdir.as_deref().unwrap_or("/"));
        let vm = self.vm(&root, backend, backend_span, backend_known);

        Plan {
            name,
            file,
            project_dir: self.project_dir.clone(),
            backend,
            on_create,
            on_up,
            devices,
            image,
            env,
            mounts,
            ports,
            resources,
            network,
            shell,
            services,
            vm,
        }
    }

    /// `devices`: absolute paths (or `*`/`?` patterns) under /dev; containers only.
    fn devices(&mut self, root: &Tbl<'_>, backend: BackendKind) -> Vec<String> {
        let Some((item, span)) = root.get("devices") else {
            return Vec::new();
        };
        let Some(entries) = self.string_array(item, span.clone(), "devices", true) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (pattern, vspan) in entries {
            if let Err(why) = crate::devices::check_pattern(&pattern) {
                self.error(
                    ErrorKind::BadDevice,
                    vspan,
                    format!("invalid device {why}"),
                    Some("give a host device node such as \"/dev/kvm\", or a pattern such as \"/dev/dri/*\" (`*` and `?` match within one path component)".into()),
                );
            } else if !out.contains(&pattern) {
                out.push(pattern);
            }
        }
        if backend == BackendKind::Vm && !out.is_empty() {
            self.warn(
                ErrorKind::IgnoredSetting,
                root.key_span("devices"),
                "`devices` has no effect with backend = \"vm\": a VM's devices are its own",
                Some("remove `devices`, or use backend = \"container\" to give host devices to the environment".into()),
            );
        }
        out
    }

    // ----- generic readers ------------------------------------------------------------------

    fn unknown_keys(&mut self, tbl: &Tbl<'_>) {
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

    fn wrong_type(
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

    fn string(&mut self, item: &Item, span: Span, what: &str) -> Option<String> {
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

    fn non_empty_string(&mut self, item: &Item, span: Span, what: &str) -> Option<String> {
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

    fn enumeration(
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

    fn integer(&mut self, item: &Item, span: Span, what: &str) -> Option<i64> {
        match item.as_integer() {
            Some(i) => Some(i),
            None => {
                self.wrong_type(item, span, what, "an integer", None);
                None
            }
        }
    }

    fn boolean(&mut self, item: &Item, span: Span, what: &str) -> Option<bool> {
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
    fn size(&mut self, item: &Item, span: Span, what: &str) -> Option<u64> {
        let bytes = match item.as_value() {
            Some(Value::String(s)) => match parse_size(s.value()) {
                Ok(b) => b,
                Err(e) => {
                    self.error(
                        ErrorKind::BadSize,
                        span,
                        format!("`{what}` is not a size: {e}"),
                        Some(size::UNITS_HELP.into()),
                    );
                    return None;
                }
            },
            Some(Value::Integer(i)) => match u64::try_from(*i.value()) {
                Ok(b) => b,
                Err(_) => {
                    self.error(
                        ErrorKind::BadSize,
                        span,
                        format!("`{what}` is negative"),
                        Some(size::UNITS_HELP.into()),
                    );
                    return None;
                }
            },
            _ => {
                self.wrong_type(
                    item,
                    span,
                    what,
                    "a size (a string such as \"2GiB\", or a number of bytes)",
                    Some(size::UNITS_HELP.into()),
                );
                return None;
            }
        };
        if bytes == 0 {
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!("`{what}` is zero"),
                Some("give a size above zero, e.g. \"512MiB\", or remove the key".into()),
            );
            return None;
        }
        Some(bytes)
    }

    /// An array of strings (each element checked); `non_empty_items` refuses "" elements.
    fn string_array(
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

    fn string_list(&mut self, tbl: &Tbl<'_>, key: &str, non_empty_items: bool) -> Vec<String> {
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
    fn command(&mut self, item: &Item, span: Span, what: &str) -> Option<Vec<String>> {
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

    fn table<'d>(
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

    fn sub_table<'d>(
        &mut self,
        parent: &Tbl<'d>,
        key: &'static str,
        example: &str,
    ) -> Option<Tbl<'d>> {
        let (item, _) = parent.get(key)?;
        let span = self.item_head(item, parent.key_span(key));
        let t = self.table(item, span.clone(), key, example)?;
        let tbl = Tbl {
            t,
            span,
            spec: key,
            display: key.to_string(),
        };
        self.unknown_keys(&tbl);
        Some(tbl)
    }

    /// Where to point for a table-like item: a `[table]` header line, an inline table, or
    /// (for implicit and dotted tables) its key.
    fn item_head(&self, item: &Item, key_span: Span) -> Span {
        match item {
            Item::Table(t) => t.span().map(|s| self.head(s)).unwrap_or(key_span),
            Item::Value(v) => v.span().unwrap_or(key_span),
            Item::ArrayOfTables(a) => a.span().map(|s| self.head(s)).unwrap_or(key_span),
            Item::None => key_span,
        }
    }

    /// The elements of an array of tables (`[[mounts]]` or `mounts = [{…}, {…}]`).
    fn table_array<'d>(&mut self, parent: &Tbl<'d>, key: &'static str) -> Vec<Tbl<'d>> {
        let Some((item, span)) = parent.get(key) else {
            return Vec::new();
        };
        let spec = match key {
            "mounts" => "mounts[]",
            _ => "ports[]",
        };
        let mut out = Vec::new();
        match item {
            Item::ArrayOfTables(aot) => {
                for t in aot.iter() {
                    let tspan = t.span().map(|s| self.head(s)).unwrap_or(span.clone());
                    out.push(Tbl {
                        t,
                        span: tspan,
                        spec,
                        display: key.to_string(),
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
                            display: key.to_string(),
                        }),
                        None => {
                            let found = value_type_with_article(v);
                            self.error(
                                ErrorKind::WrongType,
                                vspan,
                                format!("every element of `{key}` must be a table, found {found}"),
                                Some(format!(
                                    "write each entry as a [[{key}]] table or as {{ … }}"
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
                    key,
                    "an array of tables",
                    Some(format!(
                        "write each entry under its own [[{key}]] header (double brackets)"
                    )),
                );
            }
        }
        for t in &out {
            self.unknown_keys(t);
        }
        out
    }

    fn env_map(&mut self, item: &Item, span: Span, what: &str) -> BTreeMap<String, String> {
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

    // ----- host paths -----------------------------------------------------------------------

    /// A host path from the file: `~/…` is under $HOME, a relative path is under the folder of
    /// the berth.toml; the result is absolute and lexically normalized.
    fn host_path(&self, s: &str) -> PathBuf {
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
    fn existing_path(
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
    fn guest_path(&mut self, s: &str, span: Span, what: &str, mount: bool) -> Option<String> {
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

    // ----- sections ---------------------------------------------------------------------------

    fn image(&mut self, root: &Tbl<'_>) -> ImagePlan {
        let fallback = ImagePlan {
            from: ImageSource::Debootstrap {
                suite: String::new(),
                mirror: None,
            },
            packages: Vec::new(),
            setup: Vec::new(),
            inputs: Vec::new(),
            workdir: String::new(),
            host_ca: true,
        };
        if root.get("image").is_none() {
            self.error(
                ErrorKind::MissingKey,
                0..0,
                "missing `[image]`: berth needs to know what to start from",
                Some("add a table `[image]` with `from = \"docker.io/library/debian:bookworm\"` (or \"debootstrap:bookworm\")".into()),
            );
            return fallback;
        }
        if let Some((item, _)) = root.get("image") {
            if let Some(s) = item.as_str() {
                let span = item.span().unwrap_or(0..0);
                self.error(
                    ErrorKind::WrongType,
                    span,
                    "`image` must be a table, found a string",
                    Some(format!("write it as a table:\n[image]\nfrom = {s:?}").replace('\n', " ")),
                );
                return fallback;
            }
        }
        let Some(img) = self.sub_table(root, "image", "write `[image]` with `from = \"…\"`")
        else {
            return fallback;
        };
        let from = match img.get("from") {
            None => {
                self.error(
                    ErrorKind::MissingKey,
                    img.span.clone(),
                    "`[image]` has no `from`",
                    Some("add from = \"docker.io/library/debian:bookworm\" (or \"debootstrap:SUITE\", \"rootfs:./dir\", \"tar:./rootfs.tar\")".into()),
                );
                None
            }
            Some((item, span)) => self
                .string(item, span.clone(), "image.from")
                .and_then(|s| self.image_source(&s, span)),
        };
        let packages = match img.get("packages") {
            Some((item, span)) => self
                .string_array(item, span, "image.packages", false)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(p, pspan)| {
                    if let Err(why) = check_package(&p) {
                        self.error(
                            ErrorKind::BadPackage,
                            pspan,
                            format!("`{p}` is not a valid package name: {why}"),
                            Some(
                                "write one package per string, e.g. packages = [\"git\", \"curl\"]"
                                    .into(),
                            ),
                        );
                        None
                    } else {
                        Some(p)
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let setup = self.string_list(&img, "setup", true);
        let mirror = img.get("mirror").and_then(|(item, span)| {
            let m = self.non_empty_string(item, span.clone(), "image.mirror")?;
            if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/")) {
                self.error(
                    ErrorKind::BadUrl,
                    span,
                    format!("`image.mirror` is not an http(s):// or file:/ URL: {m:?}"),
                    Some("e.g. mirror = \"http://deb.debian.org/debian\"".into()),
                );
                return None;
            }
            Some(m)
        });
        let from = match from {
            Some(ImageSource::Debootstrap { suite, .. }) => {
                ImageSource::Debootstrap { suite, mirror }
            }
            Some(other) => {
                if img.get("mirror").is_some() {
                    self.error(
                        ErrorKind::MisplacedKey,
                        img.key_span("mirror"),
                        "`image.mirror` applies only to `from = \"debootstrap:SUITE\"`",
                        Some("remove `mirror`, or use a debootstrap image".into()),
                    );
                }
                other
            }
            None => fallback.from,
        };
        let inputs = self.inputs(&img);
        // Empty until the mounts are known (`check` fills in the default).
        let workdir = img
            .get("workdir")
            .and_then(|(item, span)| {
                let w = self.string(item, span.clone(), "image.workdir")?;
                self.guest_path(&w, span, "image.workdir", false)
            })
            .unwrap_or_default();
        let host_ca = img
            .get("host_ca")
            .and_then(|(item, span)| self.boolean(item, span, "image.host_ca"))
            .unwrap_or(true);
        ImagePlan {
            from,
            packages,
            setup,
            inputs,
            workdir,
            host_ca,
        }
    }

    /// `image.inputs`: every pattern well-formed and matching at least one project file.
    fn inputs(&mut self, img: &Tbl<'_>) -> Vec<String> {
        let Some((item, span)) = img.get("inputs") else {
            return Vec::new();
        };
        let Some(list) = self.string_array(item, span.clone(), "image.inputs", true) else {
            return Vec::new();
        };
        let mut good = Vec::new();
        for (pattern, pspan) in &list {
            match inputs::check_pattern(pattern) {
                Ok(()) => good.push((pattern.clone(), pspan.clone())),
                Err(why) => self.error(
                    ErrorKind::InvalidValue,
                    pspan.clone(),
                    format!("`image.inputs` pattern {pattern:?}: {why}"),
                    Some("write a pattern relative to the project folder, e.g. \"package*.json\" or \"src/**/*.py\"".into()),
                ),
            }
        }
        let patterns: Vec<String> = good.iter().map(|(p, _)| p.clone()).collect();
        match inputs::expand(&self.project_dir, &patterns) {
            Ok((_, matched)) => {
                for ((pattern, pspan), hit) in good.iter().zip(matched) {
                    if !hit {
                        self.error(
                            ErrorKind::PathNotFound,
                            pspan.clone(),
                            format!(
                                "`image.inputs` pattern {pattern:?} matches no file in {}",
                                self.project_dir.display()
                            ),
                            Some("fix the pattern (it is relative to the project folder), or remove it".into()),
                        );
                    }
                }
            }
            Err(e) => self.error(
                ErrorKind::PathNotFound,
                span,
                format!(
                    "`image.inputs`: cannot list {}: {e}",
                    self.project_dir.display()
                ),
                Some("make the project folder readable".into()),
            ),
        }
        patterns
    }

    fn image_source(&mut self, s: &str, span: Span) -> Option<ImageSource> {
        let help = "use an OCI reference such as \"docker.io/library/debian:bookworm\", or \"debootstrap:bookworm\", \"rootfs:./dir\", \"tar:./rootfs.tar\"";
        if let Some(suite) = s.strip_prefix("debootstrap:") {
            let ok = !suite.is_empty()
                && suite.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && suite
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                self.error(
                    ErrorKind::BadImage,
                    span,
                    format!("{suite:?} is not a Debian suite name"),
                    Some(
                        "name a suite such as \"debootstrap:bookworm\" or \"debootstrap:stable\""
                            .into(),
                    ),
                );
                return None;
            }
            return Some(ImageSource::Debootstrap {
                suite: suite.to_string(),
                mirror: None,
            });
        }
        if let Some(path) = s.strip_prefix("rootfs:") {
            return self
                .existing_path(path, span, "image.from (rootfs:)", Some(true))
                .map(|path| ImageSource::Rootfs { path });
        }
        if let Some(path) = s.strip_prefix("tar:") {
            return self
                .existing_path(path, span, "image.from (tar:)", Some(false))
                .map(|path| ImageSource::Tar { path });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            self.error(
                ErrorKind::BadImage,
                span,
                format!("image references have no `{scheme}://` prefix: {s:?}"),
                Some(format!(
                    "write {:?}",
                    s.split_once("://").map_or(s, |(_, r)| r)
                )),
            );
            return None;
        }
        match ImageReference::parse(s) {
            Ok(reference) => Some(ImageSource::Oci { reference }),
            Err(e) => {
                self.error(
                    ErrorKind::BadImage,
                    span,
                    format!("`image.from` is not a valid image: {e}"),
                    Some(help.into()),
                );
                None
            }
        }
    }

    fn mounts(&mut self, root: &Tbl<'_>) -> Vec<MountPlan> {
        let tables = self.table_array(root, "mounts");
        let mut out: Vec<MountPlan> = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for m in &tables {
            let kind = match m.get("type") {
                Some((item, span)) => {
                    self.enumeration(item, span, "mounts.type", keys::MOUNT_TYPES)
                }
                None => Some("bind"),
            };
            let kind = match kind {
                Some("sync") => Some(MountKind::Sync),
                Some("volume") => Some(MountKind::Volume),
                Some("tmpfs") => Some(MountKind::Tmpfs),
                Some(_) => Some(MountKind::Bind),
                None => None,
            };
            let target = match m.get("target") {
                None => {
                    self.error(
                        ErrorKind::MissingKey,
                        m.span.clone(),
                        "this mount has no `target`",
                        Some(
                            "add target = \"/work\" (an absolute path inside the environment)"
                                .into(),
                        ),
                    );
                    None
                }
                Some((item, span)) => self
                    .string(item, span.clone(), "mounts.target")
                    .and_then(|t| self.guest_path(&t, span.clone(), "mounts.target", true))
                    .map(|t| (t, span)),
            };
            if let Some((t, span)) = &target {
                if let Some(first) = seen.get(t) {
                    let (line, _) = crate::diagnostic::line_column(self.source, first.start);
                    self.error(
                        ErrorKind::DuplicateMountTarget,
                        span.clone(),
                        format!("two mounts on {t}"),
                        Some(format!("the first mount on {t} is on line {line}; remove one or change its target")),
                    );
                } else {
                    seen.insert(t.clone(), span.clone());
                }
            }
            let readonly = match m.get("readonly") {
                Some((item, span)) => self.boolean(item, span, "mounts.readonly").unwrap_or(false),
                None => false,
            };
            let unsafe_host_path = match m.get("unsafe_host_path") {
                Some((item, span)) => {
                    let v = self.boolean(item, span, "mounts.unsafe_host_path");
                    if matches!(kind, Some(MountKind::Volume | MountKind::Tmpfs)) {
                        self.error(
                            ErrorKind::MisplacedKey,
                            m.key_span("unsafe_host_path"),
                            "`unsafe_host_path` applies only to bind and sync mounts (their source is a host path)",
                            Some("remove `unsafe_host_path`".into()),
                        );
                    }
                    v.unwrap_or(false)
                }
                None => false,
            };
            let source = match (kind, m.get("source")) {
                (Some(MountKind::Tmpfs), Some(_)) => {
                    self.error(
                        ErrorKind::MisplacedKey,
                        m.key_span("source"),
                        "a tmpfs mount has no `source`",
                        Some("remove `source` (a tmpfs starts empty), or choose another type".into()),
                    );
                    None
                }
                (Some(MountKind::Tmpfs) | None, None) | (None, Some(_)) => None,
                (Some(k), None) => {
                    let example = if k == MountKind::Volume { "\"cache\" (a volume name)" } else { "\".\" (the project folder)" };
                    self.error(
                        ErrorKind::MissingKey,
                        m.span.clone(),
                        format!("this {} mount has no `source`", mount_kind_str(k)),
                        Some(format!("add source = {example}")),
                    );
                    None
                }
                (Some(MountKind::Volume), Some((item, span))) => {
                    self.string(item, span.clone(), "mounts.source").and_then(|v| {
                        if is_volume_name(&v) {
                            Some(v)
                        } else {
                            self.error(
                                ErrorKind::BadName,
                                span,
                                format!("{v:?} is not a valid volume name"),
                                Some("a volume source is a name: letters, digits, `_`, `.`, `-`, starting with a letter or digit".into()),
                            );
                            None
                        }
                    })
                }
                (Some(_), Some((item, span))) => self
                    .string(item, span.clone(), "mounts.source")
                    .and_then(|s| {
                        let p = self.existing_path(&s, span.clone(), "mounts.source", None)?;
                        if !unsafe_host_path {
                            if let Some(why) = unsafe_source(&s, &p, &self.project_dir) {
                                self.error(
                                    ErrorKind::UnsafeMountSource,
                                    span,
                                    format!("mount source {s:?} {why}"),
                                    Some("mount a folder of the project instead; if you really mean to share this host path, add `unsafe_host_path = true` to this mount".into()),
                                );
                                return None;
                            }
                        }
                        Some(p)
                    })
                    .map(|p| p.to_string_lossy().into_owned()),
            };
            let ignore = match m.get("ignore") {
                Some((item, span)) => {
                    let list = self
                        .string_array(item, span, "mounts.ignore", true)
                        .unwrap_or_default();
                    if kind.is_some() && kind != Some(MountKind::Sync) {
                        self.error(
                            ErrorKind::MisplacedKey,
                            m.key_span("ignore"),
                            "`ignore` applies only to mounts with type = \"sync\"",
                            Some("remove `ignore`, or set type = \"sync\"".into()),
                        );
                    }
                    list.into_iter().map(|(s, _)| s).collect()
                }
                None => Vec::new(),
            };
            let size = match m.get("size") {
                Some((item, span)) => {
                    let s = self.size(item, span, "mounts.size");
                    if kind.is_some() && kind != Some(MountKind::Tmpfs) {
                        self.error(
                            ErrorKind::MisplacedKey,
                            m.key_span("size"),
                            "`size` applies only to mounts with type = \"tmpfs\"",
                            Some("remove `size`, or set type = \"tmpfs\"".into()),
                        );
                    }
                    s
                }
                None => None,
            };
            if let (Some(kind), Some((target, _))) = (kind, target) {
                out.push(MountPlan {
                    source,
                    target,
                    kind,
                    readonly,
                    ignore,
                    size,
                    unsafe_host_path,
                });
            }
        }
        out
    }

    fn ports(&mut self, root: &Tbl<'_>, mode: NetworkMode) -> Vec<PortPlan> {
        let tables = self.table_array(root, "ports");
        let mut out: Vec<PortPlan> = Vec::new();
        let mut seen: Vec<(PortPlan, Span)> = Vec::new();
        for p in &tables {
            let port = |c: &mut Self, key: &str| -> Option<(u16, Span)> {
                let what = format!("ports.{key}");
                match p.get(key) {
                    None => {
                        c.error(
                            ErrorKind::MissingKey,
                            p.span.clone(),
                            format!("this port has no `{key}`"),
                            Some("give both ends, e.g. host = 8080 and guest = 80".into()),
                        );
                        None
                    }
                    Some((item, span)) => {
                        let n = c.integer(item, span.clone(), &what)?;
                        match u16::try_from(n) {
                            Ok(n) if n > 0 => Some((n, span)),
                            _ => {
                                c.error(
                                    ErrorKind::BadPort,
                                    span,
                                    format!("`{what}` is {n}; ports are 1 to 65535"),
                                    Some("choose a port between 1 and 65535".into()),
                                );
                                None
                            }
                        }
                    }
                }
            };
            let host = port(self, "host");
            let guest = port(self, "guest");
            let protocol = match p.get("protocol") {
                Some((item, span)) => self
                    .enumeration(item, span, "ports.protocol", keys::PROTOCOLS)
                    .map(|s| {
                        if s == "udp" {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        }
                    }),
                None => Some(Protocol::Tcp),
            };
            let address = match p.get("address") {
                Some((item, span)) => self.string(item, span.clone(), "ports.address").and_then(|a| {
                    match a.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                        Ok(ip) => Some(ip),
                        Err(_) => {
                            self.error(
                                ErrorKind::BadAddress,
                                span,
                                format!("`ports.address` is not an IP address: {a:?}"),
                                Some("use \"127.0.0.1\" (this machine only, the default) or \"0.0.0.0\" (every interface)".into()),
                            );
                            None
                        }
                    }
                }),
                None => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            };
            let (Some((host, hspan)), Some(protocol), Some(address)) = (host, protocol, address)
            else {
                continue;
            };
            // Clashes are checked even when `guest` is wrong, so all errors show at once.
            let plan = PortPlan {
                host,
                guest: guest.as_ref().map_or(0, |g| g.0),
                protocol,
                address,
            };
            if let Some((_, first)) = seen.iter().find(|(q, _)| ports_clash(q, &plan)) {
                let (line, _) = crate::diagnostic::line_column(self.source, first.start);
                self.error(
                    ErrorKind::DuplicateHostPort,
                    hspan.clone(),
                    format!(
                        "host port {host}/{} on {address} is already forwarded",
                        protocol_str(protocol)
                    ),
                    Some(format!(
                        "the first forward of host port {host} is on line {line}; pick another host port"
                    )),
                );
            }
            seen.push((plan.clone(), hspan));
            if guest.is_some() {
                out.push(plan);
            }
        }
        if !tables.is_empty() && mode != NetworkMode::Isolated {
            let mode_str = if mode == NetworkMode::Host {
                "host"
            } else {
                "none"
            };
            let span = root.key_span("ports");
            self.warn(
                ErrorKind::IgnoredSetting,
                span,
                format!("ports are not forwarded with network mode \"{mode_str}\""),
                Some(if mode == NetworkMode::Host {
                    "with mode = \"host\" services listen on the host directly; remove [[ports]]"
                        .into()
                } else {
                    "mode = \"none\" has no network; remove [[ports]] or use mode = \"isolated\""
                        .into()
                }),
            );
        }
        out
    }

    fn resources(&mut self, root: &Tbl<'_>) -> Resources {
        let mut r = Resources::default();
        let Some(t) = self.sub_table(
            root,
            "resources",
            "write `[resources]` with memory/cpus/pids",
        ) else {
            return r;
        };
        if let Some((item, span)) = t.get("memory") {
            r.memory = self.size(item, span, "resources.memory");
        }
        if let Some((item, span)) = t.get("cpus") {
            let n = match item.as_value() {
                Some(Value::Integer(i)) => Some(*i.value() as f64),
                Some(Value::Float(f)) => Some(*f.value()),
                _ => {
                    self.wrong_type(item, span.clone(), "resources.cpus", "a number", None);
                    None
                }
            };
            if let Some(n) = n {
                if n.is_finite() && n > 0.0 && n <= MAX_CPUS {
                    r.cpus = Some(n);
                } else {
                    self.error(
                        ErrorKind::OutOfRange,
                        span,
                        format!(
                            "`resources.cpus` is {n}; it must be above 0 (and at most {MAX_CPUS})"
                        ),
                        Some("e.g. cpus = 1.5 for one and a half cores".into()),
                    );
                }
            }
        }
        if let Some((item, span)) = t.get("pids") {
            if let Some(n) = self.integer(item, span.clone(), "resources.pids") {
                if (1..=MAX_PIDS).contains(&n) {
                    r.pids = Some(n as u64);
                } else {
                    self.error(
                        ErrorKind::OutOfRange,
                        span,
                        format!("`resources.pids` is {n}; it must be between 1 and {MAX_PIDS}"),
                        Some("e.g. pids = 1024".into()),
                    );
                }
            }
        }
        r
    }

    fn network(&mut self, root: &Tbl<'_>) -> NetworkPlan {
        let mut mode = NetworkMode::Isolated;
        if let Some(t) = self.sub_table(
            root,
            "network",
            "write `[network]` with mode = \"isolated\"",
        ) {
            if let Some((item, span)) = t.get("mode") {
                mode = match self.enumeration(item, span, "network.mode", keys::NETWORK_MODES) {
                    Some("host") => NetworkMode::Host,
                    Some("none") => NetworkMode::None,
                    _ => NetworkMode::Isolated,
                };
            }
        }
        NetworkPlan { mode }
    }

    fn shell(&mut self, root: &Tbl<'_>, mounts: &[MountPlan]) -> ShellPlan {
        let mut plan = ShellPlan {
            user: None,
            workdir: None,
            command: DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
        };
        if let Some(t) = self.sub_table(root, "shell", "write `[shell]` with user/workdir/command")
        {
            if let Some((item, span)) = t.get("user") {
                plan.user = self.non_empty_string(item, span.clone(), "shell.user").and_then(|u| {
                    if u.chars().any(|c| c.is_whitespace() || c == ':' || c == '/') {
                        self.error(
                            ErrorKind::InvalidValue,
                            span,
                            format!("`shell.user` {u:?} is not a user name or uid"),
                            Some("give a user name such as \"dev\" or a numeric uid such as \"1000\"".into()),
                        );
                        None
                    } else {
                        Some(u)
                    }
                });
            }
            if let Some((item, span)) = t.get("workdir") {
                plan.workdir = self
                    .string(item, span.clone(), "shell.workdir")
                    .and_then(|w| self.guest_path(&w, span, "shell.workdir", false));
            }
            if let Some((item, span)) = t.get("command") {
                if let Some(c) = self.command(item, span, "shell.command") {
                    plan.command = c;
                }
            }
        }
        if plan.workdir.is_none() {
            plan.workdir = Some(
                mounts
                    .first()
                    .map_or_else(|| "/".to_string(), |m| m.target.clone()),
            );
        }
        plan
    }

    fn services(&mut self, root: &Tbl<'_>, default_workdir: &str) -> BTreeMap<String, ServicePlan> {
        let mut out = BTreeMap::new();
        let Some((item, _)) = root.get("services") else {
            return out;
        };
        let span = self.item_head(item, root.key_span("services"));
        let Some(t) = self.table(
            item,
            span,
            "services",
            "write each service as [services.NAME] with command = [...]",
        ) else {
            return out;
        };
        for (name, sitem) in t.iter() {
            let kspan = t
                .get_key_value(name)
                .and_then(|(k, _)| k.span())
                .unwrap_or(0..0);
            if !is_service_name(name) {
                self.error(
                    ErrorKind::BadName,
                    kspan.clone(),
                    format!("`{}` is not a valid service name", show_key(name)),
                    Some("use letters, digits, `_` and `-` (at most 63), starting with a letter or digit".into()),
                );
            }
            let display = format!("services.{name}");
            let head = self.item_head(sitem, kspan.clone());
            let Some(st) = self.table(
                sitem,
                head.clone(),
                &display,
                &format!("write [services.{name}] with command = [...], or {name} = {{ command = [...] }}"),
            ) else {
                continue;
            };
            let svc = Tbl {
                t: st,
                span: head,
                spec: "services.*",
                display: display.clone(),
            };
            self.unknown_keys(&svc);
            let command = match svc.get("command") {
                None => {
                    self.error(
                        ErrorKind::MissingKey,
                        svc.span.clone(),
                        format!("service `{name}` has no `command`"),
                        Some("add command = [\"program\", \"arg\"]".into()),
                    );
                    None
                }
                Some((item, span)) => self.command(item, span, &format!("{display}.command")),
            };
            let restart = match svc.get("restart") {
                Some((item, span)) => {
                    match self.enumeration(
                        item,
                        span,
                        &format!("{display}.restart"),
                        keys::RESTART_POLICIES,
                    ) {
                        Some("always") => RestartPolicy::Always,
                        Some("on-failure") => RestartPolicy::OnFailure,
                        _ => RestartPolicy::No,
                    }
                }
                None => RestartPolicy::No,
            };
            let env = match svc.get("env") {
                Some((item, span)) => self.env_map(item, span, &format!("{display}.env")),
                None => BTreeMap::new(),
            };
            let workdir = svc.get("workdir").and_then(|(item, span)| {
                let what = format!("{display}.workdir");
                self.string(item, span.clone(), &what)
                    .and_then(|w| self.guest_path(&w, span, &what, false))
            });
            if let Some(command) = command {
                out.insert(
                    name.to_string(),
                    ServicePlan {
                        command,
                        restart,
                        env,
                        workdir: Some(workdir.unwrap_or_else(|| default_workdir.to_string())),
                    },
                );
            }
        }
        out
    }

    fn vm(
        &mut self,
        root: &Tbl<'_>,
        backend: BackendKind,
        backend_span: Option<Span>,
        backend_known: bool,
    ) -> Option<VmPlan> {
        let present = root.get("vm").is_some();
        let t = self.sub_table(root, "vm", "write `[vm]` with kernel = \"…\"");
        if present && backend != BackendKind::Vm && backend_known {
            let span = t
                .as_ref()
                .map_or_else(|| root.key_span("vm"), |t| t.span.clone());
            self.error(
                ErrorKind::VmWithoutBackend,
                span,
                "`[vm]` is set but the backend is not \"vm\"",
                Some("add backend = \"vm\" at the top of the file (before any [table]), or remove [vm]".into()),
            );
        }
        let kernel = match &t {
            Some(t) => match t.get("kernel") {
                Some((item, span)) => self
                    .non_empty_string(item, span.clone(), "vm.kernel")
                    .and_then(|k| self.kernel(&k, span)),
                None => {
                    if backend == BackendKind::Vm {
                        self.error(
                            ErrorKind::MissingKernel,
                            t.span.clone(),
                            "`[vm]` has no `kernel`",
                            Some("add kernel = \"debian:linux-image-cloud-amd64\" or the path of a vmlinux/bzImage".into()),
                        );
                    }
                    None
                }
            },
            None => {
                if backend == BackendKind::Vm && !present {
                    self.error(
                        ErrorKind::MissingKernel,
                        backend_span.unwrap_or(0..0),
                        "backend = \"vm\" needs a `[vm]` table with a `kernel`",
                        Some("add a `[vm]` table with kernel = \"debian:linux-image-cloud-amd64\" (or the path of a vmlinux/bzImage)".into()),
                    );
                }
                None
            }
        };
        let t = t?;
        let memory = match t.get("memory") {
            Some((item, span)) => self
                .size(item, span, "vm.memory")
                .unwrap_or(DEFAULT_VM_MEMORY),
            None => DEFAULT_VM_MEMORY,
        };
        let vcpus = match t.get("vcpus") {
            Some((item, span)) => match self.integer(item, span.clone(), "vm.vcpus") {
                Some(n) if (1..=MAX_VCPUS).contains(&n) => n as u32,
                Some(n) => {
                    self.error(
                        ErrorKind::OutOfRange,
                        span,
                        format!("`vm.vcpus` is {n}; it must be between 1 and {MAX_VCPUS}"),
                        Some("e.g. vcpus = 2".into()),
                    );
                    DEFAULT_VM_VCPUS
                }
                None => DEFAULT_VM_VCPUS,
            },
            None => DEFAULT_VM_VCPUS,
        };
        let vmm = match t.get("vmm") {
            Some((item, span)) => match self.enumeration(item, span, "vm.vmm", keys::VMMS) {
                Some("kvm") => VmmKind::Kvm,
                Some("qemu") => VmmKind::Qemu,
                _ => VmmKind::Auto,
            },
            None => VmmKind::Auto,
        };
        let modules = t.get("modules").and_then(|(item, span)| {
            let m = self.string(item, span.clone(), "vm.modules")?;
            self.existing_path(&m, span, "vm.modules", Some(true))
        });
        if backend != BackendKind::Vm {
            return None;
        }
        Some(VmPlan {
            kernel: kernel?,
            memory,
            vcpus,
            vmm,
            modules,
        })
    }

    fn kernel(&mut self, k: &str, span: Span) -> Option<KernelSource> {
        if let Some(spec) = k.strip_prefix("debian:") {
            let (package, version) = match spec.split_once('=') {
                Some((p, v)) => (p, Some(v)),
                None => (spec, None),
            };
            let ok_pkg = package.len() >= 2
                && package.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && package
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
            let ok_ver = version.is_none_or(|v| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
            });
            if !(ok_pkg && ok_ver) {
                self.error(
                    ErrorKind::BadKernel,
                    span,
                    format!("{k:?} does not name a Debian kernel package"),
                    Some("e.g. kernel = \"debian:linux-image-cloud-amd64\" or \"debian:linux-image-amd64=6.1.115-1\"".into()),
                );
                return None;
            }
            return Some(KernelSource::Debian {
                package: package.to_string(),
                version: version.map(str::to_string),
            });
        }
        if let Some((scheme, _)) = k.split_once(':') {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                self.error(
                    ErrorKind::BadKernel,
                    span,
                    format!("unknown kernel source `{scheme}:`"),
                    Some("use kernel = \"debian:PACKAGE\" or the path of a kernel image".into()),
                );
                return None;
            }
        }
        self.existing_path(k, span, "vm.kernel", Some(false))
            .map(|path| KernelSource::Path { path })
    }
}

// ----- small pure helpers ---------------------------------------------------------------------

fn ports_clash(a: &PortPlan, b: &PortPlan) -> bool {
    a.host == b.host
        && a.protocol == b.protocol
        && a.address.is_ipv4() == b.address.is_ipv4()
        && (a.address == b.address || a.address.is_unspecified() || b.address.is_unspecified())
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn mount_kind_str(k: MountKind) -> &'static str {
    match k {
        MountKind::Bind => "bind",
        MountKind::Sync => "sync",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_volume_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A package name (optionally with a version) as apt, apk and dnf accept it; never starting
/// with `-`, so it cannot be read as an option.
fn check_package(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("it is empty".into());
    }
    if p.starts_with('-') {
        return Err("it starts with `-` and would be read as an option".into());
    }
    if let Some(c) = p
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+._:=~<>-".contains(c)))
    {
        return Err(format!("it contains {c:?}"));
    }
    Ok(())
}

fn show_key(k: &str) -> String {
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
