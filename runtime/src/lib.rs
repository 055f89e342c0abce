//! Everything that makes and runs berth environments. See `README.md` beside this crate for
//! the design: state layout, locking, process model.

pub mod doctor;
pub mod state;
pub mod sync;
