//! Snapshots of a VM environment's disk, self-contained so they outlive the base image cache:
//!
//! ```text
//! <snapshot>/disk.qcow2   a copy of the environment's qcow2 overlay, its backing file
//!                         rewritten (`qemu-img rebase -u`) to the relative `base.ext4`
//! <snapshot>/base.ext4    the overlay's base image: a hard link to the cached one (same
//!                         inode, no extra space; a copy across filesystems), so removing
//!                         or rebuilding `disks/<key>.ext4` does not break the snapshot
//! <snapshot>/disk.img     instead of both, for a raw disk (berth's own VMM)
//! ```
//!
//! Putting one back copies the overlay into the environment as `disk.qcow2`, pinned to a
//! hard link of the snapshot's base (`disk-base.<n>.ext4` beside it), so removing the
//! snapshot later does not break the environment either. The caller makes sure the disk does
//! not change while it is copied (VM stopped, or paused by qemu).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::rootdisk::{io_err, run, DiskError};

pub const QCOW2: &str = "disk.qcow2";
pub const RAW: &str = "disk.img";
pub const BASE: &str = "base.ext4";
/// Earlier disks the environment keeps (`up` sets one aside when the image changes).
const PREVIOUS_QCOW2: &str = "disk.qcow2.previous";

/// A sparse (reflinked where the filesystem can) copy of `src`.
fn copy_file(src: &Path, dst: &Path) -> Result<(), DiskError> {
    let _ = fs::remove_file(dst);
    run(
        Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(src)
            .arg(dst),
        "coreutils",
    )?;
    Ok(())
}

/// `dst` becomes the same file as `base`: a hard link, else a copy.
fn pin(base: &Path, dst: &Path) -> Result<(), DiskError> {
    let _ = fs::remove_file(dst);
    match fs::hard_link(base, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_file(base, dst),
        Err(e) => Err(io_err(dst)(e)),
    }
}

/// The backing file of a qcow2 image (resolved against the image's folder), if it has one.
pub fn backing_file(qcow2: &Path) -> Result<Option<PathBuf>, DiskError> {
    let out = run(
        Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(qcow2),
        "qemu-utils",
    )?;
    let v: serde_json::Value =
        serde_json::from_slice(&out).map_err(|e| io_err(qcow2)(std::io::Error::other(e)))?;
    let Some(name) = v.get("backing-filename").and_then(|b| b.as_str()) else {
        return Ok(None);
    };
    if let Some(fmt) = v.get("backing-filename-format").and_then(|f| f.as_str()) {
        if fmt != "raw" {
            return Err(DiskError::Tool {
                tool: format!("qemu-img info {}", qcow2.display()),
                package: "qemu-utils",
                detail: format!(
                    "its backing file {name} is {fmt}, not berth's raw base image; berth cannot snapshot this disk"
                ),
            });
        }
    }
    let p = Path::new(name);
    Ok(Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        qcow2.parent().unwrap_or(Path::new(".")).join(p)
    }))
}

/// Points `qcow2` at `backing` (a name relative to its folder) without touching its data.
fn rebase(qcow2: &Path, backing: &str) -> Result<(), DiskError> {
    run(
        Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "raw", "-b", backing])
            .arg(qcow2),
        "qemu-utils",
    )?;
    Ok(())
}

/// Fills the (new, empty) folder `dir` with a self-contained copy of `disk`.
pub fn capture(disk: &Path, dir: &Path) -> Result<(), DiskError> {
    if disk.extension().is_some_and(|e| e == "qcow2") {
        let copy = dir.join(QCOW2);
        // Read from the original: a relative backing name is relative to its folder.
        let backing = backing_file(disk)?;
        copy_file(disk, &copy)?;
        if let Some(base) = backing {
            if !base.exists() {
                return Err(DiskError::Io {
                    path: base,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the disk's base image is gone",
                    ),
                });
            }
            pin(&base, &dir.join(BASE))?;
            rebase(&copy, BASE)?;
        }
    } else {
        copy_file(disk, &dir.join(RAW))?;
    }
    sync_dir(dir)
}

/// Makes the snapshot folder `snap` the disk of the environment in `env_dir` (VM stopped).
pub fn put_back(snap: &Path, env_dir: &Path) -> Result<(), DiskError> {
    let qcow2 = snap.join(QCOW2);
    let (name, other) = if qcow2.exists() {
        (QCOW2, RAW)
    } else {
        (RAW, QCOW2)
    };
    let staging = env_dir.join(format!("{name}.restore"));
    copy_file(&snap.join(name), &staging)?;
    if name == QCOW2 && snap.join(BASE).exists() {
        let pinned = free_base_name(env_dir);
        pin(&snap.join(BASE), &env_dir.join(&pinned))?;
        rebase(&staging, &pinned)?;
    }
    let target = env_dir.join(name);
    fs::rename(&staging, &target).map_err(io_err(&target))?;
    let stale = env_dir.join(other);
    match fs::remove_file(&stale) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&stale)(e)),
        _ => {}
    }
    sweep_bases(env_dir)?;
    sync_dir(env_dir)
}

fn free_base_name(env_dir: &Path) -> String {
    (0u32..)
        .map(|i| format!("disk-base.{i}.ext4"))
        .find(|n| !env_dir.join(n).exists())
        .unwrap_or_else(|| "disk-base.ext4".into())
}

/// Removes the pinned bases (`disk-base.*.ext4`) no disk of the environment uses any more.
pub fn sweep_bases(env_dir: &Path) -> Result<(), DiskError> {
    let mut used = Vec::new();
    for d in [QCOW2, PREVIOUS_QCOW2] {
        let p = env_dir.join(d);
        if p.exists() {
            if let Some(b) = backing_file(&p)? {
                used.push(b);
            }
        }
    }
    let entries = match fs::read_dir(env_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(env_dir)(e)),
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("disk-base.") && n.ends_with(".ext4") && !used.contains(&e.path()) {
            fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            fs::File::open(e.path())
                .and_then(|f| f.sync_all())
                .map_err(io_err(&e.path()))?;
        }
    }
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn qemu_io(img: &Path, cmd: &str) -> String {
        let o = Command::new("qemu-io")
            .args(["-c", cmd])
            .arg(img)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn snapshots_outlive_their_base_and_restored_disks_outlive_the_snapshot() {
        if Command::new("qemu-img").arg("--version").output().is_err()
            || Command::new("qemu-io").arg("--version").output().is_err()
        {
            eprintln!("skipping: qemu-img/qemu-io (qemu-utils) are not installed");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let disks = d.path().join("disks");
        let env = d.path().join("env");
        let snap = d.path().join("snap");
        for p in [&disks, &env, &snap] {
            fs::create_dir(p).unwrap();
        }
        let base = disks.join("k.ext4");
        fs::write(&base, vec![0xbb; 1 << 20]).unwrap();
        let disk = env.join(QCOW2);
        super::super::rootdisk::qcow2_overlay(&base, &disk).unwrap();
        qemu_io(&disk, "write -P 0x11 0 4k");
        capture(&disk, &snap).unwrap();
        assert_eq!(
            fs::metadata(snap.join(BASE)).unwrap().ino(),
            fs::metadata(&base).unwrap().ino(),
            "the base is pinned by a hard link"
        );
        assert_eq!(
            backing_file(&snap.join(QCOW2)).unwrap(),
            Some(snap.join(BASE))
        );
        // The environment moves on; the cached base goes away.
        qemu_io(&disk, "write -P 0x22 0 4k");
        fs::remove_file(&base).unwrap();
        put_back(&snap, &env).unwrap();
        let pinned = backing_file(&disk).unwrap().unwrap();
        assert_eq!(pinned, env.join("disk-base.0.ext4"));
        // The snapshot's data over the snapshot's base, even with the snapshot gone.
        fs::remove_dir_all(&snap).unwrap();
        assert!(qemu_io(&disk, "read -P 0x11 0 4k").contains("read 4096/4096"));
        assert!(qemu_io(&disk, "read -P 0xbb 4k 4k").contains("read 4096/4096"));
        // A second restore leaves only the base in use.
        fs::create_dir(&snap).unwrap();
        capture(&disk, &snap).unwrap();
        put_back(&snap, &env).unwrap();
        let bases: Vec<_> = fs::read_dir(&env)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("disk-base."))
            .collect();
        assert_eq!(bases, vec!["disk-base.1.ext4".to_string()]);
        assert!(qemu_io(&disk, "read -P 0x11 0 4k").contains("read 4096/4096"));
    }

    #[test]
    fn raw_disks_are_copied_whole() {
        let d = tempfile::tempdir().unwrap();
        let env = d.path().join("env");
        let snap = d.path().join("snap");
        fs::create_dir(&env).unwrap();
        fs::create_dir(&snap).unwrap();
        fs::write(env.join(RAW), b"before").unwrap();
        capture(&env.join(RAW), &snap).unwrap();
        fs::write(env.join(RAW), b"after").unwrap();
        put_back(&snap, &env).unwrap();
        assert_eq!(fs::read(env.join(RAW)).unwrap(), b"before");
    }
}
