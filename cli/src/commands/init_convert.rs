//! `berth init --from-devcontainer` and `--from-compose`: read the file, convert it
//! (`envfile_spec::devcontainer` / `compose`), write berth.toml, print what was not converted
//! and whether the result validates.

use std::path::Path;

use berth_runtime::image::RegistryOptions;
use envfile_spec::compose;
use envfile_spec::draft::Conversion;
use envfile_spec::folder_sources::FolderSources;

use crate::color::stderr_color;
use crate::devcontainer_source::{self, read_source, relative, Refetch};
use crate::envfile::write;
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

/// What `berth init` asks of a conversion.
pub struct ConvertOptions<'a> {
    /// The environment's name (default: the converted file's).
    pub name: Option<&'a str>,
    /// Plain HTTP to a features registry.
    pub insecure: bool,
    /// The compose service to work in.
    pub service: Option<&'a str>,
}

pub fn from_devcontainer(
    global: &GlobalArgs,
    args: &ConvertOptions<'_>,
    json_path: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let project = target.parent().unwrap_or(Path::new("/"));
    let opts = RegistryOptions {
        insecure: args.insecure,
    };
    let conversion =
        devcontainer_source::convert(json_path, project, &opts, Refetch::Always, global.quiet)?;
    finish(global, args, conversion, json_path, target, shown)
}

pub fn from_compose(
    global: &GlobalArgs,
    args: &ConvertOptions<'_>,
    file: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let project = target.parent().unwrap_or(Path::new("/"));
    let text = read_source(file, "--from-compose")?;
    let rel = relative(file, project, "--from-compose")?;
    let sources = FolderSources::new(project, "", None);
    let conversion = compose::convert(&rel, &text, project, args.service, &sources)
        .map_err(|e| CliError::new(EXIT_ERROR, e.to_string()))?;
    finish(global, args, conversion, file, target, shown)
}

/// Writes the converted file, lists what was not converted, validates.
fn finish(
    global: &GlobalArgs,
    args: &ConvertOptions<'_>,
    conversion: Conversion,
    source: &Path,
    target: &Path,
    shown: &Path,
) -> Result<i32, CliError> {
    let mut toml = conversion.toml;
    if let Some(n) = args.name {
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

/// Sets the top-level `name` of a berth.toml text, keeping its comments and layout.
fn set_name(toml: &str, name: &str) -> String {
    match toml.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            doc["name"] = toml_edit::value(name);
            doc.to_string()
        }
        Err(_) => toml.to_string(),
    }
}
