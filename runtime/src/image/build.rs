//! Cached build steps: the host's CA certificates ([`super::host_ca`]), `[image].packages`,
//! the `[image].inputs` copied under `[image].workdir` ([`super::build_inputs`]), then each
//! `[image].setup` command, run in the workdir with the plan's `[env]`. Command steps run
//! over the layers so far by a [`StepRunner`] (the container backend) and are captured as a
//! new layer from the overlay upper directory; the certificate and input layers are written
//! by berth itself.
//!
//! Each step's cache key is the hash of its parent's key and the step itself (for the
//! certificates and inputs: their content hash), so editing step 3 rebuilds steps 3 and later
//! only, and a changed input reruns the setup steps but not the packages. A cached step is an image record named
//! `build:<key>` (layers so far + the step's layer). `berth image prune` drops the cached
//! steps whose layer no environment or image uses any more (steps edited away, or those of
//! destroyed environments).
//! A failing step leaves the cache as it was.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::build_cache::BuildCache;
pub use super::build_inputs::BuildInputs;
use super::error::ImageError;
pub use super::host_ca::HostCas;
use super::host_ca::CA_ENV;
use super::layer_writer::WhiteoutMode;
use super::manifest::RunConfig;
use super::package_manager::valid_package;
pub use super::package_manager::PackageManager;
use super::progress::Progress;
use super::step_cache::StepOrigin;
pub use super::step_runner::{StepCommand, StepLower, StepMount, StepRunner, StepRunnerError};
use super::store::{ImageStore, ResolvedImage};

/// What a build puts on top of a base image.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// `[image].packages`.
    pub packages: Vec<String>,
    /// `[image].setup`.
    pub setup: Vec<String>,
    /// The plan's `[env]`, set (over the image's variables) in the setup steps.
    pub env: Vec<(String, String)>,
    /// `[image].workdir`: where the setup steps run and the inputs land.
    pub workdir: String,
    /// `[image].inputs`, expanded (`None` without inputs).
    pub inputs: Option<BuildInputs>,
    /// The host's CA certificates, when `[image].host_ca` is on and the host has any.
    pub host_ca: Option<HostCas>,
}

impl BuildSpec {
    /// Hash of what the build reads besides its settings (the inputs' and the host
    /// certificates' content), `None` when it reads nothing else.
    pub fn content_key(&self) -> Option<String> {
        if self.inputs.is_none() && self.host_ca.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(self.inputs.as_ref().map_or("", |i| i.key()));
        h.update(b"\n");
        h.update(self.host_ca.as_ref().map_or("", |c| c.key()));
        Some(hex::encode(h.finalize()))
    }
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            packages: Vec::new(),
            setup: Vec::new(),
            env: Vec::new(),
            workdir: "/".into(),
            inputs: None,
            host_ca: None,
        }
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    /// The layer with the host's CA certificates (written by berth itself).
    HostCa,
    /// The layer with the inputs under the workdir (written by berth itself).
    Inputs,
    /// A command run in a throw-away container.
    Run {
        command: Vec<String>,
        workdir: String,
        env: Vec<(String, String)>,
    },
}

/// One step of a build, before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub label: String,
    pub action: StepAction,
    /// Cache key: hash of the parent key and this step.
    pub key: String,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The steps over `base`, with their cache keys, in order: the host's CA certificates,
/// `packages`, the inputs, each `setup` command. Each key chains its parent's, so a step
/// reruns exactly when it or anything below it changed.
pub fn plan_steps(base: &ResolvedImage, spec: &BuildSpec) -> Result<Vec<PlannedStep>, ImageError> {
    plan_steps_with(base, spec, || PackageManager::detect(&base.layers))
}

/// [`plan_steps`] with the package manager told by `package_manager` (asked only when
/// there are packages), not looked for in `base`'s layers: the keys of an image whose
/// layers are not unpacked yet (the registry build cache looks them up during the pull).
pub(crate) fn plan_steps_with(
    base: &ResolvedImage,
    spec: &BuildSpec,
    package_manager: impl FnOnce() -> Option<PackageManager>,
) -> Result<Vec<PlannedStep>, ImageError> {
    // Variables of every command step: the image's, a PATH, the CA variables.
    let mut step_env = base.config.env_pairs();
    if !step_env.iter().any(|(k, _)| k == "PATH") {
        step_env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if spec.host_ca.is_some() {
        set_all(&mut step_env, &HostCas::env());
    }
    let mut parent = {
        let mut h = Sha256::new();
        h.update(b"berth-build-v1\n");
        h.update(base.id.as_str());
        for d in &base.diff_ids {
            h.update(b"\n");
            h.update(d.as_str());
        }
        hex::encode(h.finalize())
    };
    let mut chain = |parts: &[&[u8]]| {
        let mut h = Sha256::new();
        h.update(parent.as_bytes());
        for p in parts {
            h.update(b"\n");
            h.update(p);
        }
        parent = hex::encode(h.finalize());
        parent.clone()
    };
    let mut steps = Vec::new();
    if let Some(cas) = &spec.host_ca {
        steps.push(PlannedStep {
            label: "host CA certificates".into(),
            action: StepAction::HostCa,
            key: chain(&[b"host-ca", cas.key().as_bytes()]),
        });
    }
    let packages = &spec.packages;
    if !packages.is_empty() {
        if let Some(bad) = packages.iter().find(|p| !valid_package(p)) {
            return Err(ImageError::Build {
                step: "packages".into(),
                detail: format!("`{bad}` is not a valid package name"),
            });
        }
        let pm = package_manager().ok_or_else(|| ImageError::Build {
            step: "packages".into(),
            detail: format!(
                "the image {} has no apt-get, apk, dnf or yum; install packages in a `setup` step instead",
                base.name
            ),
        })?;
        let command = pm.install_command(packages);
        steps.push(PlannedStep {
            label: format!("packages: {}", packages.join(" ")),
            key: chain(&[&serde_json::to_vec(&command).unwrap_or_default()]),
            action: StepAction::Run {
                command,
                workdir: "/".into(),
                env: step_env.clone(),
            },
        });
    }
    let workdir = spec.workdir.as_str();
    if spec.inputs.is_some() || (!spec.setup.is_empty() && workdir != "/") {
        let (names, key) = match &spec.inputs {
            Some(i) => (
                i.files()
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>(),
                i.key(),
            ),
            None => (Vec::new(), ""),
        };
        let label = match names.len() {
            0 => format!("workdir: {workdir}"),
            1..=4 => format!("inputs: {} → {workdir}", names.join(" ")),
            n => format!(
                "inputs: {} and {} more → {workdir}",
                names[..3].join(" "),
                n - 3
            ),
        };
        steps.push(PlannedStep {
            label,
            action: StepAction::Inputs,
            key: chain(&[b"inputs", workdir.as_bytes(), key.as_bytes()]),
        });
    }
    let mut setup_env = step_env;
    set_all(&mut setup_env, &spec.env);
    for (i, s) in spec.setup.iter().enumerate() {
        let command = vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()];
        let mut parts = vec![serde_json::to_vec(&command).unwrap_or_default()];
        // The folder and the plan's variables change what a step does; left out when they
        // are the defaults, so the keys of builds without them stay as they were.
        if workdir != "/" || !spec.env.is_empty() {
            parts.push(workdir.as_bytes().to_vec());
            parts.push(serde_json::to_vec(&spec.env).unwrap_or_default());
        }
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        steps.push(PlannedStep {
            label: format!("setup[{i}]: {s}"),
            key: chain(&parts),
            action: StepAction::Run {
                command,
                workdir: workdir.to_string(),
                env: setup_env.clone(),
            },
        });
    }
    Ok(steps)
}

/// Sets each of `vars` in `env`, replacing an earlier value.
fn set_all(env: &mut Vec<(String, String)>, vars: &[(String, String)]) {
    for (k, v) in vars {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
}

const TAIL_LINES: usize = 20;

/// The one line a build prints when every step was cached.
pub fn all_cached_line(steps: usize) -> String {
    let s = if steps == 1 { "" } else { "s" };
    format!("build: {steps} step{s} cached, nothing to run")
}

impl ImageStore {
    /// Builds `spec` on top of `base`, reusing cached steps, and returns the resulting image
    /// (`base` itself when there is nothing to build).
    pub fn build(
        &self,
        base: &ResolvedImage,
        spec: &BuildSpec,
        runner: &dyn StepRunner,
        progress: &Progress,
    ) -> Result<ResolvedImage, ImageError> {
        self.build_cached(base, spec, runner, progress, &BuildCache::none())
    }

    /// [`ImageStore::build`] with a registry build cache: each step missing locally is
    /// looked up there before it runs, and pushed there after (when pushing is on).
    pub fn build_cached(
        &self,
        base: &ResolvedImage,
        spec: &BuildSpec,
        runner: &dyn StepRunner,
        progress: &Progress,
        cache: &BuildCache,
    ) -> Result<ResolvedImage, ImageError> {
        let steps = plan_steps(base, spec)?;
        if steps.is_empty() {
            return Ok(base.clone());
        }
        let _lock = self.lock_shared()?;
        let base_record = self
            .records
            .get(&base.name)?
            .ok_or_else(|| ImageError::NotFound(base.name.clone()))?;
        // Every step missing here is looked up in the registry cache at once, and the
        // layers of the chain it holds are fetched beside the build (see
        // build_cache_prefetch); each step below takes its answer from there.
        let keys: Vec<String> = steps.iter().map(|s| s.key.clone()).collect();
        let prefetching = cache.plan_prefetch(self, &keys);
        std::thread::scope(|s| {
            if prefetching {
                s.spawn(|| cache.run_prefetch(self, &keys, &base_record.layers));
            }
            let built = (|| -> Result<ResolvedImage, ImageError> {
                let mut current = base.clone();
                let mut layers = base_record.layers.clone();
                let mut run_config = RunConfig {
                    env: Some(base.config.env.clone()),
                    cmd: Some(base.config.cmd.clone()).filter(|c| !c.is_empty()),
                    entrypoint: Some(base.config.entrypoint.clone()).filter(|c| !c.is_empty()),
                    working_dir: base.config.working_dir.clone(),
                    user: base.config.user.clone(),
                    ..RunConfig::default()
                };
                // Cached steps are named only when a later step runs (which of them were reused);
                // when every step is cached, one line says so instead of a line per step (berth's own
                // layers, the certificates and a workdir without inputs, are not counted).
                let total = steps
                    .iter()
                    .filter(|s| match s.action {
                        StepAction::HostCa => false,
                        StepAction::Inputs => spec.inputs.is_some(),
                        StepAction::Run { .. } => true,
                    })
                    .count();
                let mut cached: Vec<String> = Vec::new();
                let mut ran = false;
                for step in steps {
                    if step.action == StepAction::HostCa {
                        // From this layer on, the image's own variables point at the bundle (under
                        // the plan's `[env]`, like every image variable).
                        let env = run_config.env.get_or_insert_with(Vec::new);
                        env.retain(|kv| {
                            !CA_ENV
                                .iter()
                                .any(|k| kv.split_once('=').is_some_and(|(n, _)| n == *k))
                        });
                        env.extend(HostCas::env().into_iter().map(|(k, v)| format!("{k}={v}")));
                    }
                    let found =
                        self.cached_step(&step.key, &layers, &run_config, cache, &step.label)?;
                    let (found, origin) = match found {
                        Some((r, origin)) => (Some(r), origin),
                        None => (None, StepOrigin::Local),
                    };
                    // (`ran`: something else than the local cache answered; every step is named.)
                    if origin == StepOrigin::Registry || found.is_none() {
                        for label in cached.drain(..) {
                            progress.message(&format!("{label} (cached)"));
                        }
                        ran = true;
                    }
                    if let Some(r) = found {
                        match origin {
                            StepOrigin::Registry => progress.message(&format!(
                                "{} (pulled from the cache {})",
                                step.label,
                                cache.source().unwrap_or_default()
                            )),
                            StepOrigin::Local if ran => {
                                progress.message(&format!("{} (cached)", step.label))
                            }
                            StepOrigin::Local => cached.push(step.label.clone()),
                        }
                        layers = r.layers.clone();
                        current = self.resolved(&r);
                        continue;
                    }
                    progress.message(&format!("{} …", step.label));
                    let started = std::time::Instant::now();
                    let upper = self.home.staging_dir("build-upper")?;
                    match &step.action {
                        StepAction::HostCa => {
                            let cas = spec.host_ca.as_ref().expect("planned with host CAs");
                            cas.write_tree(&current.layers, upper.path())
                                .map_err(|e| ImageError::Build {
                                    step: step.label.clone(),
                                    detail: format!("cannot write the certificates: {e}; set `host_ca = false` under [image] to build without them"),
                                })?;
                        }
                        StepAction::Inputs => {
                            let written = match &spec.inputs {
                                Some(i) => i.write_tree(upper.path(), &spec.workdir),
                                None => std::fs::DirBuilder::new().recursive(true).create(
                                    upper.path().join(spec.workdir.trim_start_matches('/')),
                                ),
                            };
                            written.map_err(|e| ImageError::Build {
                                step: step.label.clone(),
                                detail: format!("cannot copy the inputs: {e}"),
                            })?;
                        }
                        StepAction::Run {
                            command,
                            workdir,
                            env,
                        } => self.run_command_step(
                            &step.label,
                            &current.layers,
                            upper.path(),
                            &StepCommand {
                                argv: command,
                                workdir,
                                env,
                                user: None,
                                cache_mounts: &[],
                                no_network: false,
                                mounts: &[],
                            },
                            runner,
                            progress,
                        )?,
                    }
                    let mode = match step.action {
                        StepAction::Run { .. } => WhiteoutMode::FromOverlay,
                        _ => WhiteoutMode::Plain,
                    };
                    let layer = self.add_upper_layer(upper, mode, &step.label, progress)?;
                    progress.message(&format!(
                        "{} done in {}",
                        step.label,
                        super::progress::human_duration(started.elapsed())
                    ));
                    let below = std::mem::take(&mut layers);
                    let record =
                        self.record_step(&step.key, below, layer, &run_config, cache, &step.label)?;
                    layers = record.layers.clone();
                    current = self.resolved(&record);
                }
                if !ran && total > 0 {
                    progress.message(&all_cached_line(total));
                }
                Ok(current)
            })();
            cache.stop_prefetch();
            built
        })
    }

    /// Runs one command step over `current` with `upper` as the overlay's upper folder.
    pub(crate) fn run_command_step(
        &self,
        label: &str,
        lower_layers: &[PathBuf],
        upper: &Path,
        command: &StepCommand<'_>,
        runner: &dyn StepRunner,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let work = self.home.staging_dir("build-work")?;
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut partial = Vec::new();
        let code = {
            let mut sink = |bytes: &[u8]| {
                partial.extend_from_slice(bytes);
                while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&partial[..nl]).into_owned();
                    partial.drain(..=nl);
                    progress.message(&format!("  | {line}"));
                    tail.push_back(line);
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
            };
            runner.run_step(lower_layers, upper, work.path(), command, &mut sink)
        };
        if !partial.is_empty() {
            tail.push_back(String::from_utf8_lossy(&partial).into_owned());
        }
        let code = code.map_err(|e| ImageError::Build {
            step: label.to_string(),
            detail: format!("could not run it: {e}"),
        })?;
        if code != 0 {
            let lines: Vec<String> = tail.into_iter().collect();
            return Err(ImageError::Build {
                step: label.to_string(),
                detail: format!(
                    "exited with code {code}; last output:\n{}\nfix the step in berth.toml and run again (earlier steps stay cached)",
                    lines.join("\n")
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::host_ca;
    use crate::image::progress::QuietProgress;
    use crate::state::BerthHome;
    use std::cell::RefCell;
    use std::fs;
    use std::sync::Arc;

    /// Writes `<step>.txt` into upper, whites out `etc/old` and fails on `exit N`.
    #[derive(Default)]
    struct FakeRunner {
        calls: RefCell<Vec<Vec<String>>>,
        /// Workdir, environment and lower layers of each call.
        #[allow(clippy::type_complexity)]
        seen: RefCell<Vec<(String, Vec<(String, String)>, Vec<PathBuf>)>>,
    }

    fn spec(packages: &[String], setup: &[String]) -> BuildSpec {
        BuildSpec {
            packages: packages.to_vec(),
            setup: setup.to_vec(),
            ..BuildSpec::default()
        }
    }

    impl StepRunner for FakeRunner {
        fn run_step(
            &self,
            lower: &[PathBuf],
            upper: &Path,
            _work: &Path,
            step: &StepCommand<'_>,
            output: &mut dyn FnMut(&[u8]),
        ) -> Result<i32, StepRunnerError> {
            let command = step.argv;
            assert!(step.env.iter().any(|(k, _)| k == "PATH"));
            assert!(lower[0].join("usr/bin/apt-get").exists());
            self.calls.borrow_mut().push(command.to_vec());
            self.seen.borrow_mut().push((
                step.workdir.to_string(),
                step.env.to_vec(),
                lower.to_vec(),
            ));
            let script = command.last().unwrap();
            if let Some(code) = script.strip_prefix("exit ") {
                output(b"working\nsomething broke\n");
                return Ok(code.parse().unwrap());
            }
            let n = self.calls.borrow().len();
            fs::write(upper.join(format!("step{n}.txt")), script.as_bytes())?;
            fs::create_dir_all(upper.join("etc"))?;
            nix::sys::stat::mknod(
                &upper.join("etc/old"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )?;
            output(b"done\n");
            Ok(0)
        }
    }

    fn base_store() -> (tempfile::TempDir, ImageStore, ResolvedImage) {
        let d = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&BerthHome::at(d.path().join("home")).unwrap());
        let root = d.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("usr/bin/apt-get"), b"#!/bin/sh").unwrap();
        fs::write(root.join("etc/old"), b"old").unwrap();
        let p: Progress = Arc::new(QuietProgress);
        let rec = store.import_rootfs_dir(&root, None, &p).unwrap();
        let base = store.resolved(&rec);
        (d, store, base)
    }

    #[test]
    fn steps_become_cached_layers_and_only_changed_steps_rerun() {
        let (_d, store, base) = base_store();
        let p: Progress = Arc::new(QuietProgress);
        let runner = FakeRunner::default();
        let pkgs = vec!["curl".to_string(), "git".to_string()];
        let setup = vec!["echo one".to_string(), "echo two".to_string()];
        let img = store
            .build(&base, &spec(&pkgs, &setup), &runner, &p)
            .unwrap();
        let calls = runner.calls.borrow().clone();
        assert_eq!(calls.len(), 3);
        assert!(
            calls[0][2].contains("apt-get install -y --no-install-recommends curl git"),
            "{calls:?}"
        );
        assert_eq!(calls[1], ["/bin/sh", "-c", "echo one"]);
        assert_eq!(img.layers.len(), 4);
        assert_eq!(
            fs::read_to_string(img.layers[3].join("step3.txt")).unwrap(),
            "echo two"
        );
        // The captured layer is an OCI layer: its blob carries the whiteout as `.wh.old`.
        let rec = store.records.get(&img.name).unwrap().unwrap();
        let blob = store.blobs.path(&rec.layers[3].digest);
        let names: Vec<String> = tar::Archive::new(fs::File::open(blob).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"etc/.wh.old".to_string()), "{names:?}");

        runner.calls.borrow_mut().clear();
        let again = store
            .build(&base, &spec(&pkgs, &setup), &runner, &p)
            .unwrap();
        assert_eq!(again, img);
        assert!(runner.calls.borrow().is_empty());

        let edited = vec!["echo one".to_string(), "echo TWO".to_string()];
        let img2 = store
            .build(&base, &spec(&pkgs, &edited), &runner, &p)
            .unwrap();
        assert_eq!(
            runner.calls.borrow().len(),
            1,
            "only the edited step reruns"
        );
        assert_eq!(img2.layers[..3], img.layers[..3]);
    }

    /// Keeps every progress message.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl crate::image::progress::ProgressReporter for Recorder {
        fn message(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_string());
        }
        fn start(
            &self,
            label: &str,
            total: Option<u64>,
        ) -> Box<dyn crate::image::progress::TransferProgress> {
            QuietProgress.start(label, total)
        }
    }

    #[test]
    fn an_all_cached_build_says_so_in_one_line_and_a_partial_one_names_what_it_reused() {
        let (_d, store, base) = base_store();
        let runner = FakeRunner::default();
        let setup = vec!["echo one".to_string(), "echo two".to_string()];
        let quiet: Progress = Arc::new(QuietProgress);
        store
            .build(&base, &spec(&[], &setup), &runner, &quiet)
            .unwrap();

        let rec = Arc::new(Recorder::default());
        let p: Progress = rec.clone();
        store.build(&base, &spec(&[], &setup), &runner, &p).unwrap();
        assert_eq!(*rec.0.lock().unwrap(), [all_cached_line(2)]);
        assert_eq!(all_cached_line(2), "build: 2 steps cached, nothing to run");

        rec.0.lock().unwrap().clear();
        let edited = vec!["echo one".to_string(), "echo TWO".to_string()];
        store
            .build(&base, &spec(&[], &edited), &runner, &p)
            .unwrap();
        let seen = rec.0.lock().unwrap().clone();
        assert_eq!(seen[0], "setup[0]: echo one (cached)", "{seen:?}");
        assert_eq!(seen[1], "setup[1]: echo TWO …", "{seen:?}");
        assert!(
            !seen.iter().any(|l| l.contains("nothing to run")),
            "{seen:?}"
        );
    }

    #[test]
    fn failing_step_reports_code_and_output_and_leaves_the_cache_alone() {
        let (d, store, base) = base_store();
        let p: Progress = Arc::new(QuietProgress);
        let runner = FakeRunner::default();
        let before = store.records.list().unwrap().len();
        let err = store
            .build(&base, &spec(&[], &["exit 3".to_string()]), &runner, &p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("code 3") && err.contains("something broke") && err.contains("setup[0]"),
            "{err}"
        );
        assert_eq!(store.records.list().unwrap().len(), before);
        assert_eq!(fs::read_dir(d.path().join("home/tmp")).unwrap().count(), 0);
        let bad = store
            .build(
                &base,
                &spec(&["curl; rm -rf /".to_string()], &[]),
                &runner,
                &p,
            )
            .unwrap_err();
        assert!(bad.to_string().contains("not a valid package name"));
    }

    #[test]
    fn host_cas_come_first_and_inputs_rerun_only_the_setup_steps() {
        let (d, store, base) = base_store();
        let p: Progress = Arc::new(QuietProgress);
        let runner = FakeRunner::default();
        let project = d.path().join("project");
        fs::create_dir_all(project.join("src")).unwrap();
        fs::write(project.join("package.json"), "{}").unwrap();
        fs::write(project.join("src/app.js"), "1").unwrap();
        let host = d.path().join("host-ca.crt");
        let cert =
            |n: u8| format!("-----BEGIN CERTIFICATE-----\nQ{n}\n-----END CERTIFICATE-----\n");
        fs::write(&host, cert(1)).unwrap();
        let none = d.path().join("no-local");
        let full = |host_cert: &Path| BuildSpec {
            packages: vec!["nodejs".into()],
            setup: vec!["npm ci".into(), "npm run build".into()],
            env: vec![("NODE_ENV".into(), "development".into())],
            workdir: "/work".into(),
            inputs: Some(BuildInputs::collect(&project, &["package*.json".into()]).unwrap()),
            host_ca: HostCas::from_paths(Some(host_cert), &none).unwrap(),
        };
        let img = store.build(&base, &full(&host), &runner, &p).unwrap();
        // base, certificates, packages, inputs, two setup steps
        assert_eq!(img.layers.len(), 6);
        assert_eq!(
            fs::read_to_string(img.layers[1].join("etc/berth/ca-certificates.crt")).unwrap(),
            cert(1)
        );
        assert_eq!(
            fs::read_to_string(img.layers[3].join("work/package.json")).unwrap(),
            "{}"
        );
        assert!(!img.layers[3].join("work/src").exists());
        assert!(img
            .config
            .env
            .contains(&"SSL_CERT_FILE=/etc/berth/ca-certificates.crt".to_string()));
        {
            let seen = runner.seen.borrow();
            let (packages_dir, packages_env, _) = &seen[0];
            assert_eq!(packages_dir, "/");
            assert!(packages_env.contains(&("PIP_CERT".into(), host_ca::BUNDLE_PATH.into())));
            assert!(!packages_env.iter().any(|(k, _)| k == "NODE_ENV"));
            let (setup_dir, setup_env, setup_lower) = &seen[1];
            assert_eq!(setup_dir, "/work");
            assert!(setup_env.contains(&("NODE_ENV".into(), "development".into())));
            assert!(
                setup_lower[3].join("work/package.json").exists(),
                "the inputs are below the step"
            );
        }
        runner.calls.borrow_mut().clear();

        // An edit outside the inputs rebuilds nothing.
        fs::write(project.join("src/app.js"), "2").unwrap();
        assert_eq!(store.build(&base, &full(&host), &runner, &p).unwrap(), img);
        assert!(runner.calls.borrow().is_empty());

        // A changed input reruns the setup steps only.
        fs::write(project.join("package.json"), "{\"x\":1}").unwrap();
        let img2 = store.build(&base, &full(&host), &runner, &p).unwrap();
        assert_eq!(
            runner.calls.borrow().len(),
            2,
            "{:?}",
            runner.calls.borrow()
        );
        assert_eq!(img2.layers[..3], img.layers[..3]);
        runner.calls.borrow_mut().clear();

        // Other host certificates rebuild from their layer on.
        fs::write(&host, cert(2)).unwrap();
        store.build(&base, &full(&host), &runner, &p).unwrap();
        assert_eq!(runner.calls.borrow().len(), 3);
        runner.calls.borrow_mut().clear();

        // Without certificates, inputs or workdir the keys are those of before.
        let plain = store
            .build(
                &base,
                &spec(&["curl".into()], &["echo".into()]),
                &runner,
                &p,
            )
            .unwrap();
        let steps = plan_steps(&base, &spec(&["curl".into()], &["echo".into()])).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(plain.layers.len(), 3);
    }
}
