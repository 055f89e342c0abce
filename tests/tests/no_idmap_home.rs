//! A berth home, or a bind-mounted folder, on a filesystem whose id-mapped mounts the kernel
//! refuses (`mount_setattr(MOUNT_ATTR_IDMAP)` fails with EINVAL): a FUSE filesystem (Debian's
//! `bindfs`, which does not opt in), as overlayfs and tmpfs on 6.1 kernels or berth inside a
//! container-based CI runner refuse them. Environments still start: from copies of the image
//! layers owned by the environment's ids, and with such bind mounts not id-mapped (the
//! environment's root stays an unprivileged host user there). Root only.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// Unmounts (lazily) on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `bindfs` mounts `source` at `target` (allow_other as root; `hard_remove` so a removed file
/// that is still open does not linger as `.fuse_hidden*`).
fn bindfs(source: &Path, target: &Path) -> Mounted {
    std::fs::create_dir_all(target).unwrap();
    let o = Command::new("bindfs")
        .args(["-o", "hard_remove"])
        .arg(source)
        .arg(target)
        .output()
        .unwrap();
    assert!(o.status.success(), "bindfs: {:?}", text(&o));
    Mounted(target.to_path_buf())
}

fn bind(source: &Path, target: &Path) -> Mounted {
    std::fs::create_dir_all(target).unwrap();
    let o = Command::new("mount")
        .arg("--bind")
        .arg(source)
        .arg(target)
        .output()
        .unwrap();
    assert!(o.status.success(), "mount --bind: {:?}", text(&o));
    Mounted(target.to_path_buf())
}

fn bindfs_missing() -> Option<String> {
    let found = Command::new("bindfs").arg("--version").output().is_ok();
    (!found).then(|| {
        "bindfs is not installed (apt-get install bindfs; scripts/install-deps does)".into()
    })
}

macro_rules! require_bindfs {
    () => {
        require_root!();
        if let Some(why) = bindfs_missing() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A berth home on bindfs. Fields drop in order: environments first, then the mounts.
struct FuseHome {
    berth: Berth,
    _envs: Option<Mounted>,
    _fuse: Mounted,
    _dir: tempfile::TempDir,
}

impl FuseHome {
    /// The home on bindfs; with `local_envs`, its `envs/` (the writable layers) bound from a
    /// local folder, as overlayfs refuses a FUSE upper directory.
    fn new(local_envs: bool) -> FuseHome {
        let dir = tempfile::Builder::new()
            .prefix("berth-fuse-")
            .tempdir()
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("backing")).unwrap();
        let fuse = bindfs(&dir.path().join("backing"), &dir.path().join("fuse"));
        let berth = Berth::in_folder(&dir.path().join("fuse"));
        let envs = local_envs.then(|| {
            std::fs::create_dir_all(dir.path().join("local-envs")).unwrap();
            bind(
                &dir.path().join("local-envs"),
                &berth.home.path().join("envs"),
            )
        });
        FuseHome {
            berth,
            _envs: envs,
            _fuse: fuse,
            _dir: dir,
        }
    }
}

fn project(prefix: &str, extra: &str) -> Project {
    Project::new(
        prefix,
        "noidm",
        &format!("name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n{extra}"),
    )
}

/// A project whose image is hostile: a disk's device node and a setuid-root program in its
/// layer.
fn hostile_project(prefix: &str) -> Project {
    let p = project(prefix, "");
    let hostile = p.path().join("rootfs/hostile");
    std::fs::create_dir_all(&hostile).unwrap();
    let o = Command::new("mknod")
        .arg(hostile.join("sda"))
        .args(["b", "8", "0"])
        .output()
        .unwrap();
    assert!(o.status.success(), "mknod: {:?}", text(&o));
    std::fs::copy("/bin/busybox", hostile.join("suid")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        hostile.join("suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    p
}

/// Every character or block device under `dir` other than an overlayfs whiteout (0:0).
fn device_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_block_device() || (ft.is_char_device() && m.rdev() != 0) {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn layers_on_a_filesystem_without_id_mapped_mounts_run_from_copies_of_the_environments_ids() {
    require_bindfs!();
    let h = FuseHome::new(true);
    let b = &h.berth;
    let a = hostile_project("berth-noidm-a-");
    let (_, err) = b.ok_both(a.path(), &["up"]);
    assert!(
        err.contains("id-mapped mounts are not available on fuse")
            && err.contains("berth uses copies of the image layers owned by the environment's ids"),
        "{err}"
    );
    assert!(
        err.contains("1 device node(s) of the image were left out"),
        "{err}"
    );
    // Inside, the image's files are root's and the writable layer works.
    let out = b.ok(
        a.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "id -u; stat -c %u:%g /bin/busybox; stat -c %u:%a /hostile/suid; \
             test -e /hostile/sda && echo device-present; touch /new && stat -c %u /new",
        ],
    );
    assert_eq!(out, "0\n0:0\n0:4755\n0\n", "{out}");

    // On the host: one copy per layer, owned by the environment's range, no device node.
    let copies = b.home.path().join("layer-copies");
    let ranges: Vec<PathBuf> = std::fs::read_dir(&copies)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let layers: Vec<PathBuf> = std::fs::read_dir(&ranges[0])
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!layers.is_empty());
    assert_eq!(
        std::fs::metadata(&copies).unwrap().mode() & 0o777,
        0o700,
        "the copies hold setuid files: root's alone"
    );
    assert!(
        device_nodes(&copies).is_empty(),
        "{:?}",
        device_nodes(&copies)
    );
    let suid = layers
        .iter()
        .map(|l| l.join("hostile/suid"))
        .find(|p| p.exists())
        .expect("the image layer's copy");
    let md = std::fs::metadata(&suid).unwrap();
    assert!(
        md.uid() >= 65536,
        "the copy belongs to host uid {}",
        md.uid()
    );
    let inode = md.ino();

    // A second environment with the same range shares the copies.
    let second = Project::builder("berth-noidm-b-", "noidm")
        .without_rootfs()
        .create(
            "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n",
        );
    let o = Command::new("cp")
        .arg("-a")
        .arg(a.path().join("rootfs"))
        .arg(second.path().join("rootfs"))
        .output()
        .unwrap();
    assert!(o.status.success(), "cp: {:?}", text(&o));
    b.ok(second.path(), &["up"]);
    assert_eq!(
        std::fs::metadata(&suid).unwrap().ino(),
        inode,
        "the copy was made again"
    );
    assert_eq!(std::fs::read_dir(&copies).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_dir(&ranges[0]).unwrap().count(),
        layers.len(),
        "the same image got other copies"
    );

    let doctor = text(&b.run_in(a.path(), &["doctor"])).0;
    assert!(
        doctor.contains("id-mapped layers") && doctor.contains("not available on fuse"),
        "{doctor}"
    );

    // Copies in use survive prune; once no environment uses them, prune removes them.
    b.ok(a.path(), &["destroy"]);
    b.ok_combined(a.path(), &["image", "prune"]);
    assert!(suid.exists(), "prune removed copies an environment uses");
    b.ok(second.path(), &["destroy"]);
    let out = b.ok_combined(a.path(), &["image", "prune"]);
    assert!(
        out.contains(&format!("{} layer copies", layers.len())),
        "{out}"
    );
    assert_eq!(
        std::fs::read_dir(&copies).unwrap().count(),
        0,
        "copies left"
    );
}

#[test]
fn a_bind_mount_whose_filesystem_refuses_id_mapping_leaves_the_environments_root_unprivileged() {
    require_bindfs!();
    let b = Berth::new();
    let dir = tempfile::Builder::new()
        .prefix("berth-noidm-src-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let backing = dir.path().join("backing");
    std::fs::create_dir_all(&backing).unwrap();
    let _fuse = bindfs(&backing, &dir.path().join("fuse"));
    // A developer's checkout (uid 4242) on the FUSE filesystem.
    let p = Project::builder("berth-noidm-bind-", "noidm")
        .in_folder(&dir.path().join("fuse"))
        .mode(0o755)
        .owner(4242)
        .create(
            "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n",
        );
    std::fs::write(p.path().join("existing"), "marker\n").unwrap();
    std::os::unix::fs::chown(p.path().join("existing"), Some(4242), Some(4242)).unwrap();
    let (_, err) = b.ok_both(p.path(), &["up"]);
    assert!(
        err.contains("bind mount on /work: id-mapped mounts are not available on fuse")
            && err.contains("unprivileged host user"),
        "{err}"
    );
    // The owner's files show as nobody and stay out of the environment's root's reach.
    let o = b.run_in(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "stat -c %u /work/existing; cat /work/existing; \
             echo x >> /work/existing && echo appended; touch /work/new && echo created; \
             chown 0:0 /work/existing && echo chowned; true",
        ],
    );
    let (out, _) = text(&o);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(out.starts_with("65534\nmarker\n"), "{out}");
    for done in ["appended", "created", "chowned"] {
        assert!(!out.contains(done), "the environment's root {done}: {out}");
    }
    let m = std::fs::metadata(p.path().join("existing")).unwrap();
    assert_eq!(
        (m.uid(), m.len()),
        (4242, 7),
        "the owner's file was changed"
    );
    assert!(!p.path().join("new").exists());
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn a_home_whose_filesystem_overlayfs_refuses_as_upper_fails_clearly_and_keeps_nothing() {
    require_bindfs!();
    let h = FuseHome::new(false);
    let b = &h.berth;
    let p = project("berth-noidm-upper-", "");
    let o = b.run_in(p.path(), &["up"]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("overlayfs cannot keep the environment's writable layer on fuse")
            && err.contains("put BERTH_HOME on a local filesystem"),
        "{err}"
    );
    let envs: Vec<_> = std::fs::read_dir(b.home.path().join("envs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(envs.is_empty(), "left behind: {envs:?}");
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
}

/// A home in the temp folder, whatever its filesystem: where the kernel refuses id-mapped
/// mounts there (`berth doctor` says so; the nested L1 guest runs this with TMPDIR on its
/// overlay root, on kernel 6.1), the environment runs from layer copies and `up` says so;
/// where it does not (ext4, tmpfs on this host), the layers are id-mapped and nothing is
/// copied.
#[test]
fn a_home_in_the_temp_folder_runs_containers_with_or_without_id_mapped_mounts() {
    require_root!();
    let b = Berth::new();
    let p = project("berth-noidm-tmp-", "");
    std::fs::write(p.path().join("rootfs/owned-by-root"), "x").unwrap();
    let doctor = text(&b.run_in(p.path(), &["doctor"])).0;
    let line = doctor
        .lines()
        .find(|l| l.contains("id-mapped layers"))
        .unwrap_or_else(|| panic!("no id-mapped layers line: {doctor}"))
        .to_string();
    let refused = line.contains("not available");
    let (_, err) = b.ok_both(p.path(), &["up"]);
    assert_eq!(
        err.contains("berth uses copies of the image layers"),
        refused,
        "doctor: {line}\nup: {err}"
    );
    let out = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "id -u; stat -c %u /owned-by-root; echo w > /owned-by-root && cat /owned-by-root",
        ],
    );
    assert_eq!(out, "0\n0\nw\n", "{out}");
    let copies = b.home.path().join("layer-copies");
    let copied = std::fs::read_dir(&copies).is_ok_and(|mut d| d.next().is_some());
    assert_eq!(copied, refused, "layer copies: {copied}, doctor: {line}");
    b.ok(p.path(), &["destroy"]);
}
