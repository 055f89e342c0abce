//! Building a Dockerfile over the image store: the stages the target needs, in order, each
//! instruction that changes files a cached layer (`RUN`, `COPY`, `ADD`, a `WORKDIR` that
//! does not exist yet), the others folded into the config and the cache key.
//!
//! Keys chain like BuildKit's: a step's key is the hash of its parent's key and the step
//! (instruction text after expansion; for `RUN` the command, its environment, including
//! the build arguments in scope, user, folder, cache mounts and network; for `COPY`/`ADD`
//! the content of the copied files, or the key of the stage they come from). A cached step
//! is the image record `build:<key>`, as for berth.toml's own build steps, so
//! `berth image prune` treats both alike. `RUN` steps run through the [`StepRunner`] of
//! every build step (the container sandbox: user namespace, own network namespace with
//! NAT, device allowlist, seccomp).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::super::build::{cache_name, StepCommand, StepRunner};
use super::super::error::ImageError;
use super::super::layer_writer::WhiteoutMode;
use super::super::manifest::{ConfigFile, RunConfig};
use super::super::progress::{human_duration, Progress};
use super::super::store::{ImageStore, ResolveOptions, ResolvedImage};
use super::config::{self, chain, Scope, StageState};
use super::context::{self, DockerIgnore};
use super::copy::{self, Attrs, Below, Item};
use super::error::{DockerfileError, Located};
use super::parse::{self, Args, Instruction};
use super::plan::{self, flag_value, Base, BuildPlan};
use super::words;
use envfile_spec::plan::ImageSource;
use envfile_spec::reference::ImageReference;

/// What to build.
#[derive(Clone)]
pub struct DockerfileBuild {
    /// The Dockerfile (absolute).
    pub dockerfile: PathBuf,
    /// The build context folder (absolute).
    pub context: PathBuf,
    /// Stage to build; `None`: the last.
    pub target: Option<String>,
    /// `--build-arg`s / `[image].args`.
    pub args: BTreeMap<String, String>,
    /// Name of the image record the result gets.
    pub name: String,
    /// How base images are pulled.
    pub resolve: ResolveOptions,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct DockerfileOutcome {
    pub image: ResolvedImage,
    /// Things the user should know (an `EXPOSE` that berth.toml does not publish, ...).
    pub notices: Vec<String>,
    /// Layer steps run and found cached.
    pub steps_run: usize,
    pub steps_cached: usize,
}

/// The name a Dockerfile's image gets when none is given.
pub fn default_name(dockerfile: &Path, target: Option<&str>) -> String {
    match target {
        Some(t) => format!("dockerfile:{}#{t}", dockerfile.display()),
        None => format!("dockerfile:{}", dockerfile.display()),
    }
}

/// Everything a build step needs besides its stage.
struct Run<'a> {
    store: &'a ImageStore,
    build: &'a DockerfileBuild,
    plan: &'a BuildPlan,
    ignore: DockerIgnore,
    runner: &'a dyn StepRunner,
    progress: &'a Progress,
    file: String,
    source: String,
    done: BTreeMap<usize, StageState>,
    notices: Vec<String>,
    ran: usize,
    cached: usize,
}

impl ImageStore {
    /// Builds the Dockerfile of `build`, reusing cached steps, and records the result under
    /// `build.name`.
    pub fn build_dockerfile(
        &self,
        build: &DockerfileBuild,
        runner: &dyn StepRunner,
        progress: &Progress,
    ) -> Result<DockerfileOutcome, DockerfileError> {
        let source = fs::read_to_string(&build.dockerfile).map_err(|e| DockerfileError::Read {
            path: build.dockerfile.clone(),
            source: e,
        })?;
        let file = build
            .dockerfile
            .file_name()
            .map_or("Dockerfile".into(), |n| n.to_string_lossy().into_owned());
        let parsed = parse::parse(&source).map_err(|l| l.in_file(&file, &source))?;
        let plan = plan::plan(&parsed, &build.args, build.target.as_deref())
            .map_err(|l| l.in_file(&file, &source))?;
        let ignore = DockerIgnore::load(&build.context).map_err(|e| DockerfileError::Read {
            path: build.context.join(".dockerignore"),
            source: e,
        })?;
        let _lock = self.lock_shared()?;
        let mut run = Run {
            store: self,
            build,
            plan: &plan,
            ignore,
            runner,
            progress,
            file,
            source,
            done: BTreeMap::new(),
            notices: Vec::new(),
            ran: 0,
            cached: 0,
        };
        for &i in &plan.order {
            let st = run.stage(i)?;
            run.done.insert(i, st);
        }
        let last = *plan.order.last().expect("the target is in the order");
        let st = run.done.remove(&last).expect("built");
        let record = self.record_local_image(&build.name, st.layers, st.config)?;
        Ok(DockerfileOutcome {
            image: self.resolved(&record),
            notices: run.notices,
            steps_run: run.ran,
            steps_cached: run.cached,
        })
    }

    /// The full config of an image record (the parts berth's records keep are fewer).
    fn run_config_of(&self, config_digest: &super::super::Digest) -> Result<RunConfig, ImageError> {
        let bytes = self.blobs.read(config_digest)?;
        let cfg: ConfigFile =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::malformed("image config", e))?;
        Ok(cfg.config.unwrap_or_default())
    }
}

impl Run<'_> {
    fn err(&self, l: Located) -> DockerfileError {
        l.in_file(&self.file, &self.source)
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            escape: self.plan.escape,
            global_args: &self.plan.global_args,
            build_args: &self.build.args,
            file: &self.file,
        }
    }

    fn stage(&mut self, i: usize) -> Result<StageState, DockerfileError> {
        let stage = &self.plan.stages[i];
        let label = stage.name.clone().unwrap_or_else(|| format!("stage {i}"));
        for f in &stage.from.flags {
            let lookup = |n: &str| {
                plan::lookup_args(&self.plan.global_args, n).or_else(|| config::platform_arg(n))
            };
            let v = flag_value(f, self.plan.escape, &lookup).map_err(|l| self.err(l))?;
            let host = config::platform_arg("TARGETPLATFORM").unwrap_or_default();
            if v != host {
                return Err(self.err(Located::new(
                    f.pos,
                    format!(
                        "--platform={v}: berth builds for this machine's platform ({host}) only"
                    ),
                    "remove --platform or build on a machine of that platform",
                )));
            }
        }
        let mut st = match &stage.base {
            Base::Scratch => StageState::new(
                Vec::new(),
                RunConfig::default(),
                chain("berth-dockerfile-v1", &[b"scratch"]),
            ),
            Base::Stage(j) => {
                let mut s = self.done.get(j).cloned().expect("built before");
                s.args.clear();
                s.shell = vec!["/bin/sh".into(), "-c".into()];
                s.cmd_set = false;
                s
            }
            Base::Image(r) => self.base_image(r, stage.from.args_pos)?,
        };
        self.progress
            .message(&format!("[{label}] FROM {}", stage.from.args.text()));
        let total = stage.instructions.len();
        for (n, ins) in stage.instructions.iter().enumerate() {
            let step_label = format!(
                "[{label} {}/{total}] {} {}",
                n + 1,
                ins.keyword,
                short(&ins.args.text())
            );
            let scope = self.scope();
            let mut notices = Vec::new();
            let handled =
                config::apply(&mut st, ins, &scope, &mut notices).map_err(|l| self.err(l))?;
            self.notices.extend(notices);
            if handled {
                continue;
            }
            match ins.keyword.as_str() {
                "RUN" => self.run_step(&mut st, ins, &step_label)?,
                "COPY" | "ADD" => self.copy_step(&mut st, ins, &step_label)?,
                "WORKDIR" => self.workdir_step(&mut st, ins, &step_label)?,
                other => unreachable!("plan accepts only known instructions, got {other}"),
            }
        }
        Ok(st)
    }

    /// A registry image as the start of a stage.
    fn base_image(
        &mut self,
        reference: &str,
        pos: super::error::Pos,
    ) -> Result<StageState, DockerfileError> {
        let r = ImageReference::parse(reference).map_err(|e| {
            self.err(Located::new(pos, format!("`{reference}` is not an image reference: {e}"), "write a registry reference such as debian:bookworm or 127.0.0.1:5000/app:1, or the name of a stage"))
        })?;
        let image = self
            .store
            .resolve(&ImageSource::Oci { reference: r }, &self.build.resolve)
            .map_err(|e| {
                self.err(Located::new(
                    pos,
                    format!("cannot get the image `{reference}`: {e}"),
                    "check the name and that the registry is reachable",
                ))
            })?;
        let record = self
            .store
            .records
            .get(&image.name)?
            .ok_or_else(|| ImageError::NotFound(image.name.clone()))?;
        let config = self.store.run_config_of(&record.config_digest)?;
        let mut h = Sha256::new();
        h.update(b"berth-dockerfile-v1\n");
        h.update(image.id.as_str());
        for d in &image.diff_ids {
            h.update(b"\n");
            h.update(d.as_str());
        }
        Ok(StageState::new(
            record.layers,
            config,
            hex::encode(h.finalize()),
        ))
    }

    fn layer_paths(&self, st: &StageState) -> Vec<PathBuf> {
        st.layers
            .iter()
            .map(|l| self.store.layers.path(&l.diff_id))
            .collect()
    }

    /// A step that makes a layer: reuses the cached one under `key`, else has `write` fill
    /// a fresh upper folder and stores it as the next layer.
    fn layer_step(
        &mut self,
        st: &mut StageState,
        label: &str,
        key: String,
        mode: WhiteoutMode,
        write: &mut dyn FnMut(&Path, &[PathBuf]) -> Result<(), DockerfileError>,
    ) -> Result<(), DockerfileError> {
        let name = cache_name(&key);
        if let Some(r) = self
            .store
            .records
            .get(&name)?
            .filter(|r| self.store.is_complete(r))
        {
            self.progress.message(&format!("{label} (cached)"));
            st.layers = r.layers;
            st.key = key;
            self.cached += 1;
            return Ok(());
        }
        self.progress.message(&format!("{label} …"));
        let started = std::time::Instant::now();
        let upper = self
            .store
            .home
            .staging_dir("build-upper")
            .map_err(ImageError::from)?;
        write(upper.path(), &self.layer_paths(st))?;
        let layer = self
            .store
            .add_tree_layer(upper.path(), mode, label, self.progress)?;
        st.layers.push(layer);
        self.store
            .record_local_image(&name, st.layers.clone(), st.config.clone())?;
        st.key = key;
        self.ran += 1;
        self.progress.message(&format!(
            "{label} done in {}",
            human_duration(started.elapsed())
        ));
        Ok(())
    }

    fn run_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        label: &str,
    ) -> Result<(), DockerfileError> {
        let escape = self.plan.escape;
        let lookup = |n: &str| st.lookup(n);
        let mut cache_mounts: Vec<(PathBuf, String)> = Vec::new();
        let mut no_network = false;
        for f in &ins.flags {
            let v = flag_value(f, escape, &lookup).map_err(|l| self.err(l))?;
            match f.name.as_str() {
                "network" => match v.as_str() {
                    "none" => no_network = true,
                    "default" => no_network = false,
                    other => {
                        return Err(self.err(Located::new(f.pos, format!("--network={other} is not supported"), "use --network=none or --network=default (the build's own network with NAT)")))
                    }
                },
                _ => cache_mounts.push(self.cache_mount(&v, f.pos, st)?),
            }
        }
        let argv = self.run_command(st, ins)?;
        let env = st.run_env();
        let workdir = st.workdir();
        let user = st.config.user.clone();
        let key = chain(
            &st.key,
            &[
                b"RUN",
                serde_json::to_string(&argv).unwrap_or_default().as_bytes(),
                serde_json::to_string(&env).unwrap_or_default().as_bytes(),
                workdir.as_bytes(),
                user.as_deref().unwrap_or("").as_bytes(),
                serde_json::to_string(&cache_mounts.iter().map(|m| &m.1).collect::<Vec<_>>())
                    .unwrap_or_default()
                    .as_bytes(),
                if no_network { b"none" } else { b"default" },
            ],
        );
        let store = self.store;
        let runner = self.runner;
        let progress = self.progress;
        let targets: Vec<String> = cache_mounts.iter().map(|m| m.1.clone()).collect();
        self.layer_step(
            st,
            label,
            key,
            WhiteoutMode::FromOverlay,
            &mut |upper, lowers| {
                store.run_command_step(
                    label,
                    lowers,
                    upper,
                    &StepCommand {
                        argv: &argv,
                        workdir: &workdir,
                        env: &env,
                        user: user.as_deref(),
                        cache_mounts: &cache_mounts,
                        no_network,
                    },
                    runner,
                    progress,
                )?;
                for t in &targets {
                    remove_mountpoint(upper, t, lowers);
                }
                Ok(())
            },
        )
    }

    /// `--mount=type=cache,target=/x[,id=…][,sharing=…]` → its folder in berth's home (kept
    /// across builds, one per id) and its target.
    fn cache_mount(
        &self,
        spec: &str,
        pos: super::error::Pos,
        st: &StageState,
    ) -> Result<(PathBuf, String), DockerfileError> {
        let mut kind = "bind";
        let mut target = None;
        let mut id = None;
        for part in spec.split(',') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "type" => kind = if v == "cache" { "cache" } else { v },
                "target" | "dst" | "destination" => target = Some(v.to_string()),
                "id" => id = Some(v.to_string()),
                // The cache folder is locked by the build (one build at a time per home
                // uses it), so every sharing mode behaves as `locked`.
                "sharing" | "mode" | "uid" | "gid" => {}
                other => {
                    return Err(self.err(Located::new(
                        pos,
                        format!("--mount option `{other}` is not supported"),
                        "berth supports --mount=type=cache,target=PATH[,id=ID][,sharing=…]",
                    )))
                }
            }
        }
        if kind != "cache" {
            return Err(self.err(Located::new(
                pos,
                format!("--mount=type={kind} is not supported"),
                "berth supports type=cache mounts; COPY the files instead of a bind mount",
            )));
        }
        let Some(target) = target.filter(|t| !t.is_empty()) else {
            return Err(self.err(Located::new(
                pos,
                "a cache mount needs target=PATH",
                "write --mount=type=cache,target=/root/.cache",
            )));
        };
        let target = if target.starts_with('/') {
            target
        } else {
            format!("{}/{target}", st.workdir().trim_end_matches('/'))
        };
        let id = id.unwrap_or_else(|| target.clone());
        let dir = self
            .store
            .home
            .root()
            .join("build-cache")
            .join(&hex::encode(Sha256::digest(id.as_bytes()))[..32]);
        fs::create_dir_all(self.store.home.root().join("build-cache"))
            .map_err(ImageError::io(&dir))?;
        Ok((dir, target))
    }

    /// The argv of a `RUN`: exec form as is; shell form through the stage's shell; a
    /// heredoc alone is the script.
    fn run_command(
        &self,
        st: &StageState,
        ins: &Instruction,
    ) -> Result<Vec<String>, DockerfileError> {
        let mut argv = st.shell.clone();
        match (&ins.args, ins.heredocs.as_slice()) {
            (Args::Exec(v), _) => return Ok(v.clone()),
            (Args::Shell(s), [doc])
                if s.split_whitespace().count() == 1 && s.trim_start().starts_with("<<") =>
            {
                if doc.body.starts_with("#!") {
                    return Err(self.err(Located::new(
                        ins.args_pos,
                        "a RUN heredoc with its own `#!` interpreter is not supported",
                        "pipe it to the interpreter instead: `RUN python3 <<EOF`",
                    )));
                }
                argv.push(doc.body.clone());
            }
            (Args::Shell(s), docs) => {
                let mut script = s.clone();
                for d in docs {
                    script.push('\n');
                    script.push_str(&d.body);
                    script.push_str(&d.name);
                }
                argv.push(script);
            }
        }
        Ok(argv)
    }

    fn workdir_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        label: &str,
    ) -> Result<(), DockerfileError> {
        let lookup = |n: &str| st.lookup(n);
        let w = words::word(ins.args.text().trim(), self.plan.escape, &lookup)
            .map_err(|e| self.err(Located::new(ins.args_pos, e, "fix the path")))?;
        let abs = if w.starts_with('/') {
            w
        } else {
            format!("{}/{w}", st.workdir().trim_end_matches('/'))
        };
        let abs = normalize(&abs);
        st.config.working_dir = Some(abs.clone());
        let rel = abs.trim_start_matches('/').to_string();
        let lowers = self.layer_paths(st);
        let exists = !rel.is_empty() && lowers.iter().rev().any(|l| l.join(&rel).is_dir());
        let key = chain(&st.key, &[b"WORKDIR", abs.as_bytes()]);
        if rel.is_empty() || exists {
            st.key = key;
            return Ok(());
        }
        self.layer_step(st, label, key, WhiteoutMode::Plain, &mut |upper, lowers| {
            let below = Below { layers: lowers };
            copy::make_parents(upper, &format!("{rel}/x"), &below, None)
                .and_then(|_| copy::make_dir(upper, &rel, &below, None))
                .map_err(|e| ImageError::io(upper)(e).into())
        })
    }

    fn copy_step(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        label: &str,
    ) -> Result<(), DockerfileError> {
        let escape = self.plan.escape;
        let is_add = ins.keyword == "ADD";
        let lookup = |n: &str| st.lookup(n);
        let mut from = None;
        let mut chown = None;
        let mut chmod = None;
        let mut checksum = None;
        for f in &ins.flags {
            let v = flag_value(f, escape, &lookup).map_err(|l| self.err(l))?;
            match f.name.as_str() {
                "from" => from = Some((v, f.pos)),
                "chown" => chown = Some((v, f.pos)),
                "chmod" => {
                    chmod = Some(
                        u32::from_str_radix(&v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                self.err(Located::new(
                                    f.pos,
                                    format!("--chmod={v} is not an octal mode"),
                                    "write e.g. --chmod=755 (symbolic modes are not supported)",
                                ))
                            })?,
                    )
                }
                "checksum" => checksum = Some(v),
                _ => {} // --link: layers are independent of their parents anyway
            }
        }
        let mut parts: Vec<String> = match &ins.args {
            Args::Exec(v) => v
                .iter()
                .map(|w| words::word(w, escape, &lookup))
                .collect::<Result<_, _>>(),
            Args::Shell(s) => words::words(s, escape, &lookup),
        }
        .map_err(|e| self.err(Located::new(ins.args_pos, e, "fix the quoting")))?;
        // Heredoc sources (`COPY <<EOF /dest`) are files of their own.
        let heredoc_names: Vec<String> = ins
            .heredocs
            .iter()
            .map(|d| format!("<<{}", d.name))
            .collect();
        if parts.len() < 2 {
            return Err(self.err(Located::new(
                ins.args_pos,
                format!("{} needs a source and a destination", ins.keyword),
                format!("write {} SRC... DEST", ins.keyword),
            )));
        }
        let dest_raw = parts.pop().expect("two or more");
        let dest_dir_hint = dest_raw.ends_with('/');
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!("{}/{dest_raw}", st.workdir().trim_end_matches('/'))
        };
        let owner = match &chown {
            Some((spec, pos)) => {
                Some(copy::owner_ids(spec, &self.layer_paths(st)).map_err(|e| {
                    self.err(Located::new(
                        *pos,
                        e,
                        "add the user to the image first (RUN useradd …) or give numeric ids",
                    ))
                })?)
            }
            None => None,
        };
        // Sources: (absolute path on the host, what it is named by, is a folder).
        let mut items_src: Vec<(PathBuf, String, bool)> = Vec::new();
        let mut key_parts: Vec<Vec<u8>> = vec![
            ins.keyword.as_bytes().to_vec(),
            dest.as_bytes().to_vec(),
            format!("{owner:?} {chmod:?} {dest_dir_hint}").into_bytes(),
        ];
        let heredoc_dir = self
            .store
            .home
            .staging_dir("heredoc")
            .map_err(ImageError::from)?;
        match &from {
            Some((name, pos)) => {
                let (root_layers, source_key) = self.from_source(name, *pos)?;
                key_parts.push(source_key.into_bytes());
                key_parts.extend(parts.iter().map(|p| p.as_bytes().to_vec()));
                let items =
                    self.items_from_layers(&root_layers, &parts, name, &dest, dest_dir_hint, ins)?;
                let key = chain(
                    &st.key,
                    &key_parts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                );
                let attrs = Attrs {
                    owner,
                    keep_owner: true,
                    chmod,
                };
                return self.layer_step(
                    st,
                    label,
                    key,
                    WhiteoutMode::Plain,
                    &mut |upper, lowers| {
                        copy::write_items(upper, &items, attrs, &Below { layers: lowers }).map_err(
                            |e| {
                                ImageError::Build {
                                    step: label.to_string(),
                                    detail: format!("cannot copy: {e}"),
                                }
                                .into()
                            },
                        )
                    },
                );
            }
            None => {
                for p in &parts {
                    if let Some(i) = heredoc_names.iter().position(|n| n == p) {
                        let doc = &ins.heredocs[i];
                        let path = heredoc_dir.path().join(&doc.name);
                        let body = if doc.expand {
                            words::expand_only(&doc.body, &lookup).map_err(|e| {
                                self.err(Located::new(
                                    ins.args_pos,
                                    e,
                                    "fix the variable in the heredoc",
                                ))
                            })?
                        } else {
                            doc.body.clone()
                        };
                        fs::write(&path, &body).map_err(ImageError::io(&path))?;
                        key_parts.push(body.into_bytes());
                        items_src.push((path, doc.name.clone(), false));
                        continue;
                    }
                    if p.contains("://") || p.starts_with("git@") {
                        return Err(self.err(Located::new(ins.args_pos, format!("`{p}` is a remote URL"), if is_add && checksum.is_some() { "berth's builder does not download in ADD; fetch it in a RUN step (curl + sha256sum -c) instead" } else { "berth does not download during COPY/ADD; fetch it in a RUN step and check its checksum" })));
                    }
                    let matched = context::match_sources(&self.build.context, p, &self.ignore)
                        .map_err(|e| {
                            self.err(Located::new(
                                ins.args_pos,
                                e,
                                "check the path relative to the build context (and .dockerignore)",
                            ))
                        })?;
                    for m in matched {
                        items_src.push((
                            context::inside(&self.build.context, &m.rel),
                            m.rel,
                            m.is_dir,
                        ));
                    }
                }
            }
        }
        // Context (and heredoc) sources: content hash and the list of copies.
        let multi = items_src.len() > 1;
        if multi && !dest_dir_hint {
            return Err(self.err(Located::new(
                ins.args_pos,
                format!(
                    "{} of several sources needs a destination folder ending in `/`",
                    ins.keyword
                ),
                format!("write `{dest_raw}/`"),
            )));
        }
        let mut h = Sha256::new();
        let mut items = Vec::new();
        let mut archives = Vec::new();
        for (abs, rel, is_dir) in &items_src {
            let is_heredoc = !abs.starts_with(&self.build.context);
            if *is_dir {
                for r in context::walk(&self.build.context, rel, &self.ignore)
                    .map_err(ImageError::io(abs))?
                {
                    let from_path = context::inside(&self.build.context, &r);
                    context::hash_entry(&mut h, &r, &from_path)
                        .map_err(ImageError::io(&from_path))?;
                    let sub = r
                        .strip_prefix(rel.as_str())
                        .unwrap_or(&r)
                        .trim_start_matches('/');
                    let to = if sub.is_empty() {
                        dest.clone()
                    } else {
                        format!("{}/{sub}", dest.trim_end_matches('/'))
                    };
                    items.push(Item {
                        from: from_path,
                        to,
                    });
                }
                continue;
            }
            context::hash_entry(&mut h, rel, abs).map_err(ImageError::io(abs))?;
            let to = if multi || dest_dir_hint {
                format!("{}/{}", dest.trim_end_matches('/'), base_name(rel))
            } else {
                dest.clone()
            };
            if is_add && !is_heredoc {
                if let Some(kind) = copy::archive_kind(abs).map_err(ImageError::io(abs))? {
                    archives.push((abs.clone(), kind, dest.clone()));
                    continue;
                }
            }
            items.push(Item {
                from: abs.clone(),
                to,
            });
        }
        key_parts.push(h.finalize().to_vec());
        let key = chain(
            &st.key,
            &key_parts.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        );
        let attrs = Attrs {
            owner,
            keep_owner: false,
            chmod,
        };
        let result = self.layer_step(st, label, key, WhiteoutMode::Plain, &mut |upper, lowers| {
            let below = Below { layers: lowers };
            copy::write_items(upper, &items, attrs, &below).map_err(|e| ImageError::Build {
                step: label.to_string(),
                detail: format!("cannot copy: {e}"),
            })?;
            for (path, kind, to) in &archives {
                copy::unpack_archive(upper, path, *kind, to, &below).map_err(|e| {
                    ImageError::Build {
                        step: label.to_string(),
                        detail: format!("cannot unpack {}: {e}", path.display()),
                    }
                })?;
            }
            Ok(())
        });
        drop(heredoc_dir);
        result
    }

    /// What `COPY --from` copies: each pattern matched in the merged view of `layers`; a
    /// folder's content goes into `dest`, files into `dest/` or onto `dest`.
    fn items_from_layers(
        &self,
        layers: &[PathBuf],
        patterns: &[String],
        name: &str,
        dest: &str,
        dest_dir_hint: bool,
        ins: &Instruction,
    ) -> Result<Vec<Item>, DockerfileError> {
        let view = super::super::export::merged_view(layers).map_err(|e| ImageError::Build {
            step: format!("COPY --from={name}"),
            detail: format!("cannot read the source: {e}"),
        })?;
        let mut matches: Vec<(PathBuf, bool)> = Vec::new();
        for p in patterns {
            let segs: Vec<String> = p
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(String::from)
                .collect();
            if segs.is_empty() {
                matches.push((PathBuf::new(), true));
                continue;
            }
            let before = matches.len();
            for (rel, &i) in &view {
                let comps: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap_or("")).collect();
                if context::path_match(&segs, &comps) {
                    let is_dir =
                        fs::symlink_metadata(layers[i].join(rel)).is_ok_and(|m| m.is_dir());
                    matches.push((rel.clone(), is_dir));
                }
            }
            if matches.len() == before {
                return Err(self.err(Located::new(
                    ins.args_pos,
                    format!("`{p}` does not exist in `{name}`"),
                    "check the path in the stage or image you copy from",
                )));
            }
        }
        let multi = matches.len() > 1;
        if multi && !dest_dir_hint {
            return Err(self.err(Located::new(
                ins.args_pos,
                "COPY of several sources needs a destination folder ending in `/`",
                format!("write `{dest}/`"),
            )));
        }
        let mut items = Vec::new();
        for (rel, is_dir) in &matches {
            if *is_dir {
                for (k, &i) in view
                    .range(rel.clone()..)
                    .take_while(|(k, _)| k.starts_with(rel))
                {
                    let sub = k.strip_prefix(rel).unwrap_or(k);
                    let to = if sub.as_os_str().is_empty() {
                        dest.to_string()
                    } else {
                        format!("{}/{}", dest.trim_end_matches('/'), sub.display())
                    };
                    items.push(Item {
                        from: layers[i].join(k),
                        to,
                    });
                }
            } else {
                let to = if multi || dest_dir_hint {
                    format!(
                        "{}/{}",
                        dest.trim_end_matches('/'),
                        base_name(&rel.to_string_lossy())
                    )
                } else {
                    dest.to_string()
                };
                items.push(Item {
                    from: layers[view[rel]].join(rel),
                    to,
                });
            }
        }
        Ok(items)
    }

    /// The layers and key of what `COPY --from=name` copies from: a stage (by name or
    /// number) or an image.
    fn from_source(
        &mut self,
        name: &str,
        pos: super::error::Pos,
    ) -> Result<(Vec<PathBuf>, String), DockerfileError> {
        let stage = self
            .plan
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&name.to_ascii_lowercase()))
            .map(|s| s.index)
            .or_else(|| name.parse::<usize>().ok());
        if let Some(i) = stage {
            let st = self
                .done
                .get(&i)
                .expect("stages a step needs are built before it");
            return Ok((self.layer_paths(st), st.key.clone()));
        }
        let st = self.base_image(name, pos)?;
        Ok((self.layer_paths(&st), st.key))
    }
}

/// The last segment of a `/` path.
fn base_name(rel: &str) -> &str {
    rel.rsplit('/').find(|s| !s.is_empty()).unwrap_or(rel)
}

/// `/a/./b/../c` → `/a/c`.
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Removes the folder a cache mount was mounted on when the step only made it for the
/// mount (empty, and not in the layers below), with its parents made for it too.
fn remove_mountpoint(upper: &Path, target: &str, lowers: &[PathBuf]) {
    let mut rel = PathBuf::from(target.trim_start_matches('/'));
    loop {
        if rel.as_os_str().is_empty() || lowers.iter().any(|l| l.join(&rel).exists()) {
            return;
        }
        if fs::remove_dir(upper.join(&rel)).is_err() {
            return;
        }
        if !rel.pop() {
            return;
        }
    }
}

/// An instruction's text for a progress line.
fn short(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 70 {
        format!("{}…", one.chars().take(69).collect::<String>())
    } else {
        one
    }
}
