//! Cached build steps: `[image].packages`, then each `[image].setup` command, each run over
//! the layers so far by a [`StepRunner`] (the container backend) and captured as a new layer
//! from the overlay upper directory.
//!
//! Each step's cache key is the hash of its parent's key and the step itself, so editing
//! step 3 rebuilds steps 3 and later only. A cached step is an image record named
//! `build:<key>` (layers so far + the step's layer). `berth image prune` drops the cached
//! steps whose layer no environment or image uses any more (steps edited away, or those of
//! destroyed environments).
//! A failing step leaves the cache as it was.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::ImageError;
use super::layer_writer::WhiteoutMode;
use super::manifest::RunConfig;
use super::progress::Progress;
use super::store::{ImageStore, ResolvedImage};

/// Error of a step runner (the backend's own error type, boxed).
pub type StepRunnerError = Box<dyn std::error::Error + Send + Sync>;

/// Runs one build step in a throw-away container.
pub trait StepRunner {
    /// Runs `command` with the root filesystem `lower_layers` (bottom → top, read-only)
    /// under an overlay whose upper directory is `upper` (empty, on the store's filesystem)
    /// and work directory `work`, with `env` as its environment, passing everything the
    /// command prints to `output`. Returns the command's exit code.
    fn run_step(
        &self,
        lower_layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        command: &[String],
        env: &[(String, String)],
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, StepRunnerError>;
}

/// The package manager of an image, found from the files in its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Apk,
    Dnf,
    Yum,
}

impl PackageManager {
    /// Looks for the package tools in the merged view of `layers` (top layer first; a
    /// whiteout hides what is below it).
    pub fn detect(layers: &[PathBuf]) -> Option<Self> {
        let candidates = [
            ("usr/bin/apt-get", PackageManager::Apt),
            ("sbin/apk", PackageManager::Apk),
            ("usr/bin/dnf", PackageManager::Dnf),
            ("usr/bin/yum", PackageManager::Yum),
        ];
        candidates
            .into_iter()
            .find(|(p, _)| visible(layers, p))
            .map(|(_, m)| m)
    }

    /// The command that installs `packages`.
    pub fn install_command(self, packages: &[String]) -> Vec<String> {
        let list = packages.join(" ");
        let script = match self {
            PackageManager::Apt => format!(
                "export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends {list} && rm -rf /var/lib/apt/lists/*"
            ),
            PackageManager::Apk => format!("apk add --no-cache {list}"),
            PackageManager::Dnf => format!("dnf install -y {list} && dnf clean all"),
            PackageManager::Yum => format!("yum install -y {list} && yum clean all"),
        };
        vec!["/bin/sh".into(), "-c".into(), script]
    }
}

fn visible(layers: &[PathBuf], rel: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in layers.iter().rev() {
        if let Ok(m) = std::fs::symlink_metadata(layer.join(rel)) {
            return !(m.file_type().is_char_device() && m.rdev() == 0);
        }
    }
    false
}

/// A package name berth passes to a package manager: no shell metacharacters.
fn valid_package(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_:=~-/@".contains(&b))
}

/// One step of a build, before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub label: String,
    pub command: Vec<String>,
    /// Cache key: hash of the parent key and this step.
    pub key: String,
}

/// The steps for `packages` and `setup` over `base`, with their cache keys.
pub fn plan_steps(
    base: &ResolvedImage,
    packages: &[String],
    setup: &[String],
) -> Result<Vec<PlannedStep>, ImageError> {
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    if !packages.is_empty() {
        if let Some(bad) = packages.iter().find(|p| !valid_package(p)) {
            return Err(ImageError::Build {
                step: "packages".into(),
                detail: format!("`{bad}` is not a valid package name"),
            });
        }
        let pm = PackageManager::detect(&base.layers).ok_or_else(|| ImageError::Build {
            step: "packages".into(),
            detail: format!(
                "the image {} has no apt-get, apk, dnf or yum; install packages in a `setup` step instead",
                base.name
            ),
        })?;
        commands.push((
            format!("packages: {}", packages.join(" ")),
            pm.install_command(packages),
        ));
    }
    for (i, s) in setup.iter().enumerate() {
        commands.push((
            format!("setup[{i}]: {s}"),
            vec!["/bin/sh".into(), "-c".into(), s.clone()],
        ));
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
    Ok(commands
        .into_iter()
        .map(|(label, command)| {
            let mut h = Sha256::new();
            h.update(parent.as_bytes());
            h.update(b"\n");
            h.update(serde_json::to_vec(&command).unwrap_or_default());
            parent = hex::encode(h.finalize());
            PlannedStep {
                label,
                command,
                key: parent.clone(),
            }
        })
        .collect())
}

/// Name of the image record that caches a step.
pub fn cache_name(key: &str) -> String {
    format!("{}{key}", super::store::BUILD_PREFIX)
}

const TAIL_LINES: usize = 20;

/// The one line a build prints when every step was cached.
pub fn all_cached_line(steps: usize) -> String {
    let s = if steps == 1 { "" } else { "s" };
    format!("build: {steps} step{s} cached, nothing to run")
}

impl ImageStore {
    /// Builds `packages` and `setup` on top of `base`, reusing cached steps, and returns the
    /// resulting image.
    pub fn build(
        &self,
        base: &ResolvedImage,
        packages: &[String],
        setup: &[String],
        runner: &dyn StepRunner,
        progress: &Progress,
    ) -> Result<ResolvedImage, ImageError> {
        let steps = plan_steps(base, packages, setup)?;
        let _lock = self.lock_shared()?;
        let base_record = self
            .records
            .get(&base.name)?
            .ok_or_else(|| ImageError::NotFound(base.name.clone()))?;
        let mut current = base.clone();
        let mut layers = base_record.layers.clone();
        let run_config = RunConfig {
            env: Some(base.config.env.clone()),
            cmd: Some(base.config.cmd.clone()).filter(|c| !c.is_empty()),
            entrypoint: Some(base.config.entrypoint.clone()).filter(|c| !c.is_empty()),
            working_dir: base.config.working_dir.clone(),
            user: base.config.user.clone(),
        };
        // Cached steps are named only when a later step runs (which of them were reused);
        // when every step is cached, one line says so instead of a line per step.
        let total = steps.len();
        let mut cached: Vec<String> = Vec::new();
        let mut ran = false;
        for step in steps {
            let name = cache_name(&step.key);
            if let Some(r) = self.records.get(&name)?.filter(|r| self.is_complete(r)) {
                if ran {
                    progress.message(&format!("{} (cached)", step.label));
                } else {
                    cached.push(step.label.clone());
                }
                layers = r.layers.clone();
                current = self.resolved(&r);
                continue;
            }
            for label in cached.drain(..) {
                progress.message(&format!("{label} (cached)"));
            }
            ran = true;
            progress.message(&format!("{} …", step.label));
            let upper = self.home.staging_dir("build-upper")?;
            let work = self.home.staging_dir("build-work")?;
            let mut env = base.config.env_pairs();
            if !env.iter().any(|(k, _)| k == "PATH") {
                env.push((
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ));
            }
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
                runner.run_step(
                    &current.layers,
                    upper.path(),
                    work.path(),
                    &step.command,
                    &env,
                    &mut sink,
                )
            };
            if !partial.is_empty() {
                tail.push_back(String::from_utf8_lossy(&partial).into_owned());
            }
            let code = code.map_err(|e| ImageError::Build {
                step: step.label.clone(),
                detail: format!("could not run it: {e}"),
            })?;
            if code != 0 {
                let lines: Vec<String> = tail.into_iter().collect();
                return Err(ImageError::Build {
                    step: step.label.clone(),
                    detail: format!(
                        "exited with code {code}; last output:\n{}\nfix the step in berth.toml and run again (earlier steps stay cached)",
                        lines.join("\n")
                    ),
                });
            }
            let layer = self.add_tree_layer(
                upper.path(),
                WhiteoutMode::FromOverlay,
                &step.label,
                progress,
            )?;
            layers.push(layer);
            let record = self.record_local_image(&name, layers.clone(), run_config.clone())?;
            current = self.resolved(&record);
        }
        if !ran && total > 0 {
            progress.message(&all_cached_line(total));
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::progress::QuietProgress;
    use crate::state::BerthHome;
    use std::cell::RefCell;
    use std::fs;
    use std::sync::Arc;

    /// Writes `<step>.txt` into upper, whites out `etc/old` and fails on `exit N`.
    struct FakeRunner {
        calls: RefCell<Vec<Vec<String>>>,
    }

    impl StepRunner for FakeRunner {
        fn run_step(
            &self,
            lower: &[PathBuf],
            upper: &Path,
            _work: &Path,
            command: &[String],
            env: &[(String, String)],
            output: &mut dyn FnMut(&[u8]),
        ) -> Result<i32, StepRunnerError> {
            assert!(env.iter().any(|(k, _)| k == "PATH"));
            assert!(lower[0].join("usr/bin/apt-get").exists());
            self.calls.borrow_mut().push(command.to_vec());
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
        let runner = FakeRunner {
            calls: RefCell::new(Vec::new()),
        };
        let pkgs = vec!["curl".to_string(), "git".to_string()];
        let setup = vec!["echo one".to_string(), "echo two".to_string()];
        let img = store.build(&base, &pkgs, &setup, &runner, &p).unwrap();
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
        let again = store.build(&base, &pkgs, &setup, &runner, &p).unwrap();
        assert_eq!(again, img);
        assert!(runner.calls.borrow().is_empty());

        let edited = vec!["echo one".to_string(), "echo TWO".to_string()];
        let img2 = store.build(&base, &pkgs, &edited, &runner, &p).unwrap();
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
        let runner = FakeRunner {
            calls: RefCell::new(Vec::new()),
        };
        let setup = vec!["echo one".to_string(), "echo two".to_string()];
        let quiet: Progress = Arc::new(QuietProgress);
        store.build(&base, &[], &setup, &runner, &quiet).unwrap();

        let rec = Arc::new(Recorder::default());
        let p: Progress = rec.clone();
        store.build(&base, &[], &setup, &runner, &p).unwrap();
        assert_eq!(*rec.0.lock().unwrap(), [all_cached_line(2)]);
        assert_eq!(all_cached_line(2), "build: 2 steps cached, nothing to run");

        rec.0.lock().unwrap().clear();
        let edited = vec!["echo one".to_string(), "echo TWO".to_string()];
        store.build(&base, &[], &edited, &runner, &p).unwrap();
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
        let runner = FakeRunner {
            calls: RefCell::new(Vec::new()),
        };
        let before = store.records.list().unwrap().len();
        let err = store
            .build(&base, &[], &["exit 3".to_string()], &runner, &p)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("code 3") && err.contains("something broke") && err.contains("setup[0]"),
            "{err}"
        );
        assert_eq!(store.records.list().unwrap().len(), before);
        assert_eq!(fs::read_dir(d.path().join("home/tmp")).unwrap().count(), 0);
        let bad = store
            .build(&base, &["curl; rm -rf /".to_string()], &[], &runner, &p)
            .unwrap_err();
        assert!(bad.to_string().contains("not a valid package name"));
    }
}
