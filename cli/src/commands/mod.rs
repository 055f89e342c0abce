//! One module per command.

pub mod completions;
pub mod image;
pub mod doctor;
