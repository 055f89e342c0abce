//! Errors of environment operations. Each says what failed and what to do next.

use crate::container::ContainerError;
use crate::image::ImageError;
use crate::state::StateError;
use crate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("no environment {name} on this machine; run `berth up` to create it")]
    NotFound { name: String },
    #[error("environment {name} is not running; start it with `berth up`")]
    NotRunning { name: String },
    #[error(
        "environment {name} is busy: another berth command is changing it; wait for it to finish"
    )]
    Busy { name: String },
    #[error("on_up step `{command}` exited with code {code}; the environment is running: fix the step and run `berth up` again, or look inside with `berth shell`")]
    OnUpFailed { command: String, code: i32 },
    #[error("on_create step `{command}` exited with code {code}; on_create runs again on the next `berth up` (the environment is running, its services not started): fix the step and run `berth up` again, or look inside with `berth shell`")]
    OnCreateFailed { command: String, code: i32 },
    #[error("snapshot {name} of {env} holds {holds}, but the environment now needs {needs} (its backend changed); remove it with `berth snapshot rm {name}`")]
    SnapshotBackendMismatch {
        name: String,
        env: String,
        holds: &'static str,
        needs: &'static str,
    },
    #[error("invalid --name {name:?}: {why}")]
    BadRunName { name: String, why: String },
    #[error("an environment named {name} already exists; choose another --name or remove it with `berth --environment {name} destroy`")]
    RunNameTaken { name: String },
    #[error("invalid snapshot name {name:?}: use letters, digits, `.`, `_` and `-` (at most 128, not starting with `.`)")]
    BadSnapshotName { name: String },
    #[error("environment {env} has no snapshot {name}; `berth snapshot ls` lists them")]
    SnapshotNotFound { name: String, env: String },
    #[error("snapshot {name} was taken on image {snapshot_image}, but the environment now uses {current_image}; restore it after going back to that image, or remove it with `berth snapshot rm {name}`")]
    SnapshotImageMismatch {
        name: String,
        snapshot_image: String,
        current_image: String,
    },
    #[error("mount at {target}: source {path} {why} (it resolves to {}); berth does not share it with an environment. Mount a folder of the project instead, or, if you really mean it, add `unsafe_host_path = true` to this [[mounts]] entry of berth.toml", resolved.display())]
    UnsafeMountSource {
        target: String,
        path: String,
        resolved: std::path::PathBuf,
        why: String,
    },
    #[error("live sync could not start: {message}")]
    SyncFailed { message: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Dockerfile(#[from] crate::image::dockerfile::DockerfileError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Sidecar(#[from] super::sidecar_error::SidecarError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
}
