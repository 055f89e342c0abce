//! The package manager of an image (apt, apk, dnf, yum), found from the files in its
//! layers, and the command that installs `[image].packages` with it.

use std::path::PathBuf;

/// The package manager of an image, found from the files in its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Apt,
    Apk,
    Dnf,
    Yum,
}

impl PackageManager {
    /// Every package manager berth knows, in the order [`PackageManager::detect`] prefers.
    pub const ALL: [PackageManager; 4] = [
        PackageManager::Apt,
        PackageManager::Apk,
        PackageManager::Dnf,
        PackageManager::Yum,
    ];

    /// Looks for the package tools in the merged view of `layers` (top layer first; a
    /// whiteout hides what is below it).
    pub fn detect(layers: &[PathBuf]) -> Option<Self> {
        Self::ALL.into_iter().find(|m| visible(layers, m.tool()))
    }

    /// The tool whose presence shows the package manager (a path in the image).
    fn tool(self) -> &'static str {
        match self {
            PackageManager::Apt => "usr/bin/apt-get",
            PackageManager::Apk => "sbin/apk",
            PackageManager::Dnf => "usr/bin/dnf",
            PackageManager::Yum => "usr/bin/yum",
        }
    }

    /// The command that installs `packages`.
    pub fn install_command(self, packages: &[String]) -> Vec<String> {
        let list = packages.join(" ");
        let script = match self {
            PackageManager::Apt => format!(
                "export DEBIAN_FRONTEND=noninteractive; apt-get update && apt-get install -y --no-install-recommends {list} && rm -rf /var/lib/apt/lists/*"
            ),
            PackageManager::Apk => format!("apk add --no-cache {list}"),
            PackageManager::Dnf => format!("dnf install -y {list} && dnf clean all"),
            PackageManager::Yum => format!("yum install -y {list} && yum clean all"),
        };
        vec!["/bin/sh".into(), "-c".into(), script]
    }
}

fn visible(layers: &[PathBuf], rel: &str) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in layers.iter().rev() {
        if let Ok(m) = std::fs::symlink_metadata(layer.join(rel)) {
            return !(m.file_type().is_char_device() && m.rdev() == 0);
        }
    }
    false
}

/// A package name berth passes to a package manager: no shell metacharacters.
pub(super) fn valid_package(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('-')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+_:=~-/@".contains(&b))
}
