//! berth's own Dockerfile builder: no daemon, each instruction a cached layer of the image
//! store, `RUN` steps in the build sandbox of every other build step.
//!
//! `parse` reads the syntax (with line:col for errors), `words` expands variables,
//! `plan` checks every instruction and orders the stages, `build` runs the stages over the
//! store (each layer step cached), `config` applies the instructions that change only the
//! image config, `run_step` runs `RUN`, `copy_step` plans `COPY`/`ADD` from the build
//! `context` (`.dockerignore`, globs, content hashes) or a stage, `copy` writes the files.

pub mod build;
pub mod config;
pub mod context;
pub mod copy;
pub mod copy_step;
pub mod error;
pub mod parse;
pub mod plan;
pub mod remote;
pub mod run_mount;
pub mod run_mount_stage;
pub mod run_step;
pub mod stage_pool;
pub mod words;

pub use build::{DockerfileBuild, DockerfileOutcome};
pub use error::DockerfileError;
