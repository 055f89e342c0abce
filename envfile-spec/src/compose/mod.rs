//! Converts a Docker Compose file into berth.toml (`berth init --from-compose`), and lends
//! the same mapping to `devcontainer` for `dockerComposeFile` setups. Pure: files the compose
//! file names (`.env`, `env_file`) come through [`Sources`].
//!
//! One service becomes the environment (`--service`, or the one built from or mounting the
//! project), every other service a sidecar (`[services.NAME]` with `image`): they share one
//! `localhost`, as compose services sharing a network namespace would. `depends_on` →
//! `after`, `healthcheck` → `ready`, named volumes → berth volumes named as compose names them
//! (`PROJECT_VOLUME`), `ports` of any service → `[[ports]]`. Everything else is listed.

mod fields;
mod interpolate;
pub(crate) mod services;

use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::draft::{Conversion, Draft, Skipped, Sources};

pub use services::Placement;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{file}:{line}:{column}: not valid YAML: {message}; fix the file and retry")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {why}; fix the file and retry")]
    Shape { file: String, why: String },
    #[error("{file}: cannot read it: {why}")]
    Unreadable { file: String, why: String },
    #[error("variable {name} must be set ({message}); set it in the environment or in .env beside the compose file and retry")]
    RequiredVariable { name: String, message: String },
    #[error("{value:?}: {why}")]
    Interpolation { value: String, why: String },
    #[error("services.{service}.depends_on names `{missing}`, which is not a service of the file (services: {known}); fix the name or add the service")]
    UnknownDependency {
        service: String,
        missing: String,
        known: String,
    },
    #[error("services wait for each other in a circle through depends_on: {0}; remove one of these dependencies")]
    Cycle(String),
    #[error("there is no service `{wanted}` (services: {known}); pass one of them with --service")]
    UnknownService { wanted: String, known: String },
    #[error("which service is your app? several could be ({candidates}); pass it with --service NAME (the others become sidecars)")]
    AmbiguousService { candidates: String },
    #[error("services.{service}.env_file: {path} does not exist; create it or mark it `required: false`")]
    MissingEnvFile { service: String, path: String },
}

/// A compose file (or several merged), interpolated, with its services in file order.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    /// The first file's path, for messages.
    pub file: String,
    pub name: Option<String>,
    pub services: Vec<(String, Mapping)>,
    pub volumes: Mapping,
    /// Other top-level keys (`networks`, `secrets`, `configs`, `x-…`).
    pub other_keys: Vec<String>,
    /// Variables used without a value (replaced by "").
    pub unset: Vec<String>,
}

/// Reads and merges compose files (`files`: path relative to the project folder, text): later
/// files override earlier ones as `docker compose -f a -f b` does (mappings merged, lists of
/// `ports`/`volumes`/`env_file` appended, other values replaced).
pub fn load(
    files: &[(String, String)],
    sources: &dyn Sources,
) -> Result<ComposeFile, ComposeError> {
    let first = files.first().map(|(p, _)| p.clone()).unwrap_or_default();
    let mut merged = Value::Mapping(Mapping::new());
    for (path, text) in files {
        let mut v: Value = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            ComposeError::Syntax {
                file: path.clone(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        v.apply_merge().map_err(|e| ComposeError::Shape {
            file: path.clone(),
            why: format!("a `<<` merge key: {e}"),
        })?;
        if !v.is_mapping() {
            return Err(ComposeError::Shape {
                file: path.clone(),
                why: "a compose file holds a mapping with `services:` at the top level".into(),
            });
        }
        merge(&mut merged, v, "");
    }
    let dot_env_path = join(parent(&first), ".env");
    let dot_env = match sources.read(&dot_env_path) {
        Ok(Some(text)) => interpolate::parse_env_file(&text),
        Ok(None) => Default::default(),
        Err(why) => {
            return Err(ComposeError::Unreadable {
                file: dot_env_path,
                why,
            })
        }
    };
    let lookup = |name: &str| {
        sources
            .local_env(name)
            .or_else(|| dot_env.get(name).cloned())
    };
    let mut found = interpolate::Interpolation::default();
    interpolate::interpolate(&mut merged, &lookup, &mut found)?;
    let Value::Mapping(top) = merged else {
        unreachable!("merged starts as a mapping")
    };
    let shape = |why: &str| ComposeError::Shape {
        file: first.clone(),
        why: why.to_string(),
    };
    let mut services = Vec::new();
    match top.get("services") {
        Some(Value::Mapping(m)) => {
            for (name, def) in m {
                let name =
                    fields::scalar(name).ok_or_else(|| shape("a service name is not a string"))?;
                match def {
                    Value::Mapping(d) => services.push((name, d.clone())),
                    Value::Null => services.push((name, Mapping::new())),
                    _ => return Err(shape(&format!("services.{name} is not a mapping"))),
                }
            }
        }
        _ => return Err(shape("it has no `services:` mapping")),
    }
    if services.is_empty() {
        return Err(shape("`services:` is empty"));
    }
    let volumes = match top.get("volumes") {
        Some(Value::Mapping(m)) => m.clone(),
        _ => Mapping::new(),
    };
    let other_keys = top
        .keys()
        .filter_map(fields::scalar)
        .filter(|k| !["services", "volumes", "name", "version"].contains(&k.as_str()))
        .collect();
    Ok(ComposeFile {
        file: first,
        name: top.get("name").and_then(fields::scalar),
        services,
        volumes,
        other_keys,
        unset: found.unset,
    })
}

/// Keys whose lists accumulate across merged files.
const APPENDED: [&str; 4] = ["ports", "volumes", "env_file", "tmpfs"];

fn merge(base: &mut Value, over: Value, key: &str) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                let name = fields::scalar(&k).unwrap_or_default();
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, &name),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) if APPENDED.contains(&key) => b.extend(o),
        (b, o) => *b = o,
    }
}

/// The folder part of a `/`-separated relative path (`""` for a file in the project folder).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// `dir/name`, lexically normalized (`a/../b` → `b`; leading `..` kept).
pub(crate) fn join(dir: &str, name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in dir.split('/').chain(name.split('/')) {
        match c {
            "" | "." => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// `berth init --from-compose FILE [--service NAME]`: `file` is the compose file's path
/// relative to the project folder `project_dir` (absolute; used only to name things).
pub fn convert(
    file: &str,
    text: &str,
    project_dir: &Path,
    service: Option<&str>,
    sources: &dyn Sources,
) -> Result<Conversion, ComposeError> {
    let compose = load(&[(file.to_string(), text.to_string())], sources)?;
    let folder = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let project_name = compose
        .name
        .clone()
        .unwrap_or_else(|| crate::name::derive_name(&folder));
    let environment = match service {
        Some(s) => Some(s.to_string()),
        None => services::guess_environment(&compose, parent(file))?,
    };
    let mut draft = Draft {
        origin: format!("Converted from {file} by `berth init --from-compose`."),
        name: Some(crate::name::derive_name(&folder)),
        ..Default::default()
    };
    let mut skipped = Vec::new();
    let placement = Placement {
        project_dir: project_dir.to_path_buf(),
        base_dir: parent(file).to_string(),
        project_name,
        environment,
        run_services: None,
    };
    services::apply(&compose, &placement, sources, &mut draft, &mut skipped)?;
    if draft.image.from.is_none() && draft.image.dockerfile.is_none() {
        // No service is the app: a plain Debian environment with the project on /work.
        draft.image.from = Some(crate::draft::FALLBACK_IMAGE.to_string());
        draft.mounts.insert(
            0,
            crate::draft::MountDraft {
                source: Some(".".into()),
                target: "/work".into(),
                kind: "bind".into(),
                readonly: false,
            },
        );
        draft.shell_workdir = Some("/work".into());
        draft.image.comments.push(format!(
            "No service of {file} is the app (none builds from or mounts the project): every service is a sidecar; this environment is plain Debian with the project on /work."
        ));
    }
    Ok(Conversion {
        toml: draft.render(&skipped),
        skipped,
    })
}

pub(crate) fn skip(skipped: &mut Vec<Skipped>, key: impl Into<String>, reason: impl Into<String>) {
    skipped.push(Skipped {
        key: key.into(),
        reason: reason.into(),
    });
}

#[cfg(test)]
mod tests;
