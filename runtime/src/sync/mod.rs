//! Live two-way sync of a host folder and a folder inside an environment.
pub mod base;
pub mod ignore;
pub mod local;
pub mod reconcile;
pub mod transport;
pub mod tree;
