//! `[image].setup` steps through the real binary and the real container step runner: each
//! step becomes a cached layer captured from a real overlay upper directory (overlayfs
//! whiteouts converted back to OCI `.wh.` entries), and editing a step reruns only it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use berth_e2e::host::busybox_rootfs;
use berth_e2e::{require_root, text, Berth};

fn toml(name: &str, step2: &str) -> String {
    format!(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
setup = ["echo hi > /greeting", "{step2}"]
"#
    )
}

fn up(b: &Berth, dir: &Path) -> String {
    let o = b.run_in(dir, &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "up failed:\n{out}\n{err}");
    err
}

fn exec(b: &Berth, dir: &Path, cmd: &[&str]) -> String {
    let mut args = vec!["exec", "--"];
    args.extend_from_slice(cmd);
    let o = b.run_in(dir, &args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exec {cmd:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn setup_steps_become_cached_layers_with_real_whiteouts() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("berth-build-")
        .tempdir()
        .unwrap();
    busybox_rootfs(&dir.path().join("rootfs"));
    fs::write(dir.path().join("rootfs/etc/old"), b"old").unwrap();
    let name = format!(
        "build-{}",
        dir.path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("berth-build-")
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    fs::write(dir.path().join("berth.toml"), toml(&name, "rm /etc/old")).unwrap();
    let b = Berth::new();
    up(&b, dir.path());
    assert_eq!(exec(&b, dir.path(), &["cat", "/greeting"]), "hi\n");
    assert_eq!(
        exec(
            &b,
            dir.path(),
            &["sh", "-c", "test -e /etc/old && echo there || echo gone"]
        ),
        "gone\n"
    );

    // Two cached steps, each an image record over the layers so far, over the layer of the
    // host's CA certificates (`image.host_ca`, on by default; a record of its own).
    let ca = usize::from(Path::new("/etc/ssl/certs/ca-certificates.crt").exists());
    let ls: serde_json::Value =
        serde_json::from_slice(&b.run_in(dir.path(), &["image", "ls", "--json"]).stdout).unwrap();
    let builds: Vec<&serde_json::Value> = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with("build:"))
        .collect();
    assert_eq!(builds.len(), 2 + ca, "{ls}");
    assert!(builds.iter().any(|i| i["layers"] == 3 + ca), "{ls}");
    // The step that deleted /etc/old has overlayfs's whiteout in its layer, and an OCI
    // `.wh.old` entry in its blob.
    let home = b.home.path();
    let whiteout_layer = fs::read_dir(home.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            fs::symlink_metadata(p.join("etc/old"))
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
        })
        .expect("no layer holds the whiteout of /etc/old");
    let diff_id = whiteout_layer
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let blob = home.join("blobs/sha256").join(&diff_id);
    let names: Vec<String> = tar::Archive::new(fs::File::open(&blob).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"etc/.wh.old".to_string()), "{names:?}");

    // Editing step 2 reruns step 2 only.
    fs::write(
        dir.path().join("berth.toml"),
        toml(&name, "echo two > /two"),
    )
    .unwrap();
    let err = up(&b, dir.path());
    assert!(
        err.contains("setup[0]: echo hi > /greeting (cached)"),
        "{err}"
    );
    assert!(!err.contains("setup[1]: echo two > /two (cached)"), "{err}");
    assert_eq!(exec(&b, dir.path(), &["cat", "/two"]), "two\n");
    assert_eq!(exec(&b, dir.path(), &["cat", "/etc/old"]), "old");

    // Prune drops the step edited away (and its whiteout layer), keeps what the
    // environment runs on.
    let o = b.run_in(dir.path(), &["image", "prune"]);
    let (_, err) = text(&o);
    assert!(
        o.status.success() && err.contains("removed 1 cached build steps"),
        "{err}"
    );
    assert!(!whiteout_layer.exists());
    assert_eq!(exec(&b, dir.path(), &["cat", "/two"]), "two\n");
    let ls: serde_json::Value =
        serde_json::from_slice(&b.run_in(dir.path(), &["image", "ls", "--json"]).stdout).unwrap();
    let builds = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with("build:"))
        .count();
    assert_eq!(builds, 2 + ca, "{ls}");
}
