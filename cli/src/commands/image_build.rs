//! `berth image build [PATH]`: builds a Dockerfile with berth's own cached builder and
//! records the result in the local store (see `docs/dockerfile.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_runtime::environment::build_dockerfile;
use berth_runtime::image::build::HostCas;
use berth_runtime::image::build_cache::BuildCacheSettings;
use berth_runtime::image::dockerfile::build::default_name;
use berth_runtime::image::dockerfile::DockerfileBuild;
use berth_runtime::image::{PullOptions, RegistryOptions, ResolveOptions};
use berth_runtime::state::BerthHome;
use clap::Args;
use envfile_spec::plan::SecretSource;

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
    /// A secret for `RUN --mount=type=secret,id=NAME`: `id=NAME,src=FILE` or
    /// `id=NAME,env=VAR` (repeatable; read only when a step mounts it).
    #[arg(long = "secret", value_name = "id=NAME,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
    /// Relay the host's SSH agent (`SSH_AUTH_SOCK`, or `default=/path/to/socket`) to
    /// `RUN --mount=type=ssh` steps.
    #[arg(long, value_name = "default", num_args = 0..=1, default_missing_value = "default")]
    pub ssh: Option<String>,
    /// Run the `RUN` steps without the host's CA certificates (by default they trust them,
    /// as berth.toml's setup steps do: needed behind a TLS-intercepting proxy; they are
    /// mounted for each step only, never part of the image or its cache keys).
    #[arg(long)]
    pub no_host_ca: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `--secret id=NAME,src=FILE|env=VAR` → (NAME, source), as docker buildx reads it.
fn secret_arg(text: &str) -> Result<(String, SecretSource), CliError> {
    let mut id = None;
    let mut source = None;
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
            Some(("src" | "source", v)) if !v.is_empty() => {
                source = Some(SecretSource::FromFile(PathBuf::from(v)))
            }
            Some(("env", v)) if !v.is_empty() => source = Some(SecretSource::FromEnv(v.to_string())),
            Some(("type", "file" | "env")) => {}
            _ => {
                return Err(CliError::usage(format!(
                    "--secret {text}: `{part}` is not understood; write --secret id=NAME,src=FILE or --secret id=NAME,env=VAR"
                )))
            }
        }
    }
    let id = id.ok_or_else(|| CliError::usage(format!("--secret {text}: id=NAME is missing")))?;
    // Docker's default source: the variable of the same name.
    let source = source.unwrap_or_else(|| SecretSource::FromEnv(id.clone()));
    Ok((id, source))
}

/// `--ssh [default[=PATH]]` → the host agent socket.
fn ssh_arg(value: Option<&str>) -> Result<Option<PathBuf>, CliError> {
    let Some(v) = value else { return Ok(None) };
    let path = match v.split_once('=') {
        Some(("default", p)) => PathBuf::from(p),
        None if v == "default" => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(p) => PathBuf::from(p),
            None => {
                return Err(CliError::usage(
                    "--ssh: SSH_AUTH_SOCK is not set; start an agent (`eval $(ssh-agent)`) or give --ssh default=/path/to/agent.sock",
                ))
            }
        },
        _ => {
            return Err(CliError::usage(format!(
                "--ssh {v}: berth relays one agent, `default`; write --ssh or --ssh default=/path/to/agent.sock"
            )))
        }
    };
    if !path.is_absolute() {
        return Err(CliError::usage(format!(
            "--ssh: {} is not an absolute path",
            path.display()
        )));
    }
    Ok(Some(path))
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
        secrets: args
            .secrets
            .iter()
            .map(|s| secret_arg(s))
            .collect::<Result<_, _>>()?,
        ssh_agent: ssh_arg(args.ssh.as_deref())?,
        host_ca: if args.no_host_ca {
            None
        } else {
            HostCas::from_host_cached(home.root()).map_err(|e| {
                CliError::new(
                    EXIT_ERROR,
                    format!("cannot read the host's CA certificates: {e}; build with --no-host-ca to run the steps without them"),
                )
            })?
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
