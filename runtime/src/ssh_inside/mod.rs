//! The parts of the SSH endpoint that run *inside* an environment, as the `[shell]` user:
//! the SFTP server (`sftp`, `scp`) and the TCP relay of `direct-tcpip` (`ssh -L`). The SSH
//! server ([`crate::ssh`]) starts them through the exec path as *builtins*: a command whose
//! `argv[0]` is one of the names below is not looked up in the environment's filesystem
//! (whose image may have no dynamic loader berth's binary could use) but run by the forked
//! child of the supervisor itself, after it switched to the user, working directory and
//! security profile exactly as for an `execve`.
//!
//! The same path runs the inside half of credential forwarding (`session_sockets`: the
//! private folder and listening sockets of a session's SSH agent and git credentials), for
//! `shell` and `exec` as well as SSH sessions.
//!
//! `secret_files` writes `[secrets]` into the environment's `/run/secrets` tmpfs at `up`,
//! `gitconfig_file` the host user's git identity into berth's own tmpfs `/run/berth`.
//!
//! This module uses nothing else of berth, so the container backend can call it.

mod gitconfig_file;
mod secret_files;
mod session_sockets;
mod sftp;
mod tcp_listen;
mod tcp_relay;

pub use gitconfig_file::{write as write_gitconfig, GITCONFIG_PATH, RUN_DIR};
pub use secret_files::{MAX_SECRET, SECRETS_DIR};
pub use session_sockets::{valid_socket_name, GITCONFIG_FILE, SESSION_DIR_PLACEHOLDER};

/// `argv[0]` of the SFTP server builtin.
pub const SFTP_SERVER: &str = "berth-builtin:sftp-server";
/// `argv[0]` of the TCP relay builtin (`argv[1]` host, `argv[2]` port).
pub const TCP_RELAY: &str = "berth-builtin:tcp-relay";
/// `argv[0]` of the credential forwarding builtin (`argv[1]` the socket names, comma
/// separated; `argv[2]`, optional, the session's gitconfig text). Its stdin must be a Unix
/// socket: it receives the folder's path and the listening sockets.
pub const SESSION_SOCKETS: &str = "berth-builtin:session-sockets";
/// `argv[0]` of the `[secrets]` builtin (`argv[1]` the owner, the `[shell]` user); run as
/// root inside, it writes the secrets read from stdin into `/run/secrets`.
pub const WRITE_SECRETS: &str = "berth-builtin:write-secrets";
/// `argv[0]` of the environment's gitconfig builtin: run as root inside, it writes stdin as
/// [`GITCONFIG_PATH`] (empty stdin: removes it).
pub const WRITE_GITCONFIG: &str = "berth-builtin:write-gitconfig";
/// `argv[0]` of the remote forwarding builtin (`argv[1]` address, `argv[2]` port; stdin a
/// Unix socket that receives the listener).
pub const TCP_LISTEN: &str = "berth-builtin:tcp-listen";

/// The builtin named by `argv`, as a function to run in place of `execve` (its exit code).
pub fn builtin(argv: &[String]) -> Option<Box<dyn FnOnce() -> i32>> {
    match argv.first().map(String::as_str) {
        Some(SFTP_SERVER) => Some(Box::new(sftp::serve_stdio)),
        Some(TCP_RELAY) => {
            let host = argv.get(1).cloned().unwrap_or_default();
            let port = argv.get(2).cloned().unwrap_or_default();
            Some(Box::new(move || tcp_relay::relay_stdio(&host, &port)))
        }
        Some(SESSION_SOCKETS) => {
            let sockets = argv.get(1).cloned().unwrap_or_default();
            let gitconfig = argv.get(2).cloned();
            Some(Box::new(move || {
                session_sockets::serve_stdin(&sockets, gitconfig.as_deref())
            }))
        }
        Some(TCP_LISTEN) => {
            let addr = argv.get(1).cloned().unwrap_or_default();
            let port = argv.get(2).cloned().unwrap_or_default();
            Some(Box::new(move || tcp_listen::serve_stdin(&addr, &port)))
        }
        Some(WRITE_GITCONFIG) => Some(Box::new(gitconfig_file::write_stdin)),
        Some(WRITE_SECRETS) => {
            let owner = argv.get(1).cloned().unwrap_or_default();
            Some(Box::new(move || secret_files::write_stdin(&owner)))
        }
        _ => None,
    }
}
