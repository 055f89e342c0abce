//! `[secrets]`: named values read on the host at `up` ([`resolve`]) and written into the
//! running environment's `/run/secrets` tmpfs ([`install`], through the `write-secrets`
//! builtin run as root inside). They are never part of a plan, record, spec, log or image:
//! the plan holds only where each comes from, the container spec only the names of those
//! also wanted as variables (the supervisor reads those from the tmpfs when it starts a
//! process).

mod resolve;

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

pub use resolve::{read_one, resolve, SecretValue};

use crate::backend::{Backend, ExecRequest};
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
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SecretsError::Install(format!("pipe: {e}")))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SecretsError::Install(format!("pipe: {e}")))?;
    let feeder = std::thread::spawn(move || {
        let mut w = std::fs::File::from(w);
        let _ = w.write_all(&payload);
    });
    let devnull = std::fs::File::open("/dev/null")
        .map_err(|e| SecretsError::Install(format!("/dev/null: {e}")))?;
    let req = ExecRequest {
        argv: vec![
            ssh_inside::WRITE_SECRETS.into(),
            owner.unwrap_or_default().to_string(),
        ],
        env: Vec::new(),
        cwd: Some("/".into()),
        user: Some("0".into()),
        tty: false,
        winsize: None,
    };
    let code = backend.exec(dir, &req, [r.as_fd(), devnull.as_fd(), err_w.as_fd()]);
    drop((r, err_w));
    let _ = feeder.join();
    let mut why = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::from(err_r), 4096),
        &mut why,
    );
    match code {
        Ok(0) => Ok(()),
        Ok(c) => Err(SecretsError::Install(format!("{} (exit {c})", why.trim()))),
        Err(e) => Err(SecretsError::Install(e.to_string())),
    }
}
