//! `[secrets]`: named values read on the host at `up` ([`resolve`]) and written into the
//! running environment's `/run/secrets` tmpfs ([`install`]: `Backend::put_run_files`, the
//! `write-secrets` builtin run as root in a container, the agent in a VM). They are never part of a plan, record, spec, log or image:
//! the plan holds only where each comes from, the container spec only the names of those
//! also wanted as variables (the supervisor reads those from the tmpfs when it starts a
//! process).

mod lazy;
mod resolve;

use std::path::Path;

pub use lazy::LazySecrets;
pub use resolve::{read_one, resolve, SecretValue};

use crate::backend::{Backend, RunFiles};

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {name}: {why}; {fix}")]
    Source {
        name: String,
        why: String,
        fix: String,
    },
    #[error("cannot put the secrets into the environment: {0}")]
    Install(String),
}

/// Writes `secrets` into the running environment in `dir` as `/run/secrets/NAME`, owned by
/// `owner` (the `[shell]` user; `None`: the image's user), replacing the previous set.
pub fn install(
    backend: &dyn Backend,
    dir: &Path,
    owner: Option<&str>,
    secrets: &[SecretValue],
) -> Result<(), SecretsError> {
    let files: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    backend
        .put_run_files(
            dir,
            RunFiles::Secrets {
                owner,
                files: &files,
            },
        )
        .map_err(|e| SecretsError::Install(e.to_string()))
}
