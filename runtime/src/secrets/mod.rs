//! `[secrets]`: named values read on the host at `up` ([`resolve`]) and written into the
//! running environment's `/run/secrets` tmpfs ([`install`], through the `write-secrets`
//! builtin run as root inside). They are never part of a plan, record, spec, log or image:
//! the plan holds only where each comes from, the container spec only the names of those
//! also wanted as variables (the supervisor reads those from the tmpfs when it starts a
//! process).

mod resolve;

use std::path::Path;

pub use resolve::{resolve, SecretValue};

use crate::backend::Backend;
use crate::ssh_inside;

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
    let mut payload = Vec::new();
    for s in secrets {
        payload.extend_from_slice(format!("{}\n{}\n", s.name, s.value.len()).as_bytes());
        payload.extend_from_slice(&s.value);
    }
    crate::backend::run_fed(
        backend,
        dir,
        vec![
            ssh_inside::WRITE_SECRETS.into(),
            owner.unwrap_or_default().to_string(),
        ],
        payload,
    )
    .map_err(SecretsError::Install)
}
