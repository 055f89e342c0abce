//! `berth init`: writes a starter berth.toml from a template, or converts a devcontainer.json
//! or a compose file (`init_convert`).

use std::path::{Path, PathBuf};

use clap::Args;
use envfile_spec::{name, templates};

use super::init_convert::{self, ConvertOptions};
use crate::color::stderr_color;
use crate::envfile::write;
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

/// What `--from-compose` without a path stands for.
const DEFAULT_COMPOSE: &str = "docker-compose.yml";
/// The names docker compose looks for, in its order.
const COMPOSE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Template to start from (see --list).
    #[arg(short, long, value_name = "NAME", conflicts_with_all = ["from_devcontainer", "from_compose"])]
    pub template: Option<String>,
    /// List the templates and exit.
    #[arg(long)]
    pub list: bool,
    /// Convert a .devcontainer/devcontainer.json (default: the one in this folder).
    /// Features it names are fetched from their registry into .devcontainer/berth-features/.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = ".devcontainer/devcontainer.json", conflicts_with = "from_compose")]
    pub from_devcontainer: Option<PathBuf>,
    /// Convert a Docker Compose file: one service becomes the environment, the others sidecars
    /// (default: compose.yaml, compose.yml, docker-compose.yaml or docker-compose.yml).
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "docker-compose.yml")]
    pub from_compose: Option<PathBuf>,
    /// With --from-compose: the service you work in (default: the one built from or mounting
    /// the project; none: every service becomes a sidecar).
    #[arg(long, value_name = "NAME", requires = "from_compose")]
    pub service: Option<String>,
    /// Speak plain HTTP (or HTTPS without certificate checks) to a registry features come from.
    #[arg(long)]
    pub insecure: bool,
    /// Overwrite an existing berth.toml.
    #[arg(long)]
    pub force: bool,
    /// Environment name (default: the folder's name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(global: &GlobalArgs, args: &InitArgs) -> Result<i32, CliError> {
    if args.list {
        for t in templates::list() {
            let default = if t.name == templates::DEFAULT_TEMPLATE {
                " (default)"
            } else {
                ""
            };
            println!("{:<10} {}{default}", t.name, t.description());
        }
        return Ok(0);
    }
    if let Some(n) = &args.name {
        name::check_name(n).map_err(|why| {
            CliError::usage(format!(
                "--name {n:?}: {why} (e.g. --name {})",
                name::derive_name(n)
            ))
        })?;
    }
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read the current folder: {e}")))?;
    let shown = global
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(envfile_spec::FILE_NAME));
    let target = cwd.join(&shown);
    if target.exists() && !args.force {
        return Err(CliError::new(
            EXIT_ERROR,
            format!(
                "{} already exists; pass --force to overwrite it (or edit it)",
                shown.display()
            ),
        ));
    }
    let convert = ConvertOptions {
        name: args.name.as_deref(),
        insecure: args.insecure,
        service: args.service.as_deref(),
    };
    match (&args.from_devcontainer, &args.from_compose) {
        (Some(json), _) => {
            init_convert::from_devcontainer(global, &convert, &cwd.join(json), &target, &shown)
        }
        (None, Some(file)) => {
            // Without a path: the first of the names docker compose looks for.
            let file = match file.to_str() {
                Some(DEFAULT_COMPOSE) => COMPOSE_NAMES
                    .iter()
                    .map(|n| cwd.join(n))
                    .find(|p| p.is_file())
                    .unwrap_or_else(|| cwd.join(DEFAULT_COMPOSE)),
                _ => cwd.join(file),
            };
            init_convert::from_compose(global, &convert, &file, &target, &shown)
        }
        (None, None) => from_template(global, args, &target, &shown),
    }
}

fn from_template(
    global: &GlobalArgs,
    args: &InitArgs,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let wanted = args
        .template
        .as_deref()
        .unwrap_or(templates::DEFAULT_TEMPLATE);
    let Some(template) = templates::get(wanted) else {
        let names: Vec<&str> = templates::list().iter().map(|t| t.name).collect();
        return Err(CliError::usage(format!(
            "there is no template {wanted:?}; choose one of: {} (see `berth init --list`)",
            names.join(", ")
        )));
    };
    let text = template.text_with_name(args.name.as_deref());
    // A template always validates in a fresh folder; check before writing anyway, so a broken
    // template never lands on disk.
    let loaded = envfile_spec::parse(text.as_bytes(), target)
        .map_err(|report| CliError::rendered(EXIT_ERROR, report.render(stderr_color())))?;
    write(target, &text)?;
    if !global.quiet {
        println!(
            "created {} from template `{}` (environment `{}`)",
            shown.display(),
            template.name,
            loaded.plan.name
        );
        println!("next: `berth up`, then `berth shell`");
    }
    Ok(0)
}
