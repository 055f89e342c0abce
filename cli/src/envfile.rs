//! Finding and loading the berth.toml a command works on: `-f FILE`, else discovery from the
//! current folder (already changed by `-C DIR` in `main`) upwards, like Cargo.toml.

use std::path::{Path, PathBuf};

use envfile_spec::Loaded;

use crate::color::stderr_color;
use crate::exit::{from_error, CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

/// The berth.toml to use, as a path to show the user (relative to the current folder when it
/// is inside it).
pub fn locate(global: &GlobalArgs) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            EXIT_ERROR,
            format!("cannot read the current folder: {e}; cd into your project and retry"),
        )
    })?;
    if let Some(file) = &global.file {
        if file.is_dir() {
            return Err(CliError::new(
                EXIT_ERROR,
                format!(
                    "{} is a folder; -f takes the path of a berth.toml (use -C to change folder)",
                    file.display()
                ),
            ));
        }
        return Ok(file.clone());
    }
    match envfile_spec::discover(&cwd) {
        Some(found) => Ok(shown_path(&found, &cwd)),
        None => {
            // A project that describes itself another way: say how to convert it.
            let hint = if cwd.join(".devcontainer/devcontainer.json").is_file() {
                "; this folder has a dev container: `berth init --from-devcontainer` converts it"
            } else if cwd.join(".devcontainer.json").is_file() {
                "; this folder has a dev container: `berth init --from-devcontainer .devcontainer.json` converts it"
            } else if [
                "compose.yaml",
                "compose.yml",
                "docker-compose.yml",
                "docker-compose.yaml",
            ]
            .iter()
            .any(|f| cwd.join(f).is_file())
            {
                "; this folder has a compose file: `berth init --from-compose FILE` converts it"
            } else {
                ""
            };
            Err(CliError::new(
                EXIT_ERROR,
                format!(
                    "no berth.toml in {} or any parent folder; run `berth init` to create one (or pass -f FILE){hint}",
                    cwd.display()
                ),
            ))
        }
    }
}

fn shown_path(path: &Path, cwd: &Path) -> PathBuf {
    match path.strip_prefix(cwd) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// Finds, reads and checks the berth.toml. Warnings are printed to stderr (unless `--quiet`);
/// errors come back as a rendered [`CliError`] with exit code 1.
// Used by the environment commands (up, shell, exec, …) as they land.
#[allow(dead_code)]
pub fn load_plan(global: &GlobalArgs) -> Result<Loaded, CliError> {
    if global.devcontainer {
        return crate::devcontainer_source::load_plan(global);
    }
    let path = locate(global)?;
    let color = stderr_color();
    match envfile_spec::load(&path) {
        Ok(loaded) => {
            if !global.quiet && !loaded.warnings.is_empty() {
                eprint!("{}", loaded.warnings.render(color));
            }
            Ok(loaded)
        }
        Err(report) => Err(CliError::rendered(EXIT_ERROR, report.render(color))),
    }
}

/// Writes a berth.toml (atomically: a reader sees the old file or the new one).
pub fn write(target: &Path, text: &str) -> Result<(), CliError> {
    berth_runtime::state::atomic_write(target, text.as_bytes())
        .map_err(|e| from_error(EXIT_ERROR, &e))
}
