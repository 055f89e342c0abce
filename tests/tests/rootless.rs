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
