//! The `berth.toml` format, version 1.
//!
//! Data flows one way: bytes → [`parse`] (TOML with spans via `toml_edit`, walked by hand so
//! that every problem of a file is collected as a [`Diagnostic`]) → [`plan::Plan`] (defaults
//! filled, paths absolute, stable content hash). Nothing here does I/O beyond reading the file
//! and checking that host paths (mount sources, rootfs/tar images, kernels) exist.
//!
//! The human reference is `SPEC.md` beside this crate; the editor schema is
//! `berth.schema.json` ([`schema::json_schema`]).

mod checker;
pub mod compose;
pub mod devcontainer;
pub mod devices;
pub mod diagnostic;
pub mod draft;
pub mod duration;
pub mod folder_sources;
pub mod inputs;
pub mod keys;
mod load;
pub mod name;
pub mod plan;
pub mod reference;
pub mod schema;
pub mod size;
pub mod templates;

pub use checker::UNSAFE_HOST_PATHS;
pub use diagnostic::{Diagnostic, ErrorKind, Report, Severity};
pub use load::{discover, load, parse, Loaded, FILE_NAME, MAX_FILE_SIZE};
pub use plan::Plan;
pub use reference::{ImageReference, ReferenceError};
