//! The kernel cache under `BerthHome::kernels_dir()`:
//!
//! ```text
//! kernels/<release>/vmlinuz             the kernel
//! kernels/<release>/modules/            its lib/modules/<release> tree
//! kernels/<release>/kernel.json         package, package version, release
//! kernels/<release>/initramfs-<agent>.gz  berth's initramfs for one agent build
//! kernels/index/<package>[=<version>].json  which release a package name resolved to
//! ```
//!
//! Downloads unpack into a staging folder and are renamed in whole, under `kernels/.lock`.

use std::path::{Path, PathBuf};

use envfile_spec::plan::KernelSource;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::archive::{self, Mirror};
use super::deb::unpack_kernel_deb;
use super::initramfs::build_initramfs;
use super::KernelError;
use crate::state::{self, BerthHome, FileLock, LockMode};

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// Kernel release (`uname -r` in the guest), when known.
    pub release: String,
    pub image: PathBuf,
    /// The `lib/modules/<release>` folder, when the kernel has modules.
    pub modules: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KernelRecord {
    package: String,
    package_version: String,
    release: String,
}

/// Bump when the initramfs layout or module selection changes, so cached ones are rebuilt.
const INITRAMFS_FORMAT: u32 = 3;

pub struct KernelStore {
    home: BerthHome,
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..16].to_string()
}

impl KernelStore {
    pub fn new(home: BerthHome) -> Self {
        KernelStore { home }
    }

    fn dir(&self) -> PathBuf {
        self.home.kernels_dir()
    }

    fn cached(&self, release: &str) -> Option<Kernel> {
        let d = self.dir().join(release);
        let image = d.join("vmlinuz");
        image.exists().then(|| Kernel {
            release: release.to_string(),
            image,
            modules: Some(d.join("modules")).filter(|m| m.exists()),
        })
    }

    /// The kernel for `source`, downloading it when it is not cached.
    pub fn ensure(
        &self,
        source: &KernelSource,
        modules: Option<&Path>,
        mirror: &Mirror,
    ) -> Result<Kernel, KernelError> {
        match source {
            KernelSource::Path { path } => {
                if !path.exists() {
                    return Err(KernelError::MissingImage(path.clone()));
                }
                let release = modules
                    .and_then(|m| m.file_name())
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                Ok(Kernel {
                    release,
                    image: path.clone(),
                    modules: modules.map(Path::to_path_buf),
                })
            }
            KernelSource::Debian { package, version } => {
                self.ensure_debian(package, version.as_deref(), mirror)
            }
        }
    }

    fn index_path(&self, package: &str, version: Option<&str>) -> PathBuf {
        let key = match version {
            Some(v) => format!("{package}={v}"),
            None => package.to_string(),
        };
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-.=+~".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir().join("index").join(format!("{safe}.json"))
    }

    fn ensure_debian(
        &self,
        package: &str,
        version: Option<&str>,
        mirror: &Mirror,
    ) -> Result<Kernel, KernelError> {
        let index = self.index_path(package, version);
        if let Some(rec) = state::read_json::<KernelRecord>(&index)? {
            if let Some(k) = self.cached(&rec.release) {
                return Ok(k);
            }
        }
        state::create_dir_all(&self.dir())?;
        let _lock = FileLock::acquire(&self.dir().join(".lock"), LockMode::Exclusive)?;
        // Another berth may have fetched it while we waited.
        if let Some(rec) = state::read_json::<KernelRecord>(&index)? {
            if let Some(k) = self.cached(&rec.release) {
                return Ok(k);
            }
        }
        let entry = archive::resolve(mirror, package, version)?;
        let url = format!("{}/{}", mirror.url, entry.filename);
        let deb = archive::fetch_verified(&url, &entry.sha256, Some(entry.size))?;
        let staging = self.home.staging_dir("kernel")?;
        let unpacked = unpack_kernel_deb(&deb, staging.path())?;
        let record = KernelRecord {
            package: entry.name.clone(),
            package_version: entry.version.clone(),
            release: unpacked.version.clone(),
        };
        state::write_json(&staging.path().join("kernel.json"), &record)?;
        let final_dir = self.dir().join(&unpacked.version);
        if self.cached(&unpacked.version).is_none() {
            let _ = state::remove_tree(&final_dir);
            std::fs::rename(staging.path(), &final_dir).map_err(|e| KernelError::Io {
                path: final_dir.clone(),
                source: e,
            })?;
            staging.keep();
        }
        state::create_dir_all(&self.dir().join("index"))?;
        state::write_json(&index, &record)?;
        self.cached(&record.release)
            .ok_or(KernelError::MissingImage(final_dir.join("vmlinuz")))
    }

    /// berth's initramfs for `kernel` with the agent at `agent`, built once per agent build.
    pub fn initramfs(&self, kernel: &Kernel, agent: &Path) -> Result<PathBuf, KernelError> {
        let agent_bytes = std::fs::read(agent).map_err(|e| KernelError::Io {
            path: agent.to_path_buf(),
            source: e,
        })?;
        // The initramfs depends on the agent build, the modules and how berth packs them.
        let mut id = agent_bytes;
        id.extend_from_slice(
            format!(
                "|{:?}|{INITRAMFS_FORMAT}|{:?}",
                kernel.modules,
                super::initramfs::WANTED_MODULES
            )
            .as_bytes(),
        );
        let key = short_hash(&id);
        let base = if kernel.image.starts_with(self.dir()) {
            kernel
                .image
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.dir())
        } else {
            let id = format!("{}|{:?}", kernel.image.display(), kernel.modules);
            self.dir()
                .join(format!("host-{}", short_hash(id.as_bytes())))
        };
        let out = base.join(format!("initramfs-{key}.gz"));
        if out.exists() {
            return Ok(out);
        }
        state::create_dir_all(&base)?;
        let tmp = base.join(format!(".initramfs-{key}.{}.tmp", std::process::id()));
        let built = build_initramfs(agent, kernel.modules.as_deref(), &tmp);
        if let Err(e) = built {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &out).map_err(|e| KernelError::Io {
            path: out.clone(),
            source: e,
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_kernels_and_missing_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = KernelStore::new(BerthHome::at(dir.path().join("home")).unwrap());
        let m = Mirror::unreachable();
        let img = dir.path().join("bzImage");
        std::fs::write(&img, b"k").unwrap();
        let mods = dir.path().join("lib/modules/6.9.0-test");
        std::fs::create_dir_all(&mods).unwrap();
        let k = store
            .ensure(&KernelSource::Path { path: img.clone() }, Some(&mods), &m)
            .unwrap();
        assert_eq!(k.release, "6.9.0-test");
        assert_eq!(k.image, img);
        let missing = store
            .ensure(
                &KernelSource::Path {
                    path: dir.path().join("nope"),
                },
                None,
                &m,
            )
            .unwrap_err();
        assert!(missing.to_string().contains("does not exist"));

        // Initramfs is cached per agent build.
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"agent-v1").unwrap();
        let a = store.initramfs(&k, &agent).unwrap();
        assert!(a.exists());
        assert_eq!(store.initramfs(&k, &agent).unwrap(), a);
        std::fs::write(&agent, b"agent-v2").unwrap();
        assert_ne!(store.initramfs(&k, &agent).unwrap(), a);
    }

    #[test]
    fn unreachable_mirror_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = KernelStore::new(BerthHome::at(dir.path()).unwrap());
        let m = Mirror {
            url: "http://127.0.0.1:9".into(),
            suites: vec!["bookworm".into()],
            keyrings: vec![],
        };
        let e = store
            .ensure(
                &KernelSource::Debian {
                    package: "linux-image-cloud-amd64".into(),
                    version: None,
                },
                None,
                &m,
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot fetch http://127.0.0.1:9/dists/bookworm/InRelease"),
            "{e}"
        );
    }
}
