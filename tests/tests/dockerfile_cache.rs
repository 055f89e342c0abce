//! Caching of Dockerfile builds: a changed source reruns the build from its `COPY` only and
//! the cache mount survives; `up` rebuilds when the context changes; steps that read a stage
//! (`COPY --from`, a bind `from=`) are keyed by what they read; an unchanged context file is
//! not read again (its hash is answered from its metadata stamp); `berth image prune` removes
//! the kept keys with the layers they were read from.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use berth_e2e::dockerfile::{app_project, build, listing, registry_with_base, tar_files};
use berth_e2e::{require_root, Berth};
use sha2::{Digest, Sha256};

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

/// The files opened in watched folders (inotify `IN_OPEN`), as `<label><name>`.
struct Opens {
    fd: OwnedFd,
    labels: BTreeMap<i32, String>,
}

impl Opens {
    fn watch(dirs: &[(&Path, &str)]) -> Opens {
        // SAFETY: inotify_init1 takes flags only; it returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            raw >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut labels = BTreeMap::new();
        for (dir, label) in dirs {
            let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
            let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_OPEN) };
            assert!(
                wd >= 0,
                "inotify_add_watch: {}",
                std::io::Error::last_os_error()
            );
            labels.insert(wd, label.to_string());
        }
        Opens { fd, labels }
    }

    /// The files opened since the last call.
    fn take(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let head = std::mem::size_of::<libc::inotify_event>();
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut i = 0;
            while i + head <= n as usize {
                // SAFETY: the kernel wrote a whole event at `i`; read unaligned.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[i..].as_ptr().cast()) };
                let name = &buf[i + head..i + head + ev.len as usize];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                if ev.mask & libc::IN_ISDIR == 0 && !name.is_empty() {
                    out.push(format!("{}{name}", self.labels[&ev.wd]));
                }
                i += head + ev.len as usize;
            }
        }
    }
}

/// A build whose context did not change reads none of its files: their hashes are answered
/// from their metadata stamps. A file rewritten with the same size and its old mtime put
/// back is seen (its change time moved), read again, and its `COPY` reruns; the others are
/// still not read.
#[test]
fn an_unchanged_context_file_is_not_read_again_and_a_changed_one_is() {
    let project = tempfile::tempdir().unwrap();
    let p = project.path();
    fs::create_dir_all(p.join("src")).unwrap();
    fs::write(p.join("big.bin"), vec![7u8; 1 << 20]).unwrap();
    fs::write(p.join("src/a.txt"), "a\n").unwrap();
    fs::write(p.join("src/b.txt"), "b\n").unwrap();
    fs::write(
        p.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\nCOPY src /src\n",
    )
    .unwrap();
    let old_time = |f: &Path| {
        let st = Command::new("touch")
            .args(["-d", "@1000000000"])
            .arg(f)
            .status()
            .unwrap();
        assert!(st.success());
    };
    for f in ["big.bin", "src/a.txt", "src/b.txt"] {
        old_time(&p.join(f));
    }
    // A file changed in the last 3 s is read every time (a second write in the same clock
    // tick could keep its stamp): let these settle.
    std::thread::sleep(std::time::Duration::from_millis(3300));
    let b = Berth::new();
    let args = ["-t", "ctx", "."];
    let (_, first) = build(&b, p, &args);
    assert!(first.contains("2 steps run, 0 cached"), "{first}");

    let opens = Opens::watch(&[(p, ""), (&p.join("src"), "src/")]);
    let (_, again) = build(&b, p, &args);
    assert!(again.contains("0 steps run, 2 cached"), "{again}");
    let read: Vec<String> = opens
        .take()
        .into_iter()
        .filter(|n| n != "Dockerfile")
        .collect();
    assert!(
        read.is_empty(),
        "unchanged context files read again: {read:?}"
    );

    fs::write(p.join("src/a.txt"), "A\n").unwrap();
    old_time(&p.join("src/a.txt"));
    let (_, edit) = build(&b, p, &args);
    assert!(edit.contains("COPY big.bin /big.bin (cached)"), "{edit}");
    assert!(edit.contains("COPY src /src …"), "{edit}");
    assert!(edit.contains("1 steps run, 1 cached"), "{edit}");
    // a.txt is read to hash it and then to copy it; b.txt only to copy it (its `COPY`
    // reruns); big.bin not at all.
    let read = opens.take();
    let times = |n: &str| read.iter().filter(|r| *r == n).count();
    assert_eq!(
        (times("src/a.txt"), times("src/b.txt"), times("big.bin")),
        (2, 1, 0),
        "{read:?}"
    );
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("out.tar");
    b.ok(p, &["image", "export", "ctx", "-o", tar.to_str().unwrap()]);
    assert_eq!(tar_files(&tar)["src/a.txt"], "A\n");
}

/// Steps that read a stage are keyed by what they read, not by the stage's key: a source
/// stage that runs again and makes the same files reruns neither a `COPY --from` nor a
/// `RUN --mount=type=bind,from=` of it; changed files rerun both. The kept keys go with
/// `berth image prune` when the layers they were read from go (and the context's hashes when
/// the context is gone).
#[test]
fn steps_that_read_a_stage_are_keyed_by_its_content_and_their_keys_go_with_prune() {
    require_root!();
    let Some(reg) = registry_with_base() else {
        return;
    };
    let project = tempfile::tempdir().unwrap();
    let p = project.path().to_path_buf();
    fs::write(
        p.join("Dockerfile"),
        format!(
            r#"FROM {r}/base:1 AS gen
ARG V=1
ARG W=fixed
RUN echo "$V" > /v && mkdir -p /out && echo "$W" > /out/f

FROM {r}/base:1
RUN --mount=type=bind,from=gen,source=/out,target=/o cat /o/f > /seen
COPY --from=gen /out/f /copied
COPY --from={r}/base:1 /etc/group /base-group
COPY note.txt /note.txt
"#,
            r = reg.addr
        ),
    )
    .unwrap();
    fs::write(p.join("note.txt"), "a context file\n").unwrap();
    let b = Berth::new();
    let gen = |v: &str, w: &str| {
        let v = format!("V={v}");
        let w = format!("W={w}");
        build(
            &b,
            &p,
            &["-t", "gen", "--build-arg", &v, "--build-arg", &w, "."],
        )
        .1
    };
    let first = gen("1", "fixed");
    assert!(first.contains("5 steps run, 0 cached"), "{first}");
    let again = gen("2", "fixed");
    assert!(again.contains("[gen 4/4] RUN echo"), "{again}");
    assert!(
        again.contains("cat /o/f > /seen (cached)"),
        "the bind of an unchanged stage reran:\n{again}"
    );
    assert!(again.contains("COPY /out/f /copied (cached)"), "{again}");
    assert!(again.contains("1 steps run, 4 cached"), "{again}");
    let changed = gen("2", "changed");
    assert!(changed.contains("5 steps run, 0 cached"), "{changed}");
    let out = tempfile::tempdir().unwrap();
    let tar = out.path().join("out.tar");
    b.ok(&p, &["image", "export", "gen", "-o", tar.to_str().unwrap()]);
    let files = tar_files(&tar);
    assert_eq!(files["seen"], "changed\n");
    assert_eq!(files["copied"], "changed\n");

    // The keys of the three `gen` stages' files go with their layers (no image holds
    // them); the one read from the base image stays while the image does.
    let count = |dir: &str| {
        fs::read_dir(b.home.path().join(dir))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert!(count("copy-keys") >= 4, "{}", count("copy-keys"));
    assert_eq!(count("context-digests"), 1);
    b.ok(&p, &["image", "prune"]);
    assert_eq!(count("copy-keys"), 1, "keys of removed layers kept");
    assert_eq!(count("context-digests"), 1, "the context is still there");
    b.ok(&p, &["image", "rm", "gen"]);
    b.ok(&p, &["image", "rm", &format!("{}/base:1", reg.addr)]);
    drop(project);
    b.ok(Path::new("/"), &["image", "prune"]);
    assert_eq!(count("copy-keys"), 0);
    assert_eq!(count("context-digests"), 0, "the context is gone");
}
