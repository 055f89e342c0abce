//! `berth validate [--json]`: checks the berth.toml and reports every problem at once.

use serde_json::json;

use crate::color::stderr_color;
use crate::envfile::locate;
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::{GlobalArgs, JsonFlag};

pub fn run(global: &GlobalArgs, flags: JsonFlag) -> Result<i32, CliError> {
    let path = locate(global)?;
    let result = envfile_spec::load(&path);
    if flags.json {
        let (valid, report, name) = match &result {
            Ok(l) => (true, &l.warnings, Some(l.plan.name.as_str())),
            Err(r) => (false, r, None),
        };
        let diagnostics: Vec<_> = report
            .diagnostics
            .iter()
            .map(|d| {
                json!({
                    "code": d.kind.code(),
                    "severity": d.severity.as_str(),
                    "message": d.message,
                    "line": d.line,
                    "column": d.column,
                    "help": d.help,
                })
            })
            .collect();
        let mut out = json!({
            "file": path.display().to_string(),
            "valid": valid,
            "diagnostics": diagnostics,
        });
        if let (Some(name), Ok(l)) = (name, &result) {
            out["name"] = json!(name);
            out["hash"] = json!(l.plan.hash());
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(if valid { 0 } else { EXIT_ERROR });
    }
    let color = stderr_color();
    match result {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprint!("{}", loaded.warnings.render(color));
            }
            if !global.quiet {
                println!("ok: {} ({})", path.display(), loaded.plan.name);
            }
            Ok(0)
        }
        Err(report) => Err(CliError::rendered(EXIT_ERROR, report.render(color))),
    }
}
