//! berth.lock against a real registry: a locked tag keeps resolving to the locked digest
//! after the tag moves, until `update`.

use std::sync::Arc;

use berth_e2e::oci::{busybox_layer, Compression, Image, Layer, Registry, TarBuilder};
use berth_runtime::image::lockfile::{LockFile, LockOutcome, LOCK_FILE_NAME};
use berth_runtime::image::{ImageStore, PullOptions, QuietProgress, ResolveOptions};
use berth_runtime::state::BerthHome;
use envfile_spec::plan::ImageSource;
use envfile_spec::reference::ImageReference;

fn arch() -> &'static str {
    if std::env::consts::ARCH == "aarch64" {
        "arm64"
    } else {
        "amd64"
    }
}

#[test]
fn locked_tag_stays_on_its_digest_until_update() {
    let Some(reg) = Registry::start() else { return };
    let version = |v: &str| {
        let mut t = TarBuilder::new();
        t.file("version", v.as_bytes());
        Image::new(
            vec![
                busybox_layer(Compression::Gzip),
                Layer::new(t.finish(), Compression::Zstd),
            ],
            arch(),
        )
    };
    let (v1, v2) = (version("1"), version("2"));
    reg.push_image("app", "stable", &v1);
    let d = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&BerthHome::at(d.path().join("home")).unwrap());
    let lock = d.path().join(LOCK_FILE_NAME);
    let source = ImageSource::Oci {
        reference: ImageReference::parse(&format!("{}/app:stable", reg.addr)).unwrap(),
    };
    let opts = ResolveOptions {
        pull: PullOptions {
            progress: Arc::new(QuietProgress),
            ..PullOptions::default()
        },
        ..ResolveOptions::default()
    };
    let (r, o) = store.resolve_locked(&source, &lock, &opts).unwrap();
    assert_eq!(o, LockOutcome::Written);
    assert_eq!(r.manifest_digest.as_str(), v1.manifest_digest());
    let locked = LockFile::read(&lock).unwrap().unwrap();
    assert_eq!(
        locked.image.manifest.as_ref().unwrap().as_str(),
        v1.manifest_digest()
    );
    assert_eq!(locked.image.layers.len(), 2);

    // The tag moves; a fresh store (another clone's machine) still gets v1.
    reg.push_image("app", "stable", &v2);
    let other = ImageStore::open(&BerthHome::at(d.path().join("home2")).unwrap());
    let (r, o) = other.resolve_locked(&source, &lock, &opts).unwrap();
    assert_eq!(o, LockOutcome::Honoured);
    assert_eq!(r.manifest_digest.as_str(), v1.manifest_digest());
    assert_eq!(
        std::fs::read_to_string(r.layers[1].join("version")).unwrap(),
        "1"
    );

    let update = ResolveOptions {
        update: true,
        ..opts.clone()
    };
    let (r, o) = other.resolve_locked(&source, &lock, &update).unwrap();
    assert_eq!(o, LockOutcome::Written);
    assert_eq!(r.manifest_digest.as_str(), v2.manifest_digest());
    assert_eq!(
        LockFile::read(&lock)
            .unwrap()
            .unwrap()
            .image
            .manifest
            .unwrap()
            .as_str(),
        v2.manifest_digest()
    );
}
