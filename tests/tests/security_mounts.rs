//! Bind mounts must not hand the environment's root the host's root: a process inside may
//! not leave a setuid/setgid file owned by a privileged host id in a bind-mounted folder, and
//! dangerous sources (`/`, a symlink out of the project) are refused unless berth.toml opts in.
//! Exploits with harmless payloads, through the real binary.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use berth_e2e::project::Project;
use berth_e2e::user::TestUser;
use berth_e2e::{require_root, text, Berth};

/// A project folder with a busybox rootfs, no network and `mounts`; `{name}` in `mounts` is
/// replaced by a unique name.
fn project(prefix: &str, mounts: &str) -> Project {
    project_in(&std::env::temp_dir(), prefix, mounts)
}

/// [`project`] in the folder `parent`.
fn project_in(parent: &Path, prefix: &str, mounts: &str) -> Project {
    Project::builder(prefix, "sec").in_folder(parent).create(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n{mounts}"
    ))
}

const PROJECT_MOUNT: &str = "[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n";

/// What the environment's root tries: a copy of the host's `id` made setuid (so running it
/// shows the effective uid it grants), and an existing file chowned to root and made
/// setuid/setgid. Each step may fail; what counts is what is left on the host.
const PAYLOAD: &str = "cp /work/id-program /work/x && chmod 4755 /work/x; \
     chown 0:0 /work/existing; chmod 6755 /work/existing; \
     cp /bin/busybox /work/bb && chmod 6755 /work/bb; true";

/// Every file under `dir` that is setuid or setgid with a privileged owner or group (0), or
/// owned by another host user than `allowed` (a uid below 65536 that is not the owner).
fn dangerous_files(dir: &Path, allowed: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
                continue;
            }
            let suid = m.mode() & 0o4000 != 0;
            let sgid = m.mode() & 0o2000 != 0;
            if (suid && m.uid() == 0) || (sgid && m.gid() == 0) {
                bad.push(format!(
                    "{} ({}:{} mode {:o})",
                    e.path().display(),
                    m.uid(),
                    m.gid(),
                    m.mode()
                ));
            }
            if suid && m.uid() != allowed && m.uid() < 65536 {
                bad.push(format!(
                    "{} is setuid to host user {}",
                    e.path().display(),
                    m.uid()
                ));
            }
        }
    }
    bad
}

fn run_payload(b: &Berth, dir: &Path) {
    let o = b.run_in(dir, &["up"]);
    assert!(o.status.success(), "up: {:?}", text(&o));
    let o = b.run_in(dir, &["exec", "--", "sh", "-c", PAYLOAD]);
    assert!(o.status.success(), "exec: {:?}", text(&o));
    let o = b.run_in(dir, &["destroy"]);
    assert!(o.status.success(), "destroy: {:?}", text(&o));
}

/// Runs `program` as `user` and returns its output (`id` prints `euid=0(root)` when it runs
/// with host root's privileges).
fn run_as(user: &TestUser, program: &Path) -> String {
    let o = Command::new("runuser")
        .args(["-u", &user.name, "--"])
        .arg(program)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn env_root_cannot_leave_a_setuid_root_file_in_a_user_owned_project() {
    require_root!();
    let user = TestUser::create("bsecu");
    let b = Berth::new();
    let dir = project("berth-secmnt-user-", PROJECT_MOUNT);
    std::fs::copy("/usr/bin/id", dir.path().join("id-program")).unwrap();
    std::fs::write(dir.path().join("existing"), "marker\n").unwrap();
    user.own(dir.path());
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    run_payload(&b, dir.path());
    let bad = dangerous_files(dir.path(), uid);
    assert!(bad.is_empty(), "privileged setuid/setgid files: {bad:?}");
    // The environment's root is the folder's owner: what it creates belongs to the user.
    let x = dir.path().join("x");
    let m = std::fs::metadata(&x).expect("the environment's root can write its owner's folder");
    assert_eq!(m.uid(), uid, "/work/x belongs to the folder's owner");
    assert!(
        !run_as(&user, &x).contains("euid=0"),
        "the test user gained euid 0"
    );
    // Nor does another local user (the folder opened to everyone for this check).
    let other = TestUser::create("bseco");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !run_as(&other, &x).contains("euid=0"),
        "another user gained euid 0"
    );
}

#[test]
fn env_root_cannot_leave_a_setuid_root_file_in_a_root_owned_project() {
    require_root!();
    let user = TestUser::create("bsecr");
    let b = Berth::new();
    // Directly in /tmp (open to everyone), whatever TMPDIR says.
    let tmp = Path::new("/tmp");
    assert_ne!(std::fs::metadata(tmp).unwrap().mode() & 0o011, 0);
    let dir = project_in(tmp, "berth-secmnt-root-", PROJECT_MOUNT);
    std::fs::copy("/usr/bin/id", dir.path().join("id-program")).unwrap();
    std::fs::write(dir.path().join("existing"), "marker\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // /tmp lets everyone through: `up` says once that root's files stay read-only inside,
    // and how to change it.
    let o = b.run_in(dir.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "up: {out}\n{err}");
    let notices: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("notice:") && l.contains("belongs to root"))
        .collect();
    assert_eq!(
        notices.len(),
        1,
        "one notice for the root-owned mount: {err}"
    );
    let n = notices[0];
    let real = std::fs::canonicalize(dir.path()).unwrap();
    for part in [
        "/work".to_string(),
        real.display().to_string(),
        format!("chmod 700 {}", real.parent().unwrap().display()),
        "chown -R USER".to_string(),
        "berth run --copy-source".to_string(),
    ] {
        assert!(n.contains(&part), "the notice names {part}: {n}");
    }
    let o = b.run_in(
        dir.path(),
        &["exec", "--", "sh", "-c", "echo y >> /work/existing"],
    );
    assert!(
        !o.status.success(),
        "root's file is writable from inside: {:?}",
        text(&o)
    );
    let o = b.run_in(dir.path(), &["exec", "--", "sh", "-c", PAYLOAD]);
    assert!(o.status.success(), "exec: {:?}", text(&o));
    let o = b.run_in(dir.path(), &["destroy"]);
    assert!(o.status.success(), "destroy: {:?}", text(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("existing")).unwrap(),
        "marker\n"
    );
    let bad = dangerous_files(dir.path(), 0);
    assert!(bad.is_empty(), "privileged setuid/setgid files: {bad:?}");
    let existing = std::fs::metadata(dir.path().join("existing")).unwrap();
    assert_eq!(
        existing.mode() & 0o7777,
        0o644,
        "root's file was changed from inside"
    );
    let x = dir.path().join("x");
    if x.exists() {
        assert!(
            !run_as(&user, &x).contains("euid=0"),
            "the test user gained euid 0 through {}",
            x.display()
        );
    }
}

/// Root's checkout inside a folder only root may enter (the CI case: berth as root in
/// /root/...): the environment's root is host root there and builds in it, and whatever it
/// leaves, setuid root included, stays out of every other user's reach.
#[test]
fn a_root_owned_project_in_a_private_root_folder_is_writable_by_the_environments_root() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let user = TestUser::create("bsecp");
    let b = Berth::new();
    let private = tempfile::Builder::new()
        .prefix("berth-secmnt-private-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = project_in(private.path(), "proj-", PROJECT_MOUNT);
    // The project itself is open: the folder above it is what keeps others out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("existing"), "marker\n").unwrap();
    let o = b.run_in(dir.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "up: {out}\n{err}");
    assert!(
        !err.contains("belongs to root"),
        "no notice expected: {err}"
    );
    let o = b.run_in(
        dir.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo x > /work/out && cp /bin/busybox /work/s && chmod 4755 /work/s && echo y >> /work/existing",
        ],
    );
    assert!(o.status.success(), "the build cannot write: {:?}", text(&o));
    let o = b.run_in(dir.path(), &["destroy"]);
    assert!(o.status.success(), "destroy: {:?}", text(&o));
    for f in ["out", "s", "existing"] {
        let m = std::fs::metadata(dir.path().join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{f} belongs to host root");
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("s")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("existing")).unwrap(),
        "marker\ny\n"
    );
    // The folder above is untouched, and no other user can even look at what was left.
    assert_eq!(
        std::fs::metadata(private.path()).unwrap().mode() & 0o7777,
        0o700
    );
    for f in ["s", "out"] {
        let path = dir.path().join(f);
        let o = user.run("stat", &[path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Permission denied"),
            "{} is reachable by another user: {err}",
            path.display()
        );
        let ran = run_as(&user, &path);
        assert!(
            !ran.contains("euid=0") && ran.contains("Permission denied"),
            "another user ran {}: {ran}",
            path.display()
        );
    }
}

/// The attacker's way around the private folder: mount it as well and open it from inside.
/// It is root's and its own folder above (/tmp) is open, so the environment's root is
/// unprivileged on it and cannot chmod it; and a folder above that lies inside one of the
/// environment's mounts does not make the project private, so /work stays read-only to root's
/// files too.
#[test]
fn the_environment_cannot_open_the_private_folder_above_its_project() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let b = Berth::new();
    let private = tempfile::Builder::new()
        .prefix("berth-secmnt-above-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mounts = format!(
        "{PROJECT_MOUNT}[[mounts]]\nsource = \"..\"\ntarget = \"/up\"\nunsafe_host_path = true\n"
    );
    let dir = project_in(private.path(), "proj-", &mounts);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = b.run_in(dir.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "up: {out}\n{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("notice: bind mount on /work:") && l.contains("belongs to root")),
        "/work is not private while its folder above is mounted: {err}"
    );
    let o = b.run_in(dir.path(), &["exec", "--", "chmod", "755", "/up"]);
    assert!(
        !o.status.success(),
        "chmod of the private folder: {:?}",
        text(&o)
    );
    let o = b.run_in(
        dir.path(),
        &["exec", "--", "sh", "-c", "echo x > /work/out"],
    );
    assert!(
        !o.status.success(),
        "root's project was writable: {:?}",
        text(&o)
    );
    let o = b.run_in(dir.path(), &["destroy"]);
    assert!(o.status.success(), "destroy: {:?}", text(&o));
    assert_eq!(
        std::fs::metadata(private.path()).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(!dir.path().join("out").exists());
}

/// Output of `berth up` (expected to fail) in `dir`.
fn refused(b: &Berth, dir: &Path) -> String {
    let o = b.run_in(dir, &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "up was accepted:\n{out}\n{err}");
    err
}

#[test]
fn mounting_the_host_root_is_refused_unless_opted_in() {
    let b = Berth::new();
    let dir = project(
        "berth-secmnt-slash-",
        "[[mounts]]\nsource = \"/\"\ntarget = \"/host\"\nreadonly = true\n",
    );
    let err = refused(&b, dir.path());
    assert!(
        err.contains("berth.toml:7:10"),
        "line:col of the source: {err}"
    );
    assert!(err.contains("unsafe_host_path"), "names the opt-in: {err}");
    let o = b.run_in(dir.path(), &["validate"]);
    assert!(!o.status.success(), "validate accepts `/`: {:?}", text(&o));
    for bad in ["/proc", "/sys/kernel", "/dev"] {
        std::fs::write(
            dir.path().join("berth.toml"),
            format!(
                "name = \"x\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \"{bad}\"\ntarget = \"/h\"\n"
            ),
        )
        .unwrap();
        let o = b.run_in(dir.path(), &["validate"]);
        assert!(!o.status.success(), "{bad} accepted: {:?}", text(&o));
    }
    std::fs::write(
        dir.path().join("berth.toml"),
        "name = \"x\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \"/\"\ntarget = \"/host\"\nreadonly = true\nunsafe_host_path = true\n",
    )
    .unwrap();
    let o = b.run_in(dir.path(), &["validate"]);
    assert!(o.status.success(), "opt-in refused: {:?}", text(&o));
}

#[test]
fn a_source_escaping_the_project_is_refused_unless_opted_in() {
    require_root!();
    let b = Berth::new();
    let outside = tempfile::Builder::new()
        .prefix("berth-secmnt-outside-")
        .tempdir()
        .unwrap();
    std::fs::write(outside.path().join("secret"), "host secret\n").unwrap();
    let dir = project(
        "berth-secmnt-link-",
        "[[mounts]]\nsource = \"./data\"\ntarget = \"/data\"\n",
    );
    std::os::unix::fs::symlink(outside.path(), dir.path().join("data")).unwrap();
    let err = refused(&b, dir.path());
    assert!(err.contains("/data"), "names the mount: {err}");
    assert!(err.contains("outside the project"), "says why: {err}");
    assert!(err.contains("unsafe_host_path"), "names the opt-in: {err}");
    // `..` out of the project is refused with its position.
    let toml = std::fs::read_to_string(dir.path().join("berth.toml")).unwrap();
    let parent = format!(
        "../{}",
        outside.path().file_name().unwrap().to_string_lossy()
    );
    std::fs::write(
        dir.path().join("berth.toml"),
        toml.replace("./data", &parent),
    )
    .unwrap();
    let err = refused(&b, dir.path());
    assert!(err.contains("berth.toml:7:10"), "line:col: {err}");
    // With the opt-in both are accepted, and the folder is really mounted.
    std::fs::write(
        dir.path().join("berth.toml"),
        format!("{toml}unsafe_host_path = true\n"),
    )
    .unwrap();
    let o = b.run_in(dir.path(), &["up"]);
    assert!(o.status.success(), "opt-in refused: {:?}", text(&o));
    let o = b.run_in(dir.path(), &["exec", "--", "cat", "/data/secret"]);
    assert_eq!(text(&o).0, "host secret\n", "{:?}", text(&o));
    let o = b.run_in(dir.path(), &["destroy"]);
    assert!(o.status.success(), "destroy: {:?}", text(&o));
}

#[test]
fn rootless_the_environments_root_is_the_invoking_user_on_bind_mounts() {
    require_root!(); // to create the test user
    let user = TestUser::create("bsecl");
    let dir = project("berth-secmnt-rootless-", PROJECT_MOUNT);
    std::fs::copy("/usr/bin/id", dir.path().join("id-program")).unwrap();
    std::fs::write(dir.path().join("existing"), "marker\n").unwrap();
    user.own(dir.path());
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let run = |args: &[&str]| {
        let o = user.berth(dir.path(), args);
        assert!(o.status.success(), "berth {args:?}: {:?}", text(&o));
    };
    run(&["up"]);
    run(&["exec", "--", "sh", "-c", PAYLOAD]);
    run(&["destroy"]);
    let bad = dangerous_files(dir.path(), uid);
    assert!(bad.is_empty(), "privileged setuid/setgid files: {bad:?}");
    assert_eq!(std::fs::metadata(dir.path().join("x")).unwrap().uid(), uid);
    // The validator's refusals hold for everyone.
    std::fs::write(
        dir.path().join("berth.toml"),
        "name = \"x\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \"/\"\ntarget = \"/h\"\n",
    )
    .unwrap();
    let o = user.berth(dir.path(), &["up"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("unsafe-mount-source"), "{:?}", text(&o));
}
