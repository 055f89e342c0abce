//! A Debian bookworm base (`from = "debootstrap:bookworm"`) bootstrapped once per machine and
//! shared by every test that needs a real distribution: the first test builds it in a home of
//! its own and exports it with `berth image export --cache` to a machine-wide folder; every
//! test then imports that cache into its own home, so `debootstrap:bookworm` resolves without
//! bootstrapping again (exactly what a CI job does with its cache folder).
//!
//! The folder is keyed by the source of berth's base builder, so a change to how bases are
//! bootstrapped builds a fresh one. A machine-wide `flock` makes concurrent tests wait for
//! the one that builds.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{text, Berth};

/// The berth sources that decide what a `debootstrap:` base contains.
const BASE_BUILDER_SOURCE: &str = include_str!("../../runtime/src/image/bases.rs");

/// Why the Debian tests cannot run here, or `None` when they can (root and debootstrap or
/// mmdebstrap installed; CI has both).
pub fn unavailable() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("bootstrapping Debian needs root");
    }
    if !["/usr/sbin/debootstrap", "/usr/bin/mmdebstrap"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        return Some(
            "neither debootstrap nor mmdebstrap is installed (apt-get install debootstrap)",
        );
    }
    None
}

/// The machine-wide cache folder of the bookworm base (built on first use).
fn cache_dir() -> PathBuf {
    let key = hex::encode(Sha256::digest(BASE_BUILDER_SOURCE.as_bytes()));
    PathBuf::from("/var/tmp/berth-e2e-debian").join(format!("bookworm-{}", &key[..16]))
}

/// Holds an exclusive `flock` on `path` while alive.
struct MachineLock(File);

impl MachineLock {
    fn take(path: &Path) -> MachineLock {
        let f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: flock on an fd we own; blocks until the lock is ours.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock {}", path.display());
        MachineLock(f)
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        // SAFETY: unlocking an fd we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Makes `debootstrap:bookworm` resolvable in `berth`'s home without bootstrapping: builds the
/// machine-wide cache once, then imports it. Panics with berth's output when either fails.
pub fn seed_bookworm(berth: &Berth) {
    let dir = cache_dir();
    let parent = dir.parent().unwrap();
    fs::create_dir_all(parent).unwrap();
    {
        let _lock = MachineLock::take(&parent.join("lock"));
        if !dir.join("images").is_dir() {
            let builder = Berth::new();
            let o = builder.run_in(Path::new("/"), &["image", "pull", "debootstrap:bookworm"]);
            let (out, err) = text(&o);
            assert!(
                o.status.success(),
                "debootstrap:bookworm failed:\n{out}\n{err}"
            );
            let staging = parent.join(format!(".staging-{}", std::process::id()));
            let _ = fs::remove_dir_all(&staging);
            let o = builder.run_in(
                Path::new("/"),
                &["image", "export", "--cache", staging.to_str().unwrap()],
            );
            let (out, err) = text(&o);
            assert!(o.status.success(), "export --cache failed:\n{out}\n{err}");
            fs::rename(&staging, &dir).unwrap();
        }
    }
    let o = berth.run_in(
        Path::new("/"),
        &["image", "import", "--cache", dir.to_str().unwrap()],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "import --cache failed:\n{out}\n{err}");
}
