//! `[[mounts]]`: bind, sync, volume and tmpfs mounts, their sources and targets.

use std::collections::BTreeMap;

use super::host_paths::unsafe_source;
use super::toml_readers::Tbl;
use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::keys;
use crate::plan::*;

impl Checker<'_> {
    pub(super) fn mounts(&mut self, root: &Tbl<'_>) -> Vec<MountPlan> {
        self.mounts_of(root, "mounts[]")
    }

    /// The `mounts` of `parent` (the top level, or a sidecar with `spec` `"services.*.mounts[]"`).
    pub(super) fn mounts_of(&mut self, parent: &Tbl<'_>, spec: &'static str) -> Vec<MountPlan> {
        let tables = self.table_array_at(parent, "mounts", spec);
        let at = parent.key_display("mounts");
        let what = |key: &str| format!("{at}.{key}");
        let mut out: Vec<MountPlan> = Vec::new();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for m in &tables {
            let kind = match m.get("type") {
                Some((item, span)) => {
                    self.enumeration(item, span, &what("type"), keys::MOUNT_TYPES)
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
                    .string(item, span.clone(), &what("target"))
                    .and_then(|t| self.guest_path(&t, span.clone(), &what("target"), true))
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
                Some((item, span)) => self.boolean(item, span, &what("readonly")).unwrap_or(false),
                None => false,
            };
            let unsafe_host_path = match m.get("unsafe_host_path") {
                Some((item, span)) => {
                    let v = self.boolean(item, span, &what("unsafe_host_path"));
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
                    self.string(item, span.clone(), &what("source")).and_then(|v| {
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
                    .string(item, span.clone(), &what("source"))
                    .and_then(|s| {
                        let p = self.existing_path(&s, span.clone(), &what("source"), None)?;
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
                        .string_array(item, span, &what("ignore"), true)
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
                    let s = self.size(item, span, &what("size"));
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
}

fn mount_kind_str(k: MountKind) -> &'static str {
    match k {
        MountKind::Bind => "bind",
        MountKind::Sync => "sync",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    }
}

fn is_volume_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}
