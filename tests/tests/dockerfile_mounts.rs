//! `RUN --mount` of Dockerfile builds: binds of the context and of a stage (the sources
//! themselves, read-only unless `rw`, never leading outside), tmpfs, secrets (never in a
//! layer, a key or berth's home; rootless with their owner and mode) and the SSH agent, none
//! of them left behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::dockerfile::{build, registry_with_base, tar_files};
use berth_e2e::{require_root, text, Berth};
use sha2::{Digest, Sha256};

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
            // ssh-agent binds its socket, then listens.
            if berth_runtime::host::unix_socket::is_listening(&sock).unwrap() {
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

/// `RUN` steps trust the host's CA certificates (a TLS-intercepting proxy's among them), as
/// berth.toml's setup steps do: the image's bundle merged with the host's, mounted read-only
/// for the step alone and named by the TLS variables. Nothing of it is in the image, and the
/// step's key is the one a build without it has (`--no-host-ca` finds the step cached).
#[test]
fn run_steps_trust_the_hosts_ca_certificates_and_keep_none_of_them() {
    require_root!();
    let Ok(host_bundle) = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") else {
        eprintln!("skipped: the host has no /etc/ssl/certs/ca-certificates.crt (ca-certificates)");
        return;
    };
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1
RUN echo "${{SSL_CERT_FILE:-none}} ${{CURL_CA_BUNDLE:-none}}" > /seen-env \
 && cat "${{SSL_CERT_FILE:-/dev/null}}" > /seen.crt \
 && {{ echo x >> "${{SSL_CERT_FILE:-/dev/null/x}}" 2>/dev/null && echo writable || echo read-only; }} > /seen-ro
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    let export = |b: &Berth, tag: &str| {
        let out = p.join(format!("{tag}.tar"));
        b.ok(p, &["image", "export", tag, "-o", out.to_str().unwrap()]);
        let files = tar_files(&out);
        fs::remove_file(&out).unwrap();
        files
    };
    let b = Berth::new();
    build(&b, p, &["-t", "with-ca", "."]);
    let files = export(&b, "with-ca");
    let f = |k: &str| files.get(k).cloned().unwrap_or_else(|| "<missing>".into());
    assert_eq!(
        f("seen-env"),
        "/etc/berth/ca-certificates.crt /etc/berth/ca-certificates.crt\n"
    );
    assert_eq!(f("seen-ro"), "read-only\n");
    let seen = f("seen.crt");
    let blocks: Vec<&str> = host_bundle
        .split("-----END CERTIFICATE-----")
        .filter_map(|b| {
            b.split_once("-----BEGIN CERTIFICATE-----")
                .map(|(_, body)| body)
        })
        .collect();
    assert!(!blocks.is_empty(), "no certificate in the host's bundle");
    for body in &blocks {
        assert!(
            seen.contains(body.trim()),
            "a host certificate is missing from the step's bundle"
        );
    }
    assert!(
        !files.keys().any(|k| k.starts_with("etc/berth")),
        "the bundle stayed in the image: {:?}",
        files
            .keys()
            .filter(|k| k.starts_with("etc/"))
            .collect::<Vec<_>>()
    );
    // The key does not hold the certificates: the same build without them is cached.
    let (_, err) = build(&b, p, &["--no-host-ca", "-t", "again", "."]);
    assert!(err.contains("(cached)"), "{err}");
    // A home that never had them runs the step without them.
    let fresh = Berth::new();
    build(&fresh, p, &["--no-host-ca", "-t", "without-ca", "."]);
    let files = export(&fresh, "without-ca");
    assert_eq!(
        files.get("seen-env").map(String::as_str),
        Some("none none\n")
    );
    assert_eq!(files.get("seen.crt").map(String::as_str), Some(""));
}
