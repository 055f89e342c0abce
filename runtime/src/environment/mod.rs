//! Environments as the user sees them: one per berth.toml (or per `berth run`), reconciled
//! from a [`Plan`](envfile_spec::Plan) by [`Environments::up`], stopped, destroyed, listed.
//!
//! This module orchestrates; it owns no mechanism. Images come from
//! [`ImageStore`](crate::image::ImageStore), processes from a [`Backend`](crate::backend::Backend)
//! (the [`ContainerBackend`](crate::container::ContainerBackend) or the
//! [`VmBackend`](crate::vm::VmBackend)), picked once from the plan's `backend` by
//! [`Environments::backend`] and called only through the trait. What it adds is the environment
//! record (`envs/<id>/env.json`: the plan that was applied, its hash, the image and layers in
//! use), the per-environment lock that serializes commands, the reconcile decision (what
//! changed since the last `up`: `up_decision.rs`, pure and unit-tested), and garbage
//! collection of throw-away environments whose `berth run` was killed.
//!
//! Files by operation: `environments.rs` (the set, backend choice, locks), `up.rs`,
//! `teardown.rs` (`down`, `destroy`), `inspect.rs` (`status`, `ls`), `inside.rs` (`exec`,
//! `shell`, `run`'s command, `logs`), `hooks.rs` (`on_create`, `on_up`), `snapshot.rs`,
//! `live_sync.rs` (the `__sync` process), `ephemeral.rs` + `run_removal.rs` + `gc.rs`
//! (`berth run`), `background_child.rs` (what `run` and `down` leave to a child that outlives
//! them),
//! `sidecars.rs` (servers from their own images beside an environment), `bridged_sidecars.rs`
//! (those of a VM, on berth's bridge).

mod background_child;
mod bridged_sidecars;
mod build_plan;
mod build_runner;
mod environments;
mod ephemeral;
mod error;
mod gc;
mod hooks;
mod inside;
mod inspect;
pub mod live_sync;
mod mount_source;
mod record;
mod run_removal;
mod sidecar_error;
mod sidecars;
mod snapshot;
mod teardown;
mod up;
mod up_decision;

pub use build_runner::{build_dockerfile, ContainerStepRunner};
pub use environments::Environments;
pub use ephemeral::{copy_tree, RunPlanOptions};
pub use error::EnvError;
pub use inspect::{EnvSummary, EnvView};
pub use record::{EnvRecord, Ephemeral, ImageUse, RECORD_FILE};
pub use sidecar_error::SidecarError;
pub use sidecars::SidecarView;
pub use snapshot::SnapshotInfo;
pub use teardown::VolumesRemoved;
pub use up::{UpOptions, UpReport};
pub use up_decision::UpAction;
