//! `berth image build [PATH]`: builds a Dockerfile with berth's own cached builder and
//! records the result in the local store (see `docs/dockerfile.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_runtime::environment::build_dockerfile;
use berth_runtime::image::build_cache::BuildCacheSettings;
use berth_runtime::image::dockerfile::build::default_name;
use berth_runtime::image::dockerfile::DockerfileBuild;
use berth_runtime::image::{PullOptions, RegistryOptions, ResolveOptions};
use berth_runtime::state::BerthHome;
use clap::Args;

use super::cache_args::CacheArgs;
use crate::exit::{from_error, CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;
use crate::progress::progress;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The build context folder (default: the current folder).
    pub path: Option<PathBuf>,
    /// The Dockerfile (default: PATH/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name of the built image in the local store (default: `dockerfile:<path>`).
    #[arg(short = 't', long = "tag")]
    pub tag: Option<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// A build argument, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Use plain HTTP / accept invalid certificates for the base images' registry.
    #[arg(long)]
    pub insecure: bool,
    /// Ask the registry again for base images already in the store.
    #[arg(long)]
    pub pull: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: &BuildArgs, g: &GlobalArgs) -> Result<i32, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read the current folder: {e}")))?;
    let context = cwd.join(args.path.clone().unwrap_or_else(|| PathBuf::from(".")));
    if !context.is_dir() {
        return Err(CliError::usage(format!(
            "{} is not a folder; give the build context folder",
            context.display()
        )));
    }
    let context = context
        .canonicalize()
        .map_err(|e| CliError::new(EXIT_ERROR, format!("{}: {e}", context.display())))?;
    let dockerfile = match &args.file {
        Some(f) => cwd.join(f),
        None => context.join("Dockerfile"),
    };
    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            // `--build-arg NAME` takes the value from berth's own environment, as docker.
            None => match std::env::var(a) {
                Ok(v) => (a.clone(), v),
                Err(_) => continue,
            },
        };
        build_args.insert(k, v);
    }
    let name = args
        .tag
        .clone()
        .unwrap_or_else(|| default_name(&dockerfile, args.target.as_deref()));
    let home = BerthHome::discover().map_err(|e| from_error(EXIT_ERROR, &e))?;
    berth_runtime::state::remove_staging_on_signals(&home)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot handle signals: {e}")))?;
    let p = progress(g);
    let build = DockerfileBuild {
        dockerfile,
        context,
        target: args.target.clone(),
        args: build_args,
        name,
        resolve: ResolveOptions {
            pull: PullOptions {
                registry: RegistryOptions {
                    insecure: args.insecure,
                },
                progress: p.clone(),
                ..PullOptions::default()
            },
            update: args.pull,
            pinned: None,
        },
    };
    let started = std::time::Instant::now();
    let cache = BuildCacheSettings::new(
        None,
        false,
        args.cache.cache_from.as_ref(),
        args.cache.cache_to.as_ref(),
    )
    .map_err(|e| from_error(EXIT_ERROR, &e))?;
    let out = build_dockerfile(&home, &build, cache, &p).map_err(|e| from_error(EXIT_ERROR, &e))?;
    if !g.quiet {
        for n in &out.notices {
            eprintln!("notice: {n}");
        }
        let pulled = if out.steps_pulled > 0 {
            format!(" ({} pulled from the registry cache)", out.steps_pulled)
        } else {
            String::new()
        };
        eprintln!(
            "built {} in {}: {} steps run, {} cached{pulled}",
            out.image.name,
            berth_runtime::image::human_duration(started.elapsed()),
            out.steps_run,
            out.steps_cached
        );
    }
    println!("{} {}", out.image.name, out.image.id);
    Ok(0)
}
