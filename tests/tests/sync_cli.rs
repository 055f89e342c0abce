//! `berth sync` through the real binary (the engine itself is tested in runtime/tests/sync.rs).

use berth_e2e::{require_root, text, Berth};

#[test]
fn sync_of_an_environment_never_created_exits_3() {
    let b = Berth::new();
    let dir = tempfile::Builder::new()
        .prefix("berth-sync-cli-")
        .tempdir()
        .unwrap();
    std::fs::write(
        dir.path().join("berth.toml"),
        "name = \"synced\"\n[image]\nfrom = \"docker.io/library/alpine:3.20\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\ntype = \"sync\"\nignore = [\"target/\"]\n",
    )
    .unwrap();
    for args in [&["sync"][..], &["sync", "--flush"][..]] {
        let o = b.run_in(dir.path(), args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("berth up"), "{stderr}");
    }
}

/// A container environment whose source folder is a `sync` mount: both directions, ignore
/// rules, `--flush`, and no sync process left after `down`.
#[test]
fn sync_mount_of_a_running_environment() {
    require_root!();
    let b = Berth::new();
    let dir = tempfile::Builder::new()
        .prefix("berth-sync-live-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    berth_e2e::host::busybox_rootfs(&p.join("rootfs"));
    std::fs::create_dir_all(p.join("src/node_modules")).unwrap();
    std::fs::write(p.join("src/a.txt"), "hello\n").unwrap();
    std::fs::write(p.join("src/node_modules/dep"), "host-only\n").unwrap();
    let name = format!("sy{}", std::process::id());
    std::fs::write(
        p.join("berth.toml"),
        format!("name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \"./src\"\ntarget = \"/work\"\ntype = \"sync\"\nignore = [\"node_modules/\"]\n"),
    )
    .unwrap();
    let ok = |args: &[&str]| {
        let o = b.run_in(p, args);
        assert!(o.status.success(), "berth {args:?}: {:?}", text(&o));
        text(&o).0
    };
    ok(&["up"]);
    // `up` returns after the first pass: the sources are inside, ignored paths are not.
    assert_eq!(ok(&["exec", "--", "cat", "/work/a.txt"]), "hello\n");
    assert_eq!(ok(&["exec", "--", "sh", "-c", "ls -A /work"]), "a.txt\n");
    // Inside → host, and the host → inside, each settled with --flush.
    ok(&["exec", "--", "sh", "-c", "echo inside > /work/b.txt; mkdir -p /work/node_modules; echo env-only > /work/node_modules/dep"]);
    ok(&["sync", "--flush"]);
    assert_eq!(
        std::fs::read_to_string(p.join("src/b.txt")).unwrap(),
        "inside\n"
    );
    assert_eq!(
        std::fs::read_to_string(p.join("src/node_modules/dep")).unwrap(),
        "host-only\n"
    );
    std::fs::write(p.join("src/a.txt"), "edited\n").unwrap();
    std::fs::remove_file(p.join("src/b.txt")).unwrap();
    ok(&["sync", "--flush"]);
    assert_eq!(
        ok(&["exec", "--", "sh", "-c", "cat /work/a.txt; ls /work"]),
        "edited\na.txt\nnode_modules\n"
    );
    let st = ok(&["sync"]);
    assert!(st.contains("watching"), "{st}");
    ok(&["down"]);
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let env_dir = b.home.path().to_string_lossy().into_owned();
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains("__sync") && l.contains(&env_dir)),
        "a sync process outlived `down`"
    );
    let o = b.run_in(p, &["sync", "--flush"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    ok(&["destroy"]);
}
