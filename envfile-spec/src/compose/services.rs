//! Compose services into the draft: the environment's service into the environment's keys,
//! the others into sidecars; `depends_on` checked (every name known, no circle) and turned
//! into `after`; volumes placed relative to the project folder.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_norway::{Mapping, Value};

use super::fields::{self, get, scalar, VolumeSpec};
use super::{join, skip, ComposeError, ComposeFile};
use crate::draft::{
    set_var, CommandDraft, Draft, MountDraft, ProcessDraft, SidecarDraft, Skipped, Sources,
};

/// Where the compose file sits and which service is the environment.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The project folder (absolute), to name it in mounts of its parent folders.
    pub project_dir: PathBuf,
    /// The compose file's folder relative to the project folder (`""`, `.devcontainer`).
    pub base_dir: String,
    /// Prefix of volume names, as compose's project name.
    pub project_name: String,
    /// The service that becomes the environment (`None`: every service is a sidecar).
    pub environment: Option<String>,
    /// Only these services (and what they depend on) become sidecars (`runServices`).
    pub run_services: Option<Vec<String>>,
}

/// Keys converted for the environment's service.
const ENV_KEYS: &[&str] = &[
    "image",
    "build",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "expose",
    "depends_on",
    "command",
    "entrypoint",
    "restart",
    "working_dir",
    "user",
    "deploy",
    "mem_limit",
    "cpus",
    "pids_limit",
    "tmpfs",
    "network_mode",
    "healthcheck",
];
/// Keys converted for a sidecar.
const SIDECAR_KEYS: &[&str] = &[
    "image",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "expose",
    "depends_on",
    "command",
    "entrypoint",
    "restart",
    "working_dir",
    "deploy",
    "mem_limit",
    "cpus",
    "pids_limit",
    "tmpfs",
    "network_mode",
    "healthcheck",
];

/// The service that is the app when none is named: the one built from the project or mounting
/// it; `None` when no service is.
pub fn guess_environment(c: &ComposeFile, base_dir: &str) -> Result<Option<String>, ComposeError> {
    let candidates: Vec<&str> = c
        .services
        .iter()
        .filter(|(_, d)| {
            get(d, "build").is_some()
                || get(d, "volumes").and_then(Value::as_sequence).is_some_and(|vs| {
                    vs.iter().any(|v| {
                        matches!(fields::volume(v), Ok(VolumeSpec::Bind { source, .. })
                            if !source.starts_with(['/', '~']) && join(base_dir, &source).is_empty())
                    })
                })
        })
        .map(|(n, _)| n.as_str())
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        many => Err(ComposeError::AmbiguousService {
            candidates: many.join(", "),
        }),
    }
}

pub fn apply(
    c: &ComposeFile,
    place: &Placement,
    sources: &dyn Sources,
    draft: &mut Draft,
    skipped: &mut Vec<Skipped>,
) -> Result<(), ComposeError> {
    let names: Vec<&str> = c.services.iter().map(|(n, _)| n.as_str()).collect();
    let known = names.join(", ");
    if let Some(env) = &place.environment {
        if !names.contains(&env.as_str()) {
            return Err(ComposeError::UnknownService {
                wanted: env.clone(),
                known,
            });
        }
    }
    let deps = check_dependencies(c)?;
    for var in &c.unset {
        skip(
            skipped,
            format!("${{{var}}}"),
            "not set in the environment of `berth init` nor in .env: replaced by an empty string, as compose does",
        );
    }
    for k in &c.other_keys {
        skip(skipped, k.clone(), "top-level compose key with no berth equivalent (the services share one network namespace)");
    }
    // Which services run: all, or runServices and what they depend on.
    let running: BTreeSet<&str> = match &place.run_services {
        None => names.iter().copied().collect(),
        Some(list) => {
            let mut set = BTreeSet::new();
            let mut todo: Vec<&str> = list.iter().map(String::as_str).collect();
            todo.extend(place.environment.as_deref());
            while let Some(n) = todo.pop() {
                if names.contains(&n) && set.insert(n) {
                    todo.extend(deps.iter().filter(|(s, _)| s == n).map(|(_, d)| d.as_str()));
                }
            }
            for n in &names {
                if !set.contains(n) {
                    skip(
                        skipped,
                        format!("services.{n}"),
                        "not in runServices: not converted",
                    );
                }
            }
            set
        }
    };
    // Sidecars are the running services other than the environment that have an image;
    // services under `profiles` start only when their profile is asked for.
    let mut sidecar_names = Vec::new();
    for (name, def) in &c.services {
        if Some(name) == place.environment.as_ref() || !running.contains(name.as_str()) {
            continue;
        }
        if get(def, "profiles").is_some() {
            skip(skipped, format!("services.{name}"), "has `profiles`: compose starts it only when one is asked for (--profile); add it as [services.NAME] with image = \"…\" if you want it");
            continue;
        }
        if get(def, "image").and_then(scalar).is_some() {
            sidecar_names.push(name.clone());
        } else {
            skip(skipped, format!("services.{name}"), "builds its own image (`build` without `image`): a sidecar runs from an image; build and push it, then add it as [services.NAME] with image = \"…\"");
        }
    }
    let mut ctx = Ctx {
        place,
        sources,
        compose: c,
        skipped,
    };
    for (name, def) in &c.services {
        if Some(name) == place.environment.as_ref() {
            ctx.environment(name, def, draft)?;
        } else if sidecar_names.contains(name) {
            let after = deps
                .iter()
                .filter(|(s, _)| s == name)
                .filter_map(|(_, d)| {
                    if sidecar_names.contains(d) {
                        Some(crate::draft::service_name(d))
                    } else {
                        if Some(d) != place.environment.as_ref() {
                            skip(
                                ctx.skipped,
                                format!("services.{name}.depends_on.{d}"),
                                format!("{d} is not converted, so {name} cannot wait for it"),
                            );
                        }
                        None
                    }
                })
                .collect();
            let sidecar = ctx.sidecar(name, def, after, draft)?;
            draft.sidecars.push(sidecar);
        }
    }
    Ok(())
}

/// Every (service, dependency) pair of `depends_on`, checked: each names a service, and no
/// service waits for itself through others.
fn check_dependencies(c: &ComposeFile) -> Result<Vec<(String, String)>, ComposeError> {
    let names: Vec<&str> = c.services.iter().map(|(n, _)| n.as_str()).collect();
    let mut pairs = Vec::new();
    for (name, def) in &c.services {
        let list: Vec<String> = match get(def, "depends_on") {
            Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
            Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
            _ => Vec::new(),
        };
        for d in list {
            if !names.contains(&d.as_str()) {
                return Err(ComposeError::UnknownDependency {
                    service: name.clone(),
                    missing: d,
                    known: names.join(", "),
                });
            }
            pairs.push((name.clone(), d));
        }
    }
    // Depth-first search for a circle, reporting its path.
    fn visit<'a>(
        n: &'a str,
        pairs: &'a [(String, String)],
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Result<(), ComposeError> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut circle: Vec<&str> = path[i..].to_vec();
            circle.push(n);
            return Err(ComposeError::Cycle(circle.join(" → ")));
        }
        if done.contains(n) {
            return Ok(());
        }
        path.push(n);
        for (_, d) in pairs.iter().filter(|(s, _)| s == n) {
            visit(d, pairs, path, done)?;
        }
        path.pop();
        done.insert(n);
        Ok(())
    }
    let mut done = BTreeSet::new();
    for n in &names {
        visit(n, &pairs, &mut Vec::new(), &mut done)?;
    }
    Ok(pairs)
}

struct Ctx<'a> {
    place: &'a Placement,
    sources: &'a dyn Sources,
    compose: &'a ComposeFile,
    skipped: &'a mut Vec<Skipped>,
}

impl Ctx<'_> {
    fn environment(
        &mut self,
        name: &str,
        def: &Mapping,
        draft: &mut Draft,
    ) -> Result<(), ComposeError> {
        let key = format!("services.{name}");
        let build = get(def, "build");
        match (build, get(def, "image").and_then(scalar)) {
            (Some(b), image) => {
                self.build(b, &key, draft);
                if let Some(i) = image {
                    skip(self.skipped, format!("{key}.image"), format!("{i:?} is the name compose tags its build with; berth builds the Dockerfile itself"));
                }
            }
            (None, Some(image)) => draft.image.from = Some(image),
            (None, None) => skip(self.skipped, key.clone(), "has neither image nor build"),
        }
        for (k, v) in self.env_vars(name, def)? {
            draft.set_env(&k, v);
        }
        let mounts = self.mounts(def, &key);
        draft.mounts.extend(mounts);
        self.ports(def, &key, draft);
        if let Some(w) = get(def, "working_dir").and_then(scalar) {
            draft.shell_workdir = Some(w);
        }
        if let Some(u) = get(def, "user").and_then(scalar) {
            let (user, group) = u
                .split_once(':')
                .map_or((u.as_str(), None), |(u, g)| (u, Some(g)));
            if let Some(g) = group {
                skip(
                    self.skipped,
                    format!("{key}.user"),
                    format!("group {g:?}: berth's shell runs with the user's own groups"),
                );
            }
            draft.shell_user = Some(user.to_string());
        }
        draft.resources = fields::resources(def, &key, &mut |k, r| skip(self.skipped, k, r));
        let restart = get(def, "restart").and_then(|r| {
            fields::restart(r, &format!("{key}.restart"), &mut |k, r| {
                skip(self.skipped, k, r)
            })
        });
        match self.command(def, &key) {
            Some(words) if is_keep_alive(&words) => skip(
                self.skipped,
                format!("{key}.command"),
                format!(
                    "{:?} only keeps the container alive; berth's supervisor does that",
                    words.join(" ")
                ),
            ),
            Some(words) if !words.is_empty() => draft.processes.push(ProcessDraft {
                name: crate::draft::service_name(name),
                command: CommandDraft::Argv(words),
                restart,
            }),
            _ => {
                if get(def, "restart").is_some() {
                    skip(
                        self.skipped,
                        format!("{key}.restart"),
                        "the environment itself is not restarted by berth; only its [services] are",
                    );
                }
            }
        }
        if get(def, "healthcheck").is_some() {
            skip(
                self.skipped,
                format!("{key}.healthcheck"),
                "berth has no health check for the environment itself",
            );
        }
        self.other_keys(def, &key, ENV_KEYS);
        Ok(())
    }

    fn sidecar(
        &mut self,
        name: &str,
        def: &Mapping,
        after: Vec<String>,
        draft: &mut Draft,
    ) -> Result<SidecarDraft, ComposeError> {
        let key = format!("services.{name}");
        let image = get(def, "image").and_then(scalar).unwrap_or_default();
        let env = self.env_vars(name, def)?;
        let mounts = self.mounts(def, &key);
        self.ports(def, &key, draft);
        let (command, args) = self.sidecar_command(def, &key);
        let command = command.filter(|w| !w.is_empty()).map(CommandDraft::Argv);
        let ready = match get(def, "healthcheck") {
            Some(Value::Mapping(h)) => {
                fields::healthcheck(h, &format!("{key}.healthcheck"), &mut |k, r| {
                    skip(self.skipped, k, r)
                })
            }
            Some(_) => {
                skip(self.skipped, format!("{key}.healthcheck"), "not a mapping");
                None
            }
            None => None,
        };
        if let Some(Value::Mapping(m)) = get(def, "depends_on") {
            for (d, cond) in m {
                let cond = cond
                    .as_mapping()
                    .and_then(|c| get(c, "condition"))
                    .and_then(scalar);
                if cond.as_deref() == Some("service_completed_successfully") {
                    skip(self.skipped, format!("{key}.depends_on.{}", scalar(d).unwrap_or_default()), "berth sidecars are servers: waiting for one to finish is not expressed; `after` waits until it is ready");
                }
            }
        }
        let resources = fields::resources(def, &key, &mut |k, r| skip(self.skipped, k, r));
        let restart = get(def, "restart").and_then(|r| {
            fields::restart(r, &format!("{key}.restart"), &mut |k, r| {
                skip(self.skipped, k, r)
            })
        });
        if get(def, "user").is_some() {
            skip(
                self.skipped,
                format!("{key}.user"),
                "a sidecar runs as its image's user",
            );
        }
        self.other_keys(def, &key, SIDECAR_KEYS);
        Ok(SidecarDraft {
            name: crate::draft::service_name(name),
            image,
            command,
            args,
            env,
            workdir: get(def, "working_dir").and_then(scalar),
            mounts,
            resources,
            ready,
            after,
            restart,
        })
    }

    fn other_keys(&mut self, def: &Mapping, key: &str, known: &[&str]) {
        for k in def.keys().filter_map(scalar) {
            if known.contains(&k.as_str()) {
                continue;
            }
            if k == "container_name" || k == "hostname" {
                skip(
                    self.skipped,
                    format!("{key}.{k}"),
                    "berth names the environment and its sidecars itself",
                );
            } else {
                skip(self.skipped, format!("{key}.{k}"), "no berth equivalent");
            }
        }
        if let Some(Value::Mapping(d)) = get(def, "deploy") {
            for k in d.keys().filter_map(scalar).filter(|k| k != "resources") {
                skip(
                    self.skipped,
                    format!("{key}.deploy.{k}"),
                    "no berth equivalent",
                );
            }
        }
        if let Some(n) = get(def, "network_mode").and_then(scalar) {
            if !n.starts_with("service:") {
                skip(self.skipped, format!("{key}.network_mode"), format!("{n:?}: the environment and its sidecars always share one network namespace ([network] sets the environment's)"));
            }
        }
    }

    /// `build:` (a context string or a mapping) as the dockerfile keys of `[image]`.
    fn build(&mut self, b: &Value, key: &str, draft: &mut Draft) {
        let base = &self.place.base_dir;
        let (context, m) = match b {
            Value::Mapping(m) => (
                get(m, "context").and_then(scalar).unwrap_or(".".into()),
                Some(m),
            ),
            other => (scalar(other).unwrap_or(".".into()), None),
        };
        let ctx = join(base, &context);
        let ctx = if ctx.is_empty() { ".".to_string() } else { ctx };
        let dockerfile = m
            .and_then(|m| get(m, "dockerfile"))
            .and_then(scalar)
            .unwrap_or("Dockerfile".into());
        draft.image.dockerfile = Some(join(&ctx, &dockerfile));
        draft.image.context = Some(ctx);
        if let Some(m) = m {
            if let Some(t) = get(m, "target").and_then(scalar) {
                draft.image.target = Some(t);
            }
            if let Some(args) = get(m, "args") {
                let vars = fields::environment(
                    args,
                    &format!("{key}.build.args"),
                    &|n| self.sources.local_env(n),
                    &mut |k, r| skip(self.skipped, k, r),
                );
                for (k, v) in vars {
                    set_var(&mut draft.image.args, &k, v);
                }
            }
            for k in m.keys().filter_map(scalar) {
                if !["context", "dockerfile", "target", "args"].contains(&k.as_str()) {
                    skip(
                        self.skipped,
                        format!("{key}.build.{k}"),
                        "no berth equivalent",
                    );
                }
            }
        }
    }

    /// A sidecar's `entrypoint`/`command` as berth's `command` (the whole line: an
    /// `entrypoint` was given) or `args` (only `command`: the image's entrypoint stays and
    /// gets these, as compose runs it).
    fn sidecar_command(
        &mut self,
        def: &Mapping,
        key: &str,
    ) -> (Option<Vec<String>>, Option<Vec<String>>) {
        match self.entrypoint_and_command(def, key) {
            (Some(mut e), c) => {
                e.extend(c.unwrap_or_default());
                (Some(e), None)
            }
            (None, Some(c)) if !c.is_empty() => (None, Some(c)),
            _ => (None, None),
        }
    }

    /// A service's `entrypoint` and `command` as words (one that cannot be read is listed
    /// as skipped and taken as absent).
    fn entrypoint_and_command(
        &mut self,
        def: &Mapping,
        key: &str,
    ) -> (Option<Vec<String>>, Option<Vec<String>>) {
        let mut parts = |field: &str| match get(def, field).map(fields::words) {
            Some(Ok(w)) => Some(w),
            Some(Err(why)) => {
                skip(self.skipped, format!("{key}.{field}"), why);
                None
            }
            None => None,
        };
        (parts("entrypoint"), parts("command"))
    }

    fn command(&mut self, def: &Mapping, key: &str) -> Option<Vec<String>> {
        match self.entrypoint_and_command(def, key) {
            (Some(mut e), c) => {
                e.extend(c.unwrap_or_default());
                Some(e)
            }
            (None, Some(c)) => {
                if !c.is_empty() && !is_keep_alive(&c) {
                    skip(self.skipped, format!("{key}.command"), "berth's command replaces the image's entrypoint as well as its cmd: if the image has an ENTRYPOINT (the postgres and redis images run docker-entrypoint.sh), put it in front");
                }
                Some(c)
            }
            (None, None) => None,
        }
    }

    fn env_vars(
        &mut self,
        name: &str,
        def: &Mapping,
    ) -> Result<Vec<(String, String)>, ComposeError> {
        let key = format!("services.{name}");
        let mut vars = Vec::new();
        let files: Vec<(String, bool)> = match get(def, "env_file") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(|i| match i {
                    Value::Mapping(m) => get(m, "path")
                        .and_then(scalar)
                        .map(|p| (p, !matches!(get(m, "required"), Some(Value::Bool(false))))),
                    other => scalar(other).map(|p| (p, true)),
                })
                .collect(),
            Some(other) => scalar(other).into_iter().map(|p| (p, true)).collect(),
        };
        for (file, required) in files {
            let path = join(&self.place.base_dir, &file);
            match self.sources.read(&path) {
                Ok(Some(text)) => {
                    for (k, v) in super::interpolate::parse_env_file(&text) {
                        set_var(&mut vars, &k, v);
                    }
                }
                Ok(None) if !required => {}
                Ok(None) => {
                    return Err(ComposeError::MissingEnvFile {
                        service: name.to_string(),
                        path,
                    })
                }
                Err(why) => return Err(ComposeError::Unreadable { file: path, why }),
            }
        }
        if let Some(e) = get(def, "environment") {
            let sources = self.sources;
            for (k, v) in fields::environment(
                e,
                &format!("{key}.environment"),
                &|n| sources.local_env(n),
                &mut |k, r| skip(self.skipped, k, r),
            ) {
                set_var(&mut vars, &k, v);
            }
        }
        Ok(vars)
    }

    fn ports(&mut self, def: &Mapping, key: &str, draft: &mut Draft) {
        if let Some(p) = get(def, "ports") {
            let k = format!("{key}.ports");
            for port in fields::ports(p, &k, &mut |k, r| skip(self.skipped, k, r)) {
                let shown = format!("{}:{}", port.host, port.guest);
                if !draft.add_port(port) {
                    skip(self.skipped, k.clone(), format!("{shown}: another service publishes that host port already (all services share one localhost)"));
                }
            }
        }
        if get(def, "expose").is_some() {
            skip(self.skipped, format!("{key}.expose"), "the services share one localhost: every port is reachable from the others without it");
        }
    }

    fn mounts(&mut self, def: &Mapping, key: &str) -> Vec<MountDraft> {
        let mut out = Vec::new();
        if let Some(t) = get(def, "tmpfs") {
            out.extend(fields::tmpfs(t));
        }
        let Some(Value::Sequence(items)) = get(def, "volumes") else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}.volumes[{i}]");
            match fields::volume(item) {
                Err(why) => skip(self.skipped, k, why),
                Ok(VolumeSpec::Tmpfs { target }) => out.push(MountDraft {
                    source: None,
                    target,
                    kind: "tmpfs".into(),
                    readonly: false,
                }),
                Ok(VolumeSpec::Named {
                    name,
                    target,
                    readonly,
                }) => {
                    let source = self.volume_name(&name, &k);
                    out.push(MountDraft {
                        source: Some(source),
                        target,
                        kind: "volume".into(),
                        readonly,
                    });
                }
                Ok(VolumeSpec::Bind {
                    source,
                    target,
                    readonly,
                }) => {
                    if source.ends_with("docker.sock") {
                        skip(self.skipped, k, format!("{source}: berth runs no Docker daemon; its socket means nothing inside"));
                        continue;
                    }
                    match self.place_bind(&source, &target) {
                        Placed::Here { source, target } => out.push(MountDraft {
                            source: Some(source),
                            target,
                            kind: "bind".into(),
                            readonly,
                        }),
                        Placed::Narrowed { target } => {
                            skip(self.skipped, k, format!("{source}:{target} mounts a folder above the project: berth mounts only the project folder, on {target}"));
                            out.push(MountDraft {
                                source: Some(".".into()),
                                target,
                                kind: "bind".into(),
                                readonly,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Where a bind source relative to the compose file lands, relative to the project.
    fn place_bind(&self, source: &str, target: &str) -> Placed {
        if source.starts_with('/') {
            let project = self.place.project_dir.to_string_lossy();
            if let Some(rest) = source.strip_prefix(project.as_ref()) {
                if rest.is_empty() || rest.starts_with('/') {
                    let rel = join("", rest);
                    return Placed::Here {
                        source: if rel.is_empty() { ".".into() } else { rel },
                        target: target.to_string(),
                    };
                }
            }
            return Placed::Here {
                source: source.to_string(),
                target: target.to_string(),
            };
        }
        if source == "~" || source.starts_with("~/") {
            return Placed::Here {
                source: source.to_string(),
                target: target.to_string(),
            };
        }
        let rel = join(&self.place.base_dir, source);
        let ups = rel.split('/').take_while(|c| *c == "..").count();
        if ups == 0 {
            return Placed::Here {
                source: if rel.is_empty() { ".".into() } else { rel },
                target: target.to_string(),
            };
        }
        let rest: Vec<&str> = rel.split('/').skip(ups).collect();
        let comps: Vec<String> = self
            .place
            .project_dir
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|c| c != "/")
            .collect();
        if rest.is_empty() && ups <= comps.len() {
            // The source holds the project folder: mount the project where it appears.
            let below = comps[comps.len() - ups..].join("/");
            return Placed::Narrowed {
                target: format!("{}/{below}", target.trim_end_matches('/')),
            };
        }
        // A folder beside the project: written as an absolute path.
        let mut abs = self.place.project_dir.clone();
        for c in rel.split('/') {
            if c == ".." {
                abs.pop();
            } else {
                abs.push(c);
            }
        }
        Placed::Here {
            source: abs.to_string_lossy().into_owned(),
            target: target.to_string(),
        }
    }

    /// A compose volume's berth name: its `name:`, its own name when `external`, else
    /// `PROJECT_VOLUME` as compose names it.
    fn volume_name(&mut self, name: &str, key: &str) -> String {
        let decl = self.compose.volumes.get(name).and_then(Value::as_mapping);
        let explicit = decl.and_then(|d| get(d, "name")).and_then(scalar);
        let external = decl.is_some_and(|d| matches!(get(d, "external"), Some(Value::Bool(true))));
        if let Some(d) = decl {
            for k in d
                .keys()
                .filter_map(scalar)
                .filter(|k| !["name", "external"].contains(&k.as_str()))
            {
                skip(
                    self.skipped,
                    format!("volumes.{name}.{k}"),
                    "berth volumes are folders of its own; drivers and their options do not apply",
                );
            }
        }
        if self.compose.volumes.get(name).is_none() && !self.compose.volumes.is_empty() {
            skip(
                self.skipped,
                key.to_string(),
                format!("volume {name} is not declared under the top-level volumes:"),
            );
        }
        let raw = match (explicit, external) {
            (Some(n), _) => n,
            (None, true) => name.to_string(),
            (None, false) => format!("{}_{name}", self.place.project_name),
        };
        let valid: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        valid.trim_start_matches(['_', '.', '-']).to_string()
    }
}

enum Placed {
    Here { source: String, target: String },
    Narrowed { target: String },
}

/// `sleep infinity` and friends: commands that only keep a container running.
fn is_keep_alive(words: &[String]) -> bool {
    let line = words.join(" ");
    let line = line.trim();
    matches!(
        line,
        "sleep infinity"
            | "tail -f /dev/null"
            | "/bin/sh -c while sleep 1000; do :; done"
            | "/bin/sh -c sleep infinity"
    ) || (words.len() == 2 && words[0].ends_with("sleep") && words[1] == "infinity")
}
