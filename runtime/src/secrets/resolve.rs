//! Reading `[secrets]` on the host: a variable of berth's environment, a file, or a
//! command's output. Values are only ever held in memory; errors name the secret and its
//! source, never a value (nor a command's output, which could hold one).

use std::io::Read;
use std::process::{Command, Stdio};

use envfile_spec::plan::{Plan, SecretSource};

use super::SecretsError;
use crate::ssh_inside::MAX_SECRET;

/// A secret read on the host. Its `Debug` shows the name only.
pub struct SecretValue {
    pub name: String,
    pub value: Vec<u8>,
    pub as_env: bool,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({}, <redacted>)", self.name)
    }
}

/// Reads every secret of `plan`, in name order.
pub fn resolve(plan: &Plan) -> Result<Vec<SecretValue>, SecretsError> {
    plan.secrets
        .iter()
        .map(|(name, s)| {
            let value = read_one(name, &s.source)?;
            if s.as_env && value.contains(&0) {
                return Err(SecretsError::Source {
                    name: name.clone(),
                    why: "it holds a NUL byte, which a variable cannot".into(),
                    fix: "set as_env = false and read /run/secrets/NAME".into(),
                });
            }
            Ok(SecretValue {
                name: name.clone(),
                value,
                as_env: s.as_env,
            })
        })
        .collect()
}

/// Reads the secret `name` from `source` (at most 1 MiB), on the host.
pub fn read_one(name: &str, source: &SecretSource) -> Result<Vec<u8>, SecretsError> {
    let value = read(name, source)?;
    if value.len() > MAX_SECRET {
        return Err(SecretsError::Source {
            name: name.to_string(),
            why: "it is larger than 1 MiB".into(),
            fix: "secrets are small values (tokens, keys); mount larger files instead".into(),
        });
    }
    Ok(value)
}

fn read(name: &str, source: &SecretSource) -> Result<Vec<u8>, SecretsError> {
    let err = |why: String, fix: &str| SecretsError::Source {
        name: name.to_string(),
        why,
        fix: fix.to_string(),
    };
    match source {
        SecretSource::FromEnv(var) => std::env::var_os(var)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or_else(|| {
                err(
                    format!("the host variable {var} is not set"),
                    "set it in the shell that runs berth, or change env in [secrets]",
                )
            }),
        SecretSource::FromFile(path) => {
            let mut out = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_SECRET as u64 + 1).read_to_end(&mut out))
                .map_err(|e| {
                    err(
                        format!("cannot read {}: {e}", path.display()),
                        "check the path of file in [secrets]",
                    )
                })?;
            Ok(out)
        }
        SecretSource::FromCommand(argv) => {
            let shown = argv.join(" ");
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                // The command may ask something (a password manager's unlock): its messages
                // reach the user.
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| {
                    err(
                        format!("cannot run `{shown}`: {e}"),
                        "check that the program of command is installed",
                    )
                })?;
            let mut out = Vec::new();
            if let Some(s) = child.stdout.take() {
                let _ = s.take(MAX_SECRET as u64 + 1).read_to_end(&mut out);
            }
            let status = child.wait().map_err(|e| {
                err(
                    format!("`{shown}` could not be waited for: {e}"),
                    "run it again",
                )
            })?;
            if !status.success() {
                return Err(err(
                    format!("`{shown}` failed ({status})"),
                    "run the command yourself to see why",
                ));
            }
            if out.last() == Some(&b'\n') {
                out.pop();
            }
            Ok(out)
        }
    }
}
