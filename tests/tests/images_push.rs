//! `berth image push`, `berth login` / `logout` and the credential sources, through the real
//! binary against Debian's real `docker-registry` on loopback (plain and with htpasswd
//! authentication), read back by berth on fresh homes and by `skopeo`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_e2e::host::{busybox_rootfs, files_containing};
use berth_e2e::oci::{FakeRegistry, Registry, Routes};
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// A password no berth file or output may ever contain.
const MARKER_PASSWORD: &str = "Marker-Pw-4417xq";

fn run(b: &Berth, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = b.cmd();
    c.current_dir("/").args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(b: &Berth, envs: &[(&str, &str)], args: &[&str]) -> (String, String) {
    let o = run(b, envs, args);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "berth {args:?} failed ({}):\n{out}\n{err}",
        o.status
    );
    (out, err)
}

fn fails(b: &Berth, envs: &[(&str, &str)], args: &[&str]) -> String {
    let o = run(b, envs, args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "berth {args:?} should fail:\n{out}\n{err}"
    );
    err
}

/// A busybox root filesystem plus `size` bytes of incompressible data, imported as
/// `name` (one uncompressed layer, as berth's own layers are).
fn local_image(b: &Berth, dir: &Path, name: &str, size: usize, seed: u8) {
    busybox_rootfs(dir);
    let mut data = vec![0u8; size];
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    for byte in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *byte = x as u8;
    }
    fs::write(dir.join("data.bin"), data).unwrap();
    ok(
        b,
        &[],
        &["image", "import", dir.to_str().unwrap(), "--name", name],
    );
}

/// A fresh home holding `local/app` ([`local_image`]; its source tree is gone after).
fn home_with_image(size: usize, seed: u8) -> Berth {
    let b = Berth::new();
    let src = tempfile::tempdir().unwrap();
    local_image(&b, &src.path().join("rootfs"), "local/app", size, seed);
    b
}

/// The digest berth printed for a push (`REF@sha256:…` on stdout).
fn pushed_digest(out: &str) -> String {
    out.trim()
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| panic!("no digest in {out:?}"))
}

fn image_ls(b: &Berth, envs: &[(&str, &str)]) -> serde_json::Value {
    serde_json::from_str(&ok(b, envs, &["image", "ls", "--json"]).0).unwrap()
}

fn uploads(requests: &[String]) -> Vec<&String> {
    requests
        .iter()
        .filter(|r| r.starts_with("PATCH ") || (r.starts_with("PUT ") && r.contains("/blobs/")))
        .collect()
}

#[test]
fn pushed_images_pull_back_with_identical_digests_and_skopeo_reads_them() {
    let Some(reg) = Registry::start() else { return };
    let b = home_with_image(300_000, 1);
    let target = format!("{}/team/app:v1", reg.addr);
    let (out, err) = ok(&b, &[], &["image", "push", &target, "local/app"]);
    let digest = pushed_digest(&out);
    assert!(err.contains("compressing (gzip)"), "{err}");

    // skopeo sees an index under the tag whose one entry is the manifest berth printed,
    // and the image behind it.
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(index["manifests"][0]["platform"]["os"], "linux");
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}"))
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(inspect["Os"], "linux");
    let manifest = skopeo_manifest(&format!("{}/team/app@{digest}", reg.addr));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(manifest["layers"][0]["digest"], inspect["Layers"][0]);

    // A fresh home pulls the same manifest and image id.
    let b2 = Berth::new();
    let (pulled, _) = ok(&b2, &[], &["image", "pull", &target]);
    assert_eq!(pulled.trim(), format!("{target} {digest}"));
    let (mine, theirs) = (image_ls(&b, &[]), image_ls(&b2, &[]));
    assert_eq!(mine["images"][0]["id"], theirs["images"][0]["id"]);

    // zstd on request; berth reads it back too.
    let zst = format!("{}/team/app:zstd", reg.addr);
    let (out, _) = ok(
        &b,
        &[],
        &["image", "push", "--compression", "zstd", &zst, "local/app"],
    );
    let b3 = Berth::new();
    let (pulled, _) = ok(&b3, &[], &["image", "pull", &zst]);
    assert_eq!(pulled.trim(), format!("{zst} {}", pushed_digest(&out)));
    let manifest = skopeo_manifest(&format!("{}/team/app@{}", reg.addr, pushed_digest(&out)));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
}

/// The manifest at `reference` (`host/repo@digest`) as skopeo reads it.
fn skopeo_manifest(reference: &str) -> serde_json::Value {
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    serde_json::from_slice(&raw.stdout).unwrap()
}

#[test]
fn a_second_push_sends_nothing_and_another_repository_mounts_the_blobs() {
    let Some(reg) = Registry::start() else { return };
    let b = home_with_image(200_000, 2);
    let first = format!("{}/team/app:v1", reg.addr);
    let (out, _) = ok(&b, &[], &["image", "push", &first, "local/app"]);
    let digest = pushed_digest(&out);
    assert_eq!(uploads(&reg.requests()).len(), 2, "{:?}", reg.requests());

    // Again: only existence checks and the manifests.
    let before = reg.requests().len();
    let (out, err) = ok(&b, &[], &["image", "push", &first, "local/app"]);
    assert_eq!(pushed_digest(&out), digest, "same input, same digest");
    let again: Vec<String> = reg.requests()[before..].to_vec();
    assert!(uploads(&again).is_empty(), "{again:?}");
    assert!(
        !again.iter().any(|r| r.contains("/blobs/uploads/")),
        "{again:?}"
    );
    assert!(
        err.contains("0 blobs sent") && err.contains("2 already there"),
        "{err}"
    );

    // Another repository of the registry: the blobs are mounted, not sent.
    let before = reg.requests().len();
    let other = format!("{}/other/app:v1", reg.addr);
    let (out, err) = ok(&b, &[], &["image", "push", &other, "local/app"]);
    assert_eq!(pushed_digest(&out), digest);
    let mounted: Vec<String> = reg.requests()[before..].to_vec();
    assert!(uploads(&mounted).is_empty(), "{mounted:?}");
    assert!(
        mounted.iter().any(
            |r| r.starts_with("POST /v2/other/app/blobs/uploads/?mount=")
                && r.contains("from=team/app")
                && r.ends_with(" 201")
        ),
        "{mounted:?}"
    );
    assert!(err.contains("2 mounted"), "{err}");

    // Compressing again (what berth remembers of earlier compressions forgotten) gives the
    // same blob. Its digest is known only once it is compressed, and it is compressed
    // while it is sent (as docker and skopeo do for a layer they compress), so it is sent
    // once more, under the same digest; after that the digest is known again and nothing
    // is sent.
    fs::remove_dir_all(b.home.path().join("push")).unwrap();
    let (out, err) = ok(&b, &[], &["image", "push", &first, "local/app"]);
    assert!(err.contains("compressing (gzip)"), "{err}");
    assert_eq!(pushed_digest(&out), digest);
    let before = reg.requests().len();
    let (out, _) = ok(&b, &[], &["image", "push", &first, "local/app"]);
    assert_eq!(pushed_digest(&out), digest);
    assert!(uploads(&reg.requests()[before..]).is_empty());
}

#[test]
fn an_interrupted_push_resumes_and_a_registry_that_is_down_is_named() {
    let Some(mut reg) = Registry::start() else {
        return;
    };
    let b = home_with_image(1 << 20, 3);
    let target = format!("{}/team/app:v1", reg.addr);
    let chunk = [("BERTH_PUSH_CHUNK_SIZE", "262144")];

    // Killed (as kill -9 would) after the first chunk reached the registry.
    let o = run(
        &b,
        &[chunk[0], ("BERTH_ABORT_AT", "push-chunk")],
        &["image", "push", &target, "local/app"],
    );
    assert!(o.status.signal().is_some(), "{:?}", text(&o));
    let journal = b.home.path().join("push/uploads");
    assert_eq!(fs::read_dir(&journal).unwrap().count(), 1);

    // The registry restarts in between; the upload session survives on its disk.
    reg.restart();
    let before = reg.requests().len();
    let (out, err) = ok(&b, &chunk, &["image", "push", &target, "local/app"]);
    assert!(
        err.contains("resumed an interrupted upload at byte 262144"),
        "{err}"
    );
    assert!(err.contains("1 resumed"), "{err}");
    let patches = reg.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("PATCH "))
        .count();
    let manifest = skopeo_manifest(&format!("{}/team/app@{}", reg.addr, pushed_digest(&out)));
    let layer_size = manifest["layers"][0]["size"].as_u64().unwrap();
    assert_eq!(
        patches as u64,
        layer_size.div_ceil(262_144) - 1,
        "the resumed push sends every chunk but the first, once"
    );
    assert_eq!(
        fs::read_dir(&journal).unwrap().count(),
        0,
        "journal cleared"
    );
    let b2 = Berth::new();
    let (pulled, _) = ok(&b2, &[], &["image", "pull", &target]);
    assert_eq!(pulled.trim(), format!("{target} {}", pushed_digest(&out)));

    // The layer was compressed while it was sent, and the resumed upload compressed it
    // again from the start: the same bytes as a push that was never interrupted (what
    // berth remembers of the compression forgotten, so the layer is compressed and sent
    // whole to another repository).
    fs::remove_dir_all(b.home.path().join("push")).unwrap();
    let straight = format!("{}/team/straight:v1", reg.addr);
    let (again, err) = ok(&b, &chunk, &["image", "push", &straight, "local/app"]);
    assert!(
        err.contains("compressing (gzip)") && !err.contains("resumed"),
        "{err}"
    );
    assert_eq!(pushed_digest(&again), pushed_digest(&out));
    let straight_manifest = skopeo_manifest(&format!(
        "{}/team/straight@{}",
        reg.addr,
        pushed_digest(&again)
    ));
    assert_eq!(straight_manifest["layers"], manifest["layers"]);

    // Registry down: a message naming it, then a push that completes once it is back.
    reg.stop();
    let err = fails(
        &b,
        &[],
        &[
            "image",
            "push",
            &format!("{}/team/app:v2", reg.addr),
            "local/app",
        ],
    );
    assert!(
        err.contains("cannot reach registry") && err.contains(&reg.addr),
        "{err}"
    );
    reg.restart();
    ok(
        &b,
        &[],
        &[
            "image",
            "push",
            &format!("{}/team/app:v2", reg.addr),
            "local/app",
        ],
    );
}

fn assert_no_secret(home: &Path, outputs: &str) {
    assert!(!outputs.contains(MARKER_PASSWORD), "{outputs}");
    let found = files_containing(home, MARKER_PASSWORD);
    assert!(found.is_empty(), "the password is in {found:?}");
}

fn login(b: &Berth, envs: &[(&str, &str)], registry: &str, password: &str) -> Output {
    let mut c = b.cmd();
    c.current_dir("/")
        .args(["login", "-u", "alice", "--password-stdin", registry])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn login_push_pull_logout_with_a_password_protected_registry() {
    let Some(reg) = Registry::start_with_htpasswd("alice", MARKER_PASSWORD) else {
        return;
    };
    let b = home_with_image(100_000, 4);
    let cfg = tempfile::tempdir().unwrap();
    let cfg_file = cfg.path().join("config.json");
    // Other settings and logins in docker's file are kept.
    fs::write(
        &cfg_file,
        r#"{"auths":{"other.example":{"auth":"eDp5"}},"detachKeys":"ctrl-x"}"#,
    )
    .unwrap();
    let docker = [("DOCKER_CONFIG", cfg.path().to_str().unwrap())];
    let target = format!("{}/team/app:v1", reg.addr);
    let mut outputs = String::new();

    let err = fails(&b, &docker, &["image", "push", &target, "local/app"]);
    assert!(
        err.contains("needs a user name and password") && err.contains("berth login"),
        "{err}"
    );
    outputs += &err;

    // A wrong password: refused, nothing saved.
    let o = login(&b, &docker, &reg.addr, "wrong-password");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("refused the login") && err.contains("nothing was saved"),
        "{err}"
    );
    assert!(!fs::read_to_string(&cfg_file).unwrap().contains(&reg.addr));
    outputs += &format!("{out}{err}");

    let o = login(&b, &docker, &reg.addr, MARKER_PASSWORD);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    outputs += &format!("{out}{err}");
    let meta = fs::metadata(&cfg_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_file).unwrap()).unwrap();
    assert_eq!(saved["detachKeys"], "ctrl-x");
    assert_eq!(saved["auths"]["other.example"]["auth"], "eDp5");
    assert!(saved["auths"][&reg.addr]["auth"].is_string());

    let (out, err) = ok(&b, &docker, &["image", "push", &target, "local/app"]);
    outputs += &format!("{out}{err}");
    let digest = pushed_digest(&out);
    let b2 = Berth::new();
    let (pulled, err) = ok(&b2, &docker, &["image", "pull", &target]);
    assert_eq!(pulled.trim(), format!("{target} {digest}"));
    outputs += &format!("{pulled}{err}");

    // A changed password on the registry's side: the saved one is refused, clearly.
    fs::write(
        &cfg_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6c3RhbGU="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let b3 = Berth::new();
    let err = fails(&b3, &docker, &["image", "pull", &target]);
    assert!(
        err.contains("were refused") && err.contains(cfg_file.to_str().unwrap()),
        "{err}"
    );
    let o = login(&b, &docker, &reg.addr, MARKER_PASSWORD);
    assert!(o.status.success());

    let (out, err) = ok(&b, &docker, &["logout", &reg.addr]);
    assert!(err.contains("Removed"), "{err}");
    outputs += &format!("{out}{err}");
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_file).unwrap()).unwrap();
    assert!(saved["auths"].get(&reg.addr).is_none(), "{saved}");
    let err = fails(&b3, &docker, &["image", "pull", &target]);
    assert!(err.contains("berth login"), "{err}");

    for home in [&b, &b2, &b3] {
        assert_no_secret(home.home.path(), &outputs);
    }
}

#[test]
fn credential_helpers_and_podmans_auth_file_are_used() {
    let Some(reg) = Registry::start_with_htpasswd("alice", MARKER_PASSWORD) else {
        return;
    };
    let b = home_with_image(50_000, 5);
    let tools = tempfile::tempdir().unwrap();
    let store = tools.path().join("stored.json");
    let helper = tools.path().join("docker-credential-test");
    fs::write(
        &helper,
        format!(
            r#"#!/bin/sh
case "$1" in
get) read server
     if [ "$server" = "{addr}" ] && [ -f {store} ]; then cat {store}; else echo "credentials not found in native keychain"; exit 1; fi;;
store) cat > {store};;
erase) read server; rm -f {store};;
esac
"#,
            addr = reg.addr,
            store = store.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cfg = tempfile::tempdir().unwrap();
    let cfg_file = cfg.path().join("config.json");
    fs::write(
        &cfg_file,
        format!(r#"{{"credHelpers":{{"{}":"test"}}}}"#, reg.addr),
    )
    .unwrap();
    let envs = [
        ("DOCKER_CONFIG", cfg.path().to_str().unwrap()),
        ("PATH", path.as_str()),
    ];
    let target = format!("{}/team/app:v1", reg.addr);

    // The helper has nothing yet: berth asks for a login.
    let err = fails(&b, &envs, &["image", "push", &target, "local/app"]);
    assert!(err.contains("berth login"), "{err}");
    // Login stores through the helper; docker's file gets no password.
    let o = login(&b, &envs, &reg.addr, MARKER_PASSWORD);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("docker-credential-test"), "{err}");
    let stored: serde_json::Value = serde_json::from_slice(&fs::read(&store).unwrap()).unwrap();
    assert_eq!(stored["Secret"], MARKER_PASSWORD);
    assert_eq!(stored["ServerURL"], reg.addr.as_str());
    assert!(!fs::read_to_string(&cfg_file)
        .unwrap()
        .contains(MARKER_PASSWORD));
    // Push and pull get the credentials from the helper.
    let (pushed, perr) = ok(&b, &envs, &["image", "push", &target, "local/app"]);
    let b2 = Berth::new();
    ok(&b2, &envs, &["image", "pull", &target]);
    assert_no_secret(b.home.path(), &format!("{out}{err}{pushed}{perr}"));
    // Logout erases it from the helper.
    ok(&b, &envs, &["logout", &reg.addr]);
    assert!(!store.exists());

    // podman's auth file (REGISTRY_AUTH_FILE, as podman reads it) when docker's has none.
    let podman = tools.path().join("auth.json");
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{MARKER_PASSWORD}"));
    fs::write(
        &podman,
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let empty = tempfile::tempdir().unwrap();
    let b3 = Berth::new();
    ok(
        &b3,
        &[
            ("DOCKER_CONFIG", empty.path().to_str().unwrap()),
            ("REGISTRY_AUTH_FILE", podman.to_str().unwrap()),
        ],
        &["image", "pull", &target],
    );
    assert_no_secret(b3.home.path(), "");
}

#[test]
fn the_environments_built_image_is_pushed_from_its_project_folder() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    let b = Berth::new();
    let project = Project::new(
        "berth-push-",
        "push",
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
setup = ["echo built-by-setup > /greeting"]
"#,
    );
    let target = format!("{}/team/env:v1", reg.addr);
    let err = {
        let o = b.run_in(project.path(), &["image", "push", &target]);
        assert_eq!(o.status.code(), Some(1));
        text(&o).1
    };
    assert!(err.contains("berth up"), "{err}");
    b.ok(project.path(), &["up"]);
    let out = b.ok(project.path(), &["image", "push", &target]);
    let digest = pushed_digest(&out);

    let b2 = Berth::new();
    let (pulled, _) = ok(&b2, &[], &["image", "pull", &target]);
    assert_eq!(pulled.trim(), format!("{target} {digest}"));
    let ls = image_ls(&b2, &[]);
    assert!(ls["images"][0]["layers"].as_u64().unwrap() >= 2, "{ls}");
    let tar = tempfile::tempdir().unwrap();
    let tar = tar.path().join("rootfs.tar");
    ok(
        &b2,
        &[],
        &["image", "export", &target, "-o", tar.to_str().unwrap()],
    );
    let list = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("greeting")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&list.stdout), "built-by-setup\n");
    b.ok(project.path(), &["destroy"]);
}

#[test]
fn credentials_never_follow_an_upload_sent_to_another_host() {
    // A hostile registry (bearer tokens, with credentials from docker's file) answers the
    // upload request with a Location on another host: berth must not go there, least of
    // all with the registry's token or the user's password.
    let elsewhere = FakeRegistry::start(Routes::default(), false);
    let mut routes = Routes::default();
    routes.upload_location(
        "team/app",
        &format!("http://{}/v2/steal/blobs/uploads/x", elsewhere.addr),
    );
    let hostile = FakeRegistry::start_with(routes, true, Some("ci-user:s3cret"));
    let b = home_with_image(10_000, 6);
    let cfg = tempfile::tempdir().unwrap();
    fs::write(
        cfg.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Y2ktdXNlcjpzM2NyZXQ="}}}}}}"#,
            hostile.addr
        ),
    )
    .unwrap();
    let err = fails(
        &b,
        &[("DOCKER_CONFIG", cfg.path().to_str().unwrap())],
        &[
            "image",
            "push",
            &format!("{}/team/app:v1", hostile.addr),
            "local/app",
        ],
    );
    assert!(err.contains("uploads only to the registry itself"), "{err}");
    // The hostile registry was reached with its token (the push scope was granted)...
    assert!(
        hostile.requests().iter().any(|r| r.authorized),
        "{:?}",
        hostile.requests()
    );
    // ...and nothing at all went elsewhere.
    assert!(
        elsewhere.requests().is_empty(),
        "{:?}",
        elsewhere.requests()
    );
}

#[test]
fn the_password_prompt_on_a_terminal_does_not_echo() {
    if !berth_e2e::host::have("expect", "-v") {
        eprintln!("SKIP: expect is not installed (apt-get install expect)");
        return;
    }
    let Some(reg) = Registry::start_with_htpasswd("alice", MARKER_PASSWORD) else {
        return;
    };
    let b = Berth::new();
    let cfg = tempfile::tempdir().unwrap();
    // Everything the terminal shows is in expect's output (log_user is on).
    let script = format!(
        r#"set timeout 60
spawn {exe} login {addr}
expect {{
    timeout {{ exit 99 }}
    "Username: "
}}
send "alice\r"
expect {{
    timeout {{ exit 99 }}
    "Password: "
}}
send "{MARKER_PASSWORD}\r"
expect {{
    timeout {{ exit 99 }}
    eof
}}
catch wait result
exit [lindex $result 3]
"#,
        exe = berth_e2e::berth_bin().display(),
        addr = reg.addr
    );
    let o = Command::new("expect")
        .args(["-c", &script])
        .env("BERTH_HOME", b.home.path())
        .env("DOCKER_CONFIG", cfg.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("Login Succeeded"), "{out}");
    assert!(out.contains("alice"), "the user name is echoed: {out}");
    assert_no_secret(b.home.path(), &format!("{out}{err}"));
    let saved = fs::read_to_string(cfg.path().join("config.json")).unwrap();
    assert!(saved.contains(&reg.addr), "{saved}");
}
