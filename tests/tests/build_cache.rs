//! The registry build cache (`[image].cache`, `berth up --cache-from/--cache-to`) through the
//! real binary: two berth homes are two machines sharing Debian's real `docker-registry` on
//! loopback (with and without htpasswd). A hostile cache is a hand-written server serving
//! entries under the real step keys with layers that do not verify or try to leave their
//! folder.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use berth_e2e::oci::{Compression, FakeRegistry, Layer, Registry, Routes, TarBuilder};
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn toml(setup2: &str, extra: &str) -> String {
    format!(
        r#"name = "{{name}}"
[image]
from = "rootfs:./rootfs"
setup = ["echo RAN-STEP-ONE; echo one > /one.txt", "{setup2}"]
{extra}
"#
    )
}

fn run(b: &Berth, dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = b.cmd();
    c.current_dir(dir).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Runs berth, which must succeed; its stderr.
fn ok(b: &Berth, dir: &Path, envs: &[(&str, &str)], args: &[&str]) -> String {
    let o = run(b, dir, envs, args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "berth {args:?} failed:\n{out}\n{err}");
    err
}

/// The cached build steps of a home: (name, image id, manifest digest), sorted.
fn build_images(b: &Berth) -> Vec<(String, String, String)> {
    let o = run(b, Path::new("/"), &[], &["image", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out: Vec<(String, String, String)> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with("build:"))
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["id"].as_str().unwrap().to_string(),
                i["manifest_digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The layers the environment of `dir` runs on (from `env.json`).
fn env_layers(b: &Berth, name: &str) -> Vec<String> {
    let envs = b.home.path().join("envs");
    for e in fs::read_dir(&envs).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(name) {
            let v: serde_json::Value =
                serde_json::from_slice(&fs::read(e.path().join("env.json")).unwrap()).unwrap();
            return v["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
        }
    }
    panic!("no environment {name} in {}", envs.display());
}

/// Requests that write to the registry (from its access log).
fn writes(reg: &Registry) -> Vec<String> {
    reg.requests()
        .into_iter()
        .filter(|r| {
            ["PUT ", "POST ", "PATCH ", "DELETE "]
                .iter()
                .any(|m| r.starts_with(m))
        })
        .collect()
}

/// Lines of a build's output that show a setup step running: what the steps print
/// (`  | RAN-STEP-…`), and the line starting each one (`setup[N]: … …`).
fn ran_steps(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| {
            l.trim_start().starts_with("| RAN-STEP")
                || (l.starts_with("setup[") && l.ends_with(" …"))
        })
        .collect()
}

/// Whether a build's output shows the first setup step running.
fn ran_first(err: &str) -> bool {
    err.lines()
        .any(|l| l.trim_start().starts_with("| RAN-STEP-ONE"))
}

#[test]
fn a_second_machine_takes_every_step_from_the_cache_and_ends_with_the_same_image_and_lock() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    let cache = format!("{}/team/cache", reg.addr);
    let p = Project::new(
        "berth-cache-",
        "cache-",
        &toml(
            "echo RAN-STEP-TWO; echo two > /two.txt; rm /etc/hostname || true",
            "",
        ),
    );

    // Machine A: builds every step and pushes it.
    let a = Berth::new();
    let err = ok(
        &a,
        p.path(),
        &[],
        &["up", "--cache-from", &cache, "--cache-to", &cache],
    );
    assert_eq!(ran_steps(&err).len(), 4, "A builds both steps:\n{err}");
    assert!(!err.contains("notice"), "{err}");
    let pushed: Vec<String> = writes(&reg)
        .into_iter()
        .filter(|r| r.contains("/manifests/cache-"))
        .collect();
    // The certificates' layer (when the host has certificates) and both setup steps.
    let ca = usize::from(Path::new("/etc/ssl/certs/ca-certificates.crt").exists());
    assert_eq!(pushed.len(), 2 + ca, "{pushed:?}");
    let lock_a = fs::read_to_string(p.path().join("berth.lock")).unwrap();
    let images_a = build_images(&a);
    let layers_a = env_layers(&a, &p.name);
    ok(&a, p.path(), &[], &["destroy"]);

    // skopeo reads an entry as an ordinary one-layer image.
    let tag = pushed[0]
        .split("/manifests/")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{cache}:{tag}"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 1, "{m}");

    // Machine B: a fresh home runs no step; every step is named as pulled from the cache.
    fs::remove_file(p.path().join("berth.lock")).unwrap();
    let b = Berth::new();
    let before = reg.requests().len();
    let err = ok(&b, p.path(), &[], &["up", "--cache-from", &cache]);
    assert_eq!(ran_steps(&err), Vec::<&str>::new(), "B ran a step:\n{err}");
    for step in ["setup[0]", "setup[1]"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(step) && l.contains("(pulled from the cache")),
            "{step} not pulled:\n{err}"
        );
    }
    assert!(!err.contains("notice"), "{err}");
    assert_eq!(
        build_images(&b),
        images_a,
        "same records, ids and manifests"
    );
    assert_eq!(env_layers(&b, &p.name), layers_a, "same layers");
    assert_eq!(
        fs::read_to_string(p.path().join("berth.lock")).unwrap(),
        lock_a
    );
    let out = run(
        &b,
        p.path(),
        &[],
        &["exec", "--", "cat", "/one.txt", "/two.txt"],
    );
    assert_eq!(text(&out).0, "one\ntwo\n");
    // B looked every step up at once (one request each, all answered before the first
    // layer download), not one round trip per step before its layer.
    let b_reads: Vec<String> = reg.requests()[before..].to_vec();
    let cache_path = format!("/v2/{}/", cache.split_once('/').unwrap().1);
    let lookups: Vec<usize> = (0..b_reads.len())
        .filter(|&i| b_reads[i].starts_with(&format!("GET {cache_path}manifests/cache-")))
        .collect();
    let downloads: Vec<usize> = (0..b_reads.len())
        .filter(|&i| b_reads[i].starts_with(&format!("GET {cache_path}blobs/")))
        .collect();
    assert_eq!(lookups.len(), pushed.len(), "{b_reads:#?}");
    assert!(
        !downloads.is_empty() && lookups.last() < downloads.first(),
        "{b_reads:#?}"
    );
    // B only read.
    let b_writes: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
        .cloned()
        .collect();
    assert_eq!(b_writes, Vec::<String>::new());

    // A changed second step: B rebuilds it only (the first comes from its own cache) and
    // pushes the new layer; A then takes it without running anything.
    p.write(&toml("echo RAN-STEP-TWO-B; echo three > /two.txt", ""));
    let before = reg.requests().len();
    let err = ok(
        &b,
        p.path(),
        &[],
        &["up", "--cache-from", &cache, "--cache-to", &cache],
    );
    let ran = ran_steps(&err);
    assert!(
        !ran_first(&err) && ran.iter().all(|l| !l.starts_with("setup[0]")),
        "{err}"
    );
    assert!(ran.iter().any(|l| l.contains("| RAN-STEP-TWO-B")), "{err}");
    let new_entries: Vec<String> = reg.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/manifests/cache-"))
        .cloned()
        .collect();
    assert_eq!(
        new_entries.len(),
        1,
        "only the changed step is pushed: {new_entries:?}"
    );
    let err = ok(&a, p.path(), &[], &["up", "--cache-from", &cache]);
    assert_eq!(ran_steps(&err), Vec::<&str>::new(), "{err}");
    assert_eq!(build_images(&a).last(), build_images(&b).last());

    dockerfile_instructions_come_from_the_cache(&reg, &cache);
}

/// `berth image build --cache-to` on one machine, `--cache-from` on a fresh one: the second
/// runs no instruction (each is named as pulled) and ends with the same image.
fn dockerfile_instructions_come_from_the_cache(reg: &Registry, cache: &str) {
    let root = tempfile::tempdir().unwrap();
    berth_e2e::host::busybox_rootfs(root.path());
    let mut t = tar::Builder::new(Vec::new());
    t.follow_symlinks(false);
    t.append_dir_all(".", root.path()).unwrap();
    let image = berth_e2e::oci::Image::new(
        vec![Layer::new(t.into_inner().unwrap(), Compression::Gzip)],
        "amd64",
    );
    reg.push_image("base", "1", &image);
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("hello.txt"), "hello from the context\n").unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}/base:1\nWORKDIR /app\nCOPY hello.txt ./\nRUN echo RAN-$((40+2)); cp hello.txt copied.txt\nENV DONE=1\n",
            reg.addr
        ),
    )
    .unwrap();
    let build = |b: &Berth, flag: &str| {
        let o = run(
            b,
            ctx.path(),
            &[],
            &["image", "build", "-t", "df", flag, cache, "."],
        );
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "image build {flag} failed:\n{out}\n{err}"
        );
        (out, err)
    };
    // A manifest (the result's) of the image `df` in a home.
    let manifest_of = |b: &Berth| {
        let o = run(b, Path::new("/"), &[], &["image", "ls", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "df")
            .map(|i| i["manifest_digest"].as_str().unwrap().to_string())
            .unwrap()
    };
    let a = Berth::new();
    let before = reg.requests().len();
    let (out_a, err_a) = build(&a, "--cache-to");
    // (What the RUN prints, not its label.)
    assert!(err_a.contains("RAN-42"), "{err_a}");
    let pushed = reg.requests()[before..]
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/manifests/cache-"))
        .count();
    assert_eq!(pushed, 3, "WORKDIR, COPY and RUN pushed");

    let b = Berth::new();
    let (out_b, err_b) = build(&b, "--cache-from");
    assert!(!err_b.contains("RAN-42"), "B ran the RUN:\n{err_b}");
    for step in ["WORKDIR /app", "COPY hello.txt", "RUN echo"] {
        assert!(
            err_b
                .lines()
                .any(|l| l.contains(step) && l.contains("(pulled from the cache")),
            "{step} not pulled:\n{err_b}"
        );
    }
    assert!(
        err_b.contains("0 steps run, 3 cached (3 pulled from the registry cache)"),
        "{err_b}"
    );
    assert!(!err_b.contains("notice"), "{err_b}");
    assert_eq!(out_b, out_a, "same image id");
    assert_eq!(manifest_of(&b), manifest_of(&a), "same manifest");
}

#[test]
fn berth_toml_cache_is_read_only_unless_cache_push_is_on() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    let cache = format!("{}/team/ro", reg.addr);
    let p = Project::new(
        "berth-cache-ro-",
        "cachero-",
        &toml("echo two > /two.txt", &format!("cache = \"{cache}\"")),
    );
    let a = Berth::new();
    let err = ok(&a, p.path(), &[], &["up"]);
    assert_eq!(
        writes(&reg),
        Vec::<String>::new(),
        "read-only by default:\n{err}"
    );
    assert!(
        reg.requests()
            .iter()
            .any(|r| r.contains("/manifests/cache-")),
        "the cache was asked"
    );
    // The repository does not exist yet: one notice saying so, then no more lookups.
    let notices: Vec<&str> = err.lines().filter(|l| l.starts_with("notice:")).collect();
    assert_eq!(notices.len(), 1, "{err}");
    assert!(notices[0].contains("does not exist"), "{notices:?}");
    let lookups = reg
        .requests()
        .iter()
        .filter(|r| r.contains("/manifests/cache-"))
        .count();
    assert_eq!(lookups, 1, "{:?}", reg.requests());

    p.write(&toml(
        "echo two > /two.txt",
        &format!("cache = \"{cache}\"\ncache_push = true"),
    ));
    // The cache keys do not restart an environment (nothing of it changed): `up` leaves it
    // as it is; `--rebuild` goes through the (locally cached) steps and pushes them.
    let before = reg.requests().len();
    ok(&a, p.path(), &[], &["up"]);
    assert_eq!(
        reg.requests().len(),
        before,
        "an unchanged up asks no registry"
    );
    ok(&a, p.path(), &[], &["up", "--rebuild"]);
    let pushed: Vec<String> = writes(&reg)
        .into_iter()
        .filter(|r| r.contains("/manifests/cache-"))
        .collect();
    assert!(
        pushed.len() >= 2,
        "cache_push pushes the steps built before: {pushed:?}"
    );
}

#[test]
fn an_unreachable_or_stalled_cache_is_a_notice_and_the_build_goes_on() {
    require_root!();
    // Nothing listens on a closed port; a listener that never accepts stalls every request.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    for (port, what) in [(closed, "closed"), (stalled_port, "stalled")] {
        let cache = format!("127.0.0.1:{port}/team/cache");
        let p = Project::new("berth-cache-down-", "cachedown-", &toml("echo two", ""));
        let b = Berth::new();
        let t0 = Instant::now();
        let err = ok(
            &b,
            p.path(),
            &[("BERTH_CACHE_TIMEOUT", "1")],
            &["up", "--cache-from", &cache, "--cache-to", &cache],
        );
        let took = t0.elapsed();
        assert!(ran_first(&err), "{what}: built locally:\n{err}");
        let notices: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("notice: build cache"))
            .collect();
        assert!(!notices.is_empty(), "{what}: {err}");
        assert!(notices.iter().all(|n| n.contains(&cache)), "{notices:?}");
        // The cache is given up after the first failure, not waited for at every step.
        assert!(notices.len() <= 2, "{what}: {notices:?}");
        assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
        ok(&b, p.path(), &[], &["destroy"]);
        assert_eq!(
            fs::read_dir(b.home.path().join("tmp")).unwrap().count(),
            0,
            "{what}: nothing half-written"
        );
    }
    drop(stalled);
}

#[test]
fn a_wrong_password_or_no_credentials_is_a_notice_and_no_secret_is_printed() {
    require_root!();
    let Some(reg) = Registry::start_with_htpasswd("alice", "Right-Pw-2231") else {
        return;
    };
    let cache = format!("{}/team/cache", reg.addr);
    let p = Project::new("berth-cache-auth-", "cacheauth-", &toml("echo two", ""));
    let docker = tempfile::tempdir().unwrap();
    let config = |password: &str| {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}"));
        fs::write(
            docker.path().join("config.json"),
            format!(
                "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
                reg.addr
            ),
        )
        .unwrap();
    };
    let env = [("DOCKER_CONFIG", docker.path().to_str().unwrap())];

    // With the right password, A pushes.
    config("Right-Pw-2231");
    let a = Berth::new();
    let err = ok(&a, p.path(), &env, &["up", "--cache-to", &cache]);
    assert!(!err.contains("notice"), "{err}");
    assert!(writes(&reg)
        .iter()
        .any(|r| r.contains("/manifests/cache-") && r.ends_with(" 201")));

    // A wrong password: a notice naming the refusal, a local build, no password shown.
    config("Wrong-Pw-7781");
    let b = Berth::new();
    let err = ok(&b, p.path(), &env, &["up", "--cache-from", &cache]);
    assert!(ran_first(&err), "{err}");
    let notice = err
        .lines()
        .find(|l| l.starts_with("notice: build cache"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        notice.contains("refused") || notice.contains("wrong password"),
        "{notice}"
    );
    assert!(!err.contains("Wrong-Pw-7781") && !err.contains("Right-Pw-2231"));
    ok(&b, p.path(), &[], &["destroy"]);

    // No credentials at all.
    fs::write(docker.path().join("config.json"), "{}").unwrap();
    let c = Berth::new();
    let err = ok(&c, p.path(), &env, &["up", "--cache-from", &cache]);
    let notice = err
        .lines()
        .find(|l| l.starts_with("notice: build cache"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(notice.contains("user name and password"), "{notice}");
    for home in [&a, &b, &c] {
        for f in walk(home.home.path()) {
            let bytes = fs::read(&f).unwrap_or_default();
            let s = String::from_utf8_lossy(&bytes);
            assert!(
                !s.contains("Right-Pw-2231") && !s.contains("Wrong-Pw-7781"),
                "{}",
                f.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            // Layers hold the images' files, not berth's.
            if e.file_name() != "layers" {
                out.extend(walk(&e.path()));
            }
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// The real entries machine A pushed for `p` (tag → manifest), read from the registry.
fn real_entries(reg: &Registry, repo: &str) -> Vec<(String, serde_json::Value)> {
    let http = reqwest::blocking::Client::new();
    let tags: serde_json::Value = http
        .get(format!("http://{}/v2/{repo}/tags/list", reg.addr))
        .send()
        .unwrap()
        .json()
        .unwrap();
    tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let t = t.as_str().unwrap().to_string();
            let m: serde_json::Value = http
                .get(format!("http://{}/v2/{repo}/manifests/{t}", reg.addr))
                .header("Accept", OCI_MANIFEST)
                .send()
                .unwrap()
                .json()
                .unwrap();
            (t, m)
        })
        .collect()
}

/// A hostile cache: under every tag machine A pushed, an entry with A's annotations (so
/// it applies) whose layer is `layer` served as `served` (the same bytes, or others).
fn hostile_cache(
    entries: &[(String, serde_json::Value)],
    layer: &Layer,
    served: &[u8],
) -> FakeRegistry {
    let mut routes = Routes::default();
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}";
    routes.blob("team/cache", config);
    routes.blob_as("team/cache", &layer.digest(), served);
    for (tag, real) in entries {
        let mut m = real.clone();
        m["layers"] = serde_json::json!([{
            "mediaType": layer.media_type, "digest": layer.digest(), "size": layer.blob.len()
        }]);
        m["annotations"]["dev.berth.cache.diff-id"] = serde_json::json!(layer.diff_id());
        routes.manifest(
            "team/cache",
            tag,
            OCI_MANIFEST,
            &serde_json::to_vec(&m).unwrap(),
        );
    }
    FakeRegistry::start(routes, false)
}

/// Builds `p` on a fresh home from `cache`; the build must succeed without the cache's
/// layer, say why, and keep nothing of it.
fn build_refusing(p: &Project, cache: &FakeRegistry, layer: &Layer, why: &[&str]) {
    let b = Berth::new();
    let from = format!("{}/team/cache", cache.addr);
    let err = ok(&b, p.path(), &[], &["up", "--cache-from", &from]);
    assert!(ran_first(&err), "built locally:\n{err}");
    let notice = err
        .lines()
        .find(|l| l.starts_with("notice: build cache"))
        .unwrap_or_else(|| panic!("no notice:\n{err}"));
    assert!(notice.contains("refused"), "{notice}");
    assert!(why.iter().any(|w| notice.contains(w)), "{notice}");
    assert!(
        cache
            .requests()
            .iter()
            .any(|r| r.path.contains(&layer.digest())),
        "the layer was asked for"
    );
    let home = b.home.path();
    for d in [layer.digest(), layer.diff_id()] {
        let hex = d.trim_start_matches("sha256:");
        assert!(
            !home.join("blobs/sha256").join(hex).exists(),
            "blob {d} kept"
        );
        assert!(!home.join("layers").join(hex).exists(), "layer {d} kept");
    }
    let tmp: Vec<_> = fs::read_dir(home.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "tmp/: {tmp:?}");
    ok(&b, p.path(), &[], &["destroy"]);
}

#[test]
fn a_hostile_cache_layer_that_does_not_match_its_digest_or_leaves_its_folder_is_refused() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    let p = Project::new("berth-cache-evil-", "cacheevil-", &toml("echo two", ""));
    let a = Berth::new();
    let real = format!("{}/team/cache", reg.addr);
    ok(&a, p.path(), &[], &["up", "--cache-to", &real]);
    ok(&a, p.path(), &[], &["destroy"]);
    let entries = real_entries(&reg, "team/cache");
    assert!(entries.len() >= 2, "{entries:?}");

    // 1. A layer whose bytes are not those of its digest.
    let good = Layer::new(
        TarBuilder::new().file("ok.txt", b"fine").finish(),
        Compression::Gzip,
    );
    let evil = Layer::new(
        TarBuilder::new().file("ok.txt", b"EVIL").finish(),
        Compression::Gzip,
    );
    let cache = hostile_cache(&entries, &good, &evil.blob);
    build_refusing(&p, &cache, &good, &["corrupt", "size"]);
    drop(cache);

    // 2. A layer (digest and diff-id right) whose entries leave the layer's folder: through
    // a symlink to a folder outside, and with `..`.
    let outside = tempfile::tempdir().unwrap();
    let target = outside
        .path()
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_string();
    let ups = "../".repeat(12);
    let tar = TarBuilder::new()
        .symlink("escape", outside.path().to_str().unwrap())
        .file("escape/pwned-through-link", b"x")
        .finish();
    let traversal = Layer::new(tar, Compression::Gzip);
    let cache = hostile_cache(&entries, &traversal, &traversal.blob);
    build_refusing(&p, &cache, &traversal, &["symbolic link"]);
    drop(cache);
    let dotdot = Layer::new(
        TarBuilder::new()
            .file(&format!("{ups}{target}/pwned-by-dotdot"), b"x")
            .finish(),
        Compression::Gzip,
    );
    let cache = hostile_cache(&entries, &dotdot, &dotdot.blob);
    build_refusing(&p, &cache, &dotdot, &["`..`"]);
    let written: Vec<_> = fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        written.is_empty(),
        "the layer wrote outside its folder: {written:?}"
    );
    drop(cache);

    // 3. The real registry, its stored copy of a step's layer damaged on disk (a corrupted
    // or tampered registry): the blob no longer matches its digest. A fresh machine says
    // so, builds that step and the next here, with the right result, and keeps nothing of
    // the bad blob.
    let (_, entry) = entries
        .iter()
        .find(|(_, m)| {
            m["annotations"]["dev.berth.cache.step"]
                .as_str()
                .is_some_and(|s| s.starts_with("setup[0]"))
        })
        .unwrap_or_else(|| panic!("no entry for setup[0]: {entries:?}"));
    let bad = entry["layers"][0]["digest"].as_str().unwrap().to_string();
    let file = reg.blob_file(&bad);
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    fs::write(&file, &bytes).unwrap();
    let b = Berth::new();
    let err = ok(&b, p.path(), &[], &["up", "--cache-from", &real]);
    assert!(ran_first(&err), "setup[0] built here:\n{err}");
    let notice = err
        .lines()
        .find(|l| l.starts_with("notice: build cache"))
        .unwrap_or_else(|| panic!("no notice:\n{err}"));
    assert!(
        notice.contains(&format!("refused its layer {bad}"))
            && notice.contains("is corrupt")
            && notice.contains("setup[0]")
            && notice.contains("built here without the cache"),
        "{notice}"
    );
    let out = run(&b, p.path(), &[], &["exec", "--", "cat", "/one.txt"]);
    assert_eq!(text(&out).0, "one\n", "the local build's result");
    let home = b.home.path();
    let hex = bad.trim_start_matches("sha256:");
    assert!(
        !home.join("blobs/sha256").join(hex).exists(),
        "the bad blob was kept"
    );
    let tmp: Vec<_> = fs::read_dir(home.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "tmp/: {tmp:?}");
    ok(&b, p.path(), &[], &["destroy"]);
}

/// The raw bytes of `path` (`/v2/…`) on the real registry.
fn raw(reg: &Registry, path: &str, accept: &str) -> Vec<u8> {
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{}{path}", reg.addr))
        .header("Accept", accept)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.bytes().unwrap().to_vec()
}

#[test]
fn the_steps_are_looked_up_and_their_layers_fetched_while_the_base_downloads() {
    require_root!();
    let Some(reg) = Registry::start() else { return };
    // A registry base whose package manager is apk (a script standing in for it): the
    // `packages` step's key depends on the package manager, which the layers tell.
    let root = tempfile::tempdir().unwrap();
    berth_e2e::host::busybox_rootfs(root.path());
    fs::create_dir_all(root.path().join("sbin")).unwrap();
    fs::write(
        root.path().join("sbin/apk"),
        "#!/bin/sh\necho RAN-PACKAGES; echo \"$*\" > /apk-ran\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        root.path().join("sbin/apk"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../sbin/apk", root.path().join("bin/apk")).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    t.follow_symlinks(false);
    t.append_dir_all(".", root.path()).unwrap();
    let base = berth_e2e::oci::Image::new(
        vec![Layer::new(t.into_inner().unwrap(), Compression::Gzip)],
        match std::env::consts::ARCH {
            "aarch64" => "arm64",
            _ => "amd64",
        },
    );
    let served = |extra: &Routes| {
        let mut routes = extra.clone();
        base.routes("team/base", "1", &mut routes);
        FakeRegistry::start(routes, false)
    };
    let project_on = |registry: &str| {
        format!(
            r#"name = "{{name}}"
[image]
from = "{registry}/team/base:1"
packages = ["fake-tool"]
setup = ["echo RAN-STEP-ONE; echo one > /one.txt"]
"#
        )
    };

    // Machine A: builds every step and pushes it to the real registry.
    let first = served(&Routes::default());
    let p = Project::new(
        "berth-cache-early-",
        "cacheearly-",
        &project_on(&first.addr),
    );
    let a = Berth::new();
    let real = format!("{}/team/cache", reg.addr);
    let err = ok(&a, p.path(), &[], &["up", "--cache-to", &real]);
    assert!(err.contains("| RAN-PACKAGES"), "{err}");
    let layers_a = env_layers(&a, &p.name);
    ok(&a, p.path(), &[], &["destroy"]);
    drop(first);

    // Machine B: base and cache from one server, which holds the base's layer back until
    // a cache entry is asked for. Looking the steps up only after the base is pulled, B
    // would ask nothing while the layer is held (it is sent after the limit then).
    let mut routes = Routes::default();
    for (tag, m) in real_entries(&reg, "team/cache") {
        let bytes = raw(
            &reg,
            &format!("/v2/team/cache/manifests/{tag}"),
            OCI_MANIFEST,
        );
        routes.manifest("team/cache", &tag, OCI_MANIFEST, &bytes);
        for d in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
            let d = d.as_str().unwrap();
            let blob = raw(&reg, &format!("/v2/team/cache/blobs/{d}"), "*/*");
            routes.blob("team/cache", &blob);
        }
    }
    let second = served(&routes);
    *second.hold.lock().unwrap() = Some(berth_e2e::oci::Hold {
        what: base.layers[0].digest(),
        until: "/manifests/cache-".into(),
        limit: Duration::from_secs(20),
        ..Default::default()
    });
    p.write(&project_on(&second.addr));
    fs::remove_file(p.path().join("berth.lock")).unwrap();
    let b = Berth::new();
    let cache = format!("{}/team/cache", second.addr);
    let err = ok(&b, p.path(), &[], &["up", "--cache-from", &cache]);
    let hold = second.hold.lock().unwrap().clone().unwrap();
    assert_eq!(
        (hold.released_by_request, hold.released_by_limit),
        (1, 0),
        "no step was looked up while the base's layer downloaded:\n{err}"
    );
    assert!(!err.contains("| RAN-"), "B ran a step:\n{err}");
    for step in ["packages: fake-tool", "setup[0]"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(step) && l.contains("(pulled from the cache")),
            "{step} not pulled:\n{err}"
        );
    }
    assert!(!err.contains("notice"), "{err}");
    assert_eq!(env_layers(&b, &p.name), layers_a, "same layers");
    let out = run(
        &b,
        p.path(),
        &[],
        &["exec", "--", "cat", "/apk-ran", "/one.txt"],
    );
    assert_eq!(text(&out).0, "add --no-cache fake-tool\none\n");
    ok(&b, p.path(), &[], &["destroy"]);
}
