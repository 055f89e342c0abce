//! The keys only sidecars take (`[services.NAME]` with `image`): `mounts`, `resources`,
//! `ready`, `after`; and the checks across services: `after` naming a known sidecar, no
//! circle of `after`s, no two sidecars probing the same port of the shared `localhost`.

use std::collections::BTreeMap;

use toml_edit::{Item, Value};

use super::toml_readers::{Quantity, Tbl};
use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::duration::{self, parse_duration_ms};
use crate::keys;
use crate::plan::*;

/// The sidecar-only keys of one service, read and type-checked on every service.
pub(super) struct SidecarParts {
    pub mounts: Vec<MountPlan>,
    pub resources: Resources,
    pub ready: Option<ReadyPlan>,
    pub after: Vec<String>,
}

/// What the checks across services need, gathered while the services are read.
#[derive(Default)]
pub(super) struct SidecarLinks {
    /// Sidecars with a usable image, in file order, with the span of `image`.
    pub sidecars: Vec<(String, Span)>,
    /// Sidecars whose `image` was refused (still valid names for `after`).
    pub sidecar_names: Vec<String>,
    /// Services with a `command` and no `image`.
    pub process_names: Vec<String>,
    /// Every `after` entry: (service, named service, span of the name).
    after: Vec<(String, String, Span)>,
    /// Every `ready.tcp`: (service, port, span of the port).
    tcp: Vec<(String, u16, Span)>,
}

/// Durations in milliseconds (a TOML integer is seconds).
const DURATION: Quantity = Quantity {
    noun: "a duration",
    kind: ErrorKind::BadDuration,
    parse: |s| parse_duration_ms(s).map_err(|e| e.to_string()),
    per_integer: 1000,
    expected: "a duration (a string such as \"30s\", or a number of seconds)",
    units_help: duration::UNITS_HELP,
    zero_help: "give the server time to start, e.g. \"30s\"",
};

/// Keys a process service does not take.
const SIDECAR_ONLY: [&str; 5] = ["args", "mounts", "resources", "ready", "after"];

impl Checker<'_> {
    pub(super) fn sidecar_parts(
        &mut self,
        svc: &Tbl<'_>,
        name: &str,
        links: &mut SidecarLinks,
    ) -> SidecarParts {
        let mounts = self.mounts_of(svc, "services.*.mounts[]");
        for span in sync_mount_types(svc) {
            self.error(
                ErrorKind::MisplacedKey,
                span,
                format!("sidecar `{name}` has a mount with type = \"sync\": sync mounts belong to the environment"),
                Some("use type = \"bind\" (the sidecar sees the host folder itself) or \"volume\" for its data".into()),
            );
        }
        let resources = self.resources_of(svc, "services.*.resources");
        let after = match svc.get("after") {
            Some((item, span)) => self
                .string_array(item, span, &svc.key_display("after"), true)
                .unwrap_or_default()
                .into_iter()
                .map(|(other, span)| {
                    links.after.push((name.to_string(), other.clone(), span));
                    other
                })
                .collect(),
            None => Vec::new(),
        };
        let ready = self.ready(svc, name, links);
        SidecarParts {
            mounts,
            resources,
            ready,
            after,
        }
    }

    fn ready(&mut self, svc: &Tbl<'_>, name: &str, links: &mut SidecarLinks) -> Option<ReadyPlan> {
        let at = svc.key_display("ready");
        let t = self.sub_table_at(
            svc,
            "ready",
            "services.*.ready",
            "write ready = { command = [\"pg_isready\"] } or ready = { tcp = 5432 }",
        )?;
        let command = t
            .get("command")
            .and_then(|(item, span)| self.command(item, span, &format!("{at}.command")));
        let tcp = t.get("tcp").and_then(|(item, span)| {
            let n = self.integer(item, span.clone(), &format!("{at}.tcp"))?;
            match u16::try_from(n) {
                Ok(port) if port > 0 => {
                    links.tcp.push((name.to_string(), port, span));
                    Some(port)
                }
                _ => {
                    self.error(
                        ErrorKind::BadPort,
                        span,
                        format!("`{at}.tcp` is {n}; a port is between 1 and 65535"),
                        Some("give the port the server listens on, e.g. tcp = 6379".into()),
                    );
                    None
                }
            }
        });
        let timeout_ms = match t.get("timeout") {
            Some((item, span)) => self.quantity(item, span, &format!("{at}.timeout"), &DURATION),
            None => Some(DEFAULT_READY_TIMEOUT_MS),
        };
        if t.get("command").is_some() && t.get("tcp").is_some() {
            self.error(
                ErrorKind::InvalidValue,
                t.key_span("tcp"),
                format!("`{at}` has both `command` and `tcp`"),
                Some("give one probe: a command that exits 0 when the server is ready, or the tcp port it listens on".into()),
            );
            return None;
        }
        if t.get("command").is_none() && t.get("tcp").is_none() {
            self.error(
                ErrorKind::MissingKey,
                t.span.clone(),
                format!("`{at}` has no probe"),
                Some("add command = [\"pg_isready\"] (ready when it exits 0) or tcp = 5432 (ready when the port answers)".into()),
            );
            return None;
        }
        let probe = match (command, tcp) {
            (Some(command), _) => ReadyProbe::Command { command },
            (None, Some(port)) => ReadyProbe::Tcp { port },
            (None, None) => return None,
        };
        Some(ReadyPlan {
            probe,
            timeout_ms: timeout_ms?,
        })
    }

    /// `mounts`, `resources`, `ready`, `after` on a service without `image`.
    pub(super) fn sidecar_keys_on_a_process_service(&mut self, svc: &Tbl<'_>, name: &str) {
        for key in SIDECAR_ONLY {
            if svc.get(key).is_none() {
                continue;
            }
            let why = match key {
                "mounts" | "resources" => "a process service runs inside the environment, with its [[mounts]] and [resources]",
                "args" => "a process service's `command` is its whole command line (there is no image entrypoint to give arguments to)",
                _ => "process services start after every sidecar is ready",
            };
            self.error(
                ErrorKind::MisplacedKey,
                svc.key_span(key),
                format!("`{key}` applies only to sidecars (services with `image`); `{name}` is a process service"),
                Some(format!("{why}: remove `{key}`, or add image = \"…\" to run `{name}` from its own image")),
            );
        }
    }

    /// The checks across services, once every service is read. A VM's sidecars each have a
    /// network of their own (on berth's bridge), so two of them may probe the same port; a
    /// container's share the environment's `localhost`, so they may not.
    pub(super) fn check_sidecar_links(&mut self, links: &SidecarLinks, backend: BackendKind) {
        let is_sidecar = |n: &str| {
            links.sidecars.iter().any(|(s, _)| s == n) || links.sidecar_names.iter().any(|s| s == n)
        };
        let mut edges: BTreeMap<&str, Vec<(&str, &Span)>> = BTreeMap::new();
        for (from, to, span) in &links.after {
            if !is_sidecar(from) {
                continue;
            }
            if from == to {
                self.error(
                    ErrorKind::ServiceCycle,
                    span.clone(),
                    format!("`services.{from}.after` names `{from}` itself"),
                    Some(format!("remove \"{to}\" from its `after`")),
                );
            } else if links.process_names.contains(to) {
                self.error(
                    ErrorKind::UnknownService,
                    span.clone(),
                    format!("`services.{from}.after` names `{to}`, a process service"),
                    Some(format!("`after` lists sidecars (services with `image`); process services start after every sidecar is ready: remove \"{to}\"")),
                );
            } else if !is_sidecar(to) {
                let known: Vec<&str> = links
                    .sidecars
                    .iter()
                    .map(|(s, _)| s.as_str())
                    .chain(links.sidecar_names.iter().map(String::as_str))
                    .filter(|s| s != from)
                    .collect();
                let help = match keys::suggest(to, &known) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None if known.is_empty() => {
                        "no other sidecar is defined: add [services.NAME] with image = \"…\", or remove the entry".to_string()
                    }
                    None => format!("sidecars of this file: {}", known.join(", ")),
                };
                self.error(
                    ErrorKind::UnknownService,
                    span.clone(),
                    format!(
                        "`services.{from}.after` names `{to}`, which is not a service of this file"
                    ),
                    Some(help),
                );
            } else {
                edges.entry(from).or_default().push((to, span));
            }
        }
        for (path, span) in cycles(&edges) {
            self.error(
                ErrorKind::ServiceCycle,
                span.clone(),
                format!(
                    "sidecars wait for each other in a circle: {}",
                    path.join(" → ")
                ),
                Some("remove one of these `after` entries".into()),
            );
        }
        if backend == BackendKind::Vm {
            return;
        }
        let mut ports: BTreeMap<u16, (&str, &Span)> = BTreeMap::new();
        for (name, port, span) in &links.tcp {
            if !is_sidecar(name) {
                continue;
            }
            match ports.get(port) {
                Some((first, first_span)) => {
                    let (line, _) = crate::diagnostic::line_column(self.source, first_span.start);
                    self.error(
                        ErrorKind::DuplicateServicePort,
                        span.clone(),
                        format!("`{first}` and `{name}` both listen on port {port}; sidecars share the environment's network"),
                        Some(format!("`{first}` probes port {port} on line {line}: run one of them on another port")),
                    );
                }
                None => {
                    ports.insert(*port, (name, span));
                }
            }
        }
    }
}

/// The spans of `type = "sync"` in the elements of a sidecar's `mounts`.
fn sync_mount_types(svc: &Tbl<'_>) -> Vec<Span> {
    let Some((item, _)) = svc.get("mounts") else {
        return Vec::new();
    };
    let tables: Vec<&dyn toml_edit::TableLike> = match item {
        Item::ArrayOfTables(aot) => aot.iter().map(|t| t as &dyn toml_edit::TableLike).collect(),
        Item::Value(Value::Array(arr)) => arr
            .iter()
            .filter_map(|v| v.as_inline_table())
            .map(|t| t as &dyn toml_edit::TableLike)
            .collect(),
        _ => Vec::new(),
    };
    tables
        .into_iter()
        .filter_map(|t| t.get("type"))
        .filter(|ty| ty.as_str() == Some("sync"))
        .filter_map(|ty| ty.span())
        .collect()
}

/// Every circle of `after` edges, once each: the names along it (first name repeated at the
/// end) and the span of the entry that closes it.
fn cycles<'a>(
    edges: &BTreeMap<&'a str, Vec<(&'a str, &'a Span)>>,
) -> Vec<(Vec<&'a str>, &'a Span)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, Vec<(&'a str, &'a Span)>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<(Vec<&'a str>, &'a Span)>,
    ) {
        marks.insert(node, Mark::Open);
        stack.push(node);
        for &(next, span) in edges.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            match marks.get(next) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|&n| n == next).unwrap_or(0);
                    let mut path = stack[from..].to_vec();
                    path.push(next);
                    out.push((path, span));
                }
                Some(Mark::Done) => {}
                None => visit(next, edges, marks, stack, out),
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for &node in edges.keys() {
        if !marks.contains_key(node) {
            visit(node, edges, &mut marks, &mut Vec::new(), &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan the checker builds and its errors, as (kind, line, column).
    fn check(text: &str) -> (Plan, Vec<(ErrorKind, usize, usize)>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let (plan, errors) = super::super::checked(dir.path(), text);
        let errors = errors.iter().map(|d| (d.kind, d.line, d.column)).collect();
        (plan, errors)
    }

    const IMAGE: &str = "[image]\nfrom = \"debian\"\n";

    #[test]
    fn a_sidecar_is_planned_with_every_key_and_its_defaults() {
        let text = format!(
            "{IMAGE}[services.db]\nimage = \"rootfs:./rootfs\"\nenv = {{ A = \"1\" }}\nmounts = [{{ source = \"db-data\", target = \"/data/\", type = \"volume\" }}, {{ target = \"/tmp\", type = \"tmpfs\", size = \"64M\" }}]\nresources = {{ memory = \"256MiB\", cpus = 0.5, pids = 64 }}\nready = {{ command = \"redis-cli ping\", timeout = \"1m30s\" }}\nrestart = \"always\"\n[services.cache]\nimage = \"docker.io/library/redis:7\"\ncommand = [\"redis-server\", \"--port\", \"6380\"]\nworkdir = \"/srv\"\nafter = [\"db\"]\nready = {{ tcp = 6380, timeout = 5 }}\n[services.web]\ncommand = [\"./app\"]\n"
        );
        let (plan, errors) = check(&text);
        assert_eq!(errors, []);
        assert_eq!(plan.services.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(plan.sidecars.keys().collect::<Vec<_>>(), ["cache", "db"]);
        let db = &plan.sidecars["db"];
        assert!(
            matches!(&db.image, ImageSource::Rootfs { path } if path.ends_with("rootfs") && path.is_absolute())
        );
        assert_eq!(db.command, None);
        assert_eq!(db.workdir, None);
        assert_eq!(db.restart, RestartPolicy::Always);
        assert_eq!(db.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(db.mounts.len(), 2);
        assert_eq!(db.mounts[0].kind, MountKind::Volume);
        assert_eq!(db.mounts[0].target, "/data");
        assert_eq!(db.mounts[1].size, Some(64 << 20));
        assert_eq!(db.resources.memory, Some(256 << 20));
        assert_eq!(db.resources.cpus, Some(0.5));
        assert_eq!(db.resources.pids, Some(64));
        assert_eq!(
            db.ready,
            Some(ReadyPlan {
                probe: ReadyProbe::Command {
                    command: vec!["/bin/sh".into(), "-c".into(), "redis-cli ping".into()]
                },
                timeout_ms: 90_000
            })
        );
        let cache = &plan.sidecars["cache"];
        assert!(matches!(&cache.image, ImageSource::Oci { .. }));
        assert_eq!(cache.command.as_ref().unwrap()[0], "redis-server");
        assert_eq!(cache.workdir.as_deref(), Some("/srv"));
        assert_eq!(cache.restart, RestartPolicy::No);
        assert_eq!(cache.after, ["db"]);
        assert_eq!(
            cache.ready,
            Some(ReadyPlan {
                probe: ReadyProbe::Tcp { port: 6380 },
                timeout_ms: 5_000
            })
        );
        // Dependencies first, whatever the names' order.
        assert_eq!(plan.sidecar_start_order(), ["db", "cache"]);
        // The top-level mounts and resources stay the environment's.
        assert!(plan.mounts.is_empty());
        assert_eq!(plan.resources, Resources::default());
    }

    #[test]
    fn args_go_to_the_images_entrypoint_on_sidecars_only_and_never_with_command() {
        let (plan, errors) = check(&format!(
            "{IMAGE}[services.cache]\nimage = \"redis:7\"\nargs = [\"--appendonly\", \"yes\"]\n"
        ));
        assert_eq!(errors, []);
        let cache = &plan.sidecars["cache"];
        assert_eq!(cache.command, None);
        assert_eq!(
            cache.args.as_deref(),
            Some(&["--appendonly".to_string(), "yes".to_string()][..])
        );
        let (_, errors) = check(&format!(
            "{IMAGE}[services.cache]\nimage = \"redis:7\"\ncommand = [\"redis-server\"]\nargs = [\"--port\", \"1\"]\n"
        ));
        assert_eq!(errors, [(ErrorKind::MisplacedKey, 6, 8)]);
        let (_, errors) = check(&format!(
            "{IMAGE}[services.web]\ncommand = [\"./app\"]\nargs = [\"-v\"]\n"
        ));
        assert_eq!(errors, [(ErrorKind::MisplacedKey, 5, 1)]);
    }

    #[test]
    fn a_ready_without_timeout_waits_a_minute() {
        let (plan, errors) = check(&format!(
            "{IMAGE}[services.db]\nimage = \"redis:7\"\nready = {{ tcp = 6379 }}\n"
        ));
        assert_eq!(errors, []);
        assert_eq!(
            plan.sidecars["db"].ready.as_ref().unwrap().timeout_ms,
            DEFAULT_READY_TIMEOUT_MS
        );
    }

    #[test]
    fn a_vms_sidecars_are_planned_and_may_probe_the_same_port() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        let sidecars = "[services.db]\nimage = \"redis:7\"\nready = { tcp = 6379 }\n[services.cache]\nimage = \"redis:7\"\nready = { tcp = 6379 }\n[services.web]\ncommand = [\"./app\"]\n";
        let vm = format!(
            "backend = \"vm\"\n{IMAGE}[vm]\nkernel = \"debian:linux-image-amd64\"\n{sidecars}"
        );
        let loaded = crate::parse(vm.as_bytes(), &file).unwrap();
        assert_eq!(
            loaded.plan.sidecars.keys().collect::<Vec<_>>(),
            ["cache", "db"]
        );
        // Beside a container they share its localhost: the same port is refused.
        let container = format!("{IMAGE}{sidecars}");
        let report = crate::parse(container.as_bytes(), &file).unwrap_err();
        let found: Vec<_> = report.diagnostics.iter().map(|d| d.kind).collect();
        assert_eq!(found, [ErrorKind::DuplicateServicePort]);
    }

    #[test]
    fn start_order_follows_after_chains_and_breaks_ties_by_name() {
        let (plan, errors) = check(&format!(
            "{IMAGE}[services]\nz = {{ image = \"redis:7\" }}\na = {{ image = \"redis:7\", after = [\"m\"] }}\nm = {{ image = \"redis:7\", after = [\"z\"] }}\nb = {{ image = \"redis:7\" }}\n"
        ));
        assert_eq!(errors, []);
        assert_eq!(plan.sidecar_start_order(), ["b", "z", "m", "a"]);
    }

    #[test]
    fn circles_are_reported_once_at_the_entry_closing_them() {
        let text = format!(
            "{IMAGE}[services]\na = {{ image = \"redis:7\", after = [\"b\"] }}\nb = {{ image = \"redis:7\", after = [\"c\"] }}\nc = {{ image = \"redis:7\", after = [\"a\"] }}\nd = {{ image = \"redis:7\", after = [\"a\"] }}\n"
        );
        let (_, errors) = check(&text);
        assert_eq!(errors, [(ErrorKind::ServiceCycle, 6, 35)]);
        let dir = tempfile::tempdir().unwrap();
        let report = crate::parse(text.as_bytes(), &dir.path().join("berth.toml")).unwrap_err();
        let cycle = report
            .diagnostics
            .iter()
            .find(|d| d.kind == ErrorKind::ServiceCycle)
            .unwrap();
        assert!(
            cycle.message.ends_with("a → b → c → a"),
            "{}",
            cycle.message
        );
    }
}
