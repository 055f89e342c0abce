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
//! Each backend makes its kind ([`Backend::snapshot_save`](crate::backend::Backend::snapshot_save),
//! `container::layer_snapshot`, [`crate::vm::VmBackend::snapshot_disk`]); this module keeps
//! the records, names and checks. Either kind is made in a hidden `.partial` file or folder and renamed into place; the
//! JSON record is written (atomically) last, so a kill leaves no half snapshot: only
//! leftovers without a record, removed by the next `save` or `rm`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use super::up::UpOptions;
use crate::backend::SnapshotForm;
use crate::host::clock::now_secs;
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
    /// Captures the environment's writable layer (or disk) under `name` (replacing an older
    /// snapshot of that name only when the new one is complete).
    pub fn snapshot_save(&self, record: &EnvRecord, name: &str) -> Result<SnapshotInfo, EnvError> {
        check_snapshot_name(name)?;
        let quiet: Progress = Arc::new(QuietProgress);
        let locked = self.lock(&record.env_id, &quiet)?;
        let dir = &locked.dir;
        let snaps = snapshots_dir(dir);
        state::create_dir_all(&snaps)?;
        sweep(&snaps)?;
        let saved = self
            .backend(record.plan.backend)
            .snapshot_save(dir, &snaps, name)?;
        let info = SnapshotInfo {
            name: name.to_string(),
            created_at: now_secs(),
            size: saved.size,
            image_id: record.image.as_ref().map(|i| i.id.clone()),
            disk: saved.disk.clone(),
        };
        let meta = snaps.join(format!("{name}.json"));
        let old = read_json::<SnapshotInfo>(&meta)?;
        write_json(&meta, &info)?;
        // What the snapshot of that name held before (a disk of an older save, or of another
        // backend) goes.
        if let Some(d) = old.and_then(|o| o.disk) {
            if Some(&d) != saved.disk.as_ref() {
                let _ = state::remove_tree(&snaps.join(d));
            }
        }
        if saved.disk.is_some() {
            let _ = fs::remove_file(snaps.join(format!("{name}.tar")));
        }
        Ok(info)
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
            let backend = self.backend(record.plan.backend);
            let form = backend.snapshot_form();
            let holds = match info.disk {
                Some(_) => SnapshotForm::Disk,
                None => SnapshotForm::Layer,
            };
            if holds != form {
                return Err(EnvError::SnapshotBackendMismatch {
                    name: name.to_string(),
                    env: record.name.clone(),
                    holds: holds.describe(),
                    needs: form.describe(),
                });
            }
            // A layer only fits the image it was taken on (a disk carries its base along).
            let current = record.image.as_ref().map(|i| i.id.clone());
            if form == SnapshotForm::Layer && info.image_id.is_some() && info.image_id != current {
                return Err(EnvError::SnapshotImageMismatch {
                    name: name.to_string(),
                    snapshot_image: info.image_id.unwrap_or_default(),
                    current_image: current.unwrap_or_default(),
                });
            }
            super::live_sync::stop(dir);
            was_running = backend.snapshot_restore(
                dir,
                &snaps,
                name,
                info.disk.as_deref(),
                &record.name,
                &progress,
            )?;
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
