//! One module per command: its arguments (clap) beside the code that runs it.

pub mod cache_args;
pub mod completions;
pub mod doctor;
pub mod down;
pub mod exec;
pub mod image;
pub mod image_build;
pub mod image_push;
pub mod init;
pub(crate) mod init_convert;
pub mod login;
pub mod logs;
pub mod run;
pub mod schema;
pub mod snapshot;
pub mod ssh;
pub mod status;
pub mod sync;
pub mod up;
pub mod validate;
pub mod vmm;
