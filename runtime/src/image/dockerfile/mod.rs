//! berth's own Dockerfile builder: no daemon, each instruction a cached layer of the image
//! store, `RUN` steps in the build sandbox of every other build step.
//!
//! `parse` reads the syntax (with line:col for errors), `words` expands variables,
//! `plan` checks every instruction and orders the stages, `context` reads the build context
//! (`.dockerignore`, globs, content hashes), `build` runs the stages over the store.

pub mod build;
pub mod config;
pub mod context;
pub mod copy;
pub mod error;
pub mod parse;
pub mod plan;
pub mod words;

pub use build::{DockerfileBuild, DockerfileOutcome};
pub use error::DockerfileError;
