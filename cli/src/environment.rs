//! What the environment commands share: the berth home, the environment of the current
//! berth.toml, and error conversion.

use berth_runtime::environment::{EnvError, EnvRecord, Environments};
use berth_runtime::state::BerthHome;
use envfile_spec::{Loaded, Plan};

use crate::args::GlobalArgs;
use crate::envfile::load_plan;
use crate::exit::{from_error, CliError, EXIT_ERROR, EXIT_NOT_RUNNING};

/// The environments under this user's berth home.
pub fn environments() -> Result<Environments, CliError> {
    let home = BerthHome::discover().map_err(|e| from_error(EXIT_ERROR, &e))?;
    Ok(Environments::open(&home))
}

/// Maps an environment error to its exit code: 3 when the environment is missing or stopped.
pub fn env_error(e: EnvError) -> CliError {
    let code = match e {
        EnvError::NotFound { .. } | EnvError::NotRunning { .. } => EXIT_NOT_RUNNING,
        _ => EXIT_ERROR,
    };
    from_error(code, &e)
}

/// The plan of the current berth.toml and its environment's record, if it was ever created.
pub struct Current {
    pub plan: Plan,
    pub envs: Environments,
    pub record: Option<EnvRecord>,
}

impl Current {
    pub fn load(g: &GlobalArgs) -> Result<Current, CliError> {
        let envs = environments()?;
        envs.collect_garbage();
        if let Some(name) = &g.environment {
            let record = envs.find(name).map_err(env_error)?;
            return Ok(Current {
                plan: record.plan.clone(),
                envs,
                record: Some(record),
            });
        }
        let Loaded { plan, .. } = load_plan(g)?;
        let id = Environments::env_id(&plan);
        let record = match envs.find(&id) {
            Ok(r) => Some(r),
            Err(EnvError::NotFound { .. }) => None,
            Err(e) => return Err(env_error(e)),
        };
        Ok(Current { plan, envs, record })
    }

    /// The record, or "not created yet" (exit 3).
    pub fn require(&self) -> Result<&EnvRecord, CliError> {
        self.record.as_ref().ok_or_else(|| {
            env_error(EnvError::NotFound {
                name: self.plan.name.clone(),
            })
        })
    }
}

/// Milliseconds for humans: `12 ms`, `1.4 s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1000.0)
    }
}
