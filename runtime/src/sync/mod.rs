//! Live two-way sync of a host folder and a folder inside an environment.
pub mod ignore;
pub mod local;
pub mod transport;
pub mod tree;
