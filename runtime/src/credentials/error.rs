//! Errors of credential forwarding.

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot forward credentials: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot forward credentials into the environment: {0} (turn them off with `[credentials]` in berth.toml if the image cannot have them)")]
    Inside(String),
}

impl CredentialsError {
    pub fn io(what: &'static str, source: std::io::Error) -> Self {
        CredentialsError::Io { what, source }
    }
}
