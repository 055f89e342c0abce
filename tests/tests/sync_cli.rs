//! `berth sync` through the real binary (the engine itself is tested in runtime/tests/sync.rs).

use berth_e2e::{text, Berth};

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
