//! `berth image build` of Dockerfiles shaped like real projects' (a Node-style app: manifest
//! first, install with a cache mount, sources, build; a slim final stage), their `FROM`
//! pointing at a busybox image this test pushes to a loopback `docker-registry`. The same
//! Dockerfile built by `buildah bud` (Debian's) gives the same file tree; a changed source
//! file reruns the build from its COPY only; the cache mount survives; heredocs, `--chown`
//! and the image config work; bad Dockerfiles fail with `Dockerfile:LINE:COL`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::host::busybox_rootfs;
use berth_e2e::oci::{sha256, Compression, Image, Layer, Registry};
use berth_e2e::{require_root, text, Berth};
use sha2::{Digest, Sha256};

/// A registry holding `base:1`: busybox with a user `app` (1000:1000).
fn registry_with_base() -> Option<Registry> {
    registry_with(false)
}

/// [`registry_with_base`]; `distro_files`: with the files every distribution image has and
/// a build sandbox mounts over (`/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, `/run`),
/// which buildah leaves behind (empty, mode 755) in an image that lacks them.
fn registry_with(distro_files: bool) -> Option<Registry> {
    let reg = Registry::start()?;
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    if distro_files {
        for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
            fs::write(root.path().join(f), "").unwrap();
        }
        fs::create_dir_all(root.path().join("run")).unwrap();
    }
    fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.path().join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    let mut t = tar::Builder::new(Vec::new());
    t.follow_symlinks(false);
    t.append_dir_all(".", root.path()).unwrap();
    let layer = Layer::new(t.into_inner().unwrap(), Compression::Gzip);
    // With a history entry per layer, as buildah wants of a base.
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id()]},
        "history": [{"created_by": "busybox rootfs"}],
    }))
    .unwrap();
    let mut image = Image::new(vec![layer], "amd64");
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = sha256(&config).into();
    manifest["config"]["size"] = config.len().into();
    image.manifest = serde_json::to_vec(&manifest).unwrap();
    image.config = config;
    reg.push_image("base", "1", &image);
    Some(reg)
}

const APP_DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG REGISTRY
FROM ${REGISTRY}/base:1 AS deps
WORKDIR /app
COPY package.json ./
RUN --mount=type=cache,target=/root/.npm \
    echo "install $(cat package.json)" >> /root/.npm/runs \
 && mkdir -p node_modules/left-pad \
 && cp package.json node_modules/left-pad/ \
 && wc -l < /root/.npm/runs | tr -d ' ' > /app/installs

FROM deps AS build
ARG MODE=production
ENV NODE_ENV=$MODE
COPY src ./src
RUN mkdir -p dist && cat src/*.js > dist/bundle.js && echo "$NODE_ENV" > dist/mode

FROM ${REGISTRY}/base:1
LABEL org.opencontainers.image.title="demo app"
WORKDIR /srv
COPY --chmod=640 config/app.conf /etc/app.conf
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build --chown=app:app /app/dist ./dist
RUN mkdir -p /srv/logs && echo ready > /srv/logs/state
USER app
EXPOSE 3000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/dist/bundle.js"]
"#;

fn app_project(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join("config")).unwrap();
    fs::create_dir_all(dir.join("node_modules/junk")).unwrap();
    fs::write(dir.join("package.json"), "{\"name\":\"demo\"}\n").unwrap();
    fs::write(dir.join("src/a.js"), "console.log('a');\n").unwrap();
    fs::write(dir.join("src/b.js"), "console.log('b');\n").unwrap();
    fs::write(dir.join("src/debug.log"), "noise\n").unwrap();
    fs::write(dir.join("config/app.conf"), "port=3000\n").unwrap();
    fs::write(dir.join("node_modules/junk/x"), "x").unwrap();
    fs::write(dir.join(".dockerignore"), "node_modules\n**/*.log\n").unwrap();
    fs::write(dir.join("Dockerfile"), APP_DOCKERFILE).unwrap();
}

/// Every entry of a rootfs tar: path → (kind, mode, uid, gid, content hash or link).
fn listing(tar_path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        let kind = e.header().entry_type();
        let link = e
            .header()
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string());
        let what = if kind.is_symlink() {
            format!("-> {}", link.unwrap_or_default())
        } else if kind.is_hard_link() {
            format!("hardlink {}", link.unwrap_or_default())
        } else if kind.is_file() {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            hex::encode(Sha256::digest(&buf))
        } else {
            format!("{kind:?}")
        };
        let h = e.header();
        out.insert(
            path,
            format!(
                "{:o} {}:{} {what}",
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap()
            ),
        );
    }
    out
}

fn build(b: &Berth, dir: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["image", "build"];
    all.extend_from_slice(args);
    b.ok_both(dir, &all)
}

fn buildah_available() -> bool {
    Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `buildah bud` with its own storage under `root` (vfs, chroot isolation: no daemon, no
/// overlay mounts left behind), writing the image's root filesystem as a tar.
fn buildah_bud(root: &Path, context: &Path, args: &[&str], out: &Path) {
    let mut c = Command::new("buildah");
    c.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs", "bud", "--isolation", "chroot"])
        .args(["--tls-verify=false", "--layers"])
        .args(args)
        .arg("-o")
        .arg(format!("type=tar,dest={}", out.display()))
        .arg(context);
    let o = c.output().unwrap();
    let (so, se) = text(&o);
    assert!(o.status.success(), "buildah bud failed:\n{so}\n{se}");
}

/// Removes buildah's storage (vfs layers are plain folders) when the test ends.
struct BuildahRoot(tempfile::TempDir);

impl Drop for BuildahRoot {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .arg("--root")
            .arg(self.0.path().join("storage"))
            .arg("--runroot")
            .arg(self.0.path().join("run"))
            .args(["--storage-driver", "vfs", "rm", "--all"])
            .output();
    }
}

#[test]
fn multi_stage_build_gives_the_file_tree_buildah_gives() {
    require_root!();
    if !buildah_available() {
        eprintln!("skipped: buildah is not installed (apt-get install buildah)");
        return;
    }
    let Some(reg) = registry_with(true) else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    app_project(project.path());
    let b = Berth::new();
    let reg_arg = format!("REGISTRY={}", reg.addr);
    let (out, err) = build(
        &b,
        project.path(),
        &["-t", "demo:1", "--build-arg", &reg_arg, "."],
    );
    assert!(out.starts_with("demo:1 sha256:"), "{out}");
    assert!(
        err.contains("EXPOSE 3000/tcp") && err.contains("[[ports]]"),
        "{err}"
    );
    let scratch = tempfile::tempdir().unwrap();
    let ours = scratch.path().join("berth.tar");
    b.ok(
        project.path(),
        &["image", "export", "demo:1", "-o", ours.to_str().unwrap()],
    );

    let bh = BuildahRoot(tempfile::tempdir().unwrap());
    let theirs = scratch.path().join("buildah.tar");
    buildah_bud(
        bh.0.path(),
        project.path(),
        &["--build-arg", &reg_arg],
        &theirs,
    );

    let (a, z) = (listing(&ours), listing(&theirs));
    let differ: Vec<String> = a
        .keys()
        .chain(z.keys())
        .filter(|k| a.get(*k) != z.get(*k))
        .map(|k| format!("{k}: berth {:?} buildah {:?}", a.get(k), z.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "file trees differ:\n{}",
        differ.join("\n")
    );
    // The tree is what the Dockerfile says (so an empty comparison would not pass).
    assert!(
        a["srv/dist/bundle.js"].starts_with("644 1000:1000"),
        "{a:?}"
    );
    assert!(a["etc/app.conf"].starts_with("640 0:0"), "{a:?}");
    assert!(a.contains_key("srv/node_modules/left-pad/package.json"));
    assert!(a.contains_key("srv/logs/state"));
    assert!(
        !a.keys().any(|k| k.contains("junk") || k.ends_with(".log")),
        "{a:?}"
    );

    // The OCI export carries the config others run it with.
    let oci = scratch.path().join("oci");
    b.ok(
        project.path(),
        &[
            "image",
            "export",
            "demo:1",
            "--oci",
            "-o",
            oci.to_str().unwrap(),
        ],
    );
    let o = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:1", oci.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &cfg["config"];
    assert_eq!(c["User"], "app", "{cfg}");
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["cat /srv/dist/bundle.js"]));
    assert_eq!(c["Labels"]["org.opencontainers.image.title"], "demo app");
    assert!(c["ExposedPorts"].get("3000/tcp").is_some(), "{cfg}");
}

#[test]
fn a_changed_source_reruns_from_its_copy_and_the_cache_mount_survives() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    app_project(project.path());
    let b = Berth::new();
    let reg_arg = format!("REGISTRY={}", reg.addr);
    let args = ["-t", "app", "--build-arg", &reg_arg, "."];
    let (_, first) = build(&b, project.path(), &args);
    assert!(first.contains("10 steps run, 0 cached"), "{first}");

    let (_, again) = build(&b, project.path(), &args);
    assert!(again.contains("0 steps run, 10 cached"), "{again}");

    // One source file changes: the steps before its COPY are cached, it and the later
    // ones of its stage run, the final stage recopies what changed.
    fs::write(project.path().join("src/b.js"), "console.log('B');\n").unwrap();
    let (_, edit) = build(&b, project.path(), &args);
    assert!(
        edit.contains("[deps 3/4] COPY package.json ./ (cached)"),
        "{edit}"
    );
    assert!(
        edit.contains("[deps 4/4] RUN echo \"install $(cat package.json)\""),
        "{edit}"
    );
    assert!(edit.contains("[build 4/5] COPY src ./src …"), "{edit}");
    assert!(edit.contains("[build 5/5] RUN mkdir -p dist"), "{edit}");
    assert!(!edit.contains("[build 5/5] RUN mkdir -p dist && cat src/*.js > dist/bundle.js && echo \"$NODE_ENV\" > … (cached)"), "{edit}");
    assert!(edit.contains("COPY /app/dist ./dist …"), "{edit}");
    assert!(
        edit.contains("COPY /app/node_modules ./node_modules (cached)"),
        "{edit}"
    );
    assert!(edit.contains("4 steps run, 6 cached"), "{edit}");

    // The rebuilt image holds the same files as a cold build of the edited project in a
    // home that never built it (the rerun steps' layers are their upper folders, the cached
    // ones those of the first build).
    let tars = tempfile::tempdir().unwrap();
    let rebuilt = tars.path().join("rebuilt.tar");
    b.ok(
        project.path(),
        &["image", "export", "app", "-o", rebuilt.to_str().unwrap()],
    );
    let cold_home = Berth::new();
    let (_, cold) = build(&cold_home, project.path(), &args);
    assert!(cold.contains("10 steps run, 0 cached"), "{cold}");
    let cold_tar = tars.path().join("cold.tar");
    cold_home.ok(
        project.path(),
        &["image", "export", "app", "-o", cold_tar.to_str().unwrap()],
    );
    let (r, c) = (listing(&rebuilt), listing(&cold_tar));
    assert_eq!(r, c, "the rebuild's file tree differs from a cold build's");
    assert!(
        r.get("srv/dist/bundle.js")
            .is_some_and(|v| v.starts_with("644 1000:1000")),
        "{r:?}"
    );

    // A new manifest reruns the install with the cache mount of the first one.
    fs::write(
        project.path().join("package.json"),
        "{\"name\":\"demo2\"}\n",
    )
    .unwrap();
    build(
        &b,
        project.path(),
        &[
            "-t",
            "deps",
            "--target",
            "deps",
            "--build-arg",
            &reg_arg,
            ".",
        ],
    );
    let tar = project.path().join("deps.tar");
    b.ok(
        project.path(),
        &["image", "export", "deps", "-o", tar.to_str().unwrap()],
    );
    let mut installs = String::new();
    let mut ar = tar::Archive::new(fs::File::open(&tar).unwrap());
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p.trim_start_matches("./") == "app/installs" {
            e.read_to_string(&mut installs).unwrap();
        }
        names.push(p);
    }
    assert_eq!(
        installs, "2\n",
        "the cache mount kept the first install's record"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains(".npm") || n == "etc/hosts" || n == "etc/resolv.conf"),
        "mount points are not part of a layer: {names:?}"
    );
    fs::remove_file(&tar).unwrap();
}

#[test]
fn heredocs_chown_and_add_archives() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o755);
    h.set_uid(7);
    h.set_gid(8);
    h.set_cksum();
    t.append_data(&mut h, "tool/run", &b"hi\n"[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &t.into_inner().unwrap()).unwrap();
    fs::write(p.join("tool.tar.gz"), gz.finish().unwrap()).unwrap();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {}/base:1
ARG GREETING=hello
RUN <<EOF
set -e
mkdir -p /opt/made
echo "$GREETING from a heredoc" > /opt/made/by-run
EOF
COPY --chown=app <<CONF /etc/app/conf
greeting=$GREETING
CONF
ADD tool.tar.gz /opt/
"#,
            reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    build(&b, p, &["-t", "hd", "."]);
    let out = p.join("out.tar");
    b.ok(p, &["image", "export", "hd", "-o", out.to_str().unwrap()]);
    let l = listing(&out);
    let files = tar_files(&out);
    assert_eq!(files["opt/made/by-run"], "hello from a heredoc\n");
    assert_eq!(files["etc/app/conf"], "greeting=hello\n");
    assert!(l["etc/app/conf"].starts_with("644 1000:1000"), "{l:?}");
    assert!(
        l["opt/tool/run"].starts_with("755 7:8"),
        "archive owners kept: {l:?}"
    );
    assert!(!l.contains_key("opt/tool.tar.gz"));
}

#[test]
fn bad_dockerfiles_fail_at_their_line_and_keep_nothing() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    fs::write(p.join("present.txt"), "x").unwrap();
    let b = Berth::new();
    // A bind mount's source cannot leave the context: not by `..`, not by a symlink.
    std::os::unix::fs::symlink("/etc", p.join("hostetc")).unwrap();
    let cases: [(&str, &str, &str); 7] = [
        (
            "FROM {R}/base:1\nRUN true\nVOLUMES /data\n",
            "Dockerfile:3:1: unknown instruction `VOLUMES`",
            "   3 | VOLUMES /data",
        ),
        (
            "FROM {R}/base:1\nCOPY present.txt missing.txt /x/\n",
            "Dockerfile:2:6: `missing.txt` does not exist in the build context",
            "COPY present.txt",
        ),
        (
            "FROM {R}/base:1 AS a\nCOPY --from=b /x /x\nFROM {R}/base:1 AS b\nCOPY --from=a /y /y\n",
            "Dockerfile:2:6: stage `a` depends on itself through stage `b` (a cycle)",
            "   2 | COPY --from=b /x /x",
        ),
        (
            "FROM {R}/base:1\nRUN <<EOF\necho never closed\n",
            "Dockerfile:2:5: heredoc `EOF` is never closed",
            "RUN <<EOF",
        ),
        (
            "FROM {R}/base:1\nRUN --mount=type=secret,id=x,required cat /run/secrets/x\n",
            "Dockerfile:2:5: the required secret `x` is not given",
            "RUN --mount",
        ),
        (
            "FROM {R}/base:1\nRUN --mount=type=bind,source=../../etc,target=/e cat /e/shadow\n",
            "Dockerfile:2:5: `../../etc` is outside the build context",
            "RUN --mount",
        ),
        (
            "FROM {R}/base:1\nRUN --mount=type=bind,source=hostetc,target=/e cat /e/shadow\n",
            "Dockerfile:2:5: the bind source `hostetc` is a symlink",
            "RUN --mount",
        ),
    ];
    for (file, want, snippet) in cases {
        fs::write(p.join("Dockerfile"), file.replace("{R}", &reg.addr)).unwrap();
        let o = b.run_in(p, &["image", "build", "-t", "bad", "."]);
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{file} built:\n{out}\n{err}");
        assert!(err.contains(want), "want `{want}` in:\n{err}");
        assert!(err.contains(snippet), "want `{snippet}` in:\n{err}");
        let ls = b.ok(p, &["image", "ls"]);
        assert!(!ls.contains("bad"), "{ls}");
    }
    let tmp: Vec<PathBuf> = fs::read_dir(b.home.path().join("tmp"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "staging left behind: {tmp:?}");
}

#[test]
fn up_builds_the_base_from_the_dockerfile_and_rebuilds_when_the_context_changes() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::Builder::new()
        .prefix("berth-df-")
        .tempdir()
        .unwrap();
    let p = project.path();
    let name = format!("df-{}", std::process::id());
    // Two steps mount a secret whose `command` counts its runs in a host file.
    fs::write(
        p.join("Dockerfile"),
        "ARG REGISTRY\nFROM ${REGISTRY}/base:1\nARG SITE=nobody\nWORKDIR /opt/site\nCOPY index.html ./\nRUN echo \"built for $SITE\" > stamp\nRUN --mount=type=secret,id=tok,required sha256sum /run/secrets/tok | cut -c1-64 > tok1\nRUN --mount=type=secret,id=tok,required sha256sum /run/secrets/tok | cut -c1-64 > tok2\n",
    )
    .unwrap();
    fs::write(p.join("index.html"), "<h1>one</h1>\n").unwrap();
    let counter = tempfile::tempdir().unwrap();
    let runs_file = counter.path().join("runs");
    let token = "TOKEN-from-a-command-6e0c";
    fs::write(
        p.join("berth.toml"),
        format!(
            "name = \"{name}\"\n[image]\ndockerfile = \"Dockerfile\"\nargs = {{ REGISTRY = \"{}\", SITE = \"docs\", UNUSED = \"x\" }}\n[secrets]\ntok = {{ command = [\"sh\", \"-c\", \"echo run >> {}; echo {token}\"] }}\n",
            reg.addr,
            runs_file.display()
        ),
    )
    .unwrap();
    let runs = || {
        fs::read_to_string(&runs_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let b = Berth::new();
    let (out, err) = b.ok_both(p, &["up"]);
    assert!(err.contains("COPY index.html ./ …"), "{err}");
    assert!(
        format!("{out}{err}").contains("build argument UNUSED is not declared"),
        "{out}{err}"
    );
    let exec = |cmd: &str| b.ok(p, &["exec", "--", "sh", "-c", cmd]);
    assert_eq!(exec("cat /opt/site/index.html"), "<h1>one</h1>\n");
    assert_eq!(exec("cat /opt/site/stamp"), "built for docs\n");
    let hash = format!("{}\n", hex::encode(Sha256::digest(token.as_bytes())));
    assert_eq!(exec("cat /opt/site/tok1"), hash);
    assert_eq!(exec("cat /opt/site/tok2"), hash);
    // `up` read the secret once (for the environment's /run/secrets); the two build steps
    // that mounted it ran no command of their own.
    assert_eq!(runs(), 1, "the secret's command ran {} times", runs());

    // Unchanged: nothing is built; the environment's secret is read again, once.
    let (_, err) = b.ok_both(p, &["up"]);
    assert!(!err.contains(" …"), "{err}");
    assert_eq!(runs(), 2);

    // A changed context file rebuilds from its COPY on; the secret is read once more.
    fs::write(p.join("index.html"), "<h1>two</h1>\n").unwrap();
    let (_, err) = b.ok_both(p, &["up"]);
    assert!(err.contains("WORKDIR /opt/site (cached)"), "{err}");
    assert!(err.contains("COPY index.html ./ …"), "{err}");
    assert!(err.contains("tok2 …"), "{err}");
    assert_eq!(exec("cat /opt/site/index.html"), "<h1>two</h1>\n");
    assert_eq!(runs(), 3);
    b.ok(p, &["destroy"]);
    let leaked = berth_e2e::host::files_containing(b.home.path(), token);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
}

/// Python's http.server on a loopback port serving `dir`; killed on drop.
struct FileServer(std::process::Child, u16);

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let port = berth_e2e::ports::free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FileServer(child, port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn add_downloads_a_url_only_with_its_checksum() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let served = tempfile::tempdir().unwrap();
    fs::write(served.path().join("tool.tar.gz"), b"not unpacked\n").unwrap();
    let server = FileServer::start(served.path());
    let url = format!("http://127.0.0.1:{}/tool.tar.gz", server.1);
    let good = hex::encode(Sha256::digest(b"not unpacked\n"));
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    let b = Berth::new();
    let write = |flags: &str| {
        fs::write(
            p.join("Dockerfile"),
            format!("FROM {}/base:1\nADD {flags}{url} /opt/\n", reg.addr),
        )
        .unwrap()
    };

    write(&format!("--checksum=sha256:{good} "));
    build(&b, p, &["-t", "dl", "."]);
    let out = p.join("out.tar");
    b.ok(p, &["image", "export", "dl", "-o", out.to_str().unwrap()]);
    let l = listing(&out);
    assert!(l["opt/tool.tar.gz"].starts_with("600 0:0"), "{l:?}");
    assert!(
        l["opt/tool.tar.gz"].ends_with(&good),
        "a remote archive is not unpacked: {l:?}"
    );

    write(&format!("--checksum=sha256:{} ", "0".repeat(64)));
    let o = b.run_in(p, &["image", "build", "-t", "dl2", "."]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("has checksum sha256:{good}")),
        "{err}"
    );

    write("");
    let o = b.run_in(p, &["image", "build", "-t", "dl3", "."]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("Dockerfile:2:5:") && err.contains("without a checksum"),
        "{err}"
    );
    drop(server);
}

/// A host program and the libraries it loads, into `dir` (run inside as
/// `dir/ld-linux-x86-64.so.2 --library-path dir dir/NAME`).
fn host_program(program: &str, dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let o = Command::new("ldd").arg(program).output().unwrap();
    let mut files = vec![PathBuf::from(program)];
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for f in files {
        fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// An `ssh-agent` of the test's own on a socket in a temp folder, killed on drop.
struct Agent(std::process::Child, tempfile::TempDir);

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Agent(child, dir)
    }

    fn sock(&self) -> PathBuf {
        self.1.path().join("agent.sock")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The regular files of an exported rootfs tar: path → content.
fn tar_files(tar_path: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(tar_path).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let mut s = Vec::new();
        if e.header().entry_type().is_file() {
            e.read_to_end(&mut s).unwrap();
        }
        files.insert(path, String::from_utf8_lossy(&s).into_owned());
    }
    files
}

#[test]
fn run_mounts_give_one_step_binds_tmpfs_secrets_and_the_agent_and_keep_none_of_them() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    let outside = tempfile::tempdir().unwrap();
    let marker = "HOST-FILE-OUTSIDE-THE-CONTEXT-5b1d";
    fs::write(outside.path().join("private"), marker).unwrap();
    fs::create_dir_all(p.join("src")).unwrap();
    fs::write(p.join("src/main.c"), "int main;\n").unwrap();
    fs::write(p.join("src/debug.log"), "ignored\n").unwrap();
    fs::write(p.join(".dockerignore"), "**/*.log\n").unwrap();
    // Inside a bound folder, a symlink to a host file resolves inside the step, not on the host.
    std::os::unix::fs::symlink(outside.path().join("private"), p.join("src/link")).unwrap();
    host_program("/usr/bin/ssh-add", &p.join("tools"));
    let token = "TOKEN-VALUE-never-in-a-layer-91f3";
    let secret_file = outside.path().join("token");
    fs::write(&secret_file, token).unwrap();
    let agent = Agent::start();
    let key = outside.path().join("id_ed25519");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "berth-test", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", agent.sock())
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1 AS tools
RUN mkdir -p /opt/tool && echo tool-v1 > /opt/tool/version

FROM {r}/base:1
WORKDIR /work
RUN --mount=type=bind,source=src,target=/src \
    --mount=type=bind,from=tools,source=/opt/tool,target=/tool \
    --mount=type=bind,source=src,target=/scratch,rw \
    --mount=type=bind,source=tools,target=/hosttools \
    --mount=type=tmpfs,target=/tmp/t \
    --mount=type=secret,id=token,required \
    --mount=type=secret,id=npmrc,target=/root/.npmrc,mode=0440,uid=1000,gid=1000 \
    --mount=type=secret,id=absent \
    --mount=type=ssh,required \
    cat /src/main.c > seen-src \
 && ls /src > src-list \
 && cat /tool/version > seen-tool \
 && {{ touch /src/new 2>/dev/null && echo writable || echo read-only; }} > src-ro \
 && echo scribble > /scratch/written && cat /scratch/written > scratch-rw \
 && echo t > /tmp/t/file && grep ' /tmp/t ' /proc/mounts | cut -d' ' -f3 > tmp-fs \
 && sha256sum /run/secrets/token | cut -c1-64 > token-hash \
 && stat -c '%a %u:%g' /root/.npmrc > npmrc-mode \
 && {{ test -e /run/secrets/absent && echo there || echo absent; }} > absent \
 && {{ cat /src/link 2>&1 || true; }} > link-read \
 && /hosttools/ld-linux-x86-64.so.2 --library-path /hosttools /hosttools/ssh-add -l > agent-keys
RUN ls /src /tool /scratch /hosttools /tmp/t /run/secrets /root/.npmrc /run/buildkit > after 2>&1 || true
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let sock = agent.sock();
    let ssh_arg = format!("--ssh=default={}", sock.display());
    let npmrc_file = outside.path().join("npmrc");
    fs::write(&npmrc_file, "//registry/:_authToken=x\n").unwrap();
    let npmrc_arg = format!("id=npmrc,src={}", npmrc_file.display());
    let args = [
        "-t",
        "mounts",
        "--secret",
        &secret_arg,
        "--secret",
        &npmrc_arg,
        &ssh_arg,
        ".",
    ];
    build(&b, p, &args);
    let out = p.join("out.tar");
    b.ok(
        p,
        &["image", "export", "mounts", "-o", out.to_str().unwrap()],
    );
    let files = tar_files(&out);
    let f = |k: &str| files.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(f("work/seen-src"), "int main;\n");
    assert_eq!(
        f("work/src-list"),
        "link\nmain.c\n",
        ".dockerignore applies"
    );
    assert_eq!(f("work/seen-tool"), "tool-v1\n");
    assert_eq!(f("work/src-ro"), "read-only\n");
    assert_eq!(f("work/scratch-rw"), "scribble\n");
    assert_eq!(f("work/tmp-fs"), "tmpfs\n");
    assert_eq!(
        f("work/token-hash").trim(),
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert_eq!(f("work/npmrc-mode"), "440 1000:1000\n");
    assert_eq!(f("work/absent"), "absent\n");
    assert!(
        !f("work/link-read").contains(marker),
        "{}",
        f("work/link-read")
    );
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fingerprint.stdout);
    let fp = fp.split_whitespace().nth(1).unwrap();
    assert!(
        f("work/agent-keys").contains(fp),
        "{}",
        f("work/agent-keys")
    );
    // Nothing of the mounts stays: not in the image, not in the context, not in berth's home.
    let after = f("work/after");
    for gone in [
        "/src",
        "/tool",
        "/scratch",
        "/hosttools",
        "/tmp/t",
        "/run/secrets",
        "/root/.npmrc",
        "/run/buildkit",
    ] {
        assert!(
            after.contains(&format!("{gone}: No such file")),
            "{gone} left: {after}"
        );
    }
    assert!(!p.join("src/written").exists() && !p.join("src/new").exists());
    assert!(
        !files.values().any(|c| c.contains(token)),
        "the token is in the image"
    );
    let leaked = berth_e2e::host::files_containing(b.home.path(), token);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
    let shm: Vec<_> = fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("berth-build-mount-")
        })
        .filter(|e| files_containing_token(&e.path(), token))
        .collect();
    assert!(shm.is_empty(), "secret folders left in /dev/shm: {shm:?}");
    // The secret's value is not part of the key: another token reruns nothing.
    fs::write(&secret_file, "ANOTHER-TOKEN").unwrap();
    let (_, err) = build(&b, p, &args);
    assert!(err.contains("0 steps run"), "{err}");
}

fn files_containing_token(dir: &Path, token: &str) -> bool {
    !berth_e2e::host::files_containing(dir, token).is_empty()
}

#[test]
fn onbuild_triggers_run_when_a_later_from_uses_the_image_and_only_then() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    fs::write(p.join("marker.txt"), "from-the-context\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {}/base:1 AS parent
ONBUILD COPY marker.txt /from-trigger
ONBUILD RUN echo "ran for $(cat /from-trigger)" >> /onbuild-ran
RUN echo parent > /parent

FROM parent AS child
RUN cat /onbuild-ran > /child-saw

FROM child
RUN echo grandchild > /grandchild
"#,
            reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    build(&b, p, &["-t", "parent:1", "--target", "parent", "."]);
    let oci = p.join("oci");
    b.ok(
        p,
        &[
            "image",
            "export",
            "parent:1",
            "--oci",
            "-o",
            oci.to_str().unwrap(),
        ],
    );
    let o = Command::new("skopeo")
        .args(["inspect", "--config", "--raw"])
        .arg(format!("oci:{}:1", oci.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let cfg: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        cfg["config"]["OnBuild"],
        serde_json::json!([
            "COPY marker.txt /from-trigger",
            "RUN echo \"ran for $(cat /from-trigger)\" >> /onbuild-ran"
        ]),
        "{cfg}"
    );
    build(&b, p, &["-t", "grandchild", "."]);
    let out = p.join("out.tar");
    b.ok(
        p,
        &["image", "export", "grandchild", "-o", out.to_str().unwrap()],
    );
    let files = tar_files(&out);
    assert_eq!(files["parent"], "parent\n");
    assert_eq!(files["child-saw"], "ran for from-the-context\n");
    // Triggers do not pass on: the grandchild's FROM child ran none again.
    assert_eq!(files["onbuild-ran"], "ran for from-the-context\n");
    assert_eq!(files["grandchild"], "grandchild\n");
}

#[test]
fn independent_stages_build_at_once_and_the_result_is_the_same() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1 AS slow
RUN sleep 3 && echo slow > /slow

FROM {r}/base:1 AS quick
RUN echo quick > /quick

FROM {r}/base:1
COPY --from=slow /slow /out/slow
COPY --from=quick /quick /out/quick
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    let (_, err) = build(&b, p, &["-t", "par", "."]);
    // The quick stage does not wait for the slow one: it starts while `sleep 3` runs.
    let slow_done = err
        .find("[slow 2/2] RUN sleep 3 && echo slow > /slow done")
        .unwrap();
    let quick_from = err.find("[quick] FROM").unwrap();
    assert!(
        quick_from < slow_done,
        "stages ran one after the other:\n{err}"
    );
    assert!(err.contains("4 steps run, 0 cached"), "{err}");
    let out = p.join("out.tar");
    b.ok(p, &["image", "export", "par", "-o", out.to_str().unwrap()]);
    let files = tar_files(&out);
    assert_eq!(files["out/slow"], "slow\n");
    assert_eq!(files["out/quick"], "quick\n");
}

/// Rootless, a secret mount's `uid`/`gid`/`mode` are applied as BuildKit does: the file
/// shows inside with that owner and mode, its owner reads it, another user of the step
/// does not, and nothing of it stays.
#[test]
fn rootless_secret_mounts_get_their_owner_and_mode() {
    if let Some(why) = berth_e2e::host::root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let Some(reg) = registry_with_base() else {
        return;
    };
    let user = berth_e2e::user::TestUser::create("berthds");
    let project = tempfile::Builder::new()
        .prefix("berth-dfrl:a,b-")
        .tempdir()
        .unwrap();
    let p = project.path();
    let token = "ROOTLESS-TOKEN-4c2a-never-on-disk";
    fs::write(p.join("token"), token).unwrap();
    fs::create_dir_all(p.join("src")).unwrap();
    fs::write(p.join("src/main.c"), "int main;\n").unwrap();
    fs::write(p.join("src/debug.log"), "ignored\n").unwrap();
    fs::write(p.join(".dockerignore"), "**/*.log\ntoken\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1
RUN --mount=type=secret,id=tok,uid=1000,gid=1000,mode=0440 \
    stat -c '%a %u:%g' /run/secrets/tok > /as-root
USER app
RUN --mount=type=secret,id=tok,uid=1000,gid=1000 \
    sha256sum /run/secrets/tok | cut -c1-64 > /tmp/owner-read
USER 1001:1001
RUN --mount=type=secret,id=tok,uid=1000,gid=1000 \
    {{ cat /run/secrets/tok 2>/dev/null || echo denied; }} > /tmp/other-read
USER root
RUN --mount=type=bind,source=src,target=/src \
    --mount=type=bind,source=src,target=/scratch,rw \
    ls /src > /src-list && stat -c '%u:%g' /src/main.c > /src-owner \
 && {{ touch /src/new 2>/dev/null && echo writable || echo read-only; }} > /src-ro \
 && echo scribble > /scratch/main.c && chown 1000:1000 /scratch/main.c && cat /scratch/main.c > /scratch-rw
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    // The user's checkout: their user and group (both the step's root).
    let st = Command::new("chown")
        .args(["-R", &format!("{}:", user.name)])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
    let o = user.berth(
        p,
        &[
            "image",
            "build",
            "-t",
            "rl",
            "--secret",
            "id=tok,src=token",
            ".",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "rootless build failed:\n{out}\n{err}");
    let tar = p.join("out.tar");
    let o = user.berth(p, &["image", "export", "rl", "-o", tar.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    let files = tar_files(&tar);
    let f = |k: &str| files.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(f("as-root"), "440 1000:1000\n");
    assert_eq!(
        f("tmp/owner-read").trim(),
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert_eq!(f("tmp/other-read"), "denied\n");
    // Bind mounts work rootless too: .dockerignore applies, the user's files show as root,
    // read-only unless rw, and rw writes (by another id too) reach neither the context nor
    // the image, and leave nothing behind.
    assert_eq!(f("src-list"), "main.c\n");
    assert_eq!(f("src-owner"), "0:0\n");
    assert_eq!(f("src-ro"), "read-only\n");
    assert_eq!(f("scratch-rw"), "scribble\n");
    assert_eq!(
        fs::read_to_string(p.join("src/main.c")).unwrap(),
        "int main;\n"
    );
    let tmp: Vec<_> = fs::read_dir(PathBuf::from(user.home()).join(".local/share/berth/tmp"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "staging left behind: {tmp:?}");
    assert!(
        !files.values().any(|c| c.contains(token)),
        "token in the image"
    );
    assert!(!files.contains_key("run/secrets/tok"));
    let home = PathBuf::from(user.home()).join(".local/share/berth");
    let leaked = berth_e2e::host::files_containing(&home, token);
    assert!(leaked.is_empty(), "the token is in {leaked:?}");
    let shm: Vec<_> = fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .filter(|e| files_containing_token(&e.path(), token))
        .collect();
    assert!(shm.is_empty(), "secret files left in /dev/shm: {shm:?}");
}

/// `RUN --mount=type=bind` mounts the source itself (no copy: times and hard links are the
/// source's), read-only unless `rw`, and `rw` writes land in a throw-away layer of the step,
/// never in the context, a stage or berth's store. Sources that try to leave the context or
/// a stage (`..`, a symlink on the way, a stage's symlink to a host path) read nothing of the
/// host.
#[test]
fn bind_mounts_are_the_sources_themselves_and_never_lead_outside() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    // A context folder whose name holds the overlay's option separators.
    let project = tempfile::Builder::new()
        .prefix("berth-ctx:a,b-")
        .tempdir()
        .unwrap();
    let p = project.path();
    let outside = tempfile::tempdir().unwrap();
    let marker = "HOST-MARKER-outside-the-context-e81d";
    fs::create_dir_all(outside.path().join("inner")).unwrap();
    fs::write(outside.path().join("inner/private"), marker).unwrap();
    fs::write(outside.path().join("private"), marker).unwrap();
    fs::create_dir_all(p.join("src")).unwrap();
    fs::write(p.join("src/old.c"), "old\n").unwrap();
    fs::hard_link(p.join("src/old.c"), p.join("src/twin.c")).unwrap();
    let o = Command::new("touch")
        .args(["-h", "-d", "@1000000000"])
        .arg(p.join("src/old.c"))
        .status()
        .unwrap();
    assert!(o.success());
    std::os::unix::fs::symlink(outside.path(), p.join("lnk")).unwrap();
    // Written by the step as `RW-WRITE""-never…`: the Dockerfile (kept in the image's
    // history) does not hold it whole.
    let rw_marker = "RW-WRITE-never-kept-77b0";
    let rw_split = "RW-WRITE\"\"-never-kept-77b0";
    let o = outside.path().display();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1 AS stage
RUN mkdir -p /opt/real && echo stage-file > /opt/real/f && touch -d @1100000000 /opt/real/f \
 && ln -s {o} /opt/hostlink && ln -s {o}/private /opt/real/hostfile

FROM {r}/base:1
RUN --mount=type=bind,source=src,target=/src \
    --mount=type=bind,from=stage,source=/opt/real,target=/real \
    --mount=type=bind,source=src,target=/rw,rw \
    --mount=type=bind,from=stage,source=/opt/real,target=/stage-rw,rw \
    stat -c '%Y %h' /src/old.c > /ctx-stat \
 && stat -c '%Y' /real/f > /stage-stat \
 && {{ cat /real/hostfile 2>&1 || true; }} > /stage-link \
 && {{ touch /src/new 2>/dev/null && echo writable || echo read-only; }} > /ctx-ro \
 && {{ touch /real/new 2>/dev/null && echo writable || echo read-only; }} > /stage-ro \
 && echo {rw_split} > /rw/old.c && echo {rw_split} > /rw/made \
 && echo {rw_split} > /stage-rw/f && cat /rw/old.c /stage-rw/f | sha256sum | cut -c1-64 > /rw-seen
RUN --mount=type=bind,source=src,target=/src --mount=type=bind,from=stage,source=/opt/real,target=/real \
    cat /src/old.c /real/f > /after
COPY src/old.c /copied.c
COPY --from=stage /opt/real/f /copied-from-stage
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    build(&b, p, &["-t", "binds", "."]);
    let out = p.join("out.tar");
    b.ok(
        p,
        &["image", "export", "binds", "-o", out.to_str().unwrap()],
    );
    let files = tar_files(&out);
    let f = |k: &str| files.get(k).map(String::as_str).unwrap_or("<missing>");
    // The source itself: its time and its hard link, not a copy's.
    assert_eq!(f("ctx-stat"), "1000000000 2\n");
    assert_eq!(f("stage-stat"), "1100000000\n");
    // COPY keeps the source's modification time, as Docker's does.
    let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
    let mtimes: BTreeMap<String, u64> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let path = e
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            (path, e.header().mtime().unwrap())
        })
        .collect();
    assert_eq!(mtimes["copied.c"], 1_000_000_000);
    assert_eq!(mtimes["copied-from-stage"], 1_100_000_000);
    assert!(!f("stage-link").contains(marker), "{}", f("stage-link"));
    assert_eq!(f("ctx-ro"), "read-only\n");
    assert_eq!(f("stage-ro"), "read-only\n");
    assert_eq!(
        f("rw-seen").trim(),
        hex::encode(Sha256::digest(format!("{rw_marker}\n{rw_marker}\n")))
    );
    // rw writes went nowhere: not into the context, the stage, the store or the image.
    assert_eq!(f("after"), "old\nstage-file\n");
    assert_eq!(fs::read_to_string(p.join("src/old.c")).unwrap(), "old\n");
    assert!(!p.join("src/made").exists());
    assert!(!files.values().any(|c| c.contains(rw_marker)));
    let kept = berth_e2e::host::files_containing(b.home.path(), rw_marker);
    assert!(kept.is_empty(), "rw writes kept in {kept:?}");
    assert!(berth_e2e::host::files_containing(p, rw_marker).is_empty());
    // COPY --from is keyed by what it copies: a source stage that runs again and makes the
    // same file reruns nothing after it.
    fs::write(
        p.join("Dockerfile.gen"),
        format!(
            "FROM {r}/base:1 AS gen\nARG V=1\nRUN echo \"$V\" > /v && echo fixed > /out\nFROM {r}/base:1\nCOPY --from=gen /out /out\nRUN cat /out > /after-copy\n",
            r = reg.addr
        ),
    )
    .unwrap();
    let gen = |v: &str| {
        let arg = format!("V={v}");
        build(
            &b,
            p,
            &[
                "-f",
                "Dockerfile.gen",
                "-t",
                "gen",
                "--build-arg",
                &arg,
                ".",
            ],
        )
        .1
    };
    let first = gen("1");
    assert!(first.contains("3 steps run, 0 cached"), "{first}");
    let again = gen("2");
    assert!(again.contains("COPY /out /out (cached)"), "{again}");
    assert!(again.contains("1 steps run, 2 cached"), "{again}");

    // Ways out of the context or a stage fail at their line and read nothing.
    for (source, says) in [
        ("source=../outside", "outside the build context"),
        ("source=lnk/inner", "symlinks are not followed"),
        ("source=lnk", "is a symlink"),
        ("from=stage,source=/opt/hostlink", "is a symlink"),
        ("from=stage,source=/opt/hostlink/inner", "does not exist"),
        ("from=stage,source=/../../..", "does not exist"),
    ] {
        fs::write(
            p.join("Dockerfile.bad"),
            format!(
                "FROM {r}/base:1 AS stage\nRUN mkdir -p /opt && ln -s {o} /opt/hostlink\nFROM {r}/base:1\nRUN --mount=type=bind,{source},target=/x cat /x/private /x/inner/private > /got\n",
                r = reg.addr
            ),
        )
        .unwrap();
        let o = b.run_in(
            p,
            &["image", "build", "-f", "Dockerfile.bad", "-t", "bad", "."],
        );
        let (so, se) = text(&o);
        assert!(!o.status.success(), "{source}: built:\n{so}\n{se}");
        assert!(se.contains("Dockerfile.bad:4:"), "{source}: {se}");
        assert!(se.contains(says), "{source}: {se}");
        assert!(!format!("{so}{se}").contains(marker));
    }
}
