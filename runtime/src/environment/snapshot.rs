//! Snapshots of an environment's writable layer (`berth snapshot save|ls|restore|rm`).
//!
//! A snapshot is the overlay upper directory written as an OCI layer tar
//! (`envs/<id>/snapshots/<name>.tar`, whiteouts in OCI form) plus a small JSON record. It
//! shares the image's layers and costs only the environment's own changes. A running
//! environment is frozen (cgroup freezer) while its layer is read, so the copy is consistent.
//! Restoring unpacks the tar into a fresh upper directory and swaps it in while the
//! environment is stopped; a running environment is stopped first and started again.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EnvError;
use super::lifecycle::{now_secs, Environments, UpOptions};
use super::record::EnvRecord;
use crate::backend::EnvStatus;
use crate::container::ContainerBackend;
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
    /// Image id the writable layer was made on: a snapshot only fits that image.
    pub image_id: Option<String>,
}

fn snapshots_dir(env_dir: &Path) -> PathBuf {
    env_dir.join("snapshots")
}

/// Snapshots capture a container's writable layer; a VM's disk is not covered yet.
fn refuse_vm(record: &EnvRecord) -> Result<(), EnvError> {
    if record.plan.backend == envfile_spec::plan::BackendKind::Vm {
        return Err(EnvError::SnapshotUnsupportedForVm {
            name: record.name.clone(),
        });
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
        refuse_vm(record)?;
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
        };
        write_json(&snaps.join(format!("{name}.json")), &info)?;
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
        refuse_vm(record)?;
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
        fs::remove_file(snaps.join(format!("{name}.tar")))
            .or_else(ignore_missing)
            .map_err(io_err(&meta))?;
        fs::remove_file(&meta).map_err(io_err(&meta))?;
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
    fn snapshot_names_are_plain_file_names() {
        for ok in ["before-upgrade", "v1.2", "a_b"] {
            assert!(check_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(200)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad}");
        }
    }
}
