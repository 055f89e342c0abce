//! `debootstrap:SUITE` end to end: bootstraps Debian bookworm (minbase) from the host's
//! configured mirror once, then finds it cached. Takes a few minutes; needs root, network
//! access to the mirror and debootstrap or mmdebstrap.

use std::fs;
use std::path::Path;
use std::time::Instant;

use berth_e2e::{require_debian, text, Berth};

#[test]
fn debootstrap_bookworm_is_bootstrapped_once_and_cached() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: debootstrap needs root");
        return;
    }
    if !["/usr/sbin/debootstrap", "/usr/bin/mmdebstrap"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!(
            "SKIP: neither debootstrap nor mmdebstrap is installed (apt-get install debootstrap)"
        );
        return;
    }
    let b = Berth::new();
    let o = b.run_in(Path::new("/"), &["image", "pull", "debootstrap:bookworm"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "debootstrap pull failed:\n{out}\n{err}");
    let ls: serde_json::Value =
        serde_json::from_slice(&b.run_in(Path::new("/"), &["image", "ls", "--json"]).stdout)
            .unwrap();
    let img = &ls["images"][0];
    assert!(
        img["name"]
            .as_str()
            .unwrap()
            .starts_with("debootstrap:bookworm "),
        "{ls}"
    );
    assert_eq!(img["layers"], 1);
    let layer = fs::read_dir(b.home.path().join("layers"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let release = fs::read_to_string(layer.join("etc/os-release")).unwrap();
    assert!(release.contains("bookworm"), "{release}");
    assert!(layer.join("usr/bin/apt-get").exists() && layer.join("usr/bin/dpkg").exists());
    // Device nodes debootstrap made (as root) are kept.
    assert!(fs::symlink_metadata(layer.join("dev/null")).is_ok());

    // Cached: the second resolve does not bootstrap again.
    let t = Instant::now();
    let o = b.run_in(Path::new("/"), &["image", "pull", "debootstrap:bookworm"]);
    assert!(o.status.success());
    let (_, err2) = text(&o);
    eprintln!("second resolve took {:?}", t.elapsed());
    assert!(
        !err2.contains("bootstrapping"),
        "bootstrapped twice: {err2}"
    );
}

/// The shared test base (`berth_e2e::debian`): a home seeded from the machine-wide cache
/// resolves `debootstrap:bookworm` without bootstrapping, and the base is a real Debian.
#[test]
fn seeded_home_resolves_bookworm_from_the_cache() {
    require_debian!();
    let b = Berth::new();
    berth_e2e::debian::seed_bookworm(&b);
    let o = b.run_in(Path::new("/"), &["image", "pull", "debootstrap:bookworm"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        !format!("{out}{err}").contains("bootstrapping"),
        "resolved by bootstrapping again:\n{out}\n{err}"
    );
}
