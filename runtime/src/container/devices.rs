//! Which devices an environment may use: Docker's default allowlist plus the host devices the
//! project asks for in berth.toml's `devices`. The rules go to the devices cgroup (v1
//! `devices.allow`, v2 an eBPF program: [`super::cgroups::device_bpf`]); the host nodes are
//! bound into the environment's `/dev` by [`super::rootfs`]. Every other device node, whether
//! an image brought it or a process with `CAP_MKNOD` made it, cannot be opened: the cgroup
//! answers EPERM, and the layers, volumes and bind mounts are mounted `nodev` besides.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{ContainerError, Result};

/// Character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    Char,
    Block,
}

impl DeviceType {
    fn letter(self) -> char {
        match self {
            DeviceType::Char => 'c',
            DeviceType::Block => 'b',
        }
    }
}

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl Access {
    pub const ALL: Access = Access {
        read: true,
        write: true,
        mknod: true,
    };
    pub const MKNOD: Access = Access {
        read: false,
        write: false,
        mknod: true,
    };

    fn letters(self) -> String {
        let mut s = String::new();
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.mknod, 'm')] {
            if on {
                s.push(c);
            }
        }
        s
    }
}

/// One allow rule; `None` numbers are wildcards (`*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceType,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

impl DeviceRule {
    const fn char(major: u32, minor: Option<u32>) -> DeviceRule {
        DeviceRule {
            kind: DeviceType::Char,
            major: Some(major),
            minor,
            access: Access::ALL,
        }
    }

    /// The line for cgroup v1's `devices.allow`: `c 1:3 rwm`, `b *:* m`.
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        format!(
            "{} {}:{} {}",
            self.kind.letter(),
            num(self.major),
            num(self.minor),
            self.access.letters()
        )
    }
}

/// Docker's default allowlist: creating any node (`mknod`; opening it is another matter),
/// null, zero, full, random, urandom, tty, console, ptmx and the pseudo-terminals. No tun
/// (berth plumbs networks from the host side) and no fuse unless asked for.
pub const DEFAULT_RULES: [DeviceRule; 11] = [
    DeviceRule {
        kind: DeviceType::Char,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        kind: DeviceType::Block,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule::char(1, Some(3)),
    DeviceRule::char(1, Some(5)),
    DeviceRule::char(1, Some(7)),
    DeviceRule::char(1, Some(8)),
    DeviceRule::char(1, Some(9)),
    DeviceRule::char(5, Some(0)),
    DeviceRule::char(5, Some(1)),
    DeviceRule::char(5, Some(2)),
    DeviceRule::char(136, None),
];

/// A host device node the environment may use, bound at the same path in its `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDevice {
    /// The node on the host, also its path inside (under `/dev`).
    pub path: PathBuf,
    pub kind: DeviceType,
    pub major: u32,
    pub minor: u32,
}

impl HostDevice {
    pub fn rule(&self) -> DeviceRule {
        DeviceRule {
            kind: self.kind,
            major: Some(self.major),
            minor: Some(self.minor),
            access: Access::ALL,
        }
    }

    /// The node's path below `/dev` (`dri/card0`).
    pub fn relative(&self) -> &Path {
        self.path.strip_prefix("/dev").unwrap_or(&self.path)
    }

    fn of(path: &Path) -> Result<Option<HostDevice>> {
        let meta = fs::metadata(path)
            .map_err(|e| ContainerError::path_io("cannot inspect device", path, e))?;
        let kind = if meta.file_type().is_char_device() {
            DeviceType::Char
        } else if meta.file_type().is_block_device() {
            DeviceType::Block
        } else {
            return Ok(None);
        };
        let rdev = meta.rdev();
        Ok(Some(HostDevice {
            path: path.to_path_buf(),
            kind,
            major: nix::sys::stat::major(rdev) as u32,
            minor: nix::sys::stat::minor(rdev) as u32,
        }))
    }
}

/// Every rule of an environment: the defaults, then its host devices.
pub fn rules(devices: &[HostDevice]) -> Vec<DeviceRule> {
    let mut out = DEFAULT_RULES.to_vec();
    out.extend(devices.iter().map(HostDevice::rule));
    out
}

/// The host device nodes `patterns` (berth.toml's `devices`, validated) name, looked up under
/// `dev_root` (the host's `/dev`; another folder in tests). A name without wildcards must be
/// a device node; a pattern must match at least one.
pub fn resolve(patterns: &[String], dev_root: &Path) -> Result<Vec<HostDevice>> {
    let mut out: Vec<HostDevice> = Vec::new();
    for pattern in patterns {
        let rel = pattern.strip_prefix("/dev/").unwrap_or(pattern);
        let found = if envfile_spec::devices::is_pattern(pattern) {
            let mut found = Vec::new();
            collect_matches(dev_root, rel, &mut found)?;
            if found.is_empty() {
                return Err(ContainerError::Invalid(format!(
                    "no device on this host matches {pattern:?} from `devices` in berth.toml; check `ls {}` or remove the entry",
                    Path::new(pattern).parent().unwrap_or(Path::new("/dev")).display()
                )));
            }
            found
        } else {
            let host = dev_root.join(rel);
            match fs::metadata(&host) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ContainerError::Invalid(format!(
                        "{pattern} from `devices` in berth.toml does not exist on this host; load its driver or remove the entry"
                    )))
                }
                _ => {}
            }
            match HostDevice::of(&host)? {
                Some(d) => vec![d],
                None => {
                    return Err(ContainerError::Invalid(format!(
                        "{pattern} from `devices` in berth.toml is not a device node; give a character or block device"
                    )))
                }
            }
        };
        for mut d in found {
            d.path = Path::new("/dev").join(d.path.strip_prefix(dev_root).unwrap_or(&d.path));
            if !out.iter().any(|o| o.path == d.path) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Device nodes under `dir` matching the remaining pattern components `rest`.
fn collect_matches(dir: &Path, rest: &str, out: &mut Vec<HostDevice>) -> Result<()> {
    let (head, tail) = match rest.split_once('/') {
        Some((h, t)) => (h, Some(t)),
        None => (rest, None),
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let pattern = format!("/{head}");
        if !envfile_spec::devices::matches(&pattern, &format!("/{name}")) {
            continue;
        }
        let path = dir.join(&name);
        match tail {
            Some(t) => {
                if path.is_dir() {
                    collect_matches(&path, t, out)?;
                }
            }
            None => {
                if let Some(d) = HostDevice::of(&path)? {
                    out.push(d);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_dockers() {
        let lines: Vec<String> = DEFAULT_RULES.iter().map(DeviceRule::v1_line).collect();
        assert_eq!(
            lines,
            [
                "c *:* m",
                "b *:* m",
                "c 1:3 rwm",
                "c 1:5 rwm",
                "c 1:7 rwm",
                "c 1:8 rwm",
                "c 1:9 rwm",
                "c 5:0 rwm",
                "c 5:1 rwm",
                "c 5:2 rwm",
                "c 136:* rwm"
            ]
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("c 10:")),
            "no kvm, fuse or tun"
        );
    }

    #[test]
    fn resolves_names_and_patterns_against_a_dev_folder() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making device nodes needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dev = t.path();
        fs::create_dir_all(dev.join("dri")).unwrap();
        let node = |p: &str, maj: u64, min: u64| {
            nix::sys::stat::mknod(
                &dev.join(p),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(maj, min),
            )
            .unwrap()
        };
        node("kvm", 10, 232);
        node("dri/card0", 226, 0);
        node("dri/renderD128", 226, 128);
        fs::write(dev.join("notadev"), b"").unwrap();
        let got = resolve(&["/dev/kvm".into(), "/dev/dri/*".into()], dev).unwrap();
        let paths: Vec<_> = got.iter().map(|d| d.path.display().to_string()).collect();
        assert_eq!(paths, ["/dev/kvm", "/dev/dri/card0", "/dev/dri/renderD128"]);
        assert_eq!(got[2].rule().v1_line(), "c 226:128 rwm");
        assert_eq!(got[1].relative(), Path::new("dri/card0"));
        let e = resolve(&["/dev/nope".into()], dev).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = resolve(&["/dev/notadev".into()], dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a device node"), "{e}");
        let e = resolve(&["/dev/snd/*".into()], dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no device on this host matches"), "{e}");
    }
}
