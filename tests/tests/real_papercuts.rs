//! Papercuts found by running berth on real projects, each through the real binary: service
//! restarts that leave the dead run's children behind, `[env] PATH` lost in login shells,
//! mounts nested under the project mount, `debootstrap:` bases and their lock on a second
//! machine, and smaller ones (image names, `destroy --volumes`, the supervisor's name).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::project::Project;
use berth_e2e::{require_debian, require_root, text, Berth};

/// A project folder with a busybox rootfs; `{name}` in the berth.toml becomes a name unique
/// to this test.
fn project(toml: &str) -> Project {
    Project::new("berth-cut-", "cut-", toml)
}

/// Polls `berth status --json` until `done` holds for the named service (30 s at most).
fn wait_for_service(
    b: &Berth,
    dir: &Path,
    service: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let st = b.ok_combined(dir, &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        let svc = v["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == service).cloned())
            .unwrap_or_else(|| panic!("no service {service} in {st}"));
        if done(&svc) {
            return svc;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "service {service} never reached the expected state: {svc}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_restarted_service_takes_its_children_with_it_and_shows_as_crash_looping() {
    require_root!();
    // Each run leaves a child behind and dies, like a dev server whose reloader child keeps
    // the port: before the fix, every restart added one more orphan.
    let p = project(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[services]
flaky = { command = ["sh", "-c", "sleep 1000 & sleep 0.2; exit 3"], restart = "always" }
"#,
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok_combined(p.path(), &["up"]);
    wait_for_service(&b, p.path(), "flaky", |s| {
        s["restarts"].as_u64().unwrap_or(0) >= 4
    });
    let ps = b.ok_combined(p.path(), &["exec", "--", "ps"]);
    let orphans = ps.lines().filter(|l| l.contains("sleep 1000")).count();
    assert!(
        orphans <= 1,
        "{orphans} children of dead service runs are still alive:\n{ps}"
    );
    // status names the crash loop, with the count, the window and the exit code.
    let st = b.ok_combined(p.path(), &["status"]);
    let line = st
        .lines()
        .find(|l| l.contains("flaky"))
        .unwrap_or_else(|| panic!("no service line:\n{st}"));
    assert!(
        line.contains("crash-looping: exited") && line.contains("last exit code 3"),
        "{st}"
    );
    // `up` on an unchanged file does not just say "up to date".
    let up = b.ok_combined(p.path(), &["up"]);
    assert!(
        up.contains("up to date") && up.contains("service flaky is crash-looping"),
        "{up}"
    );
    b.ok_combined(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn env_path_survives_the_login_shell_of_a_debian_base() {
    require_debian!();
    // Debian's /etc/profile sets PATH from scratch for every login shell.
    let p = project(
        r#"
name = "{name}"
[image]
from = "debootstrap:bookworm"
[env]
PATH = "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MESSAGE = "it's here"
[services]
probe = { command = ["sh", "-lc", "echo \"service PATH=$PATH\"; sleep 1000"] }
"#,
    );
    let b = Berth::new();
    berth_e2e::debian::seed_bookworm(&b);
    let before = p.snapshot(&b);
    b.ok_combined(p.path(), &["up"]);
    // `berth shell` runs a login shell (/bin/sh -l); without a terminal it reads stdin.
    let mut child = b
        .cmd()
        .current_dir(p.path())
        .args(["shell"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo \"shell PATH=$PATH MESSAGE=$MESSAGE\"\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains("shell PATH=/opt/tool/bin:/usr/local/sbin:")
            && out.contains("MESSAGE=it's here"),
        "the login shell lost [env]:\n{out}\n{err}"
    );
    // exec of a login shell, and a service started through one, alike.
    let out = b.ok_combined(
        p.path(),
        &["exec", "--", "sh", "-lc", "echo exec PATH=$PATH"],
    );
    assert!(out.contains("exec PATH=/opt/tool/bin:"), "{out}");
    let logs = b.log_once_it_shows(p.path(), "probe", "service PATH=");
    assert!(logs.contains("service PATH=/opt/tool/bin:"), "{logs}");
    b.ok_combined(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn a_volume_and_a_tmpfs_nested_under_the_project_mount_start_on_a_clean_checkout() {
    require_root!();
    // The node template's layout: the checkout at /work, node_modules a volume inside it; a
    // fresh clone has no node_modules (nor .cache) folder.
    let p = project(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[[mounts]]
source = "."
target = "/work"
[[mounts]]
source = "{name}-modules"
target = "/work/node_modules"
type = "volume"
[[mounts]]
target = "/work/.cache/tool"
type = "tmpfs"
"#,
    );
    // The checkout belongs to a user, as a real one does.
    std::os::unix::fs::chown(p.path(), Some(1000), Some(1000)).unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok_combined(p.path(), &["up"]);
    b.ok_combined(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo dep > /work/node_modules/dep.js && echo c > /work/.cache/tool/x",
        ],
    );
    // What went into the volume and the tmpfs is not in the checkout.
    assert!(!p.path().join("node_modules/dep.js").exists());
    assert!(!p.path().join(".cache/tool/x").exists());
    // The mount points berth had to create belong to the checkout's owner, not to root or
    // to the environment's subordinate ids.
    use std::os::unix::fs::MetadataExt;
    for d in ["node_modules", ".cache", ".cache/tool"] {
        let m = std::fs::metadata(p.path().join(d)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "owner of {d}");
    }
    // The volume keeps its content across a restart.
    b.ok_combined(p.path(), &["down"]);
    b.ok_combined(p.path(), &["up"]);
    let out = b.ok_combined(
        p.path(),
        &["exec", "--", "cat", "/work/node_modules/dep.js"],
    );
    assert!(out.contains("dep"), "{out}");
    b.ok_combined(p.path(), &["destroy", "--volumes"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A project folder holding only `files` (a clone of another project's committed files).
fn clone_of(src: &Path, files: &[&str]) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("berth-clone-")
        .tempdir()
        .unwrap();
    for f in files {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    d
}

#[test]
fn a_debootstrap_lock_is_honoured_on_a_second_machine_with_the_same_packages() {
    require_debian!();
    let p = project(
        r#"
name = "{name}"
[image]
from = "debootstrap:bookworm"
"#,
    );
    let first = Berth::new();
    berth_e2e::debian::seed_bookworm(&first);
    let before = p.snapshot(&first);
    first.ok_combined(p.path(), &["up"]);
    let lock = std::fs::read_to_string(p.path().join("berth.lock")).unwrap();
    assert!(
        lock.contains("suite = \"bookworm\"") && lock.contains("\"libc6="),
        "the lock does not record the package set:\n{lock}"
    );
    // sources.list has the updates and security suites, and apt can use them from inside.
    let sources = first.ok_combined(p.path(), &["exec", "--", "cat", "/etc/apt/sources.list"]);
    assert!(
        sources.contains("bookworm-updates main") && sources.contains("bookworm-security main"),
        "{sources}"
    );
    let apt = first.ok_combined(p.path(), &["exec", "--", "apt-get", "update"]);
    assert!(
        apt.contains("bookworm-security") && apt.contains("bookworm-updates"),
        "{apt}"
    );
    first.ok_combined(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&first));

    // The second machine bootstrapped bookworm itself: the same packages in other bytes
    // (here: the first machine's tree written by GNU tar instead of berth). Its home names
    // that image as `debootstrap:` resolves it.
    let ls: serde_json::Value =
        serde_json::from_str(&first.ok_combined(Path::new("/"), &["image", "ls", "--json"]))
            .unwrap();
    let name = ls["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("debootstrap:bookworm "))
        .unwrap_or_else(|| panic!("no bootstrapped image in {ls}"))
        .to_string();
    let layer = std::fs::read_dir(first.home.path().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("var/lib/dpkg/status").is_file())
        .expect("the bootstrapped layer");
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("other-machine.tar");
    let st = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&layer)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let second = Berth::new();
    second.ok_combined(
        Path::new("/"),
        &["image", "import", tar.to_str().unwrap(), "--name", &name],
    );
    let clone = clone_of(p.path(), &["berth.toml", "berth.lock"]);
    second.ok_combined(clone.path(), &["up"]);
    assert_eq!(
        std::fs::read_to_string(clone.path().join("berth.lock")).unwrap(),
        lock,
        "the lock was rewritten although it matched"
    );
    second.ok_combined(clone.path(), &["destroy"]);

    // A machine whose bootstrap installed something else is told what differs and how to
    // update the lock.
    let extra = work.path().join("var/lib/dpkg");
    std::fs::create_dir_all(&extra).unwrap();
    let mut status = std::fs::read_to_string(layer.join("var/lib/dpkg/status")).unwrap();
    status.push_str(
        "\nPackage: berth-extra\nStatus: install ok installed\nPriority: optional\nVersion: 9.9\nDescription: test\n",
    );
    std::fs::write(extra.join("status"), status).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(work.path())
        .arg("-rf")
        .arg(&tar)
        .arg("./var/lib/dpkg/status")
        .status()
        .unwrap();
    assert!(st.success());
    second.ok_combined(
        Path::new("/"),
        &["image", "import", tar.to_str().unwrap(), "--name", &name],
    );
    let clone = clone_of(p.path(), &["berth.toml", "berth.lock"]);
    let o = second.run_in(clone.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("berth-extra 9.9 only here") && err.contains("berth up --update"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(clone.path().join("berth.lock")).unwrap(),
        lock,
        "a failed check changed the lock"
    );
}

#[test]
fn small_ones_change_details_supervisor_name_and_volumes_after_destroy() {
    require_root!();
    let toml = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[env]
A = "1"
[[mounts]]
source = "{name}-data"
target = "/data"
type = "volume"
"#;
    let p = project(toml);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok_combined(p.path(), &["up"]);
    // PID 1 is called berth-init, not `exe` (the memfd it runs from).
    let comm = b.ok_combined(p.path(), &["exec", "--", "cat", "/proc/1/comm"]);
    assert_eq!(comm.trim(), "berth-init");
    // "changed:" says what changed inside a section.
    p.write(&toml.replace("A = \"1\"", "A = \"1\"\nB = \"2\""));
    let up = b.ok_combined(p.path(), &["up"]);
    assert!(up.contains("changed: env (+B)"), "{up}");
    b.ok_combined(p.path(), &["exec", "--", "sh", "-c", "echo kept > /data/f"]);
    // destroy, then destroy --volumes: the volume goes too.
    b.ok_combined(p.path(), &["destroy"]);
    let volume = b
        .home
        .path()
        .join("volumes")
        .join(format!("{}-data", p.name));
    assert!(
        volume.join("f").exists(),
        "destroy without --volumes kept no volume"
    );
    let out = b.ok_combined(p.path(), &["destroy", "--volumes"]);
    assert!(
        !volume.exists(),
        "destroy --volumes after destroy left it: {out}"
    );
    assert!(out.contains(&format!("{}-data", p.name)), "{out}");
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn image_ls_names_build_images_and_image_rm_accepts_what_it_prints() {
    require_root!();
    let p = project(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
setup = ["echo one > /one", "echo two > /two"]
# Exactly the two setup steps as build images (no layer of the host's CA certificates).
host_ca = false
"#,
    );
    let b = Berth::new();
    b.ok_combined(p.path(), &["up"]);
    b.ok_combined(p.path(), &["destroy"]);
    let ls = b.ok_combined(p.path(), &["image", "ls"]);
    let rows: Vec<(String, String)> = ls
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("total:"))
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap().to_string())
        })
        .collect();
    let builds: Vec<&(String, String)> = rows
        .iter()
        .filter(|(n, _)| n.starts_with("build:"))
        .collect();
    assert_eq!(builds.len(), 2, "{ls}");
    for l in ls.lines() {
        assert!(
            l.len() <= 100,
            "a name overflows its column (the table breaks):\n{ls}"
        );
    }
    // The printed name of one, the printed id of the other.
    let o = b.ok_combined(p.path(), &["image", "rm", &builds[0].0]);
    assert!(o.contains("removed build:"), "{o}");
    let o = b.ok_combined(p.path(), &["image", "rm", &builds[1].1]);
    assert!(o.contains("removed build:"), "{o}");
    let ls = b.ok_combined(p.path(), &["image", "ls"]);
    assert!(!ls.contains("build:"), "{ls}");
}

#[test]
fn init_from_devcontainer_resolves_the_workspace_variables() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("shop");
    std::fs::create_dir_all(proj.join(".devcontainer")).unwrap();
    // What VS Code generates, plus a variable berth cannot know.
    std::fs::write(
        proj.join(".devcontainer/devcontainer.json"),
        r#"{
  "name": "Shop",
  "image": "docker.io/library/python:3.12",
  "workspaceFolder": "/workspaces/${localWorkspaceFolderBasename}",
  "postCreateCommand": "cd ${containerWorkspaceFolder} && pip install -r requirements.txt",
  "postStartCommand": "echo ${localEnv:TOKEN}",
  "remoteEnv": { "APP_DIR": "${containerWorkspaceFolder}/app" }
}"#,
    )
    .unwrap();
    let b = Berth::new();
    let o = b.run_in(&proj, &["init", "--from-devcontainer"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let toml = std::fs::read_to_string(proj.join("berth.toml")).unwrap();
    assert!(
        toml.contains("workdir = \"/workspaces/shop\"")
            && toml.contains("cd /workspaces/shop && pip install")
            && toml.contains("APP_DIR = \"/workspaces/shop/app\""),
        "{toml}"
    );
    // Settings hold no variable; the comment block at the top quotes what was not converted.
    let settings: String = toml.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        !settings.contains("${"),
        "unresolved variable written:\n{toml}"
    );
    assert!(
        toml.contains("#   - postStartCommand: \"echo ${localEnv:TOKEN}\""),
        "{toml}"
    );
    assert!(
        err.contains("postStartCommand"),
        "not listed as not converted:\n{err}"
    );
    b.ok_combined(&proj, &["validate"]);
}
