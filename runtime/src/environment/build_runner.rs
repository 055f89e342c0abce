//! Image build steps run by the container backend: the bridge between
//! [`image::build::StepRunner`](crate::image::build::StepRunner) and
//! [`container::step::run_step`](crate::container::step::run_step).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::container::step::{run_step, StepRequest};
use crate::image::build::{StepCommand, StepRunner, StepRunnerError};
use crate::state::{BerthHome, StagingDir};

/// Runs each build step in a throw-away container sandboxed like an environment (user,
/// network, pid, mount namespaces; seccomp allowlist; default capabilities), its network on
/// the bridge of the berth home `home`, its scratch state in a staging folder of that home's
/// `tmp/` made when the first step runs (an `up` or `run` whose image is built already makes
/// none: no folder created and removed per start), removed with the runner.
pub struct ContainerStepRunner {
    home: BerthHome,
    scratch: Mutex<Option<StagingDir>>,
}

impl ContainerStepRunner {
    /// A runner for the steps of builds in `home`; nothing is created until a step runs.
    pub fn new(home: &BerthHome) -> ContainerStepRunner {
        ContainerStepRunner {
            home: home.clone(),
            scratch: Mutex::new(None),
        }
    }

    /// The scratch folder, made on first use.
    fn scratch(&self) -> Result<PathBuf, StepRunnerError> {
        let mut slot = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = slot.as_ref() {
            return Ok(dir.path().to_path_buf());
        }
        let dir = self
            .home
            .staging_dir("build")
            .map_err(|e| Box::new(e) as StepRunnerError)?;
        let path = dir.path().to_path_buf();
        *slot = Some(dir);
        Ok(path)
    }

    /// Whether a step has run (and made the scratch folder); for tests.
    #[cfg(test)]
    fn made_scratch(&self) -> bool {
        self.scratch.lock().unwrap().is_some()
    }
}

impl StepRunner for ContainerStepRunner {
    fn run_step(
        &self,
        lower_layers: &[PathBuf],
        upper: &Path,
        work: &Path,
        command: &StepCommand<'_>,
        output: &mut dyn FnMut(&[u8]),
    ) -> Result<i32, StepRunnerError> {
        let req = StepRequest {
            lower_layers: lower_layers.to_vec(),
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
            argv: command.argv.to_vec(),
            env: command
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            workdir: Some(command.workdir.to_string()),
            scratch: self.scratch()?,
            net_home: Some(self.home.root().to_path_buf()),
            user: command.user.map(str::to_string),
            cache_mounts: command.cache_mounts.to_vec(),
            no_network: command.no_network,
            mounts: command.mounts.to_vec(),
        };
        run_step(&req, &mut |_, bytes| output(bytes)).map_err(|e| Box::new(e) as StepRunnerError)
    }
}

/// Builds a Dockerfile ([`crate::image::dockerfile`]) with its `RUN` steps in the build
/// sandbox, as `berth image build` and `up` of an `[image] dockerfile` do, each instruction
/// looked up in (and pushed to) the registry build cache of `cache`; the cache's notices
/// join the outcome's.
pub fn build_dockerfile(
    home: &crate::state::BerthHome,
    build: &crate::image::dockerfile::DockerfileBuild,
    cache: crate::image::build_cache::BuildCacheSettings,
    progress: &crate::image::Progress,
) -> Result<crate::image::dockerfile::DockerfileOutcome, crate::image::dockerfile::DockerfileError>
{
    let cache = crate::image::build_cache::BuildCache::new(cache, progress.clone())?;
    let runner = ContainerStepRunner::new(home);
    let mut out = crate::image::ImageStore::open(home)
        .build_dockerfile_cached(build, &runner, progress, &cache)?;
    out.notices.extend(cache.notices());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_folder_is_made_by_the_first_step_only_and_removed_with_the_runner() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path().join("home")).unwrap();
        let entries = || std::fs::read_dir(home.tmp_dir()).unwrap().count();
        let before = entries();
        let runner = ContainerStepRunner::new(&home);
        assert!(!runner.made_scratch());
        assert_eq!(entries(), before, "no folder for an image built already");
        let scratch = runner.scratch().unwrap();
        assert!(scratch.is_dir() && scratch.starts_with(home.tmp_dir()));
        assert_eq!(runner.scratch().unwrap(), scratch, "one folder per runner");
        drop(runner);
        assert!(!scratch.exists());
        assert_eq!(entries(), before);
    }
}
