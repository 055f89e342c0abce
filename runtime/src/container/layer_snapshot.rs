//! A container's snapshot: its overlay upper directory written as an OCI layer tar
//! (`snapshots/<name>.tar`, whiteouts in OCI form). It shares the image's layers and costs
//! only the environment's own changes. A running environment is frozen (cgroup freezer)
//! while its layer is read, so the copy is consistent. Restoring unpacks the tar into a fresh
//! upper directory and swaps it in while the environment is stopped.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Duration;

use super::container_backend::ContainerBackend;
use crate::backend::{BackendError, EnvStatus, SavedSnapshot};
use crate::image::layer_writer::{write_tree, WhiteoutMode};
use crate::image::unpack::{unpack, UnpackOptions};
use crate::state;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| {
        BackendError::from(state::StateError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Writes the writable layer of the environment in `dir` to `snaps/<name>.tar` (through
/// `.<name>.tar.partial`), the environment frozen meanwhile.
pub fn save(
    backend: &ContainerBackend,
    dir: &Path,
    snaps: &Path,
    name: &str,
) -> Result<SavedSnapshot, BackendError> {
    let upper = dir.join("upper");
    let tar_path = snaps.join(format!("{name}.tar"));
    let tmp = snaps.join(format!(".{name}.tar.partial"));
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
    Ok(SavedSnapshot {
        size: fs::metadata(&tar_path).map(|m| m.len()).unwrap_or(0),
        disk: None,
    })
}

/// Stops the environment in `dir` and makes `snaps/<name>.tar` its writable layer. Returns
/// whether it was running.
pub fn restore(
    backend: &ContainerBackend,
    dir: &Path,
    snaps: &Path,
    name: &str,
) -> Result<bool, BackendError> {
    let was_running = backend.status(dir)?.status != EnvStatus::Stopped;
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
        return Err(BackendError::new(e));
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
    Ok(was_running)
}
