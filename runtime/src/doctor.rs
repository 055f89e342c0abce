//! `berth doctor`'s report: what this machine offers berth (namespaces, overlayfs, cgroups,
//! rootless prerequisites, KVM, qemu, image tools) and a one-line fix for each missing piece,
//! over the host probes of [`crate::host`] ([`HostRoot`], [`kvm_kind`], [`HostCgroups`]).
//! Probes only read `/proc`, `/sys` and `PATH`, except the namespace probe, which forks a
//! child that tries `unshare(2)` and exits.

use std::path::Path;

use serde::Serialize;

use crate::host::cgroup_layout::HostCgroups;
use crate::host::kvm::{kvm_kind, KvmKind};
use crate::host::probe::{unshare_namespaces, HostRoot};

mod defences;
pub use defences::store_check;

/// Outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Present and usable.
    Ok,
    /// Usable with a limitation the user should know about.
    Warn,
    /// Missing; the features that need it will fail.
    Missing,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was probed (`user namespaces`, `overlayfs`, ...).
    pub name: &'static str,
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do about it, when not `Ok`.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn missing(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name,
            status: CheckStatus::Missing,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Whether the static `berth-agent` that VMs need is where this berth looks for it.
pub fn agent_check() -> Check {
    const NAME: &str = "vm agent";
    match crate::vm::agent_binary::locate(None) {
        Ok(p) => Check::ok(NAME, format!("static berth-agent at {}", p.display())),
        Err(e) => Check::warn(
            NAME,
            format!("VMs cannot start: {e}"),
            "install berth-agent beside berth (from a source tree: scripts/build-agent), or set BERTH_AGENT",
        ),
    }
}

/// Whether the layer store of the berth home at `home` gets id-mapped mounts
/// (`container::idmap_probe`), else berth copies the layers per id range.
pub fn layer_idmap_check(home: &Path) -> Check {
    match crate::container::idmap_probe::home_report(home) {
        Ok(detail) => Check::ok("id-mapped layers", detail),
        Err((detail, fix)) => Check::warn("id-mapped layers", detail, fix),
    }
}

/// Whether virtiofsd is there to share `bind` and `volume` mounts with qemu VMs.
pub fn virtiofsd_check() -> Check {
    const NAME: &str = "vm folders";
    match crate::vm::shared_folder::locate_virtiofsd() {
        Some(p) => Check::ok(NAME, format!("virtiofsd at {}", p.display())),
        None => Check::warn(
            NAME,
            format!(
                "no virtiofsd (looked at: {}, or {}): VM bind and volume mounts are served by live sync instead of a live share",
                crate::vm::shared_folder::VIRTIOFSD_PATHS.join(", "),
                crate::vm::shared_folder::VIRTIOFSD_ENV
            ),
            "apt-get install qemu-system-common (Debian 12) or virtiofsd",
        ),
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    pub kvm: KvmKind,
    /// Which VMM `vmm = "auto"` picks here, and why.
    pub vmm_auto: String,
}

impl DoctorReport {
    /// True when nothing is missing.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Missing)
    }
}

/// Runs every probe against `host`.
pub fn diagnose(host: &HostRoot) -> DoctorReport {
    let kvm = kvm_kind(host);
    let mut checks = vec![
        check_namespaces(host),
        check_overlayfs(host),
        check_idmapped_mounts(host),
    ];
    checks.extend(check_cgroups(host));
    checks.extend(check_rootless(host));
    checks.extend(defences::defence_checks(host));
    checks.push(check_kvm(host, kvm));
    checks.push(check_tun(host));
    checks.push(check_tool(
        host,
        "qemu",
        &["qemu-system-x86_64"],
        "needed for `vmm = \"qemu\"` (and `auto` without hardware KVM)",
        "apt-get install qemu-system-x86",
    ));
    checks.push(check_tool(
        host,
        "debootstrap",
        &["mmdebstrap", "debootstrap"],
        "needed for `from = \"debootstrap:SUITE\"` images",
        "apt-get install debootstrap",
    ));
    checks.push(check_tool(
        host,
        "mkfs.ext4",
        &["mkfs.ext4"],
        "needed to build VM root disks",
        "apt-get install e2fsprogs",
    ));
    checks.push(check_tool(
        host,
        "nftables",
        &["nft"],
        "needed for NAT of isolated networks when running as root",
        "apt-get install nftables",
    ));
    checks.push(check_tool(
        host,
        "ssh",
        &["ssh"],
        "needed for `berth ssh` (berth ssh --stdio, the ProxyCommand of `berth ssh-config`, works without it)",
        "apt-get install openssh-client",
    ));
    let vmm_auto = match kvm {
        KvmKind::Hardware => "berth's own KVM VMM (hardware KVM present)".to_string(),
        KvmKind::Pvm => {
            "qemu (-M pc) under TCG emulation: /dev/kvm is kvm_pvm, which cannot safely boot a stock Linux kernel"
                .to_string()
        }
        KvmKind::Unknown => {
            "qemu (-M pc) under TCG emulation: the KVM provider is unknown, so berth does not risk booting a kernel through it"
                .to_string()
        }
        KvmKind::Absent => "qemu (-M pc) under TCG emulation (no /dev/kvm)".to_string(),
    };
    DoctorReport {
        checks,
        kvm,
        vmm_auto,
    }
}

fn check_namespaces(host: &HostRoot) -> Check {
    const NAME: &str = "namespaces";
    let kinds = ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"];
    let absent: Vec<&str> = kinds
        .iter()
        .copied()
        .filter(|k| !host.exists(format!("/proc/self/ns/{k}")))
        .collect();
    if !absent.is_empty() {
        return Check::missing(
            NAME,
            format!("the kernel lacks {} namespaces", absent.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES and all namespace types",
        );
    }
    let max_userns = host
        .read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.trim().parse::<u64>().ok());
    if max_userns == Some(0) {
        return Check::missing(
            NAME,
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            "sysctl -w user.max_user_namespaces=15000",
        );
    }
    if host.acts_on_host() {
        if let Err(e) = unshare_namespaces() {
            return Check::missing(
                NAME,
                format!("unshare of user/mount/pid/net/uts/ipc namespaces failed: {e}"),
                "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or AppArmor's kernel.apparmor_restrict_unprivileged_userns=0)",
            );
        }
    }
    Check::ok(NAME, "user, mount, pid, net, uts, ipc, cgroup: usable")
}

fn check_overlayfs(host: &HostRoot) -> Check {
    const NAME: &str = "overlayfs";
    let fs = host.read("/proc/filesystems").unwrap_or_default();
    if fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        Check::ok(NAME, "available")
    } else if host.exists("/sys/module/overlay") {
        Check::ok(NAME, "module loaded")
    } else {
        Check::missing(
            NAME,
            "overlay is not in /proc/filesystems",
            "modprobe overlay (and add `overlay` to /etc/modules-load.d/berth.conf)",
        )
    }
}

fn check_idmapped_mounts(host: &HostRoot) -> Check {
    const NAME: &str = "id-mapped mounts";
    match host.kernel_version() {
        Some(v) if v >= (5, 19) => Check::ok(NAME, format!("kernel {}.{} supports them on ext4, xfs, btrfs, tmpfs and overlayfs lowers", v.0, v.1)),
        Some(v) => Check::warn(
            NAME,
            format!("kernel {}.{} predates id-mapped overlay lowers (5.19)", v.0, v.1),
            "berth falls back to copying ownership; upgrade the kernel for shared layers in user namespaces",
        ),
        None => Check::warn(NAME, "kernel version unknown", "check `uname -r` is 5.19 or newer"),
    }
}

fn check_cgroups(host: &HostRoot) -> Vec<Check> {
    const NAME: &str = "cgroups";
    let l = HostCgroups::read(host);
    let needed = ["memory", "cpu", "pids"];
    let v2_has = |c: &str| l.v2_controllers.iter().any(|x| x == c);
    let v1_has = |c: &str| l.v1_controllers.iter().any(|x| x == c);
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !v1_has(c) && !v2_has(c))
        .collect();
    let mode = match (l.v1_controllers.is_empty(), &l.v2_mount) {
        (true, Some(_)) => "unified (v2)".to_string(),
        (false, Some(m)) => format!("hybrid: v1 controllers, cgroup2 at {}", m.display()),
        (false, None) => "legacy (v1 only)".to_string(),
        (true, None) => "none mounted".to_string(),
    };
    let detail = format!(
        "{mode}; v1: [{}]; v2: [{}]",
        l.v1_controllers.join(" "),
        l.v2_controllers.join(" ")
    );
    if missing.is_empty() {
        vec![Check::ok(NAME, detail)]
    } else {
        vec![Check::missing(
            NAME,
            format!("{detail}; no {} controller", missing.join("/")),
            "mount the cgroup controllers (systemd does this at boot), or resource limits in [resources] cannot be applied",
        )]
    }
}

/// The current user's name, from the passwd database.
fn user_name(host: &HostRoot, uid: u32) -> Option<String> {
    let passwd = host.read("/etc/passwd")?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

fn check_rootless(host: &HostRoot) -> Vec<Check> {
    let mut out = Vec::new();
    let tools = ["newuidmap", "newgidmap"];
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| host.which(t).is_none())
        .collect();
    out.push(if absent.is_empty() {
        Check::ok("rootless id mapping", "newuidmap and newgidmap found")
    } else {
        Check::warn(
            "rootless id mapping",
            format!(
                "{} not found: rootless environments map only your own uid",
                absent.join(" and ")
            ),
            "apt-get install uidmap",
        )
    });
    let uid = nix::unistd::getuid().as_raw();
    let name = user_name(host, uid).unwrap_or_else(|| uid.to_string());
    let subuid = host.read("/etc/subuid").unwrap_or_default();
    let has_range = subuid.lines().any(|l| {
        l.split(':')
            .next()
            .is_some_and(|u| u == name || u == uid.to_string())
    });
    out.push(if has_range {
        Check::ok(
            "subordinate ids",
            format!("{name} has a range in /etc/subuid"),
        )
    } else if uid == 0 {
        Check::ok(
            "subordinate ids",
            "root has no /etc/subuid range: berth maps environments to 100000-165535",
        )
    } else {
        Check::warn(
            "subordinate ids",
            format!("{name} has no range in /etc/subuid"),
            format!("usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}"),
        )
    });
    out.push(if host.acts_on_host() {
        // The real host: pasta must run and this user must be able to open /dev/net/tun.
        match crate::net::rootless_network_available() {
            Ok(p) => Check::ok("rootless networking", format!("pasta: {}", p.display())),
            Err(why) => Check::warn(
                "rootless networking",
                format!("{why}; rootless environments then get loopback only (their [[ports]] are still forwarded)"),
                if host.which("pasta").is_none() {
                    "apt-get install passt"
                } else {
                    "as root: chmod 0666 /dev/net/tun"
                },
            ),
        }
    } else {
        match host.which("pasta") {
            Some(p) => Check::ok("rootless networking", format!("pasta: {}", p.display())),
            None => Check::warn(
                "rootless networking",
                "pasta not found: rootless environments get loopback only (their [[ports]] are still forwarded)",
                "apt-get install passt",
            ),
        }
    });
    out
}

fn check_kvm(host: &HostRoot, kind: KvmKind) -> Check {
    const NAME: &str = "kvm";
    match kind {
        KvmKind::Hardware => {
            let writable = nix::unistd::access(&host.path("/dev/kvm"), nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK).is_ok();
            let module = if host.exists("/sys/module/kvm_amd") { "kvm_amd" } else { "kvm_intel" };
            if writable {
                Check::ok(NAME, format!("hardware KVM ({module}, /dev/kvm usable): berth's own VMM boots micro-VMs"))
            } else {
                Check::warn(NAME, "hardware KVM, but /dev/kvm is not writable by you", "add yourself to the `kvm` group: usermod -aG kvm $USER, then log in again")
            }
        }
        KvmKind::Pvm => Check::warn(
            NAME,
            "/dev/kvm is kvm_pvm (nested, pagetable-based): booting a stock Linux kernel through it can restart this machine",
            "berth uses qemu under TCG for VMs here (slower); run VMs on a host with hardware KVM for full speed",
        ),
        KvmKind::Unknown => Check::warn(
            NAME,
            "/dev/kvm exists but neither kvm_intel, kvm_amd nor kvm_pvm is loaded",
            "berth uses qemu for VMs; set vmm = \"kvm\" only if you know this KVM boots stock kernels",
        ),
        KvmKind::Absent => Check::warn(
            NAME,
            "no /dev/kvm: VMs run under qemu's TCG emulation",
            "enable virtualization in the firmware and modprobe kvm_intel (or kvm_amd)",
        ),
    }
}

/// Whether VMs of berth's own VMM can be networked: a tap on berth's bridge needs
/// /dev/net/tun and CAP_NET_ADMIN.
fn check_tun(host: &HostRoot) -> Check {
    const NAME: &str = "tun";
    const USE: &str = "VMs of berth's own VMM (vmm = \"kvm\") get no network";
    if !host.exists(crate::net::tap::TUN_DEVICE) {
        return Check::warn(
            NAME,
            format!("{} is missing: {USE}", crate::net::tap::TUN_DEVICE),
            "modprobe tun (in a container, pass /dev/net/tun through); or use vmm = \"qemu\"",
        );
    }
    if !host.acts_on_host() {
        return Check::ok(NAME, format!("{} present", crate::net::tap::TUN_DEVICE));
    }
    match crate::net::tap::tap_usable() {
        Ok(()) => Check::ok(
            NAME,
            "/dev/net/tun usable: VMs of berth's own VMM get a tap on berth's bridge",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("cannot create a tap interface ({e}): {USE}"),
            "run berth as root for networked VMs with vmm = \"kvm\", or use vmm = \"qemu\" (user-mode networking)",
        ),
    }
}

fn check_tool(
    host: &HostRoot,
    name: &'static str,
    candidates: &[&str],
    why: &str,
    fix: &str,
) -> Check {
    match candidates.iter().find_map(|c| host.which(c)) {
        Some(p) => Check::ok(name, p.display().to_string()),
        None => Check::warn(name, format!("not found; {why}"), fix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_host() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        for ns in ["mnt", "pid", "net", "uts", "ipc", "cgroup", "user"] {
            w(&format!("proc/self/ns/{ns}"), "");
        }
        w("proc/sys/user/max_user_namespaces", "1000\n");
        w("proc/filesystems", "nodev\ttmpfs\nnodev\toverlay\n");
        w("proc/sys/kernel/osrelease", "6.18.44-fc\n");
        w(
            "proc/self/mountinfo",
            "39 34 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n40 34 0:35 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 34 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n35 34 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        w("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n");
        w("dev/kvm", "");
        fs::create_dir_all(d.path().join("sys/module/kvm_pvm")).unwrap();
        d
    }

    fn find<'a>(r: &'a DoctorReport, name: &str) -> &'a Check {
        r.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn pvm_is_detected_and_auto_picks_qemu() {
        let d = fake_host();
        let r = diagnose(&HostRoot::fake(d.path()));
        assert_eq!(r.kvm, KvmKind::Pvm);
        assert!(r.vmm_auto.contains("qemu"));
        let k = find(&r, "kvm");
        assert_eq!(k.status, CheckStatus::Warn);
        assert!(k.detail.contains("kvm_pvm"));
    }

    #[test]
    fn tun_is_reported_for_vm_networking() {
        let d = fake_host();
        let r = diagnose(&HostRoot::fake(d.path()));
        let c = find(&r, "tun");
        assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
        assert!(c.detail.contains("get no network"), "{c:?}");
        fs::create_dir_all(d.path().join("dev/net")).unwrap();
        fs::write(d.path().join("dev/net/tun"), "").unwrap();
        let r = diagnose(&HostRoot::fake(d.path()));
        assert_eq!(find(&r, "tun").status, CheckStatus::Ok);
    }

    #[test]
    fn hybrid_cgroups_are_described() {
        let d = fake_host();
        let r = diagnose(&HostRoot::fake(d.path()));
        let c = find(&r, "cgroups");
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert!(c.detail.contains("hybrid"), "{}", c.detail);
        assert!(c.detail.contains("hugetlb"));
    }

    #[test]
    fn missing_pieces_come_with_a_fix() {
        let d = fake_host();
        fs::write(d.path().join("proc/filesystems"), "nodev\ttmpfs\n").unwrap();
        fs::write(d.path().join("proc/sys/user/max_user_namespaces"), "0\n").unwrap();
        fs::write(d.path().join("proc/self/mountinfo"), "").unwrap();
        let r = diagnose(&HostRoot::fake(d.path()));
        assert!(!r.healthy());
        for name in ["overlayfs", "namespaces", "cgroups"] {
            let c = find(&r, name);
            assert_eq!(c.status, CheckStatus::Missing, "{c:?}");
            assert!(c.fix.as_deref().is_some_and(|f| !f.is_empty()));
        }
        assert!(find(&r, "qemu")
            .fix
            .as_deref()
            .unwrap()
            .contains("qemu-system-x86"));
    }

    #[test]
    fn hardware_kvm_and_tools_on_path() {
        use std::os::unix::fs::PermissionsExt;
        let d = fake_host();
        fs::remove_dir(d.path().join("sys/module/kvm_pvm")).unwrap();
        fs::create_dir_all(d.path().join("sys/module/kvm_intel")).unwrap();
        fs::create_dir_all(d.path().join("bin")).unwrap();
        let q = d.path().join("bin/qemu-system-x86_64");
        fs::write(&q, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        let r = diagnose(&HostRoot::fake(d.path()));
        assert_eq!(r.kvm, KvmKind::Hardware);
        assert!(r.vmm_auto.contains("own KVM VMM"));
        assert_eq!(find(&r, "qemu").status, CheckStatus::Ok);
        assert_eq!(find(&r, "ssh").status, CheckStatus::Warn);
        assert!(find(&r, "ssh")
            .fix
            .as_deref()
            .unwrap()
            .contains("openssh-client"));
        assert!(find(&r, "kvm").detail.contains("hardware KVM (kvm_intel,"));
        // AMD (also what qemu's `-cpu max` emulates in the nested test guest).
        fs::remove_dir(d.path().join("sys/module/kvm_intel")).unwrap();
        fs::create_dir_all(d.path().join("sys/module/kvm_amd")).unwrap();
        let r = diagnose(&HostRoot::fake(d.path()));
        assert_eq!(r.kvm, KvmKind::Hardware);
        assert!(find(&r, "kvm").detail.contains("hardware KVM (kvm_amd,"));
    }
}
