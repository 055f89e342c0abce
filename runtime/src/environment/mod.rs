//! Environments as the user sees them: one per berth.toml (or per `berth run`), reconciled
//! from a [`Plan`](envfile_spec::Plan) by [`Environments::up`], stopped, destroyed, listed.
//!
//! This module orchestrates; it owns no mechanism. Images come from
//! [`ImageStore`](crate::image::ImageStore), processes from the
//! [`ContainerBackend`](crate::container::ContainerBackend) or the
//! [`VmBackend`](crate::vm::VmBackend), chosen by the plan's `backend`. What it adds is the environment
//! record (`envs/<id>/env.json`: the plan that was applied, its hash, the image and layers in
//! use), the per-environment lock that serializes commands, the reconcile decision (what
//! changed since the last `up`), and garbage collection of throw-away environments whose
//! `berth run` was killed.

mod build_plan;
mod build_runner;
mod ephemeral;
mod error;
mod gc;
mod hooks;
mod lifecycle;
pub mod live_sync;
mod mount_source;
mod record;
mod session;
mod snapshot;
mod vm;

pub use build_runner::ContainerStepRunner;
pub use ephemeral::{copy_tree, RunPlanOptions};
pub use error::EnvError;
pub use lifecycle::{
    EnvSummary, EnvView, Environments, UpAction, UpOptions, UpReport, VolumesRemoved,
};
pub use record::{EnvRecord, Ephemeral, ImageUse, RECORD_FILE};
pub use session::CommandSession;
pub use snapshot::SnapshotInfo;
pub use vm::VmView;
