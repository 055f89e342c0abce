//! The `berth.toml` format, version 1.
//!
//! Data flows one way: bytes → [`parse`] (TOML with spans, every error collected as a
//! [`Diagnostic`]) → [`model::EnvFile`] (typed, validated) → [`plan::Plan`] (defaults filled,
//! paths absolute, stable content hash). Nothing here does I/O beyond reading the file and
//! checking that mount sources exist.
//!
//! The human reference is `SPEC.md` beside this crate.

pub mod plan;
pub mod reference;

pub use plan::Plan;
pub use reference::{ImageReference, ReferenceError};
