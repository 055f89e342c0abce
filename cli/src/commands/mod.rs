//! One module per command.

pub mod completions;
pub mod doctor;
pub mod image;
pub mod init;
pub mod schema;
pub mod validate;
