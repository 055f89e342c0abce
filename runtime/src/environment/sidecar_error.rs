//! Errors of sidecars (`environment/sidecars.rs`), apart from it so that `EnvError` holds
//! them without an import circle.

/// Why a sidecar could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("sidecar {name} did not become ready within {waited} ({probe}); `berth up` stopped it, the other sidecars and the environment. Its last log lines:\n{log}\nFix the server or its `ready` in berth.toml (services.{name}), then run `berth up` again")]
    NotReady {
        name: String,
        waited: String,
        probe: String,
        log: String,
    },
    #[error("{env} has no sidecar {name:?} (its sidecars: {known}); sidecars are the [services.NAME] entries with `image` in berth.toml")]
    Unknown {
        name: String,
        env: String,
        known: String,
    },
    #[error("{env} has sidecars it could not reach: {why}")]
    Unreachable { env: String, why: String },
    #[error("--keep-volumes {name}: no sidecar mounts a volume of that name (the sidecars' volumes: {known}); a run's sidecar volumes are its own unless named here")]
    UnknownVolume { name: String, known: String },
    #[error("sidecar {name} is not running; start it (with its environment) with `berth up`")]
    NotRunning { name: String },
    #[error(
        "sidecar {name}: {message}; `berth up` stopped it, the other sidecars and the environment"
    )]
    Start { name: String, message: String },
}
