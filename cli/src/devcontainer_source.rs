//! A devcontainer.json converted for use: by `berth init --from-devcontainer` (written out) and
//! by `--devcontainer` (in memory, instead of a berth.toml). Reads the files, fetches the
//! features (the runtime's registry client); the conversion is `envfile_spec::devcontainer`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_runtime::image::dev_feature::fetch_feature;
use berth_runtime::image::RegistryOptions;
use envfile_spec::devcontainer;
use envfile_spec::draft::Conversion;
use envfile_spec::folder_sources::FolderSources;
use envfile_spec::Loaded;

use crate::color::stderr_color;
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

/// The text of a file to convert; an error naming it and the flag `flag` that gives it.
pub fn read_source(file: &Path, flag: &str) -> Result<String, CliError> {
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

/// Whether a feature already fetched into the project is fetched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// `berth init`: always (the registry's current version).
    Always,
    /// `--devcontainer`: only when missing (every command converts again).
    WhenMissing,
}

/// `file` relative to the project folder, `/`-separated; an error when it is outside.
pub fn relative(file: &Path, project: &Path, flag: &str) -> Result<String, CliError> {
    let rel = file.strip_prefix(project).map_err(|_| {
        CliError::usage(format!(
            "{} is outside the project folder {}; run berth in the folder that holds it ({flag})",
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

/// Converts the devcontainer.json `json_path` of the project folder `project`.
pub fn convert(
    json_path: &Path,
    project: &Path,
    opts: &RegistryOptions,
    refetch: Refetch,
    quiet: bool,
) -> Result<Conversion, CliError> {
    let text = read_source(json_path, "--from-devcontainer")?;
    let rel = relative(json_path, project, "--from-devcontainer")?;
    let json_dir = rel.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    let fetch = |id: &str, dest: &Path| -> Result<(), String> {
        if refetch == Refetch::WhenMissing && dest.join("install.sh").is_file() {
            return Ok(());
        }
        if !quiet {
            eprintln!("fetching feature {id}");
        }
        fetch_feature(id, dest, opts).map_err(|e| format!("cannot fetch it: {e}"))
    };
    let sources = FolderSources::new(project, &json_dir, Some(&fetch));
    let ctx = devcontainer::Context {
        project_dir: project,
        json_path: &rel,
        host_uid: std::fs::metadata(project).ok().map(|m| m.uid()),
    };
    devcontainer::convert(&text, &ctx, &sources)
        .map_err(|e| CliError::new(EXIT_ERROR, format!("{}: {e}", json_path.display())))
}

/// `--devcontainer`: the plan of the current folder's devcontainer.json, as if the converted
/// berth.toml were there (berth.lock is still written beside it).
pub fn load_plan(global: &GlobalArgs) -> Result<Loaded, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read the current folder: {e}")))?;
    let json = [".devcontainer/devcontainer.json", ".devcontainer.json"]
        .iter()
        .map(|f| cwd.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::new(
                EXIT_ERROR,
                format!(
                    "--devcontainer: no .devcontainer/devcontainer.json (or .devcontainer.json) in {}; run berth in the project folder",
                    cwd.display()
                ),
            )
        })?;
    let conversion = convert(
        &json,
        &cwd,
        &RegistryOptions::default(),
        Refetch::WhenMissing,
        global.quiet,
    )?;
    if !global.quiet && !conversion.skipped.is_empty() {
        eprintln!(
            "{}: {} setting(s) not converted; `berth init --from-devcontainer` lists them",
            json.display(),
            conversion.skipped.len()
        );
    }
    let file = cwd.join(envfile_spec::FILE_NAME);
    let color = stderr_color();
    match envfile_spec::parse(conversion.toml.as_bytes(), &file) {
        Ok(loaded) => {
            if !global.quiet && !loaded.warnings.is_empty() {
                eprint!("{}", loaded.warnings.render(color));
            }
            Ok(loaded)
        }
        Err(report) => Err(CliError::rendered(
            EXIT_ERROR,
            format!(
                "{}the berth.toml converted from {} does not validate; `berth init --from-devcontainer` writes it so that you can fix it",
                report.render(color),
                json.display()
            ),
        )),
    }
}
