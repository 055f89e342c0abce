//! `berth init --from-devcontainer` and `--from-compose`: read the file, convert it
//! (`envfile_spec::devcontainer` / `compose`), write berth.toml, print what was not converted
//! and whether the result validates.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_runtime::image::dev_feature::fetch_feature;
use berth_runtime::image::RegistryOptions;
use envfile_spec::draft::Conversion;
use envfile_spec::folder_sources::FolderSources;
use envfile_spec::{compose, devcontainer};

use super::init::{set_name, write, InitArgs};
use crate::envfile::stderr_color;
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

/// `file` relative to the project folder, `/`-separated; an error when it is outside.
fn relative(file: &Path, project: &Path, flag: &str) -> Result<String, CliError> {
    let rel = file.strip_prefix(project).map_err(|_| {
        CliError::usage(format!(
            "{} is outside the project folder {}; run berth init in the folder that holds it ({flag})",
            file.display(),
            project.display()
        ))
    })?;
    Ok(rel
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/"))
}

fn read(file: &Path, flag: &str) -> Result<String, CliError> {
    std::fs::read_to_string(file).map_err(|e| {
        CliError::new(
            EXIT_ERROR,
            format!(
                "cannot read {}: {e}; pass the path of the file to {flag}",
                file.display()
            ),
        )
    })
}

pub fn from_devcontainer(
    global: &GlobalArgs,
    args: &InitArgs,
    json_path: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let project = target.parent().unwrap_or(Path::new("/"));
    let text = read(json_path, "--from-devcontainer")?;
    let rel = relative(json_path, project, "--from-devcontainer")?;
    let json_dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    let opts = RegistryOptions {
        insecure: args.insecure,
    };
    let quiet = global.quiet;
    let fetch = |id: &str, dest: &Path| -> Result<(), String> {
        if !quiet {
            eprintln!("fetching feature {id}");
        }
        fetch_feature(id, dest, &opts).map_err(|e| format!("cannot fetch it: {e}"))
    };
    let sources = FolderSources::new(project, &json_dir, Some(&fetch));
    let ctx = devcontainer::Context {
        project_dir: project,
        json_path: &rel,
        host_uid: std::fs::metadata(project).ok().map(|m| m.uid()),
    };
    let conversion = devcontainer::convert(&text, &ctx, &sources)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("{}: {e}", json_path.display())))?;
    finish(global, args, conversion, json_path, target, shown)
}

pub fn from_compose(
    global: &GlobalArgs,
    args: &InitArgs,
    file: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let project = target.parent().unwrap_or(Path::new("/"));
    let text = read(file, "--from-compose")?;
    let rel = relative(file, project, "--from-compose")?;
    let sources = FolderSources::new(project, "", None);
    let conversion = compose::convert(&rel, &text, project, args.service.as_deref(), &sources)
        .map_err(|e| CliError::new(EXIT_ERROR, e.to_string()))?;
    finish(global, args, conversion, file, target, shown)
}

/// Writes the converted file, lists what was not converted, validates.
fn finish(
    global: &GlobalArgs,
    args: &InitArgs,
    conversion: Conversion,
    source: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let mut toml = conversion.toml;
    if let Some(n) = &args.name {
        toml = set_name(&toml, n);
    }
    write(target, &toml)?;
    if !global.quiet {
        println!("created {} from {}", shown.display(), source.display());
    }
    if !conversion.skipped.is_empty() {
        eprintln!(
            "not converted (listed at the top of {} too; edit it by hand if you need these):",
            shown.display()
        );
        for s in &conversion.skipped {
            eprintln!("  - {}: {}", s.key, s.reason);
        }
    }
    match envfile_spec::load(target) {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprint!("{}", loaded.warnings.render(stderr_color()));
            }
            Ok(0)
        }
        Err(mut report) => {
            report.file = shown.to_path_buf();
            eprint!("{}", report.render(stderr_color()));
            Err(CliError::new(
                EXIT_ERROR,
                format!(
                    "{} was written but does not validate yet; fix the problems above, then run `berth validate`",
                    shown.display()
                ),
            ))
        }
    }
}
