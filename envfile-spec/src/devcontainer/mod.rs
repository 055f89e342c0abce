//! Converts a `.devcontainer/devcontainer.json` (JSONC) into berth.toml text, and lists what
//! could not be converted. Pure: files it needs (compose files, the template's
//! `devcontainer-template.json`, features) come through [`Sources`].
//!
//! Mapping (SPEC.md has the table):
//! - `image` → `[image].from`; `build.dockerfile`/`context`/`args`/`target` → `[image]`
//!   `dockerfile`, `context`, `args`, `target` (paths relative to the project folder)
//! - `dockerComposeFile` + `service` (+ `runServices`) → the service is the environment, the
//!   others sidecars (see [`crate::compose`])
//! - `name` → `name`; `forwardPorts`/`appPort` → `[[ports]]`; `containerEnv`/`remoteEnv` →
//!   `[env]` (remoteEnv wins); `workspaceMount`/`workspaceFolder` → the project mount and
//!   `[shell].workdir`; `mounts` → `[[mounts]]`; `hostRequirements` → `[resources]`;
//!   `runArgs` that map → their keys ([`run_args`])
//! - `onCreateCommand`, `updateContentCommand`, `postCreateCommand` → `on_create`;
//!   `postStartCommand` → `on_up`
//! - `remoteUser` (else `containerUser`) → `[shell].user`, created by a setup step when the
//!   image lacks it (with the host user's uid when the project is bind-mounted)
//! - `features` → setup steps running each feature's `install.sh` ([`features`])
//!
//! Everything else is reported in [`Conversion::skipped`] and in the file's first comments.

mod features;
mod run_args;
mod variables;

use std::path::Path;

use serde_json::{Map, Value};

use crate::compose::{self, ComposeError, Placement};
use crate::draft::{shell_quote, Draft, MountDraft, PortDraft, Sources};
use crate::name::derive_name;
use crate::size::parse_size;
use variables::{Place, Vars};

pub use crate::draft::{Conversion, Skipped};
pub use features::option_variable;
pub use variables::apply_template_options;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevcontainerError {
    #[error("devcontainer.json:{line}:{column}: not valid JSON with comments: {message}; fix the file and retry")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("devcontainer.json must hold a JSON object at the top level")]
    NotAnObject,
    #[error("devcontainer.json: {0}")]
    Shape(String),
    #[error("{file}: cannot read it: {why}")]
    Unreadable { file: String, why: String },
    #[error(transparent)]
    Compose(#[from] ComposeError),
}

use crate::draft::FALLBACK_IMAGE;

/// Where the devcontainer.json is and who runs `berth init`.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The project folder (absolute; used to name things, not read).
    pub project_dir: &'a Path,
    /// The devcontainer.json, relative to the project folder
    /// (`.devcontainer/devcontainer.json`).
    pub json_path: &'a str,
    /// The host user's uid, given to a user the conversion creates when the project is
    /// bind-mounted (as `updateRemoteUserUID` does); `None` or 0: the image picks.
    pub host_uid: Option<u32>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Converts devcontainer.json text.
pub fn convert(
    text: &str,
    ctx: &Context<'_>,
    sources: &dyn Sources,
) -> Result<Conversion, DevcontainerError> {
    let json_dir = parent(ctx.json_path).to_string();
    let template_json = compose::join(parent(&json_dir), "devcontainer-template.json");
    let template = read(sources, &template_json)?;
    let with_options = |t: &str| -> Result<String, DevcontainerError> {
        match &template {
            Some(tj) => apply_template_options(t, tj).map_err(DevcontainerError::Shape),
            None => Ok(t.to_string()),
        }
    };
    let text = with_options(text)?;
    let value = jsonc_parser::parse_to_serde_value(&text, &Default::default()).map_err(|e| {
        DevcontainerError::Syntax {
            line: e.line_display(),
            column: e.column_display(),
            message: e.kind().to_string(),
        }
    })?;
    let Some(Value::Object(obj)) = value else {
        return Err(DevcontainerError::NotAnObject);
    };
    let folder_name = ctx
        .project_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let local_env = |n: &str| sources.local_env(n);
    let container_env = obj
        .get("containerEnv")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .filter(|(_, v)| !v.contains("${"))
                .collect()
        })
        .unwrap_or_default();
    let mut c = Converter {
        vars: Vars {
            project_dir: ctx.project_dir.to_string_lossy().into_owned(),
            folder_name,
            workdir: None,
            local_env: &local_env,
            container_env,
        },
        json_dir,
        skipped: Vec::new(),
        draft: Draft {
            origin: "Converted from devcontainer.json by `berth init --from-devcontainer`.".into(),
            ..Default::default()
        },
    };
    c.run(&obj, ctx, sources, &with_options)?;
    Ok(Conversion {
        toml: c.draft.render(&c.skipped),
        skipped: c.skipped,
    })
}

fn read(sources: &dyn Sources, path: &str) -> Result<Option<String>, DevcontainerError> {
    sources
        .read(path)
        .map_err(|why| DevcontainerError::Unreadable {
            file: path.to_string(),
            why,
        })
}

struct Converter<'a> {
    vars: Vars<'a>,
    /// The devcontainer.json's folder relative to the project (`.devcontainer`).
    json_dir: String,
    skipped: Vec<Skipped>,
    draft: Draft,
}

impl Converter<'_> {
    fn skip(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// `s` resolved, or listed under `key` and `None`.
    fn resolve(&mut self, s: &str, key: &str, place: Place) -> Option<String> {
        match self.vars.resolve(s, place) {
            Ok(v) => Some(v),
            Err(why) => {
                self.skip(key, why.to_string());
                None
            }
        }
    }

    fn run(
        &mut self,
        obj: &Map<String, Value>,
        ctx: &Context<'_>,
        sources: &dyn Sources,
        with_options: &dyn Fn(&str) -> Result<String, DevcontainerError>,
    ) -> Result<(), DevcontainerError> {
        let compose = obj.contains_key("dockerComposeFile");
        let default_target = if compose {
            "/".to_string()
        } else {
            format!("/workspaces/{}", self.vars.folder_name)
        };
        let workdir = match obj.get("workspaceFolder") {
            Some(Value::String(w)) => match self.resolve(w, "workspaceFolder", Place::Inside) {
                Some(w) if w.starts_with('/') => w,
                Some(w) => {
                    self.skip(
                        "workspaceFolder",
                        format!("{w:?} is not an absolute path; using {default_target}"),
                    );
                    default_target.clone()
                }
                None => default_target.clone(),
            },
            Some(other) => {
                self.skip(
                    "workspaceFolder",
                    format!("{other} is not a path; using {default_target}"),
                );
                default_target.clone()
            }
            None => default_target.clone(),
        };
        self.vars.workdir = Some(workdir.clone());
        if let Some(name) = obj.get("name").and_then(Value::as_str) {
            self.draft.name = Some(derive_name(name));
        }
        if compose {
            self.compose(obj, ctx, sources, with_options)?;
        } else {
            self.image(obj);
            self.workspace_mount(obj, &workdir);
        }
        let container_user = obj
            .get("containerUser")
            .and_then(Value::as_str)
            .unwrap_or("root")
            .to_string();
        let remote_user = obj
            .get("remoteUser")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or(container_user.clone());
        features::apply(
            obj,
            sources,
            &features::Users {
                remote: &remote_user,
                container: &container_user,
            },
            &mut self.draft,
            &mut |k, r| self.skipped.push(Skipped { key: k, reason: r }),
        );
        let on_create = self.lifecycle_commands(
            obj,
            &[
                "onCreateCommand",
                "updateContentCommand",
                "postCreateCommand",
            ],
        );
        self.draft.on_create.extend(on_create);
        let on_up = self.lifecycle_commands(obj, &["postStartCommand"]);
        self.draft.on_up.extend(on_up);
        self.env(obj);
        self.mounts(obj);
        self.ports(obj);
        self.host_requirements(obj);
        run_args::apply(obj.get("runArgs"), &mut self.draft, &mut |k, r| {
            self.skipped.push(Skipped { key: k, reason: r })
        });
        self.user(obj, ctx);
        self.draft.shell_workdir = Some(workdir);
        for (key, value) in obj {
            if let Some(reason) = unsupported_reason(key, value) {
                self.skip(key.clone(), reason);
            }
        }
        Ok(())
    }

    fn image(&mut self, obj: &Map<String, Value>) {
        let build = obj.get("build").and_then(Value::as_object);
        let dockerfile = build
            .and_then(|b| b.get("dockerfile").or_else(|| b.get("dockerFile")))
            .or_else(|| obj.get("dockerFile").or_else(|| obj.get("dockerfile")))
            .and_then(Value::as_str);
        match (obj.get("image"), dockerfile) {
            (Some(Value::String(image)), _) => {
                if let Some(i) = self.resolve(image, "image", Place::Inside) {
                    self.draft.image.from = Some(i);
                }
                if dockerfile.is_some() {
                    self.skip(
                        "build",
                        "`image` is given too: berth uses the image, as the dev container CLI does",
                    );
                }
            }
            (_, Some(dockerfile)) => {
                let context = build
                    .and_then(|b| b.get("context"))
                    .or_else(|| obj.get("context"))
                    .and_then(Value::as_str)
                    .unwrap_or(".");
                let ctx = compose::join(&self.json_dir, context);
                self.draft.image.dockerfile = Some(compose::join(&self.json_dir, dockerfile));
                self.draft.image.context = Some(if ctx.is_empty() { ".".into() } else { ctx });
                if let Some(b) = build {
                    if let Some(t) = b.get("target").and_then(Value::as_str) {
                        self.draft.image.target = Some(t.to_string());
                    }
                    for (k, v) in b
                        .get("args")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                    {
                        let key = format!("build.args.{k}");
                        if let Some(v) = v
                            .as_str()
                            .and_then(|v| self.resolve(v, &key, Place::Inside))
                        {
                            crate::draft::set_var(&mut self.draft.image.args, k, v);
                        }
                    }
                    for k in b.keys().filter(|k| {
                        !["dockerfile", "dockerFile", "context", "target", "args"]
                            .contains(&k.as_str())
                    }) {
                        self.skip(format!("build.{k}"), "no berth equivalent");
                    }
                }
            }
            (other, None) => {
                if let Some(o) = other {
                    self.skip("image", format!("{o} is not a string"));
                }
                self.skip("image", format!("devcontainer.json names no image, Dockerfile or compose file: using {FALLBACK_IMAGE}"));
                self.draft.image.from = Some(FALLBACK_IMAGE.into());
            }
        }
    }

    fn compose(
        &mut self,
        obj: &Map<String, Value>,
        ctx: &Context<'_>,
        sources: &dyn Sources,
        with_options: &dyn Fn(&str) -> Result<String, DevcontainerError>,
    ) -> Result<(), DevcontainerError> {
        let files: Vec<&str> = match obj.get("dockerComposeFile") {
            Some(Value::String(f)) => vec![f.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => {
                return Err(DevcontainerError::Shape(
                    "dockerComposeFile must be a path or a list of paths".into(),
                ))
            }
        };
        let mut texts = Vec::new();
        for f in files {
            let path = compose::join(&self.json_dir, f);
            match read(sources, &path)? {
                Some(t) => texts.push((path, with_options(&t)?)),
                None => {
                    return Err(DevcontainerError::Unreadable {
                        file: path,
                        why: "no such file (dockerComposeFile names it)".into(),
                    })
                }
            }
        }
        let Some(service) = obj.get("service").and_then(Value::as_str) else {
            return Err(DevcontainerError::Shape(
                "dockerComposeFile needs `service`: the compose service you work in".into(),
            ));
        };
        let loaded = compose::load(&texts, sources)?;
        let run_services = obj.get("runServices").and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        });
        let place = Placement {
            project_dir: ctx.project_dir.to_path_buf(),
            base_dir: parent(&texts[0].0).to_string(),
            // The project name the dev container CLI gives compose.
            project_name: loaded
                .name
                .clone()
                .unwrap_or_else(|| format!("{}_devcontainer", derive_name(&self.vars.folder_name))),
            environment: Some(service.to_string()),
            run_services,
        };
        compose::services::apply(&loaded, &place, sources, &mut self.draft, &mut self.skipped)?;
        // The service's own command (`sleep infinity` in the templates) is replaced by the
        // dev container CLI unless overrideCommand is false.
        if obj.get("overrideCommand") != Some(&Value::Bool(false)) {
            let name = crate::draft::service_name(service);
            if self.draft.processes.iter().any(|p| p.name == name) {
                self.draft.processes.retain(|p| p.name != name);
                self.skip(
                    format!("services.{service}.command"),
                    "overridden by the dev container (overrideCommand is not false)",
                );
            }
        }
        Ok(())
    }

    fn workspace_mount(&mut self, obj: &Map<String, Value>, workdir: &str) {
        match obj.get("workspaceMount") {
            Some(Value::String(s)) => {
                if let Some(m) = self.mount_from_string(s, "workspaceMount") {
                    self.draft.mounts.push(m);
                }
            }
            Some(_) => self.skip("workspaceMount", "not a string"),
            None => self.draft.mounts.push(MountDraft {
                source: Some(".".into()),
                target: workdir.to_string(),
                kind: "bind".into(),
                readonly: false,
            }),
        }
    }

    /// `remoteUser` (else `containerUser`) as the shell's user, created when missing.
    fn user(&mut self, obj: &Map<String, Value>, ctx: &Context<'_>) {
        let user = match (obj.get("remoteUser"), obj.get("containerUser")) {
            (Some(Value::String(u)), _) | (None, Some(Value::String(u))) => u.clone(),
            _ => return,
        };
        let Some(user) = self.resolve(&user, "remoteUser", Place::Inside) else {
            return;
        };
        self.draft.shell_user = Some(user.clone());
        let valid = !user.is_empty()
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            && !user.starts_with('-');
        if user == "root" || user.chars().all(|c| c.is_ascii_digit()) || !valid {
            return;
        }
        let bind = self.draft.mounts.iter().any(|m| m.kind == "bind");
        let update_uid = obj.get("updateRemoteUserUID") != Some(&Value::Bool(false));
        let uid = ctx.host_uid.filter(|&u| u != 0 && bind && update_uid);
        let u = shell_quote(&user);
        let want = uid.unwrap_or(1000);
        // The wanted uid when free, else the next free one; useradd (Debian, Fedora), adduser
        // (Alpine, busybox), else the entries written by hand (a bare image).
        self.draft.image.setup.push(format!(
            "id -u {u} >/dev/null 2>&1 || {{ uid={want}; while cut -d: -f3 /etc/passwd | grep -qx \"$uid\"; do uid=$((uid+1)); done; \
if command -v useradd >/dev/null 2>&1; then useradd -m -u \"$uid\" {u}; \
elif command -v adduser >/dev/null 2>&1; then adduser -D -u \"$uid\" {u}; \
else echo \"{user}:x:$uid:$uid::/home/{user}:/bin/sh\" >> /etc/passwd && echo \"{user}:x:$uid:\" >> /etc/group && mkdir -p /home/{user} && chown \"$uid:$uid\" /home/{user}; fi; }}"
        ));
        self.draft.image.comments.push(format!(
            "The last setup step creates the user {user} when the image has none{}.",
            uid.map(|u| format!(" (uid {u}, yours, as updateRemoteUserUID would)"))
                .unwrap_or_default()
        ));
    }

    fn lifecycle_commands(&mut self, obj: &Map<String, Value>, keys: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for &key in keys {
            match obj.get(key) {
                None => {}
                Some(Value::Object(parallel)) => {
                    for (label, cmd) in parallel {
                        let k = format!("{key}.{label}");
                        match command_line(cmd) {
                            Some(c) => out.extend(self.resolve(&c, &k, Place::Inside)),
                            None => self.skip(k, "not a string or an array of strings"),
                        }
                    }
                }
                Some(v) => match command_line(v) {
                    Some(c) if !c.trim().is_empty() => {
                        out.extend(self.resolve(&c, key, Place::Inside))
                    }
                    Some(_) => {}
                    None => self.skip(key, "not a string, an array of strings, or an object"),
                },
            }
        }
        out
    }

    fn env(&mut self, obj: &Map<String, Value>) {
        for key in ["containerEnv", "remoteEnv"] {
            let Some(v) = obj.get(key) else { continue };
            let Some(map) = v.as_object() else {
                self.skip(key, "not an object");
                continue;
            };
            for (name, value) in map {
                let full = format!("{key}.{name}");
                if !crate::checker::is_env_name(name) {
                    self.skip(full, "not a valid environment variable name");
                    continue;
                }
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => {
                        self.skip(full, "null (unset) has no berth.toml equivalent");
                        continue;
                    }
                    other => other.to_string(),
                };
                let Some(value) = self.resolve(&value, &full, Place::Inside) else {
                    continue;
                };
                if value.contains('\0') {
                    self.skip(full, "contains a NUL character");
                    continue;
                }
                self.draft.set_env(name, value);
            }
        }
    }

    fn mounts(&mut self, obj: &Map<String, Value>) {
        match obj.get("mounts") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("mounts[{i}]");
                    let m = match item {
                        Value::String(s) => self.mount_from_string(s, &key),
                        Value::Object(o) => self.mount_from_object(o, &key),
                        _ => {
                            self.skip(key, "neither a string nor an object");
                            None
                        }
                    };
                    self.draft.mounts.extend(m);
                }
            }
            Some(_) => self.skip("mounts", "not an array"),
            None => {}
        }
    }

    fn ports(&mut self, obj: &Map<String, Value>) {
        for key in ["forwardPorts", "appPort"] {
            let items: Vec<(String, &Value)> = match obj.get(key) {
                None => continue,
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{key}[{i}]"), v))
                    .collect(),
                Some(v) => vec![(key.to_string(), v)],
            };
            for (k, v) in items {
                let pair = match v {
                    Value::Number(n) => n
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .map(|n| (n, n)),
                    Value::String(s) => match s.split_once(':') {
                        None => s.trim().parse::<u16>().ok().map(|n| (n, n)),
                        Some((h, g)) => match (h.trim().parse::<u16>(), g.trim().parse::<u16>()) {
                            (Ok(h), Ok(g)) => Some((h, g)),
                            _ => {
                                // `db:5432`: a port of a compose service, which shares localhost.
                                let shared = self
                                    .draft
                                    .sidecars
                                    .iter()
                                    .any(|s| s.name == crate::draft::service_name(h));
                                match g.trim().parse::<u16>() {
                                    Ok(g) if shared => Some((g, g)),
                                    _ => {
                                        self.skip(k, format!("{s:?} forwards a port of another container; berth forwards only its own and its sidecars'"));
                                        continue;
                                    }
                                }
                            }
                        },
                    },
                    _ => None,
                };
                match pair {
                    Some((h, g)) if h > 0 && g > 0 => {
                        // A port compose already publishes is the same forward.
                        if !self.draft.ports.iter().any(|p| p.host == h && !p.udp) {
                            self.draft.add_port(PortDraft {
                                host: h,
                                guest: g,
                                udp: false,
                                address: None,
                            });
                        }
                    }
                    _ => self.skip(k, format!("{v} is not a port number")),
                }
            }
        }
    }

    fn host_requirements(&mut self, obj: &Map<String, Value>) {
        let Some(req) = obj.get("hostRequirements").and_then(Value::as_object) else {
            return;
        };
        if let Some(c) = req.get("cpus").and_then(Value::as_u64).filter(|&c| c > 0) {
            self.draft.resources.cpus = Some(c as f64);
        }
        match req.get("memory").and_then(Value::as_str) {
            Some(m) if parse_size(m).is_ok_and(|b| b > 0) => {
                self.draft.resources.memory = Some(m.to_string())
            }
            Some(m) => self.skip("hostRequirements.memory", format!("{m:?} is not a size")),
            None => {}
        }
        for k in req.keys().filter(|k| *k != "cpus" && *k != "memory") {
            self.skip(
                format!("hostRequirements.{k}"),
                "berth does not check this requirement (cpus and memory become [resources] limits)",
            );
        }
    }

    fn mount_from_string(&mut self, s: &str, key: &str) -> Option<MountDraft> {
        let mut map = Map::new();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, "true"));
            map.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
        }
        self.mount_from_object(&map, key)
    }

    fn mount_from_object(&mut self, o: &Map<String, Value>, key: &str) -> Option<MountDraft> {
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| o.get(*n))
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        };
        let kind = get(&["type"]).unwrap_or_else(|| "bind".into());
        if !["bind", "volume", "tmpfs"].contains(&kind.as_str()) {
            self.skip(key, format!("mount type {kind:?} is not supported"));
            return None;
        }
        let Some(target) = get(&["target", "destination", "dst"]) else {
            self.skip(key, "the mount has no target");
            return None;
        };
        let target = self.resolve(&target, key, Place::Inside)?;
        if !target.starts_with('/') {
            self.skip(key, format!("target {target:?} is not an absolute path"));
            return None;
        }
        let source = match (kind.as_str(), get(&["source", "src"])) {
            ("tmpfs", _) => None,
            (_, None) => {
                self.skip(key, "the mount has no source");
                return None;
            }
            (k, Some(src)) => {
                let place = if k == "bind" {
                    Place::HostPath
                } else {
                    Place::Inside
                };
                let mut v = self.resolve(&src, key, place)?;
                if v.starts_with("./") && v.len() > 2 {
                    v = v[2..].to_string();
                }
                if k == "volume" {
                    v = crate::draft::service_name(&v);
                }
                Some(v)
            }
        };
        let readonly = matches!(get(&["readonly", "ro"]).as_deref(), Some("true" | "1"));
        Some(MountDraft {
            source,
            target,
            kind,
            readonly,
        })
    }
}

/// Why a devcontainer.json key is not converted; `None` for keys converted above (or that
/// have no meaning for berth at all, like `$schema`).
fn unsupported_reason(key: &str, _value: &Value) -> Option<String> {
    let reason = match key {
        "name" | "image" | "build" | "dockerFile" | "dockerfile" | "context" | "forwardPorts"
        | "appPort" | "containerEnv" | "remoteEnv" | "mounts" | "workspaceFolder"
        | "workspaceMount" | "onCreateCommand" | "updateContentCommand" | "postCreateCommand"
        | "postStartCommand" | "remoteUser" | "containerUser" | "hostRequirements" | "$schema"
        | "features" | "overrideFeatureInstallOrder" | "dockerComposeFile" | "service"
        | "runServices" | "runArgs" | "updateRemoteUserUID" | "overrideCommand" => return None,
        "customizations" => "editor settings are not used by berth",
        "postAttachCommand" => "berth has no attach step; run it yourself or add it to on_up",
        "initializeCommand" => "this runs on the host before start; berth does not run host commands",
        "privileged" | "capAdd" | "securityOpt" | "init" => "container security options are not set in berth.toml; `berth up --privileged` (root, trusted images) is the opt-in",
        "portsAttributes" | "otherPortsAttributes" => "port labels and auto-forward settings are not used by berth",
        "shutdownAction" | "waitFor" | "userEnvProbe" => "has no berth equivalent",
        _ => "unknown devcontainer.json key",
    };
    Some(reason.to_string())
}

/// A lifecycle command as one shell line: a string as is, an array quoted word by word.
fn command_line(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let words: Option<Vec<String>> =
                parts.iter().map(|p| p.as_str().map(shell_quote)).collect();
            words.map(|w| w.join(" "))
        }
        _ => None,
    }
}

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod tests;
