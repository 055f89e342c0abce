//! What berth makes in an environment's filesystem, written once for both places that do it:
//! the container's supervisor (the runtime's `ssh_inside` builtins, run as a session's user
//! or as root inside) and a VM guest's `berth-agent`.
//!
//! - [`session_folder`]: a session's private folder `/tmp/berth-<16 hex>` holding the
//!   sockets of its forwarded credentials and its gitconfig, removed with the session.
//! - [`run_tmpfs`]: berth's tmpfs folders `/run/secrets` and `/run/berth`, opened without
//!   following a link and written only while they are a tmpfs.
//! - [`descriptors`]: what a command started inside keeps of its parent's descriptors.
//! - [`window_size`]: a terminal's rows and columns.
//!
//! It uses libc alone: the agent is linked statically and stays small.

pub mod descriptors;
mod fd_calls;
pub mod run_tmpfs;
pub mod session_folder;
pub mod window_size;
