//! The berth.toml a converter (`devcontainer`, `compose`) builds, and how it is written out:
//! one typed draft, one writer, so that every converter writes the same layout (top-level
//! keys before the first table, quoting that round-trips) and lists what it left out.

use std::collections::BTreeMap;

/// Image of a converted environment whose source names none (a devcontainer.json without
/// image, Dockerfile or compose file; a compose file none of whose services is the app).
pub const FALLBACK_IMAGE: &str = "docker.io/library/debian:bookworm";

/// The result of a conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    /// The berth.toml text (what was not converted is also listed in its first comment block).
    pub toml: String,
    /// What was not converted, and why.
    pub skipped: Vec<Skipped>,
}

/// One part of the source file that berth.toml does not express (or expresses differently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The source's key (`features`, `mounts[2]`, `services.db.networks`, …).
    pub key: String,
    pub reason: String,
}

/// Files and variables a converter may need besides the file it converts; the caller does the
/// reading (the converters stay free of I/O and testable with a map).
pub trait Sources {
    /// The text of a file, `path` relative to the project folder (`/`-separated, may start
    /// with `../` when the source file points outside). `Ok(None)`: there is no such file.
    fn read(&self, path: &str) -> Result<Option<String>, String>;
    /// A variable of the environment `berth init` runs in (`${localEnv:VAR}`, compose's
    /// `${VAR}`).
    fn local_env(&self, name: &str) -> Option<String>;
    /// A Dev Container Feature (`ghcr.io/devcontainers/features/node:1`, or a folder
    /// `./local-feature` relative to the devcontainer.json's folder), made available as a
    /// folder of the project. Callers that fetch nothing say so in the error.
    fn feature(&self, id: &str) -> Result<FeatureFiles, String> {
        Err(format!("{id}: this caller does not fetch features"))
    }
}

/// A Dev Container Feature as a folder of the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFiles {
    /// Its folder (holding `install.sh`), relative to the project folder.
    pub folder: String,
    /// The text of its `devcontainer-feature.json`.
    pub metadata: String,
}

/// [`Sources`] from memory, for tests and callers that read everything up front.
#[derive(Debug, Clone, Default)]
pub struct MemorySources {
    pub files: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub features: BTreeMap<String, FeatureFiles>,
}

impl Sources for MemorySources {
    fn read(&self, path: &str) -> Result<Option<String>, String> {
        Ok(self.files.get(path).cloned())
    }
    fn local_env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn feature(&self, id: &str) -> Result<FeatureFiles, String> {
        self.features
            .get(id)
            .cloned()
            .ok_or_else(|| format!("{id}: no such feature"))
    }
}

/// A command: one shell line (`/bin/sh -c`) or a program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandDraft {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountDraft {
    pub source: Option<String>,
    pub target: String,
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortDraft {
    pub host: u16,
    pub guest: u16,
    pub udp: bool,
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourcesDraft {
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub pids: Option<u64>,
}

impl ResourcesDraft {
    fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.memory.is_none() && self.pids.is_none()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDraft {
    pub from: Option<String>,
    /// `[image] dockerfile`, `context`, `target`, `args`: paths relative to the project folder.
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    pub target: Option<String>,
    pub args: Vec<(String, String)>,
    pub inputs: Vec<String>,
    pub setup: Vec<String>,
    /// Comment lines written above `[image]` (why a step is there).
    pub comments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadyDraft {
    pub command: Option<CommandDraft>,
    pub tcp: Option<u16>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SidecarDraft {
    pub name: String,
    pub image: String,
    pub command: Option<CommandDraft>,
    /// Arguments to the image's entrypoint (compose's `command` without `entrypoint`).
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub mounts: Vec<MountDraft>,
    pub resources: ResourcesDraft,
    pub ready: Option<ReadyDraft>,
    pub after: Vec<String>,
    pub restart: Option<String>,
}

/// A berth.toml being built.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    /// The first comment line: where the file came from.
    pub origin: String,
    pub name: Option<String>,
    pub on_create: Vec<String>,
    pub on_up: Vec<String>,
    pub image: ImageDraft,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<MountDraft>,
    pub ports: Vec<PortDraft>,
    pub resources: ResourcesDraft,
    pub shell_user: Option<String>,
    pub shell_workdir: Option<String>,
    /// Process services (`[services.NAME]` with `command`), run inside the environment.
    pub processes: Vec<ProcessDraft>,
    pub sidecars: Vec<SidecarDraft>,
    /// Top-level `devices`.
    pub devices: Vec<String>,
    /// `[network] mode`.
    pub network_mode: Option<String>,
}

/// A process service run inside the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessDraft {
    pub name: String,
    pub command: CommandDraft,
    pub restart: Option<String>,
}

impl Draft {
    /// Sets a variable, replacing an earlier value of the same name (later sources win).
    pub fn set_env(&mut self, name: &str, value: String) {
        set_var(&mut self.env, name, value);
    }

    /// Adds a port unless its host port is taken already; `false` when it was.
    pub fn add_port(&mut self, port: PortDraft) -> bool {
        let clash = self
            .ports
            .iter()
            .any(|p| p.host == port.host && p.udp == port.udp);
        if !clash {
            self.ports.push(port);
        }
        !clash
    }

    /// The berth.toml text, with `skipped` listed in a comment block at the top.
    pub fn render(&self, skipped: &[Skipped]) -> String {
        let mut out = format!("# {}\n", self.origin);
        if !skipped.is_empty() {
            out.push_str(
                "#\n# Not converted (see `berth init` output; edit by hand if you need these):\n",
            );
            for s in skipped {
                for (i, line) in format!("{}: {}", s.key, s.reason).lines().enumerate() {
                    out.push_str(if i == 0 { "#   - " } else { "#     " });
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        // Top-level keys first: TOML puts every key after a [table] into that table.
        if let Some(name) = &self.name {
            out.push_str(&format!("name = {}\n", q(name)));
        }
        for (key, list) in [("on_create", &self.on_create), ("on_up", &self.on_up)] {
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("{key} = [\n"));
            for c in list {
                out.push_str(&format!("    {},\n", q(c)));
            }
            out.push_str("]\n");
        }
        if !self.devices.is_empty() {
            let d: Vec<String> = self.devices.iter().map(|d| q(d)).collect();
            out.push_str(&format!("devices = [{}]\n", d.join(", ")));
        }
        self.render_image(&mut out);
        if !self.env.is_empty() {
            out.push_str("\n[env]\n");
            for (k, v) in &self.env {
                out.push_str(&format!("{k} = {}\n", q(v)));
            }
        }
        for m in &self.mounts {
            out.push_str("\n[[mounts]]\n");
            out.push_str(&mount_fields(m).join("\n"));
            out.push('\n');
        }
        for p in &self.ports {
            out.push_str(&format!(
                "\n[[ports]]\nhost = {}\nguest = {}\n",
                p.host, p.guest
            ));
            if p.udp {
                out.push_str("protocol = \"udp\"\n");
            }
            if let Some(a) = &p.address {
                out.push_str(&format!("address = {}\n", q(a)));
            }
        }
        if !self.resources.is_empty() {
            out.push_str("\n[resources]\n");
            for f in resource_fields(&self.resources) {
                out.push_str(&f);
                out.push('\n');
            }
        }
        if let Some(m) = &self.network_mode {
            out.push_str(&format!("\n[network]\nmode = {}\n", q(m)));
        }
        if self.shell_user.is_some() || self.shell_workdir.is_some() {
            out.push_str("\n[shell]\n");
            if let Some(u) = &self.shell_user {
                out.push_str(&format!("user = {}\n", q(u)));
            }
            if let Some(w) = &self.shell_workdir {
                out.push_str(&format!("workdir = {}\n", q(w)));
            }
        }
        for p in &self.processes {
            out.push_str(&format!(
                "\n[services.{}]\ncommand = {}\n",
                p.name,
                command(&p.command)
            ));
            if let Some(r) = &p.restart {
                out.push_str(&format!("restart = {}\n", q(r)));
            }
        }
        for s in &self.sidecars {
            render_sidecar(s, &mut out);
        }
        out
    }

    fn render_image(&self, out: &mut String) {
        let i = &self.image;
        out.push('\n');
        for c in &i.comments {
            out.push_str(&format!("# {c}\n"));
        }
        out.push_str("[image]\n");
        if let Some(f) = &i.from {
            out.push_str(&format!("from = {}\n", q(f)));
        }
        if let Some(d) = &i.dockerfile {
            out.push_str(&format!("dockerfile = {}\n", q(d)));
        }
        if let Some(c) = &i.context {
            out.push_str(&format!("context = {}\n", q(c)));
        }
        if let Some(t) = &i.target {
            out.push_str(&format!("target = {}\n", q(t)));
        }
        if !i.args.is_empty() {
            out.push_str(&format!("args = {}\n", inline_table(&i.args)));
        }
        for (key, list) in [("inputs", &i.inputs), ("setup", &i.setup)] {
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!("{key} = [\n"));
            for s in list {
                out.push_str(&format!("    {},\n", q(s)));
            }
            out.push_str("]\n");
        }
    }
}

fn render_sidecar(s: &SidecarDraft, out: &mut String) {
    out.push_str(&format!("\n[services.{}]\n", s.name));
    out.push_str(&format!("image = {}\n", q(&s.image)));
    if let Some(c) = &s.command {
        out.push_str(&format!("command = {}\n", command(c)));
    }
    if let Some(a) = &s.args {
        out.push_str(&format!(
            "args = {}\n",
            command(&CommandDraft::Argv(a.clone()))
        ));
    }
    if !s.env.is_empty() {
        out.push_str(&format!("env = {}\n", inline_table(&s.env)));
    }
    if let Some(w) = &s.workdir {
        out.push_str(&format!("workdir = {}\n", q(w)));
    }
    if !s.mounts.is_empty() {
        out.push_str("mounts = [\n");
        for m in &s.mounts {
            out.push_str(&format!("    {{ {} }},\n", mount_fields(m).join(", ")));
        }
        out.push_str("]\n");
    }
    if !s.resources.is_empty() {
        out.push_str(&format!(
            "resources = {{ {} }}\n",
            resource_fields(&s.resources).join(", ")
        ));
    }
    if let Some(r) = &s.ready {
        let mut parts = Vec::new();
        if let Some(c) = &r.command {
            parts.push(format!("command = {}", command(c)));
        }
        if let Some(p) = r.tcp {
            parts.push(format!("tcp = {p}"));
        }
        if let Some(t) = r.timeout_ms {
            parts.push(format!("timeout = {}", q(&duration(t))));
        }
        out.push_str(&format!("ready = {{ {} }}\n", parts.join(", ")));
    }
    if !s.after.is_empty() {
        let names: Vec<String> = s.after.iter().map(|a| q(a)).collect();
        out.push_str(&format!("after = [{}]\n", names.join(", ")));
    }
    if let Some(r) = &s.restart {
        out.push_str(&format!("restart = {}\n", q(r)));
    }
}

fn mount_fields(m: &MountDraft) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(s) = &m.source {
        f.push(format!("source = {}", q(s)));
    }
    f.push(format!("target = {}", q(&m.target)));
    if m.kind != "bind" {
        f.push(format!("type = {}", q(&m.kind)));
    }
    if m.readonly {
        f.push("readonly = true".into());
    }
    f
}

fn resource_fields(r: &ResourcesDraft) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(c) = r.cpus {
        f.push(format!("cpus = {}", toml_edit::Value::from(c)));
    }
    if let Some(m) = &r.memory {
        f.push(format!("memory = {}", q(m)));
    }
    if let Some(p) = r.pids {
        f.push(format!("pids = {p}"));
    }
    f
}

fn command(c: &CommandDraft) -> String {
    match c {
        CommandDraft::Shell(s) => q(s),
        CommandDraft::Argv(words) => {
            let w: Vec<String> = words.iter().map(|w| q(w)).collect();
            format!("[{}]", w.join(", "))
        }
    }
}

/// A berth duration for a number of milliseconds (`"90s"`, `"1500ms"`).
pub fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn inline_table(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{} = {}", key(k), q(v)))
        .collect();
    format!("{{ {} }}", items.join(", "))
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

/// Sets `name` in a list of variables, replacing an earlier value.
pub fn set_var(vars: &mut Vec<(String, String)>, name: &str, value: String) {
    vars.retain(|(n, _)| n != name);
    vars.push((name.to_string(), value));
}

/// A TOML basic string.
pub fn q(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

/// One shell word: as is when it needs no quoting, else in single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `name` made a valid berth service or volume name (`[A-Za-z0-9][A-Za-z0-9_-]*`, ≤ 63).
pub fn service_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.starts_with(['-', '_']) {
        s.remove(0);
    }
    s.truncate(63);
    if s.is_empty() {
        "service".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_draft_that_parses_back_with_every_value() {
        let mut d = Draft {
            origin: "Converted by a test".into(),
            name: Some("app".into()),
            on_create: vec!["npm ci".into()],
            ..Default::default()
        };
        d.image.from = Some("debian:bookworm".into());
        d.image.setup = vec!["echo \"hi\"".into()];
        d.set_env("A", "1".into());
        d.set_env("A", "2".into());
        assert!(d.add_port(PortDraft {
            host: 8080,
            guest: 80,
            udp: false,
            address: None
        }));
        assert!(!d.add_port(PortDraft {
            host: 8080,
            guest: 81,
            udp: false,
            address: None
        }));
        d.sidecars.push(SidecarDraft {
            name: "db".into(),
            image: "postgres:16".into(),
            command: Some(CommandDraft::Argv(vec!["postgres".into(), "-c".into()])),
            args: None,
            env: vec![("POSTGRES_PASSWORD".into(), "x\"y".into())],
            workdir: None,
            mounts: vec![MountDraft {
                source: Some("data".into()),
                target: "/var/lib/postgresql/data".into(),
                kind: "volume".into(),
                readonly: false,
            }],
            resources: ResourcesDraft {
                cpus: Some(0.5),
                memory: None,
                pids: None,
            },
            ready: Some(ReadyDraft {
                command: Some(CommandDraft::Shell("pg_isready".into())),
                tcp: None,
                timeout_ms: Some(1500),
            }),
            after: vec![],
            restart: Some("always".into()),
        });
        let text = d.render(&[Skipped {
            key: "x".into(),
            reason: "two\nlines".into(),
        }]);
        assert!(
            text.starts_with("# Converted by a test\n#\n# Not converted"),
            "{text}"
        );
        assert!(text.contains("#   - x: two\n#     lines\n"), "{text}");
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        assert_eq!(doc["env"]["A"].as_str(), Some("2"));
        assert_eq!(doc["ports"].as_array_of_tables().unwrap().len(), 1);
        let db = &doc["services"]["db"];
        assert_eq!(db["env"]["POSTGRES_PASSWORD"].as_str(), Some("x\"y"));
        assert_eq!(db["ready"]["timeout"].as_str(), Some("1500ms"));
        assert_eq!(db["resources"]["cpus"].as_float(), Some(0.5));
        assert_eq!(doc["image"]["setup"][0].as_str(), Some("echo \"hi\""));
    }

    #[test]
    fn names_become_valid_service_names() {
        assert_eq!(service_name("my.db"), "my-db");
        assert_eq!(service_name("_x"), "x");
        assert_eq!(service_name("..."), "service");
    }
}
