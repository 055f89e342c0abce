//! Local bases, for machines without a registry: `rootfs:DIR`, `tar:FILE` and
//! `debootstrap:SUITE`. Each becomes an ordinary single-layer image: the layer blob is a tar
//! (a rootfs folder is written as a deterministic tar, so its digest is a content hash of
//! the tree), and a config and manifest are synthesized, so these images export and lock
//! like pulled ones.

use std::fs::{self, File};
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::blob_store::{file_digest, TempFile};
use super::digest::{Digest, Hashing};
use super::error::ImageError;
use super::image_store::{ImageConfig, ImageRecord, LayerRecord};
use super::layer_writer::{write_tree, WhiteoutMode};
use super::manifest::{
    ConfigFile, Descriptor, Manifest, Platform, RootFs, RunConfig, OCI_CONFIG, OCI_LAYER_GZIP,
    OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use super::progress::Progress;
use super::store::ImageStore;
use super::tree_stamp::{StampRecord, TreeStamp};
use crate::host::clock::now_secs;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The layer media type matching a blob's first bytes.
pub fn sniff_layer_media_type(path: &Path) -> Result<&'static str, ImageError> {
    let f = File::open(path).map_err(ImageError::io(path))?;
    let mut r = io::BufReader::new(f);
    let head = r.fill_buf().map_err(ImageError::io(path))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        OCI_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        OCI_LAYER_ZSTD
    } else {
        OCI_LAYER_TAR
    })
}

impl ImageStore {
    /// Writes the config and manifest of an image made of `layers` (bottom → top) and
    /// records it as `name`.
    pub(crate) fn record_local_image(
        &self,
        name: &str,
        layers: Vec<LayerRecord>,
        config: RunConfig,
    ) -> Result<ImageRecord, ImageError> {
        let platform = Platform::host();
        let cfg = ConfigFile {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            created: None,
            config: Some(config),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect(),
            },
        };
        let cfg_bytes =
            serde_json::to_vec(&cfg).map_err(|e| ImageError::malformed("image config", e))?;
        let cfg_digest = self.blobs.put_bytes(&cfg_bytes, None, name)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: OCI_CONFIG.into(),
                digest: cfg_digest.clone(),
                size: cfg_bytes.len() as u64,
                platform: None,
                annotations: None,
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    platform: None,
                    annotations: None,
                })
                .collect(),
            annotations: None,
        };
        let m_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::malformed("manifest", e))?;
        let m_digest = self.blobs.put_bytes(&m_bytes, None, name)?;
        let record = ImageRecord {
            name: name.to_string(),
            manifest_digest: m_digest,
            config_digest: cfg_digest,
            index_digest: None,
            platform: platform.to_string(),
            config: ImageConfig::from(cfg.config.as_ref()),
            layers,
            created: now_secs(),
        };
        self.records.put(&record)?;
        Ok(record)
    }

    fn default_run_config() -> RunConfig {
        RunConfig {
            env: Some(vec![DEFAULT_PATH.to_string()]),
            cmd: Some(vec!["/bin/sh".to_string()]),
            ..RunConfig::default()
        }
    }

    /// Stores a layer blob file (tar, tar+gzip, tar+zstd) and unpacks it.
    pub(crate) fn add_layer_file(
        &self,
        path: &Path,
        label: &str,
        progress: &Progress,
    ) -> Result<LayerRecord, ImageError> {
        let media_type = sniff_layer_media_type(path)?;
        // Copy first (the kernel copies: copy_file_range), then hash the copy: the digest is
        // that of the bytes stored, even if the source changes meanwhile.
        let tmp = self.home.tmp_dir().join(format!(
            "import-{}-{}",
            std::process::id(),
            super::unique_suffix()
        ));
        let guard = TempFile(Some(tmp.clone()));
        fs::copy(path, &tmp).map_err(ImageError::io(&tmp))?;
        let (digest, size) = file_digest(&tmp)?;
        if !self.blobs.contains(&digest) {
            fs::rename(&tmp, self.blobs.path(&digest)).map_err(ImageError::io(&tmp))?;
        }
        drop(guard);
        let blob = self.blobs.path(&digest);
        // The diff-id of a blob unpacked before is in some record; else unpack to learn it.
        let known = self
            .records
            .list()?
            .into_iter()
            .flat_map(|r| r.layers)
            .find(|l| l.digest == digest)
            .filter(|l| self.layers.contains(&l.diff_id))
            .map(|l| l.diff_id);
        let diff_id = match known {
            Some(d) => d,
            None => {
                let mut bar = progress.start(&format!("{label} unpack"), None);
                let meta = self
                    .layers
                    .unpack_blob(&blob, None, label, &mut |n| bar.advance(n))?;
                bar.finish("unpacked");
                meta.diff_id
            }
        };
        Ok(LayerRecord {
            digest,
            media_type: media_type.to_string(),
            size,
            diff_id,
        })
    }

    /// A new, empty temporary file in the home's `tmp/` for a layer's tar, removed when
    /// the guard drops (unless renamed into the blob store before).
    pub(super) fn new_tree_tar(&self) -> Result<(PathBuf, TempFile, std::fs::File), ImageError> {
        let tmp = self.home.tmp_dir().join(format!(
            "tree-{}-{}.tar",
            std::process::id(),
            super::unique_suffix()
        ));
        let (guard, file) = TempFile::create_new(&tmp)?;
        Ok((tmp, guard, file))
    }

    /// Writes the tree at `dir` as an uncompressed layer tar into the blob store (its digest
    /// is then also its diff-id) and unpacks it.
    pub(crate) fn add_tree_layer(
        &self,
        dir: &Path,
        mode: WhiteoutMode,
        label: &str,
        progress: &Progress,
    ) -> Result<LayerRecord, ImageError> {
        let (tmp, _guard, file) = self.new_tree_tar()?;
        let out = write_tree(
            dir,
            Hashing::new(io::BufWriter::with_capacity(1 << 20, file)),
            mode,
        )
        .map_err(|e| ImageError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let (w, digest, size) = out.finish();
        w.into_inner()
            .map_err(|e| ImageError::io(&tmp)(e.into_error()))?;
        if !self.blobs.contains(&digest) {
            fs::rename(&tmp, self.blobs.path(&digest)).map_err(ImageError::io(&tmp))?;
        }
        if !self.layers.contains(&digest) {
            let blob = self.blobs.path(&digest);
            let mut bar = progress.start(&format!("{label} unpack"), Some(size));
            self.layers
                .unpack_blob(&blob, Some(&digest), label, &mut |n| bar.advance(n))?;
            bar.finish("unpacked");
        }
        Ok(LayerRecord {
            digest: digest.clone(),
            media_type: OCI_LAYER_TAR.to_string(),
            size,
            diff_id: digest,
        })
    }

    /// `rootfs:DIR`: the folder, as a layer keyed by the content hash of the tree.
    pub fn import_rootfs_dir(
        &self,
        dir: &Path,
        name: Option<&str>,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        self.import_rootfs_dir_counted(dir, name, progress)
            .map(|(r, _)| r)
    }

    /// [`import_rootfs_dir`](Self::import_rootfs_dir), saying whether the tree's content was
    /// read and hashed (`true`) or found unchanged by its [`TreeStamp`] (`false`).
    fn import_rootfs_dir_counted(
        &self,
        dir: &Path,
        name: Option<&str>,
        progress: &Progress,
    ) -> Result<(ImageRecord, bool), ImageError> {
        let _lock = self.lock_shared()?;
        if !dir.is_dir() {
            return Err(ImageError::Base(format!(
                "rootfs folder {} does not exist or is not a folder; fix `from = \"rootfs:…\"` in berth.toml",
                dir.display()
            )));
        }
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| format!("rootfs:{}", dir.display()));
        // An unreadable tree has no stamp: hashing it reports the error.
        let stamp = TreeStamp::take(dir).ok();
        if let Some(r) = self.unchanged_rootfs(dir, &name, stamp.as_ref())? {
            return Ok((r, false));
        }
        let layer = self.add_tree_layer(
            dir,
            WhiteoutMode::Plain,
            &format!("rootfs {}", dir.display()),
            progress,
        )?;
        let diff_id = layer.diff_id.clone();
        let record = match self.records.get(&name)? {
            Some(r) if r.layers.len() == 1 && r.layers[0] == layer => r,
            _ => self.record_local_image(&name, vec![layer], Self::default_run_config())?,
        };
        // Kept only when the tree did not change while it was hashed, and no entry changed
        // so recently that a change within the same clock tick could hide (see tree_stamp).
        if let Some(s) = stamp.filter(|s| !s.racy) {
            if TreeStamp::take(dir).is_ok_and(|after| after == s) {
                StampRecord {
                    dir: dir.to_path_buf(),
                    stamp: s.digest,
                    diff_id,
                }
                .save(&self.home.images_dir(), &name);
            }
        }
        Ok((record, true))
    }

    /// The record of the `rootfs:` image `name` when the tree at `dir` still has the stamp
    /// its layer was hashed with, and the layer and blob are still in the store.
    fn unchanged_rootfs(
        &self,
        dir: &Path,
        name: &str,
        stamp: Option<&TreeStamp>,
    ) -> Result<Option<ImageRecord>, ImageError> {
        let Some(stamp) = stamp.filter(|s| !s.racy) else {
            return Ok(None);
        };
        let Some(kept) = StampRecord::load(&self.home.images_dir(), name) else {
            return Ok(None);
        };
        if kept.dir != dir || kept.stamp != stamp.digest {
            return Ok(None);
        }
        Ok(self.records.get(name)?.filter(|r| {
            r.layers.len() == 1
                && r.layers[0].diff_id == kept.diff_id
                && self.is_complete(r)
                && self.blobs.contains(&r.layers[0].digest)
        }))
    }

    /// `tar:FILE` and `berth image import FILE`: a root filesystem tar (optionally gzip or
    /// zstd compressed) as one layer, keyed by the file's content hash.
    pub fn import_rootfs_tar(
        &self,
        path: &Path,
        name: Option<&str>,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        let _lock = self.lock_shared()?;
        if !path.is_file() {
            return Err(ImageError::Base(format!(
                "rootfs tar {} does not exist or is not a file",
                path.display()
            )));
        }
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| format!("tar:{}", path.display()));
        let layer = self.add_layer_file(path, &format!("tar {}", path.display()), progress)?;
        if let Some(r) = self.records.get(&name)? {
            if r.layers.len() == 1 && r.layers[0] == layer {
                return Ok(r);
            }
        }
        self.record_local_image(&name, vec![layer], Self::default_run_config())
    }

    /// `debootstrap:SUITE`: bootstraps the suite once (minbase variant) with mmdebstrap or
    /// debootstrap, cached by suite + mirror + architecture.
    pub fn debootstrap(
        &self,
        suite: &str,
        mirror: Option<&str>,
        update: bool,
        progress: &Progress,
    ) -> Result<ImageRecord, ImageError> {
        let _lock = self.lock_shared()?;
        if suite.is_empty()
            || !suite
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ImageError::Base(format!(
                "`{suite}` is not a valid suite name (e.g. bookworm)"
            )));
        }
        let mirror = match mirror {
            Some(m) => m.to_string(),
            None => host_debian_mirror(),
        };
        let arch = debian_arch();
        let key = hex::encode(Sha256::digest(
            format!("{suite}\n{mirror}\n{arch}").as_bytes(),
        ));
        let name = format!("debootstrap:{suite} {mirror} {arch}");
        if !update {
            if let Some(r) = self.records.get(&name)?.filter(|r| self.is_complete(r)) {
                return Ok(r);
            }
        }
        let staging = self
            .home
            .staging_dir(&format!("debootstrap-{}", &key[..12]))?;
        let target = staging.path().join("rootfs");
        let (tool, mut cmd) = if which("mmdebstrap").is_some() {
            let mut c = Command::new("mmdebstrap");
            c.args(["--variant=minbase", "--mode=auto", suite])
                .arg(&target)
                .arg(&mirror);
            ("mmdebstrap", c)
        } else if which("debootstrap").is_some() {
            let mut c = Command::new("debootstrap");
            c.args(["--variant=minbase", suite])
                .arg(&target)
                .arg(&mirror);
            ("debootstrap", c)
        } else {
            return Err(ImageError::Base(
                "neither mmdebstrap nor debootstrap is installed; install one (`apt-get install debootstrap`) to use `from = \"debootstrap:…\"`".into(),
            ));
        };
        progress.message(&format!(
            "bootstrapping {suite} from {mirror} with {tool} (takes a few minutes, done once)"
        ));
        let out = cmd
            .output()
            .map_err(|e| ImageError::Base(format!("cannot run {tool}: {e}")))?;
        if !out.status.success() {
            let log =
                fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let all: Vec<&str> = stderr
                .lines()
                .chain(stdout.lines())
                .chain(log.lines())
                .collect();
            let tail = all[all.len().saturating_sub(15)..].join("\n");
            return Err(ImageError::Base(format!(
                "{tool} {suite} failed ({}); last output:\n{}\ncheck the suite name and that the mirror {mirror} is reachable",
                out.status,
                tail
            )));
        }
        // The tools write only the suite itself; updates and security fixes come from
        // SUITE-updates and SUITE-security, as on an installed Debian.
        let sources = target.join("etc/apt/sources.list");
        fs::write(
            &sources,
            apt_sources(suite, &mirror, &host_security_mirror()),
        )
        .map_err(ImageError::io(&sources))?;
        let layer = self.add_tree_layer(
            &target,
            WhiteoutMode::Plain,
            &format!("debootstrap {suite}"),
            progress,
        )?;
        drop(staging);
        self.record_local_image(&name, vec![layer], Self::default_run_config())
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// dpkg's name for this machine's architecture.
pub fn debian_arch() -> String {
    Platform::host().architecture
}

/// The first Debian mirror the host's apt sources name (one-line or deb822 format), else
/// `http://deb.debian.org/debian`.
pub fn host_debian_mirror() -> String {
    for f in apt_source_files() {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if let Some(m) = mirror_from_sources(&text) {
            return m;
        }
    }
    "http://deb.debian.org/debian".to_string()
}

/// The `sources.list` of a bootstrapped `suite`: the suite, `SUITE-updates` from `mirror` and
/// `SUITE-security` from `security` (`SUITE/updates` before bullseye); unstable and
/// experimental have neither.
pub fn apt_sources(suite: &str, mirror: &str, security: &str) -> String {
    let mut s = format!("# Written by berth for debootstrap:{suite}.\ndeb {mirror} {suite} main\n");
    if matches!(suite, "sid" | "unstable" | "experimental" | "rc-buggy") {
        return s;
    }
    s.push_str(&format!("deb {mirror} {suite}-updates main\n"));
    let security_suite = if matches!(suite, "buster" | "stretch" | "jessie" | "oldoldstable") {
        format!("{suite}/updates")
    } else {
        format!("{suite}-security")
    };
    s.push_str(&format!("deb {security} {security_suite} main\n"));
    s
}

/// The Debian security archive the host's apt sources name (a mirror of it is what a
/// machine with only its configured mirror can reach), else
/// `http://deb.debian.org/debian-security`.
pub fn host_security_mirror() -> String {
    for f in apt_source_files() {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        if let Some(m) = security_mirror_from_sources(&text) {
            return m;
        }
    }
    "http://deb.debian.org/debian-security".to_string()
}

fn apt_source_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    files
}

/// The security archive URL named in an apt sources file (one-line or deb822 format).
pub fn security_mirror_from_sources(text: &str) -> Option<String> {
    let good =
        |u: &str| (u.starts_with("http://") || u.starts_with("https://")) && u.contains("security");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let words: Vec<&str> = if let Some(rest) = l.strip_prefix("deb ") {
                rest.split_whitespace().collect()
            } else if let Some(uris) = l.strip_prefix("URIs:") {
                uris.split_whitespace().collect()
            } else {
                Vec::new()
            };
            words
        })
        .find(|u| good(u))
        .map(|u| u.trim_end_matches('/').to_string())
}

/// The main Debian archive URL named in an apt sources file, skipping security mirrors.
pub fn mirror_from_sources(text: &str) -> Option<String> {
    let good = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://")) && !u.contains("security")
    };
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("deb ") {
            let mut words = rest.split_whitespace().filter(|w| !w.starts_with('['));
            // Options in brackets may contain spaces; skip until the closing one.
            let url = if rest.trim_start().starts_with('[') {
                rest.split_once(']')
                    .and_then(|(_, r)| r.split_whitespace().next())
            } else {
                words.next()
            };
            if let Some(u) = url.filter(|u| good(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        } else if let Some(uris) = line.strip_prefix("URIs:") {
            if let Some(u) = uris.split_whitespace().find(|u| good(u)) {
                return Some(u.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// The digest of a rootfs folder as `rootfs:` would import it (without storing anything).
pub fn tree_digest(dir: &Path) -> Result<Digest, ImageError> {
    let out = write_tree(dir, Hashing::new(io::sink()), WhiteoutMode::Plain).map_err(|e| {
        ImageError::Io {
            path: dir.to_path_buf(),
            source: e,
        }
    })?;
    Ok(out.finish().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mirrors_in_both_source_formats() {
        assert_eq!(
            mirror_from_sources("# c\ndeb http://deb.debian.org/debian/ bookworm main\n")
                .as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            mirror_from_sources(
                "deb [arch=amd64 signed-by=/x] http://m.example/debian bookworm main"
            )
            .as_deref(),
            Some("http://m.example/debian")
        );
        let deb822 = "Types: deb\nURIs: http://security.debian.org/debian-security\n\nTypes: deb\nURIs: http://ftp.example/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_sources(deb822).as_deref(),
            Some("http://ftp.example/debian")
        );
        assert_eq!(mirror_from_sources("nothing"), None);
        assert_eq!(
            security_mirror_from_sources(deb822).as_deref(),
            Some("http://security.debian.org/debian-security")
        );
        assert_eq!(
            security_mirror_from_sources(
                "deb http://m.example/debian bookworm main\ndeb http://m.example/debian-security/ bookworm-security main\n"
            )
            .as_deref(),
            Some("http://m.example/debian-security")
        );
        assert_eq!(
            security_mirror_from_sources("deb http://m/debian x main"),
            None
        );
    }

    #[test]
    fn sources_list_has_updates_and_security_for_releases() {
        let s = apt_sources("bookworm", "http://m/debian", "http://m/debian-security");
        assert_eq!(
            s,
            "# Written by berth for debootstrap:bookworm.\n\
             deb http://m/debian bookworm main\n\
             deb http://m/debian bookworm-updates main\n\
             deb http://m/debian-security bookworm-security main\n"
        );
        assert!(apt_sources("buster", "M", "S").contains("deb S buster/updates main"));
        let sid = apt_sources("sid", "M", "S");
        assert!(
            !sid.contains("updates") && !sid.contains("security"),
            "{sid}"
        );
    }

    /// A store in `dir/home` and a rootfs folder `dir/root` holding `bin/hello`.
    fn store_and_root(dir: &Path) -> (ImageStore, Progress, PathBuf) {
        let home = crate::state::BerthHome::at(dir.join("home")).unwrap();
        let p: Progress = std::sync::Arc::new(crate::image::progress::QuietProgress);
        let root = dir.join("root");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/hello"), b"hi").unwrap();
        (ImageStore::open(&home), p, root)
    }

    /// The stamp cache: an unchanged tree is not read again, and a content change that keeps
    /// the size and puts the mtime back (`touch -d`) is still hashed and found.
    #[test]
    fn an_unchanged_rootfs_is_not_hashed_again_and_a_same_size_same_mtime_change_is() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (store, p, root) = store_and_root(d.path());
        let (fresh, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(hashed);
        let (_, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(
            hashed,
            "a tree changed a moment ago is hashed again (racy stamp)"
        );
        std::thread::sleep(
            super::super::tree_stamp::RACY_MARGIN + std::time::Duration::from_millis(100),
        );
        let (r1, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(hashed, "no stamp was kept yet");
        assert_eq!(r1, fresh);
        let (r2, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(!hashed, "unchanged: the stamp vouches for it");
        assert_eq!(r2, r1);

        let f = root.join("bin/hello");
        let old = fs::metadata(&f).unwrap();
        fs::write(&f, b"ho").unwrap();
        let t = nix::sys::time::TimeSpec::new(old.mtime(), old.mtime_nsec());
        nix::sys::stat::utimensat(
            None,
            &f,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let now = fs::metadata(&f).unwrap();
        assert_eq!(
            (now.len(), now.mtime(), now.mtime_nsec()),
            (old.len(), old.mtime(), old.mtime_nsec())
        );
        let (r3, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(hashed, "the ctime moved: hashed again");
        assert_ne!(r3.layers[0].diff_id, r1.layers[0].diff_id);
        assert_eq!(r3.layers[0].diff_id, tree_digest(&root).unwrap());

        // A stamp whose layer went away (image prune) is not trusted either.
        std::thread::sleep(
            super::super::tree_stamp::RACY_MARGIN + std::time::Duration::from_millis(100),
        );
        store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(!store.import_rootfs_dir_counted(&root, None, &p).unwrap().1);
        crate::state::remove_tree(&store.layers.path(&r3.layers[0].diff_id)).unwrap();
        let (r4, hashed) = store.import_rootfs_dir_counted(&root, None, &p).unwrap();
        assert!(hashed);
        assert!(store.is_complete(&r4));
    }

    #[test]
    fn rootfs_dir_and_tar_become_single_layer_images_keyed_by_content() {
        let d = tempfile::tempdir().unwrap();
        let (store, p, root) = store_and_root(d.path());
        let r1 = store.import_rootfs_dir(&root, None, &p).unwrap();
        let r2 = store.import_rootfs_dir(&root, None, &p).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(r1.layers[0].diff_id, tree_digest(&root).unwrap());
        let res = store.resolved(&r1);
        assert_eq!(fs::read(res.layers[0].join("bin/hello")).unwrap(), b"hi");
        fs::write(root.join("bin/hello"), b"changed").unwrap();
        let r3 = store.import_rootfs_dir(&root, None, &p).unwrap();
        assert_ne!(r3.layers[0].diff_id, r1.layers[0].diff_id);
        // The blob of a folder is a tar: import it as `tar:` and get the same layer.
        let tar = store.blobs.path(&r3.layers[0].digest);
        let t = store.import_rootfs_tar(&tar, Some("t"), &p).unwrap();
        assert_eq!(t.layers[0].diff_id, r3.layers[0].diff_id);
    }
}
