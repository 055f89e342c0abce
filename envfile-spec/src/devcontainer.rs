//! Converts a `.devcontainer/devcontainer.json` (JSONC) into berth.toml text, and lists what
//! could not be converted. Pure: no file access; the caller reads and writes files.
//!
//! Mapping:
//! - `image` → `[image].from`; `name` → `name` (made a valid environment name)
//! - `forwardPorts`, `appPort` → `[[ports]]` (same port on both sides unless `"host:guest"`)
//! - `containerEnv`, `remoteEnv` → `[env]` (remoteEnv wins on conflicts)
//! - `workspaceMount` / `workspaceFolder` → the project mount and `[shell].workdir`
//!   (default: the project folder on `/workspaces/FOLDER`, as the dev container CLI does)
//! - `mounts` (string or object form) → `[[mounts]]`
//! - `onCreateCommand`, `updateContentCommand`, `postCreateCommand` (string, array or
//!   object) → `on_create`, in that order; `postStartCommand` → `on_up`
//! - `remoteUser` (else `containerUser`) → `[shell].user`
//! - `hostRequirements.cpus` / `.memory` → `[resources]`
//!
//! Everything else (`build`, `features`, `dockerComposeFile`, `runArgs`, …) is reported in
//! [`Conversion::skipped`].

use serde_json::{Map, Value};

use crate::name::derive_name;
use crate::size::parse_size;

/// The result of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// The berth.toml text.
    pub toml: String,
    /// What was not converted, and why.
    pub skipped: Vec<Skipped>,
}

/// One part of the devcontainer.json that berth.toml does not express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The devcontainer.json key (`features`, `mounts[2]`, …).
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevcontainerError {
    #[error("devcontainer.json is not valid JSON with comments: {0}")]
    Syntax(String),
    #[error("devcontainer.json must hold a JSON object at the top level")]
    NotAnObject,
}

/// Image used when the devcontainer.json names none (it builds a Dockerfile instead).
pub const FALLBACK_IMAGE: &str = "docker.io/library/debian:bookworm";

struct Mount {
    source: Option<String>,
    target: String,
    kind: String,
    readonly: bool,
}

/// Converts devcontainer.json text. `folder_name` is the project folder's name (the dev
/// container default workspace is `/workspaces/<folder_name>`).
pub fn convert(text: &str, folder_name: &str) -> Result<Conversion, DevcontainerError> {
    let value = jsonc_parser::parse_to_serde_value(text, &Default::default())
        .map_err(|e| DevcontainerError::Syntax(e.to_string()))?;
    let Some(Value::Object(obj)) = value else {
        return Err(DevcontainerError::NotAnObject);
    };
    Ok(Converter::new(folder_name).run(&obj))
}

struct Converter {
    folder_name: String,
    skipped: Vec<Skipped>,
}

impl Converter {
    fn new(folder_name: &str) -> Self {
        Converter {
            folder_name: folder_name.to_string(),
            skipped: Vec::new(),
        }
    }

    fn skip(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn run(mut self, obj: &Map<String, Value>) -> Conversion {
        let mut out = String::from(
            "# Converted from devcontainer.json by `berth init --from-devcontainer`.\n",
        );

        // First: commands and variables may name it (`${containerWorkspaceFolder}`).
        let default_target = format!("/workspaces/{}", self.folder_name);
        let workdir = match obj.get("workspaceFolder") {
            Some(Value::String(w)) => match self.resolve(w, None) {
                Some(w) if w.starts_with('/') => w,
                Some(w) => {
                    self.skip(
                        "workspaceFolder",
                        format!("{w:?} is not an absolute path; using {default_target}"),
                    );
                    default_target.clone()
                }
                None => {
                    self.skip(
                        "workspaceFolder",
                        format!("{w:?} uses a ${{…}} variable berth cannot resolve; using {default_target}"),
                    );
                    default_target.clone()
                }
            },
            Some(other) => {
                self.skip(
                    "workspaceFolder",
                    format!("{other} is not an absolute path; using {default_target}"),
                );
                default_target.clone()
            }
            None => default_target.clone(),
        };
        // Top-level keys first: TOML puts every key after a [table] into that table.
        if let Some(name) = obj.get("name").and_then(Value::as_str) {
            out.push_str(&format!("name = {}\n", q(&derive_name(name))));
        }
        // Create-time commands run once per writable layer, as in dev containers.
        let on_create = self.lifecycle_commands(
            obj,
            &[
                "onCreateCommand",
                "updateContentCommand",
                "postCreateCommand",
            ],
            &workdir,
        );
        let on_up = self.lifecycle_commands(obj, &["postStartCommand"], &workdir);
        for (key, list) in [("on_create", &on_create), ("on_up", &on_up)] {
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("{key} = [\n"));
            for c in list {
                out.push_str(&format!("    {},\n", q(c)));
            }
            out.push_str("]\n");
        }

        out.push_str("\n[image]\n");
        match obj.get("image") {
            Some(Value::String(image)) if !image.contains("${") => {
                out.push_str(&format!("from = {}\n", q(image)))
            }
            other => {
                match other {
                    Some(Value::String(image)) => self.skip(
                        "image",
                        format!("{image:?} uses a ${{…}} variable berth cannot resolve"),
                    ),
                    Some(_) => self.skip("image", "not a string"),
                    None => {}
                }
                out.push_str(&format!(
                    "# TODO: devcontainer.json names no image; set the image your Dockerfile starts FROM.\nfrom = {}\n",
                    q(FALLBACK_IMAGE)
                ));
            }
        }

        let env = self.env(obj, &workdir);
        if !env.is_empty() {
            out.push_str("\n[env]\n");
            for (k, v) in &env {
                out.push_str(&format!("{k} = {}\n", q(v)));
            }
        }

        let mut mounts = Vec::new();
        match obj.get("workspaceMount") {
            Some(Value::String(s)) => {
                if let Some(m) = self.mount_from_string(s, "workspaceMount", &workdir) {
                    mounts.push(m);
                }
            }
            Some(_) => self.skip("workspaceMount", "not a string"),
            None => mounts.push(Mount {
                source: Some(".".into()),
                target: workdir.clone(),
                kind: "bind".into(),
                readonly: false,
            }),
        }
        match obj.get("mounts") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let key = format!("mounts[{i}]");
                    let m = match item {
                        Value::String(s) => self.mount_from_string(s, &key, &workdir),
                        Value::Object(o) => self.mount_from_object(o, &key, &workdir),
                        _ => {
                            self.skip(key, "neither a string nor an object");
                            None
                        }
                    };
                    mounts.extend(m);
                }
            }
            Some(_) => self.skip("mounts", "not an array"),
            None => {}
        }
        for m in &mounts {
            out.push_str("\n[[mounts]]\n");
            if let Some(s) = &m.source {
                out.push_str(&format!("source = {}\n", q(s)));
            }
            out.push_str(&format!("target = {}\n", q(&m.target)));
            if m.kind != "bind" {
                out.push_str(&format!("type = {}\n", q(&m.kind)));
            }
            if m.readonly {
                out.push_str("readonly = true\n");
            }
        }

        for (host, guest) in self.ports(obj) {
            out.push_str(&format!("\n[[ports]]\nhost = {host}\nguest = {guest}\n"));
        }

        let (cpus, memory) = self.host_requirements(obj);
        if cpus.is_some() || memory.is_some() {
            out.push_str("\n[resources]\n");
            if let Some(c) = cpus {
                out.push_str(&format!("cpus = {c}\n"));
            }
            if let Some(m) = memory {
                out.push_str(&format!("memory = {}\n", q(&m)));
            }
        }

        out.push_str("\n[shell]\n");
        let user = match (obj.get("remoteUser"), obj.get("containerUser")) {
            (Some(Value::String(u)), _) | (None, Some(Value::String(u))) => Some(u.clone()),
            _ => None,
        };
        if let Some(u) = user {
            out.push_str(&format!("user = {}\n", q(&u)));
        }
        out.push_str(&format!("workdir = {}\n", q(&workdir)));

        for (key, value) in obj {
            if let Some(reason) = unsupported_reason(key, value) {
                self.skip(key.clone(), reason);
            }
        }
        Conversion {
            toml: out,
            skipped: self.skipped,
        }
    }

    /// `s` with the variables berth can know replaced (`${localWorkspaceFolderBasename}`,
    /// `${containerWorkspaceFolder}` when `workdir` is known, its basename); `None` when
    /// another `${…}` is left.
    fn resolve(&self, s: &str, workdir: Option<&str>) -> Option<String> {
        let mut v = s.replace("${localWorkspaceFolderBasename}", &self.folder_name);
        if let Some(w) = workdir {
            let base = w.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
            v = v
                .replace("${containerWorkspaceFolder}", w)
                .replace("${containerWorkspaceFolderBasename}", base);
        }
        (!v.contains("${")).then_some(v)
    }

    fn lifecycle_commands(
        &mut self,
        obj: &Map<String, Value>,
        keys: &[&str],
        workdir: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for &key in keys {
            match obj.get(key) {
                None => {}
                Some(Value::Object(parallel)) => {
                    for (label, cmd) in parallel {
                        match command_line(cmd) {
                            Some(c) => match self.resolve(&c, Some(workdir)) {
                                Some(c) => out.push(c),
                                None => self.skip(
                                    format!("{key}.{label}"),
                                    format!("{c:?} uses a ${{…}} variable berth cannot resolve"),
                                ),
                            },
                            None => self.skip(
                                format!("{key}.{label}"),
                                "not a string or an array of strings",
                            ),
                        }
                    }
                }
                Some(v) => match command_line(v) {
                    Some(c) if !c.trim().is_empty() => match self.resolve(&c, Some(workdir)) {
                        Some(c) => out.push(c),
                        None => self.skip(
                            key,
                            format!("{c:?} uses a ${{…}} variable berth cannot resolve"),
                        ),
                    },
                    Some(_) => {}
                    None => self.skip(key, "not a string, an array of strings, or an object"),
                },
            }
        }
        out
    }

    fn env(&mut self, obj: &Map<String, Value>, workdir: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
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
                let Some(value) = self.resolve(&value, Some(workdir)) else {
                    self.skip(
                        full,
                        format!("{value:?} uses ${{…}} substitution, which berth does not expand; set it in [env] by hand"),
                    );
                    continue;
                };
                if value.contains('\0') {
                    self.skip(full, "contains a NUL character");
                    continue;
                }
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value));
            }
        }
        out
    }

    fn ports(&mut self, obj: &Map<String, Value>) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        let mut add = |this: &mut Self, key: String, v: &Value| {
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
                            this.skip(key, format!("{s:?} forwards a port of another container; berth forwards only its own"));
                            return;
                        }
                    },
                },
                _ => None,
            };
            match pair {
                Some((h, g)) if h > 0 && g > 0 => {
                    if !out.iter().any(|&(oh, _)| oh == h) {
                        out.push((h, g));
                    }
                }
                _ => this.skip(key, format!("{v} is not a port number")),
            }
        };
        for key in ["forwardPorts", "appPort"] {
            match obj.get(key) {
                None => {}
                Some(Value::Array(items)) => {
                    for (i, v) in items.iter().enumerate() {
                        add(self, format!("{key}[{i}]"), v);
                    }
                }
                Some(v) => add(self, key.to_string(), v),
            }
        }
        out
    }

    fn host_requirements(&mut self, obj: &Map<String, Value>) -> (Option<u64>, Option<String>) {
        let Some(req) = obj.get("hostRequirements").and_then(Value::as_object) else {
            return (None, None);
        };
        let cpus = req.get("cpus").and_then(Value::as_u64).filter(|&c| c > 0);
        let memory = match req.get("memory").and_then(Value::as_str) {
            Some(m) if parse_size(m).is_ok_and(|b| b > 0) => Some(m.to_string()),
            Some(m) => {
                self.skip("hostRequirements.memory", format!("{m:?} is not a size"));
                None
            }
            None => None,
        };
        for k in req.keys().filter(|k| *k != "cpus" && *k != "memory") {
            self.skip(
                format!("hostRequirements.{k}"),
                "berth does not check this requirement",
            );
        }
        (cpus, memory)
    }

    fn substitute(&mut self, s: &str, key: &str, workdir: &str) -> Option<String> {
        let mut v = s
            .replace("${localWorkspaceFolder}", ".")
            .replace("${localWorkspaceFolderBasename}", &self.folder_name)
            .replace("${containerWorkspaceFolder}", workdir)
            .replace("${localEnv:HOME}", "~")
            .replace("${env:HOME}", "~");
        if v.starts_with("./") && v.len() > 2 {
            v = v[2..].to_string();
        }
        if v.contains("${") {
            self.skip(
                key,
                format!("{s:?} uses a ${{…}} variable berth cannot resolve"),
            );
            return None;
        }
        Some(v)
    }

    fn mount_from_string(&mut self, s: &str, key: &str, workdir: &str) -> Option<Mount> {
        let mut map = Map::new();
        for part in s.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, "true"));
            map.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
        }
        self.mount_from_object(&map, key, workdir)
    }

    fn mount_from_object(
        &mut self,
        o: &Map<String, Value>,
        key: &str,
        workdir: &str,
    ) -> Option<Mount> {
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
        let target = self.substitute(&target, key, workdir)?;
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
            (_, Some(src)) => Some(self.substitute(&src, key, workdir)?),
        };
        let readonly = matches!(get(&["readonly", "ro"]).as_deref(), Some("true" | "1"));
        Some(Mount {
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
        "name" | "image" | "forwardPorts" | "appPort" | "containerEnv" | "remoteEnv"
        | "mounts" | "workspaceFolder" | "workspaceMount" | "onCreateCommand"
        | "updateContentCommand" | "postCreateCommand" | "postStartCommand" | "remoteUser"
        | "containerUser" | "hostRequirements" | "$schema" => return None,
        "build" | "dockerFile" | "dockerfile" | "context" => {
            "berth does not build Dockerfiles; set [image].from to the Dockerfile's base image and move RUN steps to [image].setup"
        }
        "features" => "dev container features are not supported; install the tools with [image].packages or [image].setup",
        "dockerComposeFile" | "service" | "runServices" => {
            "Docker Compose setups are not supported; run extra processes as [services]"
        }
        "customizations" => "editor settings are not used by berth",
        "postAttachCommand" => "berth has no attach step; run it yourself or add it to on_up",
        "initializeCommand" => "this runs on the host before start; berth does not run host commands",
        "runArgs" => "docker run arguments have no berth equivalent",
        "privileged" | "capAdd" | "securityOpt" | "init" => "container security options are not configurable in berth.toml",
        "portsAttributes" | "otherPortsAttributes" => "port labels and auto-forward settings are not used by berth",
        "overrideCommand" | "shutdownAction" | "waitFor" | "userEnvProbe" | "updateRemoteUserUID" => {
            "has no berth equivalent"
        }
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

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &Conversion) -> Vec<&str> {
        c.skipped.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn typescript_node_example() {
        let text = r#"
        // For format details, see https://aka.ms/devcontainer.json.
        {
            "name": "Node.js & TypeScript",
            "image": "mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye",
            "features": { "ghcr.io/devcontainers/features/docker-in-docker:2": {} },
            "forwardPorts": [3000, "5173", "db:5432"],
            "containerEnv": { "NODE_ENV": "development", "TZ": "UTC" },
            "remoteEnv": { "PATH": "${containerEnv:PATH}:/extra", "TZ": "Europe/Berlin" },
            "postCreateCommand": "npm ci",
            "postStartCommand": ["npm", "run", "dev server"],
            "customizations": { "vscode": { "extensions": ["dbaeumer.vscode-eslint"] } },
            "remoteUser": "node", /* trailing comma allowed */
        }"#;
        let c = convert(text, "my-app").unwrap();
        let t = &c.toml;
        assert!(t.contains("name = \"node-js-typescript\"\n"), "{t}");
        assert!(
            t.contains("from = \"mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye\"")
        );
        assert!(
            t.contains(
                "on_create = [\n    \"npm ci\",\n]\non_up = [\n    \"npm run 'dev server'\",\n]"
            ),
            "{t}"
        );
        assert!(t.contains("[[ports]]\nhost = 3000\nguest = 3000"));
        assert!(t.contains("[[ports]]\nhost = 5173\nguest = 5173"));
        assert!(!t.contains("5432"));
        assert!(t.contains("NODE_ENV = \"development\""));
        assert!(t.contains("TZ = \"Europe/Berlin\""), "remoteEnv wins: {t}");
        assert!(!t.contains("TZ = \"UTC\""));
        assert!(
            !t.contains("PATH"),
            "substituted values are not written: {t}"
        );
        assert!(t.contains("source = \".\"\ntarget = \"/workspaces/my-app\""));
        assert!(t.contains("user = \"node\"\nworkdir = \"/workspaces/my-app\""));
        let k = keys(&c);
        for expected in [
            "forwardPorts[2]",
            "remoteEnv.PATH",
            "features",
            "customizations",
        ] {
            assert!(k.contains(&expected), "{expected} not in {k:?}");
        }
        assert!(!k.contains(&"image") && !k.contains(&"remoteUser"));
    }

    #[test]
    fn mounts_in_both_forms_and_workspace() {
        let text = r#"{
            "image": "debian:bookworm",
            "workspaceMount": "source=${localWorkspaceFolder},target=/src,type=bind,consistency=cached",
            "workspaceFolder": "/src",
            "mounts": [
                "source=${localEnv:HOME}/.ssh,target=/home/dev/.ssh,type=bind,readonly",
                { "source": "cache-vol", "target": "/cache", "type": "volume" },
                { "target": "/tmp/scratch", "type": "tmpfs" },
                "source=${localEnv:SECRET_DIR},target=/secret,type=bind",
                { "source": "x", "target": "/y", "type": "npipe" }
            ],
            "onCreateCommand": { "deps": "make deps", "db": ["./db.sh", "init"] },
            "build": { "dockerfile": "Dockerfile" },
            "hostRequirements": { "cpus": 4, "memory": "8gb", "storage": "32gb" }
        }"#;
        let c = convert(text, "proj").unwrap();
        let t = &c.toml;
        assert!(
            t.contains("[[mounts]]\nsource = \".\"\ntarget = \"/src\"\n"),
            "{t}"
        );
        assert!(
            t.contains("source = \"~/.ssh\"\ntarget = \"/home/dev/.ssh\"\nreadonly = true"),
            "{t}"
        );
        assert!(t.contains("source = \"cache-vol\"\ntarget = \"/cache\"\ntype = \"volume\""));
        assert!(t.contains("[[mounts]]\ntarget = \"/tmp/scratch\"\ntype = \"tmpfs\""));
        assert!(!t.contains("/secret"));
        assert!(t.contains("\"make deps\""));
        assert!(t.contains("\"./db.sh init\""));
        assert!(t.contains("cpus = 4\nmemory = \"8gb\""));
        assert!(t.contains("workdir = \"/src\""));
        let k = keys(&c);
        for expected in [
            "mounts[3]",
            "mounts[4]",
            "build",
            "hostRequirements.storage",
        ] {
            assert!(k.contains(&expected), "{expected} not in {k:?}");
        }
    }

    #[test]
    fn no_variable_is_left_unresolved_without_being_listed() {
        let c = convert(
            r#"{
                "image": "debian",
                "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
                "postCreateCommand": "cd ${containerWorkspaceFolder} && make",
                "postStartCommand": "echo ${localEnv:TOKEN}",
                "remoteEnv": { "APP": "${containerWorkspaceFolder}/app", "P": "${containerEnv:PATH}:/x" }
            }"#,
            "proj",
        )
        .unwrap();
        assert!(
            c.toml.contains("target = \"/workspaces/proj\""),
            "{}",
            c.toml
        );
        assert!(
            c.toml.contains("workdir = \"/workspaces/proj\""),
            "{}",
            c.toml
        );
        assert!(
            c.toml.contains("\"cd /workspaces/proj && make\""),
            "{}",
            c.toml
        );
        assert!(
            c.toml.contains("APP = \"/workspaces/proj/app\""),
            "{}",
            c.toml
        );
        assert!(!c.toml.contains("${"), "{}", c.toml);
        let k = keys(&c);
        assert!(
            k.contains(&"postStartCommand") && k.contains(&"remoteEnv.P"),
            "{k:?}"
        );
    }

    #[test]
    fn dockerfile_only_gets_a_placeholder_image() {
        let c = convert(
            r#"{ "build": { "dockerfile": "Dockerfile" }, "appPort": "8080:80" }"#,
            "x",
        )
        .unwrap();
        assert!(c.toml.contains(FALLBACK_IMAGE));
        assert!(c.toml.contains("# TODO"));
        assert!(c.toml.contains("host = 8080\nguest = 80"));
        assert_eq!(keys(&c), ["build"]);
    }

    #[test]
    fn rejects_non_objects_and_syntax_errors() {
        assert_eq!(convert("[1, 2]", "x"), Err(DevcontainerError::NotAnObject));
        assert_eq!(convert("", "x"), Err(DevcontainerError::NotAnObject));
        assert!(matches!(
            convert("{ \"image\": ", "x"),
            Err(DevcontainerError::Syntax(_))
        ));
    }

    #[test]
    fn strings_are_escaped_for_toml() {
        let c = convert(
            r#"{ "image": "debian", "containerEnv": { "Q": "a \"quoted\" \\ value\n" } }"#,
            "x",
        )
        .unwrap();
        let doc: toml_edit::DocumentMut = c.toml.parse().unwrap();
        assert_eq!(doc["env"]["Q"].as_str(), Some("a \"quoted\" \\ value\n"));
    }
}
