//! `[services.*]`: long-running processes, their commands, restart policy and working folder;
//! a service with `image` is a sidecar, whose own keys are read in `sidecar_section.rs`.

use std::collections::BTreeMap;

use super::sidecar_section::SidecarLinks;
use super::toml_readers::{show_key, Tbl};
use super::Checker;
use crate::diagnostic::ErrorKind;
use crate::keys;
use crate::plan::*;

impl Checker<'_> {
    /// `[services]`: process services (with `command`) and sidecars (with `image`; the keys
    /// only they take are read in `sidecar_section.rs`).
    pub(super) fn services(
        &mut self,
        root: &Tbl<'_>,
        default_workdir: &str,
        backend: BackendKind,
    ) -> (BTreeMap<String, ServicePlan>, BTreeMap<String, SidecarPlan>) {
        let mut out = BTreeMap::new();
        let mut sidecars = BTreeMap::new();
        let mut links = SidecarLinks::default();
        let Some((item, _)) = root.get("services") else {
            return (out, sidecars);
        };
        let span = self.item_head(item, root.key_span("services"));
        let Some(t) = self.table(
            item,
            span,
            "services",
            "write each service as [services.NAME] with command = [...] (or image = \"…\")",
        ) else {
            return (out, sidecars);
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
            let image = svc.get("image").map(|(item, span)| {
                let what = format!("{display}.image");
                let source = self
                    .non_empty_string(item, span.clone(), &what)
                    .and_then(|s| self.image_source(&s, span.clone(), &what));
                (source, span)
            });
            let command = match svc.get("command") {
                None if image.is_none() => {
                    self.error(
                        ErrorKind::MissingKey,
                        svc.span.clone(),
                        format!("service `{name}` has no `command`"),
                        Some("add command = [\"program\", \"arg\"] (or image = \"…\" to run a server from its own image beside the environment)".into()),
                    );
                    None
                }
                None => None,
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
            // Arguments to the image's entrypoint (a sidecar's cmd), instead of `command`.
            let args = svc.get("args").and_then(|(item, span)| {
                // (On a process service `args` itself is the error, below.)
                if svc.get("command").is_some() && image.is_some() {
                    self.error(
                        ErrorKind::MisplacedKey,
                        span.clone(),
                        format!("service `{name}` has both `command` and `args`"),
                        Some("`command` replaces the image's entrypoint and cmd, `args` only its cmd: keep one".into()),
                    );
                }
                self.string_array(item, span, &format!("{display}.args"), false)
                    .map(|v| v.into_iter().map(|(a, _)| a).collect::<Vec<_>>())
            });
            // Read (and type-checked) on every service; kept only on sidecars.
            let parts = self.sidecar_parts(&svc, name, &mut links);
            match image {
                Some((Some(image), image_span)) => {
                    links.sidecars.push((name.to_string(), image_span));
                    sidecars.insert(
                        name.to_string(),
                        SidecarPlan {
                            image,
                            command,
                            args,
                            restart,
                            env,
                            workdir,
                            mounts: parts.mounts,
                            resources: parts.resources,
                            ready: parts.ready,
                            after: parts.after,
                        },
                    );
                }
                Some((None, _)) => links.sidecar_names.push(name.to_string()),
                None => {
                    if svc.get("command").is_some() || svc.get("args").is_some() {
                        self.sidecar_keys_on_a_process_service(&svc, name);
                    }
                    links.process_names.push(name.to_string());
                    if let Some(command) = command {
                        out.insert(
                            name.to_string(),
                            ServicePlan {
                                command,
                                restart,
                                env,
                                workdir: Some(
                                    workdir.unwrap_or_else(|| default_workdir.to_string()),
                                ),
                            },
                        );
                    }
                }
            }
        }
        self.check_sidecar_links(&links, backend);
        (out, sidecars)
    }
}

pub(super) fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
