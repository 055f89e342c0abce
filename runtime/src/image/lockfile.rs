//! `berth.lock`, beside berth.toml: the image a project resolved to, so everyone who clones
//! the project gets the same bytes. Written on the first resolve, honoured afterwards (a
//! registry image is pulled by the locked manifest digest, whatever its tag points to now),
//! refreshed by `--update`. The format is described in `envfile-spec/SPEC.md` (section `berth.lock`).

use std::path::{Path, PathBuf};

use envfile_spec::plan::ImageSource;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;
use super::image_store::ImageRecord;
use super::store::{ImageStore, ResolveOptions, ResolvedImage};

pub const LOCK_FILE_NAME: &str = "berth.lock";
pub const LOCK_VERSION: u32 = 1;

const HEADER: &str = "# berth.lock: the exact image this project uses. Written by berth; commit it.\n# `berth up --update` refreshes it.\n\n";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub image: LockedImage,
}

/// The resolved image of `[image].from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedImage {
    /// `[image].from` as locked (`docker.io/library/debian:bookworm`, `rootfs:./root`, …).
    pub source: String,
    /// Digest of the image manifest (for an index, of the chosen platform's manifest).
    pub manifest: Digest,
    /// Digest of the image config: the image id.
    pub config: Digest,
    pub platform: String,
    /// Layer blob digests, bottom to top.
    pub layers: Vec<Digest>,
    /// Uncompressed layer digests, bottom to top.
    pub diff_ids: Vec<Digest>,
}

/// What [`ImageStore::resolve_locked`] did with the lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock file pinned the image and was left as it was.
    Honoured,
    /// The lock file was written (first resolve, changed `from`, or `--update`).
    Written,
}

/// The lock file of a project whose berth.toml is `envfile`.
pub fn lock_path_for(envfile: &Path) -> PathBuf {
    envfile
        .parent()
        .unwrap_or(Path::new("."))
        .join(LOCK_FILE_NAME)
}

/// How a source is named in the lock: local paths relative to the project, so the lock is
/// the same in every clone.
pub fn source_key(source: &ImageSource, project_dir: &Path) -> String {
    let rel = |p: &Path| match p.strip_prefix(project_dir) {
        Ok(r) => format!("./{}", r.display()),
        Err(_) => p.display().to_string(),
    };
    match source {
        ImageSource::Oci { reference } => reference.to_string(),
        ImageSource::Rootfs { path } => format!("rootfs:{}", rel(path)),
        ImageSource::Tar { path } => format!("tar:{}", rel(path)),
        ImageSource::Debootstrap { suite, mirror } => match mirror {
            Some(m) => format!("debootstrap:{suite} {m}"),
            None => format!("debootstrap:{suite}"),
        },
    }
}

impl LockFile {
    pub fn for_record(source: String, record: &ImageRecord) -> LockFile {
        LockFile {
            version: LOCK_VERSION,
            image: LockedImage {
                source,
                manifest: record.manifest_digest.clone(),
                config: record.config_digest.clone(),
                platform: record.platform.clone(),
                layers: record.layers.iter().map(|l| l.digest.clone()).collect(),
                diff_ids: record.diff_ids(),
            },
        }
    }

    pub fn read(path: &Path) -> Result<Option<LockFile>, ImageError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(path)(e)),
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| {
            ImageError::malformed(
                path.display().to_string(),
                format!("{e}; delete it or run `berth up --update` to write it again"),
            )
        })?;
        if lock.version != LOCK_VERSION {
            return Err(ImageError::malformed(
                path.display().to_string(),
                format!(
                    "lock file version {} is not supported by this berth (it writes version {LOCK_VERSION}); update berth or run `berth up --update`",
                    lock.version
                ),
            ));
        }
        Ok(Some(lock))
    }

    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        let body = toml::to_string(self).map_err(|e| ImageError::malformed("berth.lock", e))?;
        crate::state::atomic_write(path, format!("{HEADER}{body}").as_bytes())?;
        Ok(())
    }
}

impl ImageStore {
    /// Resolves `source` honouring the lock file at `lock_path`: when it locks the same
    /// source (and `opts.update` is not set) a registry image is fetched by the locked
    /// manifest digest and every image must unpack to the locked layers; otherwise the
    /// source is resolved afresh and the lock file (re)written.
    pub fn resolve_locked(
        &self,
        source: &ImageSource,
        lock_path: &Path,
        opts: &ResolveOptions,
    ) -> Result<(ResolvedImage, LockOutcome), ImageError> {
        let project_dir = lock_path.parent().unwrap_or(Path::new("."));
        let key = source_key(source, project_dir);
        let lock = if opts.update {
            None
        } else {
            LockFile::read(lock_path)?.filter(|l| l.image.source == key)
        };
        if let Some(lock) = lock {
            let mut o = opts.clone();
            if matches!(source, ImageSource::Oci { .. }) {
                o.pinned = Some(lock.image.manifest.clone());
            }
            let resolved = self.resolve(source, &o)?;
            if resolved.diff_ids != lock.image.diff_ids {
                return Err(ImageError::Base(format!(
                    "{key} no longer matches {}: it now has layers {} but the lock file says {}; run `berth up --update` to accept the new content",
                    lock_path.display(),
                    short_list(&resolved.diff_ids),
                    short_list(&lock.image.diff_ids)
                )));
            }
            return Ok((resolved, LockOutcome::Honoured));
        }
        let resolved = self.resolve(source, opts)?;
        let record = self
            .records
            .get(&resolved.name)?
            .ok_or_else(|| ImageError::NotFound(resolved.name.clone()))?;
        LockFile::for_record(key, &record).write(lock_path)?;
        Ok((resolved, LockOutcome::Written))
    }
}

fn short_list(d: &[Digest]) -> String {
    let v: Vec<&str> = d.iter().map(|d| d.short()).collect();
    format!("[{}]", v.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn local_base_lock_is_written_honoured_and_detects_changed_content() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path().join("home")).unwrap();
        let store = ImageStore::open(&home);
        let project = d.path().join("proj");
        let root = project.join("root");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("f"), b"1").unwrap();
        let lock = project.join(LOCK_FILE_NAME);
        let src = ImageSource::Rootfs { path: root.clone() };
        let opts = ResolveOptions::default();
        let (r1, o1) = store.resolve_locked(&src, &lock, &opts).unwrap();
        assert_eq!(o1, LockOutcome::Written);
        let text = fs::read_to_string(&lock).unwrap();
        assert!(
            text.contains("source = \"rootfs:./root\"") && text.contains(r1.diff_ids[0].as_str()),
            "{text}"
        );
        let (r2, o2) = store.resolve_locked(&src, &lock, &opts).unwrap();
        assert_eq!((r2, o2), (r1.clone(), LockOutcome::Honoured));
        fs::write(root.join("f"), b"2").unwrap();
        let err = store
            .resolve_locked(&src, &lock, &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--update"), "{err}");
        let upd = ResolveOptions {
            update: true,
            ..ResolveOptions::default()
        };
        let (r3, o3) = store.resolve_locked(&src, &lock, &upd).unwrap();
        assert_eq!(o3, LockOutcome::Written);
        assert_ne!(r3.diff_ids, r1.diff_ids);
        fs::write(&lock, "version = 99\n[image]\n").unwrap();
        assert!(LockFile::read(&lock).is_err());
    }
}
