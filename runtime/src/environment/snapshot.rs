//! Snapshots of an environment's writable layer (`berth snapshot save|ls|restore|rm`).
//!
//! A container's snapshot is the overlay upper directory written as an OCI layer tar
//! (`envs/<id>/snapshots/<name>.tar`, whiteouts in OCI form) plus a small JSON record. It
//! shares the image's layers and costs only the environment's own changes. A running
//! environment is frozen (cgroup freezer) while its layer is read, so the copy is consistent.
//! Restoring unpacks the tar into a fresh upper directory and swaps it in while the
//! environment is stopped; a running environment is stopped first and started again.
//!
//! A VM's snapshot is its disk: `snapshots/<name>.<n>.vm/` holds a copy of the qcow2 overlay
//! and a hard link to its base image ([`crate::vm::disk_snapshot`]), so it stays valid when
//! the base cache is cleared or the image changes; a running VM is synced and paused while
//! its disk is copied ([`crate::vm::VmBackend::snapshot_disk`]). Restoring stops the VM,
//! puts the disk back and boots it again if it was running.
//!
//! Either kind is made in a hidden `.partial` file or folder and renamed into place; the
//! JSON record is written (atomically) last, so a kill leaves no half snapshot: only
//! leftovers without a record, removed by the next `save` or `rm`.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::lifecycle::{Environments, UpOptions};
use super::record::EnvRecord;
use crate::backend::EnvStatus;
use crate::container::ContainerBackend;
use crate::host::clock::now_secs;
use crate::image::layer_writer::{write_tree, WhiteoutMode};
use crate::image::unpack::{unpack, UnpackOptions};
use crate::image::{Progress, QuietProgress};
use crate::state::{self, read_json, write_json, StateError};

/// What `berth snapshot ls` shows about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Bytes of the snapshot's layer tar.
    pub size: u64,
    /// Image id the writable layer was made on: a container snapshot only fits that image.
    pub image_id: Option<String>,
    /// For a VM: the folder under `snapshots/` that holds its disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

fn snapshots_dir(env_dir: &Path) -> PathBuf {
    env_dir.join("snapshots")
}

fn is_vm(record: &EnvRecord) -> bool {
    record.plan.backend == envfile_spec::plan::BackendKind::Vm
}

/// Removes what a killed `save` left: hidden `.partial` files and folders, and VM disk
/// folders no record names. Called with the environment's lock held.
fn sweep(snaps: &Path) -> Result<(), EnvError> {
    let mut named = Vec::new();
    let mut entries = Vec::new();
    for e in fs::read_dir(snaps).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(info) = read_json::<SnapshotInfo>(&p)? {
                named.extend(info.disk);
            }
        }
        entries.push(p);
    }
    for p in entries {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let orphan_disk = n.ends_with(".vm") && !named.contains(&n);
        if n.ends_with(".partial") || orphan_disk {
            let gone = if p.is_dir() {
                state::remove_tree(&p)
            } else {
                fs::remove_file(&p)
            };
            gone.map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn check_snapshot_name(name: &str) -> Result<(), EnvError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(EnvError::BadSnapshotName {
            name: name.to_string(),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnvError + '_ {
    move |source| {
        EnvError::State(StateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Environments {
    /// Captures the environment's writable layer under `name` (replacing an older snapshot of
    /// that name only when the new one is complete).
    pub fn snapshot_save(&self, record: &EnvRecord, name: &str) -> Result<SnapshotInfo, EnvError> {
        check_snapshot_name(name)?;
        if is_vm(record) {
            return self.vm_snapshot_save(record, name);
        }
        let quiet: Progress = Arc::new(QuietProgress);
        let locked = self.lock(&record.env_id, &quiet)?;
        let dir = &locked.dir;
        let upper = dir.join("upper");
        let snaps = snapshots_dir(dir);
        state::create_dir_all(&snaps)?;
        let tar_path = snaps.join(format!("{name}.tar"));
        let tmp = snaps.join(format!(".{name}.tar.partial"));
        let backend = ContainerBackend;
        backend.set_frozen(dir, true)?;
        let written = (|| -> std::io::Result<()> {
            let out = BufWriter::new(File::create(&tmp)?);
            if upper.is_dir() {
                let out = write_tree(&upper, out, WhiteoutMode::FromOverlay)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()
            } else {
                // A never-started environment has no changes: an empty layer.
                let b = tar::Builder::new(out);
                b.into_inner()?
                    .into_inner()
                    .map_err(|e| e.into_error())?
                    .sync_all()
            }
        })();
        let thawed = backend.set_frozen(dir, false);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tar_path)(e));
        }
        thawed?;
        fs::rename(&tmp, &tar_path).map_err(io_err(&tar_path))?;
        let info = SnapshotInfo {
            name: name.to_string(),
            created_at: now_secs(),
            size: fs::metadata(&tar_path).map(|m| m.len()).unwrap_or(0),
            image_id: record.image.as_ref().map(|i| i.id.clone()),
            disk: None,
        };
        let meta = snaps.join(format!("{name}.json"));
        let old = read_json::<SnapshotInfo>(&meta)?;
        write_json(&meta, &info)?;
        // A VM snapshot of that name (the backend changed) is replaced: its disk goes.
        if let Some(d) = old.and_then(|o| o.disk) {
            let _ = state::remove_tree(&snaps.join(d));
        }
        Ok(info)
    }

    /// A VM's snapshot: its disk, copied into a new folder named in the record.
    fn vm_snapshot_save(&self, record: &EnvRecord, name: &str) -> Result<SnapshotInfo, EnvError> {
        let quiet: Progress = Arc::new(QuietProgress);
        let locked = self.lock(&record.env_id, &quiet)?;
        let dir = &locked.dir;
        let snaps = snapshots_dir(dir);
        state::create_dir_all(&snaps)?;
        sweep(&snaps)?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let staging = snaps.join(format!(".{name}.{nonce}.partial"));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        if let Err(e) = self.vms.snapshot_disk(dir, &staging) {
            let _ = state::remove_tree(&staging);
            return Err(e.into());
        }
        let folder = format!("{name}.{nonce}.vm");
        let disk_dir = snaps.join(&folder);
        fs::rename(&staging, &disk_dir).map_err(io_err(&disk_dir))?;
        // The overlay's allocated bytes: the base is shared with the cache (a hard link).
        let size = [
            crate::vm::disk_snapshot::QCOW2,
            crate::vm::disk_snapshot::RAW,
        ]
        .iter()
        .filter_map(|f| fs::metadata(disk_dir.join(f)).ok())
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .sum();
        let info = SnapshotInfo {
            name: name.to_string(),
            created_at: now_secs(),
            size,
            image_id: record.image.as_ref().map(|i| i.id.clone()),
            disk: Some(folder.clone()),
        };
        let meta = snaps.join(format!("{name}.json"));
        let old = read_json::<SnapshotInfo>(&meta)?;
        write_json(&meta, &info)?;
        if let Some(d) = old.as_ref().and_then(|o| o.disk.as_ref()) {
            if *d != folder {
                let _ = state::remove_tree(&snaps.join(d));
            }
        }
        // A container snapshot of that name (the backend changed) is replaced.
        let _ = fs::remove_file(snaps.join(format!("{name}.tar")));
        Ok(info)
    }

    /// Puts a VM snapshot's disk back (the VM stopped meanwhile). Returns whether it ran.
    fn vm_snapshot_restore(
        &self,
        record: &EnvRecord,
        info: &SnapshotInfo,
        dir: &Path,
        progress: &Progress,
    ) -> Result<bool, EnvError> {
        let Some(folder) = &info.disk else {
            return Err(EnvError::SnapshotBackendMismatch {
                name: info.name.clone(),
                env: record.name.clone(),
                holds: "a container's writable layer",
                needs: "a VM disk",
            });
        };
        let was_running = self.vms.is_running(dir);
        if was_running {
            progress.message(&format!(
                "stopping the VM of {} to put the disk of snapshot {} back; it boots again afterwards",
                record.name, info.name
            ));
        }
        super::live_sync::stop(dir);
        self.vms.stop(dir, Duration::from_secs(10))?;
        crate::vm::disk_snapshot::put_back(&snapshots_dir(dir).join(folder), dir)
            .map_err(crate::vm::VmError::from)?;
        Ok(was_running)
    }

    /// Snapshots of an environment, oldest first.
    pub fn snapshot_list(&self, record: &EnvRecord) -> Result<Vec<SnapshotInfo>, EnvError> {
        let snaps = snapshots_dir(&self.home().env_dir(&record.env_id));
        let mut out = Vec::new();
        for e in fs::read_dir(&snaps).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Some(info) = read_json::<SnapshotInfo>(&p)? {
                    out.push(info);
                }
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Puts a snapshot back as the writable layer. Returns whether the environment was
    /// running (it is started again then).
    pub fn snapshot_restore(
        &self,
        record: &EnvRecord,
        name: &str,
        progress: Progress,
    ) -> Result<bool, EnvError> {
        check_snapshot_name(name)?;
        let was_running;
        {
            let locked = self.lock(&record.env_id, &progress)?;
            let dir = &locked.dir;
            let snaps = snapshots_dir(dir);
            let info: SnapshotInfo =
                read_json(&snaps.join(format!("{name}.json")))?.ok_or_else(|| {
                    EnvError::SnapshotNotFound {
                        name: name.to_string(),
                        env: record.name.clone(),
                    }
                })?;
            if is_vm(record) {
                was_running = self.vm_snapshot_restore(record, &info, dir, &progress)?;
            } else {
                if info.disk.is_some() {
                    return Err(EnvError::SnapshotBackendMismatch {
                        name: name.to_string(),
                        env: record.name.clone(),
                        holds: "a VM disk",
                        needs: "a container's writable layer",
                    });
                }
                let current = record.image.as_ref().map(|i| i.id.clone());
                if info.image_id.is_some() && info.image_id != current {
                    return Err(EnvError::SnapshotImageMismatch {
                        name: name.to_string(),
                        snapshot_image: info.image_id.unwrap_or_default(),
                        current_image: current.unwrap_or_default(),
                    });
                }
                let backend = ContainerBackend;
                was_running = backend.status(dir)?.status != EnvStatus::Stopped;
                super::live_sync::stop(dir);
                backend.stop(dir, Duration::from_secs(10))?;
                let staging = dir.join("upper.restore");
                let _ = state::remove_tree(&staging);
                state::create_dir_all(&staging)?;
                let tar_path = snaps.join(format!("{name}.tar"));
                let file = File::open(&tar_path).map_err(io_err(&tar_path))?;
                if let Err(e) = unpack(
                    BufReader::new(file),
                    &staging,
                    &format!("snapshot {name}"),
                    UnpackOptions::for_current_user(),
                ) {
                    let _ = state::remove_tree(&staging);
                    return Err(e.into());
                }
                let upper = dir.join("upper");
                let old = dir.join("upper.replaced");
                let _ = state::remove_tree(&old);
                if upper.exists() {
                    fs::rename(&upper, &old).map_err(io_err(&upper))?;
                }
                fs::rename(&staging, &upper).map_err(io_err(&upper))?;
                let _ = state::remove_tree(&old);
                let _ = state::remove_tree(&dir.join("work"));
            }
        }
        if was_running {
            let opts = UpOptions {
                progress,
                privileged: record.privileged,
                env_id: Some(record.env_id.clone()),
                ephemeral: record.ephemeral,
                ..UpOptions::default()
            };
            self.up(&record.plan, &opts)?;
        }
        Ok(was_running)
    }

    /// Removes a snapshot.
    pub fn snapshot_remove(&self, record: &EnvRecord, name: &str) -> Result<(), EnvError> {
        check_snapshot_name(name)?;
        let quiet: Progress = Arc::new(QuietProgress);
        let locked = self.lock(&record.env_id, &quiet)?;
        let snaps = snapshots_dir(&locked.dir);
        let meta = snaps.join(format!("{name}.json"));
        if !meta.exists() {
            return Err(EnvError::SnapshotNotFound {
                name: name.to_string(),
                env: record.name.clone(),
            });
        }
        let info = read_json::<SnapshotInfo>(&meta)?;
        fs::remove_file(snaps.join(format!("{name}.tar")))
            .or_else(ignore_missing)
            .map_err(io_err(&meta))?;
        fs::remove_file(&meta).map_err(io_err(&meta))?;
        if let Some(d) = info.and_then(|i| i.disk) {
            let p = snaps.join(d);
            state::remove_tree(&p).map_err(io_err(&p))?;
        }
        sweep(&snaps)?;
        Ok(())
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_what_a_killed_save_left_and_keeps_recorded_snapshots() {
        let d = tempfile::tempdir().unwrap();
        let snaps = d.path();
        let info = |name: &str, disk: Option<&str>| SnapshotInfo {
            name: name.into(),
            created_at: 1,
            size: 0,
            image_id: None,
            disk: disk.map(String::from),
        };
        write_json(&snaps.join("a.json"), &info("a", Some("a.1.vm"))).unwrap();
        write_json(&snaps.join("c.json"), &info("c", None)).unwrap();
        for dir in ["a.1.vm", "a.0.vm", "b.2.vm", ".b.3.partial"] {
            fs::create_dir(snaps.join(dir)).unwrap();
            fs::write(snaps.join(dir).join("disk.qcow2"), "x").unwrap();
        }
        fs::write(snaps.join("c.tar"), "t").unwrap();
        fs::write(snaps.join(".d.tar.partial"), "t").unwrap();
        sweep(snaps).unwrap();
        let mut left: Vec<String> = fs::read_dir(snaps)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["a.1.vm", "a.json", "c.json", "c.tar"]);
    }

    #[test]
    fn snapshot_names_are_plain_file_names() {
        for ok in ["before-upgrade", "v1.2", "a_b"] {
            assert!(check_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(200)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}
