//! The VM's root disk: an ext4 image made from the image's layers (`mkfs.ext4 -d`), cached
//! per layer stack and never modified, plus a per-environment copy-on-write disk on top
//! (a qcow2 overlay for qemu, a reflink/sparse copy for berth's VMM) that keeps the
//! environment's changes across `down`/`up`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::state::{self, BerthHome, FileLock, LockMode};

const MIN_DISK: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{tool}` failed: {detail}; install it (Debian: apt-get install {package})")]
    Tool {
        tool: String,
        package: &'static str,
        detail: String,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a tool of Debian package `package`; its stdout, or its stderr as the error.
pub(super) fn run(cmd: &mut Command, package: &'static str) -> Result<Vec<u8>, DiskError> {
    let tool = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| DiskError::Tool {
        tool: tool.clone(),
        package,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool,
            package,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Copies `src` over `dst` (merging), applying OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`).
pub fn merge_layer(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    if !meta.is_dir() {
        return Ok(());
    }
    if !dst.exists() {
        fs::create_dir_all(dst).map_err(io_err(dst))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err(dst))?;
    }
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    if entries.iter().any(|e| e.file_name() == ".wh..wh..opq") {
        for e in fs::read_dir(dst).map_err(io_err(dst))? {
            let p = e.map_err(io_err(dst))?.path();
            remove_any(&p)?;
        }
    }
    for e in entries {
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        if name_s == ".wh..wh..opq" {
            continue;
        }
        if let Some(hidden) = name_s.strip_prefix(".wh.") {
            remove_any(&dst.join(hidden))?;
            continue;
        }
        let (s, d) = (e.path(), dst.join(&name));
        let m = fs::symlink_metadata(&s).map_err(io_err(&s))?;
        if m.is_dir() {
            if d.exists() && !fs::symlink_metadata(&d).map_err(io_err(&d))?.is_dir() {
                remove_any(&d)?;
            }
            merge_layer(&s, &d)?;
            continue;
        }
        remove_any(&d)?;
        if m.file_type().is_symlink() {
            let target = fs::read_link(&s).map_err(io_err(&s))?;
            std::os::unix::fs::symlink(target, &d).map_err(io_err(&d))?;
        } else if m.is_file() {
            fs::copy(&s, &d).map_err(io_err(&d))?;
        } else {
            // Device nodes, fifos, sockets: let cp reproduce them.
            run(Command::new("cp").arg("-a").arg(&s).arg(&d), "coreutils")?;
            continue;
        }
        let _ = std::os::unix::fs::lchown(&d, Some(m.uid()), Some(m.gid()));
        if !m.file_type().is_symlink() {
            fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))
                .map_err(io_err(&d))?;
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<(), DiskError> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => state::remove_tree(p).map_err(io_err(p)),
        Ok(_) => fs::remove_file(p).map_err(io_err(p)),
    }
}

fn tree_size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| tree_size(&e.path()))
            .sum::<u64>()
            + 4096
    } else {
        m.len().max(4096)
    }
}

/// Cache of base images under `<home>/disks/`.
pub struct RootDisks {
    home: BerthHome,
}

impl RootDisks {
    pub fn new(home: BerthHome) -> Self {
        RootDisks { home }
    }

    fn dir(&self) -> PathBuf {
        self.home.root().join("disks")
    }

    /// The read-only ext4 image of `layers` (bottom → top), built once.
    pub fn base_image(&self, layers: &[PathBuf], size: Option<u64>) -> Result<PathBuf, DiskError> {
        let mut h = Sha256::new();
        for l in layers {
            h.update(l.as_os_str().as_encoded_bytes());
            h.update([0]);
        }
        h.update(size.unwrap_or(0).to_le_bytes());
        let key = hex::encode(h.finalize())[..24].to_string();
        let out = self.dir().join(format!("{key}.ext4"));
        if out.exists() {
            return Ok(out);
        }
        state::create_dir_all(&self.dir())?;
        let _lock =
            FileLock::acquire(&self.dir().join(format!("{key}.lock")), LockMode::Exclusive)?;
        if out.exists() {
            return Ok(out);
        }
        let staging = self.home.staging_dir("rootfs")?;
        let tree = staging.path().join("tree");
        fs::create_dir_all(&tree).map_err(io_err(&tree))?;
        for l in layers {
            merge_layer(l, &tree)?;
        }
        let size = size.unwrap_or_else(|| (tree_size(&tree) * 2 + (256 << 20)).max(MIN_DISK));
        let img = staging.path().join("disk.ext4");
        run(
            Command::new("mkfs.ext4")
                .args([
                    "-q",
                    "-F",
                    "-L",
                    "berth-root",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1",
                    "-d",
                ])
                .arg(&tree)
                .arg(&img)
                .arg(format!("{}k", size / 1024)),
            "e2fsprogs",
        )?;
        fs::set_permissions(&img, fs::Permissions::from_mode(0o444)).map_err(io_err(&img))?;
        fs::rename(&img, &out).map_err(io_err(&out))?;
        Ok(out)
    }
}

/// Creates the environment's disk on top of `base` unless it exists (it keeps the
/// environment's changes across `down`/`up`).
pub fn qcow2_overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    if overlay.exists() {
        return Ok(());
    }
    let tmp = overlay.with_extension("qcow2.tmp");
    let _ = fs::remove_file(&tmp);
    run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&tmp),
        "qemu-utils",
    )?;
    fs::rename(&tmp, overlay).map_err(io_err(overlay))
}

/// A private writable copy of `base` (reflink where the filesystem can, sparse otherwise).
pub fn raw_copy(base: &Path, disk: &Path) -> Result<(), DiskError> {
    if disk.exists() {
        return Ok(());
    }
    let tmp = disk.with_extension("img.tmp");
    run(
        Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(base)
            .arg(&tmp),
        "coreutils",
    )?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, disk).map_err(io_err(disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (
            d.path().join("l1"),
            d.path().join("l2"),
            d.path().join("out"),
        );
        fs::create_dir_all(l1.join("etc/old")).unwrap();
        fs::write(l1.join("etc/keep"), "1").unwrap();
        fs::write(l1.join("etc/gone"), "1").unwrap();
        fs::write(l1.join("etc/old/a"), "1").unwrap();
        fs::create_dir_all(l2.join("etc/old")).unwrap();
        fs::write(l2.join("etc/.wh.gone"), "").unwrap();
        fs::write(l2.join("etc/old/.wh..wh..opq"), "").unwrap();
        fs::write(l2.join("etc/old/b"), "2").unwrap();
        fs::write(l2.join("etc/keep"), "2").unwrap();
        std::os::unix::fs::symlink("keep", l2.join("etc/link")).unwrap();
        merge_layer(&l1, &out).unwrap();
        merge_layer(&l2, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("etc/keep")).unwrap(), "2");
        assert!(!out.join("etc/gone").exists());
        assert!(!out.join("etc/old/a").exists());
        assert!(out.join("etc/old/b").exists());
        assert_eq!(
            fs::read_link(out.join("etc/link")).unwrap(),
            PathBuf::from("keep")
        );
        assert!(!out.join("etc/.wh.gone").exists());
    }

    #[test]
    fn base_image_is_built_once_and_overlays_persist() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipping: mkfs.ext4 (e2fsprogs) is not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path().join("home")).unwrap();
        let layer = d.path().join("layer");
        fs::create_dir_all(layer.join("bin")).unwrap();
        fs::write(layer.join("bin/hello"), "hi").unwrap();
        let disks = RootDisks::new(home);
        let img = disks
            .base_image(std::slice::from_ref(&layer), Some(64 << 20))
            .unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
        let mtime = fs::metadata(&img).unwrap().modified().unwrap();
        assert_eq!(disks.base_image(&[layer], Some(64 << 20)).unwrap(), img);
        assert_eq!(fs::metadata(&img).unwrap().modified().unwrap(), mtime);
        let listing = Command::new("debugfs")
            .args(["-R", "ls -l /bin"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&listing.stdout).contains("hello"));

        let raw = d.path().join("env.img");
        raw_copy(&img, &raw).unwrap();
        assert_eq!(fs::metadata(&raw).unwrap().len(), 64 << 20);
        if Command::new("qemu-img").arg("--version").output().is_ok() {
            let q = d.path().join("env.qcow2");
            qcow2_overlay(&img, &q).unwrap();
            let info = Command::new("qemu-img")
                .arg("info")
                .arg(&q)
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&info.stdout).contains("backing file"));
        }
    }
}
