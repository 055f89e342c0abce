//! Image build steps run by the container backend: the bridge between
//! [`image::build::StepRunner`](crate::image::build::StepRunner) and
//! [`container::step::run_step`](crate::container::step::run_step).

use std::path::{Path, PathBuf};

use crate::container::step::{run_step, StepRequest};
use crate::image::build::{StepCommand, StepRunner, StepRunnerError};

/// Runs each build step in a throw-away container sandboxed like an environment (user,
/// network, pid, mount namespaces; seccomp allowlist; default capabilities), its scratch
/// state under `scratch`, its network on the bridge of the berth home `net_home`.
pub struct ContainerStepRunner {
    pub scratch: PathBuf,
    pub net_home: PathBuf,
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
            scratch: self.scratch.clone(),
            net_home: Some(self.net_home.clone()),
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
    let scratch = home
        .staging_dir("build")
        .map_err(crate::image::ImageError::from)?;
    let runner = ContainerStepRunner {
        scratch: scratch.path().to_path_buf(),
        net_home: home.root().to_path_buf(),
    };
    let mut out = crate::image::ImageStore::open(home)
        .build_dockerfile_cached(build, &runner, progress, &cache)?;
    out.notices.extend(cache.notices());
    Ok(out)
}
