//! Everything that makes and runs berth environments. See `README.md` beside this crate for
//! the design: state layout, locking, process model.

pub mod backend;
pub mod container;
pub mod credentials;
pub mod detach;
pub mod doctor;
pub mod environment;
pub mod host;
pub mod image;
pub mod net;
pub mod progress;
pub mod secrets;
pub mod ssh;
pub mod ssh_inside;
pub mod state;
pub mod sync;
pub mod vm;
