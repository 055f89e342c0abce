//! One module per command.

pub mod completions;
