//! Walks a parsed berth.toml by hand, section by section, and builds the normalized [`Plan`].
//! Every problem becomes a [`Diagnostic`](crate::Diagnostic) with the span of the offending key
//! or value; nothing stops at the first problem. The table of known keys is [`crate::keys`].
//!
//! The span-keeping readers of TOML values are in [`toml_readers`] (and host/guest paths in
//! [`host_paths`]); the rules of each section are in a `*_section` file.

mod credentials_section;
mod dockerfile_section;
mod host_paths;
mod image_cache;
mod image_section;
mod mounts_section;
mod ports_section;
mod resources_section;
mod secrets_section;
mod services_section;
mod shell_section;
mod sidecar_section;
mod toml_readers;
mod vm_section;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::diagnostic::{ErrorKind, Report, Severity};
use crate::keys;
use crate::name;
use crate::plan::*;

pub use host_paths::{normalize_path, UNSAFE_HOST_PATHS};
pub use toml_readers::is_env_name;
use toml_readers::Tbl;

type Span = Range<usize>;

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
        let (services, sidecars) =
            self.services(&root, shell.workdir.as_deref().unwrap_or("/"), backend);
        let vm = self.vm(&root, backend, backend_span, backend_known);
        let credentials = self.credentials(&root);
        let secrets = self.secrets(&root);

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
            sidecars,
            vm,
            credentials,
            secrets,
        }
    }
}

/// The plan the checker builds of `text` as the berth.toml of the project folder `dir`, and
/// its errors in file order (the section tests' one way in).
#[cfg(test)]
pub(super) fn checked(dir: &Path, text: &str) -> (Plan, Vec<crate::diagnostic::Diagnostic>) {
    let file = dir.join("berth.toml");
    let doc = toml_edit::ImDocument::parse(text).unwrap();
    let report = Report::new(file.clone(), text.to_string());
    let mut checker = Checker::new(report, text, dir.to_path_buf());
    let plan = checker.check(doc.as_table(), file);
    let mut report = checker.report;
    report.sort();
    let errors = report
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    (plan, errors)
}
