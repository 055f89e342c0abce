//! `[resources]` (cpus, memory, pids) and `devices` (host device nodes for containers).

use toml_edit::Value;

use super::toml_readers::Tbl;
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::plan::*;

/// Largest `resources.cpus` accepted.
pub const MAX_CPUS: f64 = 4096.0;

/// Largest `resources.pids` accepted (Linux's own pid_max ceiling).
pub const MAX_PIDS: i64 = 4_194_304;

impl Checker<'_> {
    pub(super) fn resources(&mut self, root: &Tbl<'_>) -> Resources {
        self.resources_of(root, "resources")
    }

    /// The `resources` of `parent` (the top level, or a sidecar with `spec`
    /// `"services.*.resources"`).
    pub(super) fn resources_of(&mut self, parent: &Tbl<'_>, spec: &'static str) -> Resources {
        let mut r = Resources::default();
        let at = parent.key_display("resources");
        let Some(t) = self.sub_table_at(
            parent,
            "resources",
            spec,
            &format!("write `[{at}]` with memory/cpus/pids"),
        ) else {
            return r;
        };
        if let Some((item, span)) = t.get("memory") {
            r.memory = self.size(item, span, &format!("{at}.memory"));
        }
        if let Some((item, span)) = t.get("cpus") {
            let n = match item.as_value() {
                Some(Value::Integer(i)) => Some(*i.value() as f64),
                Some(Value::Float(f)) => Some(*f.value()),
                _ => {
                    self.wrong_type(item, span.clone(), &format!("{at}.cpus"), "a number", None);
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
                        format!("`{at}.cpus` is {n}; it must be above 0 (and at most {MAX_CPUS})"),
                        Some("e.g. cpus = 1.5 for one and a half cores".into()),
                    );
                }
            }
        }
        if let Some((item, span)) = t.get("pids") {
            if let Some(n) = self.integer(item, span.clone(), &format!("{at}.pids")) {
                if (1..=MAX_PIDS).contains(&n) {
                    r.pids = Some(n as u64);
                } else {
                    self.error(
                        ErrorKind::OutOfRange,
                        span,
                        format!("`{at}.pids` is {n}; it must be between 1 and {MAX_PIDS}"),
                        Some("e.g. pids = 1024".into()),
                    );
                }
            }
        }
        r
    }

    /// `devices`: absolute paths (or `*`/`?` patterns) under /dev; containers only.
    pub(super) fn devices(&mut self, root: &Tbl<'_>, backend: BackendKind) -> Vec<String> {
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
}
