//! berth as an unprivileged user: up, exec, live mount ownership, down, destroy — through
//! the real binary, run with `runuser` as a user this test creates (and removes).

use std::path::Path;
use std::process::Command;

use berth_e2e::host::{busybox_rootfs, root_skip_reason};
use berth_e2e::text;
use berth_e2e::user::TestUser;

#[test]
fn an_unprivileged_user_runs_the_daily_loop() {
    if let Some(why) = root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let user = TestUser::create("berthrl");
    let proj = tempfile::Builder::new()
        .prefix("berth-rootless-")
        .tempdir()
        .unwrap();
    busybox_rootfs(&proj.path().join("rootfs"));
    std::fs::write(
        proj.path().join("berth.toml"),
        "name = \"rl\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n",
    )
    .unwrap();
    user.own(proj.path());
    let ok = |args: &[&str]| {
        let o = user.berth(proj.path(), args);
        assert!(
            o.status.success(),
            "berth {args:?} as {}: {:?}",
            user.name,
            text(&o)
        );
        text(&o).0
    };
    let out = ok(&["up"]);
    assert!(out.contains("created and started"), "{out}");
    // The store is the user's own, not root's.
    assert!(Path::new(&user.home())
        .join(".local/share/berth/envs")
        .is_dir());
    let o = ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "hostname; touch /work/made-inside; echo $((1+1))",
    ]);
    assert_eq!(o, "rl\n2\n");
    // A file made inside the live mount belongs to the invoking user on the host.
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(proj.path().join("made-inside"))
        .unwrap()
        .uid();
    let expected = std::fs::metadata(user.home()).unwrap().uid();
    assert_eq!(
        uid, expected,
        "file made inside is owned by {uid}, not the user"
    );
    let o = user.berth(proj.path(), &["exec", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    // A throw-away run's writable layer is volatile for an unprivileged user too (mounted
    // from inside the user namespace).
    let o = ok(&[
        "-q",
        "run",
        "--",
        "awk",
        "$5 == \"/\" { print $NF }",
        "/proc/self/mountinfo",
    ]);
    assert!(
        o.trim()
            .split(',')
            .any(|x| x == "volatile" || x == "fsync=volatile"),
        "a rootless run's / is a plain overlay: {o}"
    );
    ok(&["down"]);
    ok(&["destroy"]);
    // Live processes only: an exited supervisor may sit as a zombie until the host's init
    // reaps it, which is not berth's to do.
    let ps = Command::new("ps")
        .args(["-u", &user.name, "-o", "pid=,stat=,args="])
        .output()
        .unwrap();
    let live: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|st| !st.starts_with('Z'))
        })
        .map(str::to_string)
        .collect();
    assert!(live.is_empty(), "processes left: {live:?}");
}

/// A rootless environment with a sidecar: the sidecar joins the environment's user and
/// network namespaces (handed over by the environment's supervisor, which the user cannot
/// open through /proc), its `ready` probe gates `on_up`, and the app reaches it on its own
/// localhost.
#[test]
fn an_unprivileged_user_gets_a_sidecar_on_the_environments_localhost() {
    if let Some(why) = root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let user = TestUser::create("berthsc");
    let proj = tempfile::Builder::new()
        .prefix("berth-rootless-sidecar-")
        .tempdir()
        .unwrap();
    busybox_rootfs(&proj.path().join("rootfs"));
    std::fs::write(
        proj.path().join("berth.toml"),
        r#"name = "rlsc"
on_up = ["wget -qO- http://127.0.0.1:8080/page > /tmp/answer"]
[image]
from = "rootfs:./rootfs"
[services.web]
image = "rootfs:./rootfs"
command = ["/bin/sh", "-c", "sleep 1; mkdir -p /www; echo served by the sidecar > /www/page; exec httpd -f -p 127.0.0.1:8080 -h /www"]
ready = { tcp = 8080, timeout = "20s" }
"#,
    )
    .unwrap();
    user.own(proj.path());
    let ok = |args: &[&str]| {
        let o = user.berth(proj.path(), args);
        assert!(
            o.status.success(),
            "berth {args:?} as {}: {:?}",
            user.name,
            text(&o)
        );
        text(&o)
    };
    let (_, err) = ok(&["up"]);
    assert!(
        err.contains("sidecar web is ready"),
        "the probe did not gate on_up:\n{err}"
    );
    assert_eq!(
        ok(&["exec", "--", "cat", "/tmp/answer"]).0,
        "served by the sidecar\n"
    );
    let (status, _) = ok(&["status"]);
    assert!(status.contains("web running, ready"), "{status}");
    ok(&["down"]);
    let o = user.berth(proj.path(), &["exec", "--service", "web", "--", "true"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "the sidecar still runs after down"
    );
    ok(&["destroy"]);
}
