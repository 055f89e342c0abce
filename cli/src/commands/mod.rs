//! One module per command.

pub mod completions;
pub mod doctor;
pub mod init;
pub mod schema;
pub mod validate;
pub mod image;
