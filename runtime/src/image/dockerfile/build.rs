//! Building a Dockerfile over the image store: the stages the target needs (independent ones
//! at once, [`super::stage_pool`]), each
//! instruction that changes files a cached layer (`RUN`, `COPY`, `ADD`, a `WORKDIR` that
//! does not exist yet), the others folded into the config and the cache key.
//!
//! Keys chain like BuildKit's: a step's key is the hash of its parent's key and the step
//! (instruction text after expansion; for `RUN` the command, its environment, including
//! the build arguments in scope, user, folder, cache mounts and network; for `COPY`/`ADD`
//! the content of the copied files, from the context or a stage). A cached step
//! is the image record `build:<key>`, as for berth.toml's own build steps, so
//! `berth image prune` treats both alike; and like those, a step goes through the step
//! cache's seam ([`ImageStore::cached_step`] / [`ImageStore::record_step`]), which asks and
//! feeds the registry build cache (`--cache-from` / `--cache-to`, `[image].cache`). `RUN` steps run through the [`StepRunner`] of
//! every build step (the container sandbox: user namespace, own network namespace with
//! NAT, device allowlist, seccomp).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::super::build::StepRunner;
use super::super::build_cache::BuildCache;
use super::super::context_digests::ContextDigests;
use super::super::error::ImageError;
use super::super::layer_writer::WhiteoutMode;
use super::super::manifest::{ConfigFile, RunConfig};
use super::super::progress::{human_duration, Progress};
use super::super::step_cache::StepOrigin;
use super::super::store::{ImageStore, ResolveOptions, ResolvedImage};
use super::config::{self, chain, Scope, StageState};
use super::context::DockerIgnore;
use super::copy::{self, Below};
use super::error::{DockerfileError, Located};
use super::parse::{self, Instruction};
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
    /// What `RUN --mount=type=secret,id=NAME` may mount (read only when such a step runs).
    pub secrets: BuildSecrets,
    /// The host's SSH agent socket that `RUN --mount=type=ssh` relays to; `None`: none.
    pub ssh_agent: Option<PathBuf>,
    /// The host's CA certificates every `RUN` step trusts (`[image].host_ca`, on by default;
    /// `berth image build --no-host-ca` turns it off): the image's bundle merged with them
    /// is mounted read-only at [`BUNDLE_PATH`](crate::image::host_ca::BUNDLE_PATH) for the
    /// step's run only and the TLS variables point at it. Like a secret it is in no layer and
    /// no step key: the image and its cache keys are those of a build without it.
    pub host_ca: Option<crate::image::build::HostCas>,
}

/// The secrets a build may mount: `[secrets]` of berth.toml, or `--secret` of
/// `berth image build`; each read at most once per build, when a step that mounts it runs.
pub type BuildSecrets = crate::secrets::LazySecrets;

/// What a build made.
#[derive(Debug, Clone)]
pub struct DockerfileOutcome {
    pub image: ResolvedImage,
    /// Things the user should know (an `EXPOSE` that berth.toml does not publish, ...).
    pub notices: Vec<String>,
    /// Layer steps run and found cached (locally or in the registry cache).
    pub steps_run: usize,
    pub steps_cached: usize,
    /// Of the cached steps, those taken from the registry cache.
    pub steps_pulled: usize,
}

/// The name a Dockerfile's image gets when none is given.
pub fn default_name(dockerfile: &Path, target: Option<&str>) -> String {
    match target {
        Some(t) => format!("dockerfile:{}#{t}", dockerfile.display()),
        None => format!("dockerfile:{}", dockerfile.display()),
    }
}

/// Fills a step's upper folder (first argument) over the layers so far (second).
pub(super) type LayerWriter<'a> = dyn FnMut(&Path, &[PathBuf]) -> Result<(), DockerfileError> + 'a;

/// Everything a build step needs besides its stage.
pub(super) struct Run<'a> {
    pub(super) store: &'a ImageStore,
    pub(super) build: &'a DockerfileBuild,
    pub(super) plan: &'a BuildPlan,
    pub(super) ignore: DockerIgnore,
    /// The content hashes of the context's files, from their stamps where unchanged.
    pub(super) digests: &'a ContextDigests,
    pub(super) runner: &'a (dyn StepRunner + Sync),
    pub(super) progress: &'a Progress,
    cache: &'a BuildCache,
    file: String,
    source: String,
    pub(super) done: BTreeMap<usize, StageState>,
    notices: Vec<String>,
    ran: usize,
    cached: usize,
    pulled: usize,
}

impl ImageStore {
    /// Builds the Dockerfile of `build`, reusing cached steps, and records the result under
    /// `build.name`.
    pub fn build_dockerfile(
        &self,
        build: &DockerfileBuild,
        runner: &(dyn StepRunner + Sync),
        progress: &Progress,
    ) -> Result<DockerfileOutcome, DockerfileError> {
        self.build_dockerfile_cached(build, runner, progress, &BuildCache::none())
    }

    /// [`ImageStore::build_dockerfile`] with the registry build cache: each layer step is
    /// looked up in it before it runs and pushed to it after (when `cache` pushes). The
    /// cache's notices stay in `cache` for the caller to show.
    pub fn build_dockerfile_cached(
        &self,
        build: &DockerfileBuild,
        runner: &(dyn StepRunner + Sync),
        progress: &Progress,
        cache: &BuildCache,
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
        // Build arguments no ARG declares change nothing (BuildKit warns as well).
        let declared: Vec<String> = parsed
            .instructions
            .iter()
            .filter(|i| i.keyword == "ARG")
            .flat_map(|i| {
                i.args
                    .text()
                    .split_whitespace()
                    .map(|w| w.split('=').next().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let unused: Vec<String> = build
            .args
            .keys()
            .filter(|k| !declared.contains(k))
            .map(|k| {
                format!("build argument {k} is not declared by any ARG in {file}; it has no effect")
            })
            .collect();
        let ignore = DockerIgnore::load(&build.context).map_err(|e| DockerfileError::Read {
            path: build.context.join(".dockerignore"),
            source: e,
        })?;
        let _lock = self.lock_shared()?;
        let digests = ContextDigests::load(self.home.root(), &build.context);
        let mut run = Run {
            store: self,
            build,
            plan: &plan,
            ignore,
            digests: &digests,
            runner,
            progress,
            cache,
            file,
            source,
            done: BTreeMap::new(),
            notices: unused,
            ran: 0,
            cached: 0,
            pulled: 0,
        };
        let built = run.build_stages();
        // Kept whether or not the build succeeded: the files read stay read.
        digests.save();
        built?;
        let last = *plan.order.last().expect("the target is in the order");
        let st = run.done.remove(&last).expect("built");
        let record = self.record_local_image(&build.name, st.layers, st.config)?;
        Ok(DockerfileOutcome {
            image: self.resolved(&record),
            notices: run.notices,
            steps_run: run.ran,
            steps_cached: run.cached,
            steps_pulled: run.pulled,
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
    pub(super) fn err(&self, l: Located) -> DockerfileError {
        l.in_file(&self.file, &self.source)
    }

    pub(super) fn file_and_source(&self) -> (&str, &str) {
        (&self.file, &self.source)
    }

    /// A run for one stage, on the same build, knowing the finished stages `done`.
    pub(super) fn fork(&self, done: BTreeMap<usize, StageState>) -> Run<'_> {
        Run {
            store: self.store,
            build: self.build,
            plan: self.plan,
            ignore: self.ignore.clone(),
            digests: self.digests,
            runner: self.runner,
            progress: self.progress,
            cache: self.cache,
            file: self.file.clone(),
            source: self.source.clone(),
            done,
            notices: Vec::new(),
            ran: 0,
            cached: 0,
            pulled: 0,
        }
    }

    /// Its notices and step counts (run, cached, of those pulled), taken.
    pub(super) fn take_counts(&mut self) -> (Vec<String>, [usize; 3]) {
        (
            std::mem::take(&mut self.notices),
            [self.ran, self.cached, self.pulled],
        )
    }

    pub(super) fn add_counts(&mut self, notices: Vec<String>, [ran, cached, pulled]: [usize; 3]) {
        self.notices.extend(notices);
        self.ran += ran;
        self.cached += cached;
        self.pulled += pulled;
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            escape: self.plan.escape,
            global_args: &self.plan.global_args,
            build_args: &self.build.args,
            file: &self.file,
        }
    }

    pub(super) fn stage(&mut self, i: usize) -> Result<StageState, DockerfileError> {
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
        // The base's ONBUILD triggers run first, as if written right after FROM (errors
        // point at the FROM); they do not pass on to images built from this one.
        let triggers = st.config.on_build.take().unwrap_or_default();
        for (n, text) in triggers.iter().enumerate() {
            let ins = plan::onbuild_trigger(text, stage.from.args_pos).map_err(|l| self.err(l))?;
            let step_label = format!(
                "[{label} onbuild {}/{}] {} {}",
                n + 1,
                triggers.len(),
                ins.keyword,
                short(&ins.args.text())
            );
            self.instruction(&mut st, &ins, &step_label)?;
        }
        // Numbered as buildah does: FROM is step 1.
        let total = stage.instructions.len() + 1;
        for (n, ins) in stage.instructions.iter().enumerate() {
            let step_label = format!(
                "[{label} {}/{total}] {} {}",
                n + 2,
                ins.keyword,
                short(&ins.args.text())
            );
            self.instruction(&mut st, ins, &step_label)?;
        }
        Ok(st)
    }

    /// One instruction of a stage: config ones change the config and key, the others make
    /// a layer.
    fn instruction(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        step_label: &str,
    ) -> Result<(), DockerfileError> {
        let scope = self.scope();
        let mut notices = Vec::new();
        let handled = config::apply(st, ins, &scope, &mut notices).map_err(|l| self.err(l))?;
        self.notices.extend(notices);
        if handled {
            return Ok(());
        }
        match ins.keyword.as_str() {
            "RUN" => self.run_step(st, ins, step_label),
            "COPY" | "ADD" => self.copy_step(st, ins, step_label),
            "WORKDIR" => self.workdir_step(st, ins, step_label),
            other => unreachable!("plan accepts only known instructions, got {other}"),
        }
    }

    /// A registry image as the start of a stage.
    pub(super) fn base_image(
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

    pub(super) fn layer_paths(&self, st: &StageState) -> Vec<PathBuf> {
        st.layers
            .iter()
            .map(|l| self.store.layers.path(&l.diff_id))
            .collect()
    }

    /// A step that makes a layer: reuses the cached one under `key`, else has `write` fill
    /// a fresh upper folder and stores it as the next layer.
    pub(super) fn layer_step(
        &mut self,
        st: &mut StageState,
        label: &str,
        key: String,
        mode: WhiteoutMode,
        write: &mut LayerWriter<'_>,
    ) -> Result<(), DockerfileError> {
        if let Some((r, origin)) = self
            .store
            .cached_step(&key, &st.layers, &st.config, self.cache, label)?
        {
            match origin {
                StepOrigin::Local => self.progress.message(&format!("{label} (cached)")),
                StepOrigin::Registry => {
                    self.progress.message(&format!(
                        "{label} (pulled from the cache {})",
                        self.cache.source().unwrap_or_default()
                    ));
                    self.pulled += 1;
                }
            }
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
            .add_upper_layer(upper, mode, label, self.progress)?;
        let below = std::mem::take(&mut st.layers);
        st.layers = self
            .store
            .record_step(&key, below, layer, &st.config, self.cache, label)?
            .layers;
        st.key = key;
        self.ran += 1;
        self.progress.message(&format!(
            "{label} done in {}",
            human_duration(started.elapsed())
        ));
        Ok(())
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

/// An instruction's text for a progress line.
fn short(text: &str) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 70 {
        format!("{}…", one.chars().take(69).collect::<String>())
    } else {
        one
    }
}
