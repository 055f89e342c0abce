//! berth's built-in SSH endpoint: an SSH server spoken over stdin/stdout (`berth ssh
//! --stdio NAME`, a `ProxyCommand`), no sshd in the image and no TCP port anywhere. Its
//! sessions run on the backends' exec path ([`Backend::exec_start`](crate::backend::Backend::exec_start)),
//! so they work the same in containers and VMs, as the `[shell]` user with `[env]` in the
//! shell's workdir.
//!
//! - `server`: the SSH protocol side (authentication, channels, requests).
//! - `session`: one command of a session channel, relayed to the client.
//! - `host_key`: the environment's ed25519 host key, made once, kept private.
//! - `client_config`: what the OpenSSH client needs (`Host` entries, the known-hosts file
//!   berth keeps, `berth ssh-config --install`).
//! - `ide_launch`: `berth open`'s URI and launcher command for each IDE.

mod client_config;
mod error;
mod host_key;
mod ide_launch;
mod remote_forward;
mod server;
mod session;

pub use client_config::{
    host_alias, install_config, installed_file, known_hosts_path, ssh_command, ssh_config_text,
    write_known_hosts, HostEntry, Installed,
};
pub use error::SshError;
pub use host_key::{load_or_create as host_key, public_line, HOST_KEY_FILE};
pub use ide_launch::{find_on_path, launcher_args, open_uri, Ide};
pub use server::{accepted_env, serve_stdio};

use crate::environment::EnvRecord;
use crate::state::BerthHome;

/// Environment `record` as OpenSSH's client sees it (its host key made now if it has none
/// yet).
pub fn host_entry(home: &BerthHome, record: &EnvRecord) -> Result<HostEntry, SshError> {
    let key = host_key::load_or_create(&home.env_dir(&record.env_id))?;
    Ok(HostEntry {
        env_name: record.name.clone(),
        user: record.plan.shell.user.clone(),
        host_key: public_line(&key)?,
    })
}
