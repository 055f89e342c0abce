//! `berth doctor`'s report on the defences between an environment and the host: the store's
//! permissions (images' setuid files and device nodes out of other users' reach), device
//! control (cgroup v1 `devices` or v2 eBPF device programs), seccomp filtering and user
//! namespaces, each with a fix when missing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Check;
use crate::host::cgroup_layout::HostCgroups;
use crate::host::probe::HostRoot;

/// Probes of the device, seccomp and user-namespace defences of `host`.
pub fn defence_checks(host: &HostRoot) -> Vec<Check> {
    vec![
        check_device_control(host),
        check_seccomp(host),
        check_user_namespaces(host),
    ]
}

/// Whether environments can be kept from opening devices: v1's `devices` controller where
/// berth uses v1 (a v1 `memory` hierarchy exists), else cgroup v2 eBPF device programs.
fn check_device_control(host: &HostRoot) -> Check {
    const NAME: &str = "device control";
    let l = HostCgroups::read(host);
    let v1 = |c: &str| l.v1_controllers.iter().any(|x| x == c);
    if v1("memory") {
        return if v1("devices") {
            Check::ok(
                NAME,
                "cgroup v1 devices controller: environments open only null, zero, full, random, urandom, tty, console, ptmx, pts and their `devices`",
            )
        } else {
            Check::missing(
                NAME,
                "berth uses cgroup v1 here, but the devices controller is not mounted: environments cannot start as root",
                "mount it: `mkdir -p /sys/fs/cgroup/devices && mount -t cgroup -o devices cgroup /sys/fs/cgroup/devices` (systemd does at boot)",
            )
        };
    }
    if l.v2_mount.is_none() {
        return Check::missing(
            NAME,
            "no cgroup filesystem is mounted",
            "mount cgroup2 at /sys/fs/cgroup",
        );
    }
    if !host.acts_on_host() {
        // A fake host: the kernel's BPF syscall shows in /proc/sys/kernel.
        return if host.exists("/proc/sys/kernel/unprivileged_bpf_disabled") {
            Check::ok(NAME, "cgroup v2 eBPF device programs")
        } else {
            bpf_missing(NAME, "the kernel has no bpf(2)")
        };
    }
    if !nix::unistd::geteuid().is_root() {
        return Check::ok(
            NAME,
            "rootless: environments mount their layers inside their user namespace (nodev) and cannot create device nodes; device programs need root",
        );
    }
    match crate::container::cgroups::device_bpf::probe_load() {
        Ok(()) => Check::ok(
            NAME,
            "cgroup v2 eBPF device programs (BPF_PROG_TYPE_CGROUP_DEVICE) load",
        ),
        Err(e) => bpf_missing(NAME, &e.to_string()),
    }
}

fn bpf_missing(name: &'static str, why: &str) -> Check {
    Check::missing(
        name,
        format!("cgroup v2 device programs are unavailable ({why}): environments cannot start as root"),
        "use a kernel built with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF (every distribution kernel is)",
    )
}

/// Whether the kernel filters system calls with seccomp (the actions berth's filter uses).
fn check_seccomp(host: &HostRoot) -> Check {
    const NAME: &str = "seccomp";
    match host.read("/proc/sys/kernel/seccomp/actions_avail") {
        Some(actions) => {
            let has = |a: &str| actions.split_whitespace().any(|x| x == a);
            let missing: Vec<&str> = ["errno", "kill_process", "allow"]
                .into_iter()
                .filter(|a| !has(a))
                .collect();
            if missing.is_empty() {
                Check::ok(NAME, format!("filtering available ({})", actions.trim()))
            } else {
                Check::missing(
                    NAME,
                    format!("seccomp lacks the actions {missing:?} ({})", actions.trim()),
                    "use a kernel with CONFIG_SECCOMP_FILTER (5.0 or later)",
                )
            }
        }
        None => Check::missing(
            NAME,
            "the kernel has no seccomp filtering (/proc/sys/kernel/seccomp/actions_avail is missing): system calls inside environments are not filtered",
            "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER",
        ),
    }
}

/// Whether environments get a user namespace, and what root inside is on the host.
fn check_user_namespaces(host: &HostRoot) -> Check {
    const NAME: &str = "user namespaces";
    let max: u64 = host
        .read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if max == 0 {
        return Check::missing(
            NAME,
            "user namespaces are disabled (user.max_user_namespaces = 0): root inside an environment would be the host's root",
            "sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d)",
        );
    }
    let subuid = host.read("/etc/subuid").unwrap_or_default();
    let root_range = subuid.lines().find_map(|l| {
        let mut f = l.split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        (who == "root" || who == "0").then(|| format!("{start}+{count}"))
    });
    let mapping = match root_range {
        Some(r) => format!("as root, environments map their ids to root's /etc/subuid range {r}"),
        None => {
            "as root, environments map their ids to 100000+65536 (no /etc/subuid range for root)"
                .to_string()
        }
    };
    Check::ok(
        NAME,
        format!("{mapping}: root inside is an unprivileged host uid; rootless, root inside is you"),
    )
}

/// The store's permissions under `home` for a berth running as `euid`: the home must not be
/// readable by others and `layers/` must be private, else other local users can run the
/// images' setuid files and open their device nodes.
pub fn store_check(home: &Path, euid: u32) -> Check {
    const NAME: &str = "store permissions";
    let Ok(meta) = std::fs::metadata(home) else {
        return Check::ok(
            NAME,
            format!(
                "{} does not exist yet; berth creates it private (0711 for root, 0700 rootless; layers/ 0700)",
                home.display()
            ),
        );
    };
    let layers = home.join("layers");
    let layers_meta = std::fs::metadata(&layers).ok();
    let mode = meta.mode() & 0o7777;
    let layers_mode = layers_meta.as_ref().map(|m| m.mode() & 0o7777);
    let detail = format!(
        "{} {mode:04o} uid {}, layers/ {}",
        home.display(),
        meta.uid(),
        layers_meta
            .as_ref()
            .map(|m| format!("{:04o} uid {}", m.mode() & 0o7777, m.uid()))
            .unwrap_or_else(|| "missing".into())
    );
    let open_home = mode & 0o066 != 0;
    let open_layers = layers_mode.is_some_and(|m| m & 0o077 != 0);
    let foreign = meta.uid() != euid || layers_meta.as_ref().is_some_and(|m| m.uid() != euid);
    if open_home || open_layers {
        return Check::missing(
            NAME,
            format!("{detail}: other local users can reach the images' setuid files and device nodes"),
            format!(
                "run any berth command as its owner (it tightens the store), or `chmod {} {} && chmod 700 {}`",
                if euid == 0 { "711" } else { "700" },
                home.display(),
                layers.display()
            ),
        );
    }
    if foreign {
        return Check::warn(
            NAME,
            format!("{detail}: not owned by you (uid {euid})"),
            format!(
                "use a berth home of your own (BERTH_HOME), or `chown -R {euid} {}`",
                home.display()
            ),
        );
    }
    Check::ok(NAME, format!("{detail}: private"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::CheckStatus;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, HostRoot) {
        let d = tempfile::tempdir().unwrap();
        for (p, s) in files {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        }
        let h = HostRoot::fake(d.path());
        (d, h)
    }

    #[test]
    fn device_control_on_v1_v2_and_without() {
        let v1 = "39 34 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let (_d, h) = host_with(&[("proc/self/mountinfo", v1)]);
        let c = check_device_control(&h);
        assert_eq!(c.status, CheckStatus::Missing, "{c:?}");
        assert!(c.fix.unwrap().contains("-o devices"));
        let with_devices =
            format!("{v1}42 34 0:37 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n");
        let (_d, h) = host_with(&[("proc/self/mountinfo", &with_devices)]);
        assert_eq!(check_device_control(&h).status, CheckStatus::Ok);
        let v2 = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let (_d, h) = host_with(&[
            ("proc/self/mountinfo", v2),
            ("proc/sys/kernel/unprivileged_bpf_disabled", "2\n"),
        ]);
        assert_eq!(check_device_control(&h).status, CheckStatus::Ok);
        let (_d, h) = host_with(&[("proc/self/mountinfo", v2)]);
        assert_eq!(check_device_control(&h).status, CheckStatus::Missing);
    }

    #[test]
    fn seccomp_and_user_namespaces() {
        let (_d, h) = host_with(&[
            (
                "proc/sys/kernel/seccomp/actions_avail",
                "kill_process kill_thread trap errno user_notif trace log allow\n",
            ),
            ("proc/sys/user/max_user_namespaces", "1000\n"),
            ("etc/subuid", "root:200000:65536\n"),
        ]);
        let checks = defence_checks(&h);
        let seccomp = checks.iter().find(|c| c.name == "seccomp").unwrap();
        assert_eq!(seccomp.status, CheckStatus::Ok, "{seccomp:?}");
        let userns = checks.iter().find(|c| c.name == "user namespaces").unwrap();
        assert!(userns.detail.contains("200000+65536"), "{userns:?}");
        let (_d, h) = host_with(&[("proc/sys/user/max_user_namespaces", "0\n")]);
        let checks = defence_checks(&h);
        for name in ["seccomp", "user namespaces"] {
            let c = checks.iter().find(|c| c.name == name).unwrap();
            assert_eq!(c.status, CheckStatus::Missing, "{c:?}");
            assert!(c.fix.is_some());
        }
    }

    #[test]
    fn an_open_store_is_reported_with_a_fix() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        let euid = nix::unistd::geteuid().as_raw();
        assert_eq!(store_check(&home, euid).status, CheckStatus::Ok);
        fs::create_dir_all(home.join("layers")).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(home.join("layers"), fs::Permissions::from_mode(0o755)).unwrap();
        let c = store_check(&home, euid);
        assert_eq!(c.status, CheckStatus::Missing, "{c:?}");
        assert!(c.fix.unwrap().contains("chmod 700"));
        fs::set_permissions(&home, fs::Permissions::from_mode(0o711)).unwrap();
        fs::set_permissions(home.join("layers"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(store_check(&home, euid).status, CheckStatus::Ok);
        assert_eq!(store_check(&home, euid + 1).status, CheckStatus::Warn);
    }
}
