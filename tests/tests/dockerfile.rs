//! `berth image build` of Dockerfiles shaped like real projects' (a Node-style app: manifest
//! first, install with a cache mount, sources, build; a slim final stage), their `FROM`
//! pointing at a busybox image this test pushes to a loopback `docker-registry`: the same
//! Dockerfile built by `buildah bud` (Debian's) gives the same file tree and the image config
//! others run it with; heredocs, `--chown`, archives, `ADD` of a URL with its checksum,
//! `ONBUILD`, stages built at once; bad Dockerfiles fail with `Dockerfile:LINE:COL`.
//! Caching is in `dockerfile_cache.rs`, `RUN --mount`s in `dockerfile_mounts.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::dockerfile::{
    app_project, build, listing, registry_with, registry_with_base, tar_files,
};
use berth_e2e::{require_root, text, Berth};
use sha2::{Digest, Sha256};

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
RUN --network=none tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /opt/nets-none
RUN tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort > /opt/nets-default
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
    // `--network=none`: loopback only; by default the step has a network of its own.
    assert_eq!(files["opt/nets-none"], "lo\n");
    let default: Vec<&str> = files["opt/nets-default"].lines().collect();
    assert!(default.contains(&"lo") && default.len() >= 2, "{default:?}");
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

/// A dev container built from a Dockerfile (`build.dockerfile`, `context`, `target`, `args`)
/// converts and comes up: `berth up --devcontainer` builds the target stage with the
/// arguments, `containerEnv` and `remoteUser` apply; `init --from-devcontainer` writes the
/// `[image] dockerfile` keys, and that berth.toml comes up the same.
#[test]
fn a_devcontainer_with_a_dockerfile_converts_and_comes_up() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::Builder::new()
        .prefix("berth-dcdf-")
        .tempdir()
        .unwrap();
    let p = project.path();
    fs::create_dir_all(p.join(".devcontainer")).unwrap();
    fs::write(p.join("tool.txt"), "from the context\n").unwrap();
    fs::write(
        p.join(".devcontainer/Dockerfile"),
        "ARG REGISTRY\nFROM ${REGISTRY}/base:1 AS dev\nARG FLAVOUR=plain\nCOPY tool.txt /opt/tool.txt\nRUN echo \"$FLAVOUR\" > /opt/flavour\n\nFROM dev AS release\nRUN echo release > /opt/flavour\n",
    )
    .unwrap();
    fs::write(
        p.join(".devcontainer/devcontainer.json"),
        format!(
            r#"{{
  // As the devcontainers templates write it: the context is the project folder.
  "name": "dfdev",
  "build": {{ "dockerfile": "Dockerfile", "context": "..", "target": "dev",
             "args": {{ "REGISTRY": "{}", "FLAVOUR": "spicy" }} }},
  "containerEnv": {{ "GREETING": "hi" }},
  "remoteUser": "app"
}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let b = Berth::new();
    let check = |flags: &[&str]| {
        let exec = |cmd: &str| {
            let mut a = flags.to_vec();
            a.extend_from_slice(&["exec", "--", "sh", "-c", cmd]);
            b.ok(p, &a)
        };
        assert_eq!(
            exec("cat /opt/tool.txt /opt/flavour"),
            "from the context\nspicy\n"
        );
        assert_eq!(exec("echo $GREETING; id -un"), "hi\napp\n");
        let mut a = flags.to_vec();
        a.push("destroy");
        b.ok(p, &a);
    };
    let (_, err) = b.ok_both(p, &["up", "--devcontainer"]);
    assert!(err.contains("[dev 4/4] RUN echo \"$FLAVOUR\""), "{err}");
    assert!(!err.contains("[release"), "only the target's stages: {err}");
    check(&["--devcontainer"]);
    assert!(!p.join("berth.toml").exists());

    b.ok(p, &["init", "--from-devcontainer"]);
    let toml = fs::read_to_string(p.join("berth.toml")).unwrap();
    assert!(toml.contains(".devcontainer/Dockerfile"), "{toml}");
    assert!(toml.contains("target = \"dev\""), "{toml}");
    b.ok(p, &["up"]);
    check(&[]);
}
