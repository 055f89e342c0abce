//! `Setup`: the guest's hostname, mounts, sidecar names in /etc/hosts, variables and
//! services, applied as the host sends them.

use std::io;
use std::time::Instant;

use berth_agent_proto::Setup;

use super::guest_services::Service;
use super::Server;
use crate::sys;

impl Server {
    pub(super) fn apply_setup(&mut self, setup: Setup) -> Result<(), String> {
        if !setup.hostname.is_empty() {
            // SAFETY: pointer and length of a valid byte string.
            let r =
                unsafe { libc::sethostname(setup.hostname.as_ptr().cast(), setup.hostname.len()) };
            if r != 0 {
                return Err(format!(
                    "cannot set the hostname to {}: {}",
                    setup.hostname,
                    io::Error::last_os_error()
                ));
            }
        }
        for m in &setup.mounts {
            std::fs::create_dir_all(&m.target)
                .map_err(|e| format!("cannot create mount point {}: {e}", m.target))?;
            let (flags, data) = mount_flags(&m.options);
            sys::mount(&m.source, &m.target, &m.fstype, flags, &data).map_err(|e| {
                format!(
                    "cannot mount {} ({}) on {}: {e}",
                    m.source, m.fstype, m.target
                )
            })?;
        }
        // Before the services start: they may reach the sidecars by name at once.
        crate::hosts_file::update(std::path::Path::new("/etc/hosts"), &setup.hosts)
            .map_err(|e| format!("cannot write the sidecars' names into /etc/hosts: {e}"))?;
        for (k, v) in setup.env {
            self.env.retain(|(ek, _)| *ek != k);
            self.env.push((k, v));
        }
        if !setup.secret_env.is_empty() {
            self.secret_env = setup.secret_env;
        }
        for spec in setup.services {
            self.services
                .push(Service::new(spec, setup.hold_services, Instant::now()));
        }
        self.restart_services();
        Ok(())
    }
}

/// `ro` among a mount's options is the read-only flag; the rest is the filesystem's data.
fn mount_flags(options: &str) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => flags |= libc::MS_RDONLY,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::mount_flags;

    #[test]
    fn read_only_is_a_flag() {
        assert_eq!(mount_flags(""), (0, String::new()));
        assert_eq!(mount_flags("size=1024"), (0, "size=1024".into()));
        assert_eq!(
            mount_flags("ro,size=1024"),
            (libc::MS_RDONLY, "size=1024".into())
        );
    }
}
