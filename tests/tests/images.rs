//! End-to-end tests of `berth image …` against real registries (Debian's docker-registry on
//! loopback) and a fake one (bearer tokens, slow and corrupt blobs), with images the tests
//! build themselves from busybox-static.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_e2e::oci::{
    assert_blobs_intact, busybox_layer, layer_dir, sha256, tree_bytes, Compression, FakeRegistry,
    Image, Layer, Registry, Routes, TarBuilder,
};
use berth_e2e::{text, Berth};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

fn ok(b: &Berth, args: &[&str]) -> String {
    let o = b.run_in(Path::new("/"), args);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "berth {args:?} failed ({}):\n{out}\n{err}",
        o.status
    );
    out
}

fn fails(b: &Berth, args: &[&str]) -> String {
    let o = b.run_in(Path::new("/"), args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "berth {args:?} should fail:\n{out}\n{err}"
    );
    err
}

fn entries(home: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(home.join(sub))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid C strings and a writable buffer of the given length.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

/// Base: busybox + files the next layer deletes; top (zstd): a whiteout, an opaque dir, new files.
fn two_layer_image() -> Image {
    let bb = fs::read("/bin/busybox").unwrap();
    let mut t = TarBuilder::new();
    t.dir("bin/")
        .exec("bin/busybox", &bb)
        .symlink("bin/sh", "busybox")
        .hardlink("bin/ash", "bin/busybox");
    t.dir("etc/")
        .file("etc/old", b"old")
        .file("etc/keep", b"keep");
    t.dir("opt/").dir("opt/dir/").file("opt/dir/a", b"a");
    let base = Layer::new(t.finish(), Compression::Gzip);
    let mut t = TarBuilder::new();
    t.dir("etc/").file("etc/.wh.old", b"");
    t.dir("opt/")
        .dir("opt/dir/")
        .file("opt/dir/.wh..wh..opq", b"")
        .file("opt/dir/b", b"b");
    t.file("added", b"new");
    let top = Layer::new(t.finish(), Compression::Zstd);
    Image::new(vec![base, top], host_arch())
}

#[test]
fn pulls_multi_layer_gzip_and_zstd_image_with_whiteouts_from_a_real_registry() {
    let Some(reg) = Registry::start() else { return };
    let img = two_layer_image();
    reg.push_image("bb", "latest", &img);
    let b = Berth::new();
    let home = b.home.path();
    let reference = format!("{}/bb:latest", reg.addr);
    let out = ok(&b, &["image", "pull", &reference]);
    assert!(out.contains(&img.manifest_digest()), "{out}");

    let base = layer_dir(home, &img.layers[0].diff_id());
    let top = layer_dir(home, &img.layers[1].diff_id());
    assert_eq!(
        fs::read(base.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::metadata(base.join("bin/busybox")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(base.join("bin/ash")).unwrap().ino(),
        fs::metadata(base.join("bin/busybox")).unwrap().ino()
    );
    let o = std::process::Command::new(base.join("bin/busybox"))
        .args(["echo", "alive"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alive\n");
    // Whiteout as overlayfs wants it: a 0:0 character device; opaque dir as an xattr.
    let wh = fs::symlink_metadata(top.join("etc/old")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(!top.join("etc/.wh.old").exists() && !top.join("opt/dir/.wh..wh..opq").exists());
    let key = if is_root() {
        "trusted.overlay.opaque"
    } else {
        "user.overlay.opaque"
    };
    assert_eq!(xattr(&top.join("opt/dir"), key).as_deref(), Some(&b"y"[..]));

    // The exported root filesystem is the merged view.
    let tar = b.home.path().join("rootfs.tar");
    ok(
        &b,
        &["image", "export", &reference, "-o", tar.to_str().unwrap()],
    );
    let mut names: Vec<String> = tar::Archive::new(fs::File::open(&tar).unwrap())
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    for want in [
        "bin/busybox",
        "bin/sh",
        "bin/ash",
        "etc/keep",
        "opt/dir",
        "opt/dir/b",
        "added",
    ] {
        assert!(
            names.contains(&want.to_string()),
            "{want} missing from {names:?}"
        );
    }
    for gone in ["etc/old", "opt/dir/a", "etc/.wh.old"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} should be hidden: {names:?}"
        );
    }

    let ls: serde_json::Value = serde_json::from_str(&ok(&b, &["image", "ls", "--json"])).unwrap();
    assert_eq!(ls["images"][0]["name"], reference.as_str());
    assert_eq!(ls["images"][0]["layers"], 2);
    assert!(ls["total_size"].as_u64().unwrap() > 1_000_000);
    assert_blobs_intact(home);
    assert!(
        entries(home, "tmp").is_empty(),
        "tmp left: {:?}",
        entries(home, "tmp")
    );
}

#[test]
fn index_pull_chooses_the_host_platform() {
    let Some(reg) = Registry::start() else { return };
    let marker = |arch: &str| {
        let mut t = TarBuilder::new();
        t.file("arch", arch.as_bytes());
        Layer::new(t.finish(), Compression::Gzip)
    };
    let host = Image::new(
        vec![busybox_layer(Compression::Gzip), marker(host_arch())],
        host_arch(),
    );
    let other = Image::new(
        vec![busybox_layer(Compression::Gzip), marker(other_arch())],
        other_arch(),
    );
    reg.push_index(
        "multi",
        "1.0",
        &[(&other, other_arch()), (&host, host_arch())],
    );
    let b = Berth::new();
    let out = ok(&b, &["image", "pull", &format!("{}/multi:1.0", reg.addr)]);
    assert!(out.contains(&host.manifest_digest()), "{out}");
    let top = layer_dir(b.home.path(), &host.layers[1].diff_id());
    assert_eq!(fs::read_to_string(top.join("arch")).unwrap(), host_arch());
    assert!(!layer_dir(b.home.path(), &other.layers[1].diff_id()).exists());
}

#[test]
fn bearer_token_challenge_and_a_second_pull_fetches_no_blobs() {
    let img = Image::new(vec![busybox_layer(Compression::Gzip)], host_arch());
    let mut routes = Routes::default();
    img.routes("team/bb", "v1", &mut routes);
    let fake = FakeRegistry::start(routes, true);
    let b = Berth::new();
    let reference = format!("{}/team/bb:v1", fake.addr);
    ok(&b, &["image", "pull", &reference]);
    let seen = fake.requests();
    assert!(
        seen.iter().any(|s| s.path == "/token"),
        "no token request: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.path.contains("/blobs/") && s.authorized),
        "{seen:?}"
    );
    assert!(layer_dir(b.home.path(), &img.layers[0].diff_id())
        .join("bin/busybox")
        .is_file());
    fake.clear();
    ok(&b, &["image", "pull", &reference]);
    let again = fake.requests();
    assert!(
        again.iter().all(|s| !s.path.contains("/blobs/")),
        "second pull fetched blobs: {again:?}"
    );
    assert!(again.iter().any(|s| s.path.contains("/manifests/")));
}

/// A bearer token that expires in the middle of a pull (a real token service gives them a
/// lifetime of minutes; a big pull or a long build outlives one) is answered by asking for a
/// new one, and the pull goes on: every 401 after the first token is followed by a fresh
/// token and the same request again.
#[test]
fn a_bearer_token_that_expires_during_a_pull_is_renewed() {
    let mut second = TarBuilder::new();
    second.file("data/second", &[7u8; 4096]);
    let img = Image::new(
        vec![
            busybox_layer(Compression::Gzip),
            Layer::new(second.finish(), Compression::Gzip),
        ],
        host_arch(),
    );
    let mut routes = Routes::default();
    img.routes("team/expiring", "v1", &mut routes);
    let fake = FakeRegistry::start(routes, true);
    fake.tokens.expire_after(Duration::from_millis(300));
    // The config's body is held back past the first token's lifetime: the layers are asked
    // for with an expired token.
    *fake.hold.lock().unwrap() = Some(berth_e2e::oci::Hold {
        what: sha256(&img.config),
        until: "/never-asked".into(),
        limit: Duration::from_millis(900),
        ..Default::default()
    });
    let b = Berth::new();
    ok(
        &b,
        &["image", "pull", &format!("{}/team/expiring:v1", fake.addr)],
    );
    let hold = fake.hold.lock().unwrap().clone().unwrap();
    assert_eq!(hold.released_by_limit, 1, "the config was not held back");
    let seen = fake.requests();
    let refused_after_first_token = seen
        .iter()
        .skip_while(|s| s.path != "/token")
        .filter(|s| s.path.starts_with("/v2/") && !s.authorized)
        .count();
    assert!(
        refused_after_first_token >= 1 && fake.tokens.issued() >= 2,
        "the token never expired during the pull ({} tokens): {seen:?}",
        fake.tokens.issued()
    );
    for l in &img.layers {
        assert!(layer_dir(b.home.path(), &l.diff_id()).is_dir());
    }
}

#[test]
fn malicious_layers_are_rejected_and_nothing_escapes() {
    let canary = tempfile::tempdir().unwrap();
    let c = canary
        .path()
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            TarBuilder::new()
                .file(&format!("../../../../../../../../{c}/evil"), b"x")
                .finish(),
            "evil",
        ),
        (
            "symlink",
            TarBuilder::new()
                .symlink("link", canary.path().to_str().unwrap())
                .file("link/evil", b"x")
                .finish(),
            "link/evil",
        ),
        (
            "relative-symlink",
            TarBuilder::new()
                .dir("a/")
                .symlink("a/up", &format!("../../../../../../../../{c}"))
                .file("a/up/evil", b"x")
                .finish(),
            "a/up/evil",
        ),
        (
            "hardlink",
            TarBuilder::new()
                .hardlink("passwd", "../../../../../../../etc/passwd")
                .finish(),
            "passwd",
        ),
        (
            "hardlink-abs",
            TarBuilder::new().hardlink("passwd", "/etc/passwd").finish(),
            "passwd",
        ),
    ];
    for (name, tar, entry) in cases {
        let img = Image::new(vec![Layer::new(tar, Compression::Gzip)], host_arch());
        let mut routes = Routes::default();
        img.routes("evil", name, &mut routes);
        let fake = FakeRegistry::start(routes, false);
        let b = Berth::new();
        let err = fails(
            &b,
            &["image", "pull", &format!("{}/evil:{name}", fake.addr)],
        );
        assert!(
            err.contains("unsafe") && err.contains(entry),
            "{name}: {err}"
        );
        assert_eq!(
            fs::read_dir(canary.path()).unwrap().count(),
            0,
            "{name} wrote into the canary"
        );
        assert!(
            entries(b.home.path(), "layers").is_empty(),
            "{name}: {:?}",
            entries(b.home.path(), "layers")
        );
        assert!(entries(b.home.path(), "images").is_empty());
        assert!(
            entries(b.home.path(), "tmp").is_empty(),
            "{name}: {:?}",
            entries(b.home.path(), "tmp")
        );
    }
    assert!(fs::metadata("/etc/passwd").unwrap().nlink() == 1);
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_deleted_and_reported() {
    let img = Image::new(vec![busybox_layer(Compression::Gzip)], host_arch());
    let mut routes = Routes::default();
    img.routes("bb", "latest", &mut routes);
    let mut evil = img.layers[0].blob.clone();
    let mid = evil.len() / 2;
    evil[mid] ^= 0xff;
    routes.blob_as("bb", &img.layers[0].digest(), &evil);
    let fake = FakeRegistry::start(routes, false);
    let b = Berth::new();
    let err = fails(&b, &["image", "pull", &format!("{}/bb:latest", fake.addr)]);
    assert!(
        err.contains(&img.layers[0].digest()) && err.contains(&fake.addr),
        "{err}"
    );
    let blob = b
        .home
        .path()
        .join("blobs/sha256")
        .join(img.layers[0].digest().trim_start_matches("sha256:"));
    assert!(!blob.exists());
    assert!(entries(b.home.path(), "layers").is_empty());
    assert!(entries(b.home.path(), "tmp")
        .iter()
        .all(|e| !e.ends_with(".partial")));
    assert_blobs_intact(b.home.path());
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn kill_9_during_a_pull_then_pull_again_resumes_and_leaves_no_corrupt_blob() {
    let mut t = TarBuilder::new();
    t.file("big", &noise(4 << 20, 7));
    let img = Image::new(vec![Layer::new(t.finish(), Compression::None)], host_arch());
    let mut routes = Routes::default();
    img.routes("big", "latest", &mut routes);
    let fake = FakeRegistry::start(routes, false);
    fake.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let b = Berth::new();
    let reference = format!("{}/big:latest", fake.addr);
    let mut child = b
        .cmd()
        .args(["image", "pull", &reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = b.home.path().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .and_then(|e| e.metadata().ok())
            .is_some_and(|m| m.len() >= 1 << 20);
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "the pull never got going");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the slow pull finished too early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_blobs_intact(b.home.path());
    assert!(!b
        .home
        .path()
        .join("blobs/sha256")
        .join(img.layers[0].digest().trim_start_matches("sha256:"))
        .exists());
    fake.slow.store(false, std::sync::atomic::Ordering::SeqCst);
    fake.clear();
    ok(&b, &["image", "pull", &reference]);
    let resumed = fake
        .requests()
        .iter()
        .any(|s| s.path.contains("/blobs/") && s.range.is_some());
    assert!(
        resumed,
        "the second pull did not resume: {:?}",
        fake.requests()
    );
    assert_blobs_intact(b.home.path());
    let big = layer_dir(b.home.path(), &img.layers[0].diff_id()).join("big");
    assert_eq!(fs::read(big).unwrap(), noise(4 << 20, 7));
    assert!(entries(b.home.path(), "tmp")
        .iter()
        .all(|e| !e.ends_with(".partial")));
}

#[test]
fn images_sharing_a_base_store_it_once() {
    let Some(reg) = Registry::start() else { return };
    let base = busybox_layer(Compression::Gzip);
    let images: Vec<Image> = (0..3)
        .map(|i| {
            let mut t = TarBuilder::new();
            t.file(&format!("app{i}"), &noise(10_000, i + 1));
            Image::new(
                vec![base.clone(), Layer::new(t.finish(), Compression::Gzip)],
                host_arch(),
            )
        })
        .collect();
    for (i, img) in images.iter().enumerate() {
        reg.push_image("app", &format!("v{i}"), img);
    }
    let b = Berth::new();
    ok(&b, &["image", "pull", &format!("{}/app:v0", reg.addr)]);
    let one = tree_bytes(b.home.path());
    for i in 1..3 {
        ok(&b, &["image", "pull", &format!("{}/app:v{i}", reg.addr)]);
    }
    let three = tree_bytes(b.home.path());
    let base_size = base.blob.len() as u64 + base.tar.len() as u64;
    let differing: u64 = images[1..]
        .iter()
        .map(|i| (i.layers[1].blob.len() + i.layers[1].tar.len()) as u64)
        .sum();
    let growth = three - one;
    eprintln!("store after 1 image: {one} B, after 3: {three} B, growth {growth} B, differing layers {differing} B");
    // Growth is the differing layers plus small metadata (configs, manifests, records).
    assert!(
        growth < differing + 40_000,
        "store grew {growth} B for {differing} B of differing layers"
    );
    assert!(growth < base_size / 4);
    assert_eq!(
        entries(b.home.path(), "layers")
            .iter()
            .filter(|e| !e.ends_with(".json"))
            .count(),
        4
    );
    let ls: serde_json::Value = serde_json::from_str(&ok(&b, &["image", "ls", "--json"])).unwrap();
    let sum: u64 = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["size"].as_u64().unwrap())
        .sum();
    assert!(
        ls["total_size"].as_u64().unwrap() < sum,
        "shared layers must count once: {ls}"
    );
}

#[test]
fn rm_and_prune_keep_what_environments_use() {
    let Some(reg) = Registry::start() else { return };
    let base = busybox_layer(Compression::Gzip);
    let mk = |n: u64| {
        let mut t = TarBuilder::new();
        t.file(&format!("f{n}"), &noise(1000, n));
        Image::new(
            vec![base.clone(), Layer::new(t.finish(), Compression::Gzip)],
            host_arch(),
        )
    };
    let (a, c) = (mk(1), mk(2));
    reg.push_image("p", "a", &a);
    reg.push_image("p", "c", &c);
    let b = Berth::new();
    let home = b.home.path();
    let (ra, rc) = (format!("{}/p:a", reg.addr), format!("{}/p:c", reg.addr));
    ok(&b, &["image", "pull", &ra]);
    ok(&b, &["image", "pull", &rc]);
    ok(&b, &["image", "rm", &ra]);
    ok(&b, &["image", "prune"]);
    assert!(
        !layer_dir(home, &a.layers[1].diff_id()).exists(),
        "a's own layer should be pruned"
    );
    assert!(
        layer_dir(home, &base.diff_id()).exists()
            && layer_dir(home, &c.layers[1].diff_id()).exists()
    );
    // An environment that uses c's layers keeps them after c's record is gone.
    fs::create_dir_all(home.join("envs/web-1234abcd")).unwrap();
    let state = serde_json::json!({"layers": [base.diff_id(), c.layers[1].diff_id()]});
    fs::write(home.join("envs/web-1234abcd/env.json"), state.to_string()).unwrap();
    ok(&b, &["image", "rm", &rc]);
    ok(&b, &["image", "prune"]);
    assert!(
        layer_dir(home, &base.diff_id()).exists()
            && layer_dir(home, &c.layers[1].diff_id()).exists()
    );
    fs::remove_dir_all(home.join("envs/web-1234abcd")).unwrap();
    // What a killed pull leaves behind goes too.
    fs::create_dir_all(home.join("tmp/layer-999-dead/usr")).unwrap();
    fs::write(home.join("tmp/blob-abc.partial"), b"half").unwrap();
    ok(&b, &["image", "prune"]);
    assert!(
        entries(home, "tmp").is_empty(),
        "{:?}",
        entries(home, "tmp")
    );
    assert!(
        entries(home, "layers").is_empty(),
        "{:?}",
        entries(home, "layers")
    );
    assert!(
        entries(home, "blobs/sha256").is_empty(),
        "{:?}",
        entries(home, "blobs/sha256")
    );
    let err = fails(&b, &["image", "rm", &ra]);
    assert!(err.contains("no image named"), "{err}");
}

#[test]
fn rootfs_tar_and_oci_layout_round_trip_and_ci_cache_restores_a_store() {
    let b = Berth::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    fs::write(root.join("hello"), b"world").unwrap();
    ok(
        &b,
        &[
            "image",
            "import",
            root.to_str().unwrap(),
            "--name",
            "local/dir",
        ],
    );
    let tar = work.path().join("rootfs.tar");
    ok(
        &b,
        &["image", "export", "local/dir", "-o", tar.to_str().unwrap()],
    );
    ok(
        &b,
        &[
            "image",
            "import",
            tar.to_str().unwrap(),
            "--name",
            "local/tar",
        ],
    );
    let ls: serde_json::Value = serde_json::from_str(&ok(&b, &["image", "ls", "--json"])).unwrap();
    let imgs = ls["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 2);
    // Folder and its exported tar give the same layer (deterministic tar, content-keyed).
    assert_eq!(ls["total_layers"], 1, "{ls}");

    let oci = work.path().join("oci");
    ok(
        &b,
        &[
            "image",
            "export",
            "local/dir",
            "--oci",
            "-o",
            oci.to_str().unwrap(),
        ],
    );
    assert!(oci.join("oci-layout").is_file() && oci.join("index.json").is_file());
    if Path::new("/usr/bin/skopeo").exists() {
        let o = std::process::Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:latest", oci.display())])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo rejects the layout: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let b2 = Berth::new();
    ok(
        &b2,
        &[
            "image",
            "import",
            oci.to_str().unwrap(),
            "--name",
            "from/oci",
        ],
    );
    let hello = fs::read_dir(b2.home.path().join("layers"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path()
        .join("hello");
    assert_eq!(fs::read(hello).unwrap(), b"world");

    let cache = work.path().join("cache");
    ok(&b, &["image", "export", "--cache", cache.to_str().unwrap()]);
    let b3 = Berth::new();
    ok(
        &b3,
        &["image", "import", "--cache", cache.to_str().unwrap()],
    );
    let ls3: serde_json::Value =
        serde_json::from_str(&ok(&b3, &["image", "ls", "--json"])).unwrap();
    assert_eq!(ls3["images"].as_array().unwrap().len(), 2);
    assert_eq!(ls3["total_size"], ls["total_size"]);
    assert_blobs_intact(b3.home.path());
}

#[test]
fn concurrent_pulls_and_a_prune_during_a_pull_are_safe() {
    let mut t = TarBuilder::new();
    t.file("big", &noise(2 << 20, 11));
    let img = Image::new(
        vec![
            busybox_layer(Compression::Gzip),
            Layer::new(t.finish(), Compression::Gzip),
        ],
        host_arch(),
    );
    let mut routes = Routes::default();
    img.routes("c", "latest", &mut routes);
    let fake = FakeRegistry::start(routes, false);
    fake.slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let b = Berth::new();
    let reference = format!("{}/c:latest", fake.addr);
    let spawn = |args: &[&str]| {
        b.cmd()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let p1 = spawn(&["image", "pull", &reference]);
    let p2 = spawn(&["image", "pull", &reference]);
    // Start prune once a download is under way: it must wait for the pulls, not delete
    // their partial blobs or fresh layers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_dir(b.home.path().join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
    {
        assert!(Instant::now() < deadline, "no download started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pr = spawn(&["image", "prune"]);
    for c in [p1, p2, pr] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for l in &img.layers {
        assert!(layer_dir(b.home.path(), &l.diff_id()).is_dir());
    }
    assert_eq!(
        fs::read(layer_dir(b.home.path(), &img.layers[1].diff_id()).join("big")).unwrap(),
        noise(2 << 20, 11)
    );
    assert_blobs_intact(b.home.path());
    let ls: serde_json::Value = serde_json::from_str(&ok(&b, &["image", "ls", "--json"])).unwrap();
    assert_eq!(ls["images"].as_array().unwrap().len(), 1);
}

#[test]
fn pulls_an_image_built_by_umoci_and_pushed_by_skopeo() {
    if !Path::new("/usr/bin/umoci").exists() || !Path::new("/usr/bin/skopeo").exists() {
        eprintln!("SKIP: umoci and skopeo are needed (apt-get install umoci skopeo)");
        return;
    }
    let Some(reg) = Registry::start() else { return };
    let w = tempfile::tempdir().unwrap();
    let src = w.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    fs::write(src.join("hostname"), b"bb\n").unwrap();
    let run = |args: &[&str]| {
        let o = std::process::Command::new(args[0])
            .args(&args[1..])
            .current_dir(w.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["umoci", "init", "--layout", "oci"]);
    run(&["umoci", "new", "--image", "oci:bb"]);
    run(&["umoci", "insert", "--image", "oci:bb", "src", "/"]);
    run(&[
        "umoci",
        "config",
        "--image",
        "oci:bb",
        "--config.cmd",
        "/bin/sh",
    ]);
    let dest = format!("docker://{}/umoci/bb:latest", reg.addr);
    run(&[
        "skopeo",
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "oci:oci:bb",
        &dest,
    ]);
    let b = Berth::new();
    ok(
        &b,
        &["image", "pull", &format!("{}/umoci/bb:latest", reg.addr)],
    );
    let layer = fs::read_dir(b.home.path().join("layers"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    assert_eq!(
        fs::read(layer.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(fs::read(layer.join("hostname")).unwrap(), b"bb\n");
    // The OCI layout umoci wrote imports as the same image.
    let b2 = Berth::new();
    let layout = w.path().join("oci");
    ok(
        &b2,
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "umoci/bb",
        ],
    );
    let ls1: serde_json::Value = serde_json::from_str(&ok(&b, &["image", "ls", "--json"])).unwrap();
    let ls2: serde_json::Value =
        serde_json::from_str(&ok(&b2, &["image", "ls", "--json"])).unwrap();
    assert_eq!(ls1["images"][0]["id"], ls2["images"][0]["id"]);
    assert_eq!(
        ls1["images"][0]["manifest_digest"],
        ls2["images"][0]["manifest_digest"]
    );
}

#[test]
fn token_service_gets_credentials_from_docker_config() {
    let img = Image::new(vec![busybox_layer(Compression::Gzip)], host_arch());
    let mut routes = Routes::default();
    img.routes("private/bb", "v1", &mut routes);
    let fake = FakeRegistry::start_with(routes, true, Some("ci-user:s3cret"));
    let reference = format!("{}/private/bb:v1", fake.addr);
    // Without credentials the token service refuses.
    let b = Berth::new();
    let err = fails(&b, &["image", "pull", &reference]);
    assert!(
        err.contains("refused access") && err.contains("berth login"),
        "{err}"
    );
    // With ~/.docker/config.json-style credentials (auths.<host>.auth = base64 user:password).
    let cfg = tempfile::tempdir().unwrap();
    let auth = format!(
        r#"{{"auths":{{"{}":{{"auth":"Y2ktdXNlcjpzM2NyZXQ="}}}}}}"#,
        fake.addr
    );
    fs::write(cfg.path().join("config.json"), auth).unwrap();
    let o = b
        .cmd()
        .env("DOCKER_CONFIG", cfg.path())
        .args(["image", "pull", &reference])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(layer_dir(b.home.path(), &img.layers[0].diff_id())
        .join("bin/busybox")
        .is_file());
}

#[test]
fn insecure_falls_back_to_plain_http_for_a_registry_off_loopback() {
    let Some(ip) = berth_e2e::oci::non_loopback_ipv4() else {
        eprintln!("SKIP: this machine has no non-loopback IPv4 address");
        return;
    };
    let img = Image::new(vec![busybox_layer(Compression::Gzip)], host_arch());
    let mut routes = Routes::default();
    img.routes("bb", "latest", &mut routes);
    let fake = FakeRegistry::start_on(&ip, routes, false, None);
    let b = Berth::new();
    let reference = format!("{}/bb:latest", fake.addr);
    // Not loopback: HTTPS only, which this plain-HTTP registry cannot speak.
    let err = fails(&b, &["image", "pull", &reference]);
    assert!(
        err.contains("https://") && err.contains("--insecure"),
        "{err}"
    );
    ok(&b, &["image", "pull", "--insecure", &reference]);
    assert!(layer_dir(b.home.path(), &img.layers[0].diff_id())
        .join("bin/busybox")
        .is_file());
}
