//! `berth.lock`, beside berth.toml: the image a project resolved to, so everyone who clones
//! the project gets the same bytes. Written on the first resolve, honoured afterwards (a
//! registry image is pulled by the locked manifest digest, whatever its tag points to now),
//! refreshed by `--update`. The sidecars' images (`[services.NAME]` with `image`) are locked
//! the same way, each in its own `[sidecars.NAME]` table. The format is described in
//! `envfile-spec/SPEC.md` (section `berth.lock`).

use std::collections::BTreeMap;
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
    /// The image of each sidecar, by service name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sidecars: BTreeMap<String, LockedImage>,
}

/// Which image of the project an entry of the lock file pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockSlot<'a> {
    /// `[image].from` (the table `[image]`).
    Image,
    /// The `image` of sidecar NAME (the table `[sidecars.NAME]`).
    Sidecar(&'a str),
}

impl LockSlot<'_> {
    fn describe(&self, key: &str) -> String {
        match self {
            LockSlot::Image => key.to_string(),
            LockSlot::Sidecar(name) => format!("sidecar {name}'s image {key}"),
        }
    }
}

/// The resolved image of `[image].from` (or of a sidecar's `image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedImage {
    /// `[image].from` as locked (`docker.io/library/debian:bookworm`, `rootfs:./root`, …).
    pub source: String,
    /// Digest of the image manifest (for an index, of the chosen platform's manifest). Not
    /// written for `debootstrap:` bases, whose bytes differ on every machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    /// Digest of the image config: the image id (not for `debootstrap:` bases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Digest>,
    pub platform: String,
    /// Layer blob digests, bottom to top (not for `debootstrap:` bases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Digest>,
    /// Uncompressed layer digests, bottom to top (not for `debootstrap:` bases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diff_ids: Vec<Digest>,
    /// For a `debootstrap:` base: what was bootstrapped, checked instead of digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debootstrap: Option<LockedBootstrap>,
}

/// A `debootstrap:` base as locked: the suite, where it came from, and the packages it
/// installed (`name=version`, sorted), read from the tree's dpkg status. Two bootstraps of
/// one suite never give the same bytes (timestamps, generated files), but they do give the
/// same package set as long as the archive did not move on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedBootstrap {
    pub suite: String,
    /// The mirror the locking machine bootstrapped from (information: another machine uses
    /// its own mirror and matches when it gets the same packages).
    pub mirror: String,
    pub packages: Vec<String>,
}

/// What [`ImageStore::resolve_locked`] did with the lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock file pinned the image and was left as it was.
    Honoured,
    /// The lock file was written (first resolve, changed `from`, or `--update`).
    Written,
    /// A sidecar's image while the lock file locks no environment image yet (it is written
    /// with the environment's image first): resolved, not pinned.
    NotWritten,
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

impl LockedImage {
    pub fn for_record(source: String, record: &ImageRecord) -> LockedImage {
        LockedImage {
            source,
            manifest: Some(record.manifest_digest.clone()),
            config: Some(record.config_digest.clone()),
            platform: record.platform.clone(),
            layers: record.layers.iter().map(|l| l.digest.clone()).collect(),
            diff_ids: record.diff_ids(),
            debootstrap: None,
        }
    }

    /// The lock of a `debootstrap:` base: suite, mirror and package set, no digests.
    pub fn for_bootstrap(
        source: String,
        record: &ImageRecord,
        bootstrap: LockedBootstrap,
    ) -> LockedImage {
        LockedImage {
            source,
            manifest: None,
            config: None,
            platform: record.platform.clone(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            debootstrap: Some(bootstrap),
        }
    }
}

impl LockFile {
    /// The entry of `slot`, if the file has one.
    pub fn entry(&self, slot: LockSlot<'_>) -> Option<&LockedImage> {
        match slot {
            LockSlot::Image => Some(&self.image),
            LockSlot::Sidecar(name) => self.sidecars.get(name),
        }
    }

    /// Puts `entry` in `slot` of the lock file at `path`, keeping its other entries (read
    /// again here: the file may have changed since the caller read it). Without a file, a
    /// sidecar's entry is not written (the environment's image is locked first).
    fn store(
        path: &Path,
        slot: LockSlot<'_>,
        entry: LockedImage,
    ) -> Result<LockOutcome, ImageError> {
        let file = match (LockFile::read(path)?, slot) {
            (Some(mut file), LockSlot::Image) => {
                file.image = entry;
                file
            }
            (Some(mut file), LockSlot::Sidecar(name)) => {
                file.sidecars.insert(name.to_string(), entry);
                file
            }
            (None, LockSlot::Image) => LockFile {
                version: LOCK_VERSION,
                image: entry,
                sidecars: BTreeMap::new(),
            },
            (None, LockSlot::Sidecar(_)) => return Ok(LockOutcome::NotWritten),
        };
        file.write(path)?;
        Ok(LockOutcome::Written)
    }

    /// Removes the entries of sidecars not in `names` (gone from berth.toml) from the lock
    /// file at `path`, if it has any.
    pub fn keep_sidecars(path: &Path, names: &[&str]) -> Result<(), ImageError> {
        let Some(mut file) = LockFile::read(path)? else {
            return Ok(());
        };
        let before = file.sidecars.len();
        file.sidecars.retain(|n, _| names.contains(&n.as_str()));
        if file.sidecars.len() != before {
            file.write(path)?;
        }
        Ok(())
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
        self.resolve_in_lock(source, lock_path, LockSlot::Image, opts)
    }

    /// [`resolve_locked`](Self::resolve_locked) for the image of `slot` (the environment's
    /// or a sidecar's), which the lock file pins in its own entry.
    pub fn resolve_in_lock(
        &self,
        source: &ImageSource,
        lock_path: &Path,
        slot: LockSlot<'_>,
        opts: &ResolveOptions,
    ) -> Result<(ResolvedImage, LockOutcome), ImageError> {
        let project_dir = lock_path.parent().unwrap_or(Path::new("."));
        let key = source_key(source, project_dir);
        let lock = if opts.update {
            None
        } else {
            LockFile::read(lock_path)?
                .and_then(|l| l.entry(slot).cloned())
                .filter(|l| l.source == key)
        };
        if let ImageSource::Debootstrap { suite, .. } = source {
            return self.resolve_locked_bootstrap(source, suite, lock, lock_path, slot, opts);
        }
        if let Some(lock) = lock {
            let mut o = opts.clone();
            if matches!(source, ImageSource::Oci { .. }) {
                let manifest = lock.manifest.clone().ok_or_else(|| {
                    ImageError::malformed(
                        lock_path.display().to_string(),
                        format!("it locks {} without a manifest digest; run `berth up --update` to write it again", slot.describe(&key)),
                    )
                })?;
                o.pinned = Some(manifest);
            }
            let resolved = self.resolve(source, &o)?;
            if resolved.diff_ids != lock.diff_ids {
                return Err(ImageError::Base(format!(
                    "{} no longer matches {}: it now has layers {} but the lock file says {}; run `berth up --update` to accept the new content",
                    slot.describe(&key),
                    lock_path.display(),
                    short_list(&resolved.diff_ids),
                    short_list(&lock.diff_ids)
                )));
            }
            return Ok((resolved, LockOutcome::Honoured));
        }
        let resolved = self.resolve(source, opts)?;
        let record = self
            .records
            .get(&resolved.name)?
            .ok_or_else(|| ImageError::NotFound(resolved.name.clone()))?;
        let outcome = LockFile::store(lock_path, slot, LockedImage::for_record(key, &record))?;
        Ok((resolved, outcome))
    }

    /// A `debootstrap:` base against its lock: the package sets must be equal. A lock that
    /// names no packages (written by an older berth, with digests no other machine can
    /// reproduce) is rewritten.
    fn resolve_locked_bootstrap(
        &self,
        source: &ImageSource,
        suite: &str,
        lock: Option<LockedImage>,
        lock_path: &Path,
        slot: LockSlot<'_>,
        opts: &ResolveOptions,
    ) -> Result<(ResolvedImage, LockOutcome), ImageError> {
        let key = &source_key(source, lock_path.parent().unwrap_or(Path::new(".")));
        let resolved = self.resolve(source, opts)?;
        let record = self
            .records
            .get(&resolved.name)?
            .ok_or_else(|| ImageError::NotFound(resolved.name.clone()))?;
        let packages = installed_packages(&resolved.layers)?;
        // The record is named `debootstrap:SUITE MIRROR ARCH`.
        let mirror = resolved
            .name
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        if let Some(locked) = lock.as_ref().and_then(|l| l.debootstrap.as_ref()) {
            if locked.packages == packages {
                return Ok((resolved, LockOutcome::Honoured));
            }
            return Err(ImageError::Base(format!(
                "{} bootstrapped on this machine (from {mirror}) does not match {}, written from {}: {}. \
                 Run `berth up --update` to bootstrap {suite} again and record this machine's packages in berth.lock (commit it), \
                 or bring the locking machine's image with `berth image export --cache DIR` there and `berth image import --cache DIR` here",
                slot.describe(key),
                lock_path.display(),
                locked.mirror,
                package_difference(&locked.packages, &packages)
            )));
        }
        let bootstrap = LockedBootstrap {
            suite: suite.to_string(),
            mirror,
            packages,
        };
        let entry = LockedImage::for_bootstrap(key.to_string(), &record, bootstrap);
        let outcome = LockFile::store(lock_path, slot, entry)?;
        Ok((resolved, outcome))
    }
}

/// `name=version` of every installed package in the topmost layer that has a dpkg status
/// file, sorted.
pub fn installed_packages(layers: &[PathBuf]) -> Result<Vec<String>, ImageError> {
    let Some(status) = layers
        .iter()
        .rev()
        .map(|l| l.join("var/lib/dpkg/status"))
        .find(|p| p.is_file())
    else {
        return Err(ImageError::Base(
            "the bootstrapped tree has no var/lib/dpkg/status, so its packages cannot be locked; run `berth up --update` to bootstrap it again".into(),
        ));
    };
    let text = std::fs::read_to_string(&status).map_err(ImageError::io(&status))?;
    Ok(parse_dpkg_status(&text))
}

/// `name=version` of the installed packages in a dpkg status file, sorted.
pub fn parse_dpkg_status(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let installed = field("Status").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(p), Some(v)) = (installed, field("Package"), field("Version")) {
            out.push(format!("{p}={v}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What differs between two package sets, for a message: changed versions first, then
/// packages only on one side; at most ten named.
pub fn package_difference(locked: &[String], here: &[String]) -> String {
    use std::collections::BTreeMap;
    let split = |v: &[String]| -> BTreeMap<String, String> {
        v.iter()
            .filter_map(|e| e.split_once('='))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let (a, b) = (split(locked), split(here));
    let mut diffs = Vec::new();
    for (n, va) in &a {
        match b.get(n) {
            Some(vb) if vb != va => diffs.push(format!("{n} {vb} here, {va} in the lock")),
            None => diffs.push(format!("{n} {va} only in the lock")),
            _ => {}
        }
    }
    for (n, vb) in &b {
        if !a.contains_key(n) {
            diffs.push(format!("{n} {vb} only here"));
        }
    }
    let total = diffs.len();
    let mut text = diffs.into_iter().take(10).collect::<Vec<_>>().join(", ");
    if total > 10 {
        text.push_str(&format!(" and {} more", total - 10));
    }
    format!("{total} package(s) differ ({text})")
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
    fn dpkg_status_gives_the_installed_package_set() {
        let status = "Package: b\nStatus: install ok installed\nVersion: 2\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: a\nStatus: install ok installed\nPriority: required\nVersion: 1:1.0-1\n";
        assert_eq!(parse_dpkg_status(status), vec!["a=1:1.0-1", "b=2"]);
        let d = package_difference(
            &["a=1".into(), "b=2".into(), "c=3".into()],
            &["a=1".into(), "b=2.1".into(), "d=4".into()],
        );
        assert_eq!(
            d,
            "3 package(s) differ (b 2.1 here, 2 in the lock, c 3 only in the lock, d 4 only here)"
        );
    }

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

    #[test]
    fn sidecar_images_are_locked_in_entries_of_their_own_beside_the_image() {
        let d = tempfile::tempdir().unwrap();
        let home = crate::state::BerthHome::at(d.path().join("home")).unwrap();
        let store = ImageStore::open(&home);
        let project = d.path().join("proj");
        let tree = |name: &str, content: &[u8]| {
            let root = project.join(name);
            fs::create_dir_all(&root).unwrap();
            fs::write(root.join("f"), content).unwrap();
            ImageSource::Rootfs { path: root }
        };
        let (app, db) = (tree("app", b"app"), tree("db", b"db 1"));
        let lock = project.join(LOCK_FILE_NAME);
        let opts = ResolveOptions::default();
        // No lock file yet: a sidecar's image is resolved but not pinned.
        let (_, o) = store
            .resolve_in_lock(&db, &lock, LockSlot::Sidecar("db"), &opts)
            .unwrap();
        assert_eq!(o, LockOutcome::NotWritten);
        assert!(!lock.exists());
        let (app1, _) = store.resolve_locked(&app, &lock, &opts).unwrap();
        let (db1, o) = store
            .resolve_in_lock(&db, &lock, LockSlot::Sidecar("db"), &opts)
            .unwrap();
        assert_eq!(o, LockOutcome::Written);
        let file = LockFile::read(&lock).unwrap().unwrap();
        assert_eq!(file.image.source, "rootfs:./app");
        assert_eq!(file.image.diff_ids, app1.diff_ids);
        assert_eq!(file.sidecars["db"].source, "rootfs:./db");
        assert_eq!(file.sidecars["db"].diff_ids, db1.diff_ids);
        let text = fs::read_to_string(&lock).unwrap();
        assert!(text.contains("[sidecars.db]"), "{text}");
        // Honoured; a changed sidecar image is refused naming the sidecar.
        let (_, o) = store
            .resolve_in_lock(&db, &lock, LockSlot::Sidecar("db"), &opts)
            .unwrap();
        assert_eq!(o, LockOutcome::Honoured);
        fs::write(project.join("db/f"), b"db 2").unwrap();
        let err = store
            .resolve_in_lock(&db, &lock, LockSlot::Sidecar("db"), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sidecar db's image rootfs:./db no longer matches")
                && err.contains("--update"),
            "{err}"
        );
        // Rewriting the environment's entry keeps the sidecars'; a sidecar gone from
        // berth.toml leaves the file.
        fs::write(project.join("app/f"), b"app 2").unwrap();
        let update = ResolveOptions {
            update: true,
            ..ResolveOptions::default()
        };
        store.resolve_locked(&app, &lock, &update).unwrap();
        let file = LockFile::read(&lock).unwrap().unwrap();
        assert_ne!(file.image.diff_ids, app1.diff_ids);
        assert_eq!(file.sidecars["db"].diff_ids, db1.diff_ids);
        LockFile::keep_sidecars(&lock, &["cache"]).unwrap();
        assert!(LockFile::read(&lock).unwrap().unwrap().sidecars.is_empty());
    }
}
