//! Build steps (`[image] packages` and `setup`) run in the same sandbox as environments: a user
//! namespace mapping root to the environment id range, a network namespace of their own on
//! berth's bridge, the seccomp allowlist, the default capabilities (no CAP_MKNOD that works),
//! and a cgroup under berth's own. The layer a step leaves still carries the ids it would have
//! had as host root, so the shared layer store stays consistent. Harmless payloads only: the
//! device node probe reads one byte of `/dev/mem` at most, and only if the sandbox fails.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_e2e::host::root_skip_reason;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

fn cat(b: &Berth, dir: &Path, file: &str) -> String {
    b.ok(dir, &["exec", "--", "cat", file])
}

/// The layer directory in the store that holds `rel`.
fn layer_with(home: &Path, rel: &str) -> PathBuf {
    fs::read_dir(home.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| fs::symlink_metadata(p.join(rel)).is_ok())
        .unwrap_or_else(|| panic!("no layer holds {rel}"))
}

/// The host pid of a process whose raw command line is `cmdline` (NUL-separated).
fn find_process(cmdline: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let c = fs::read(e.path().join("cmdline")).ok()?;
        (c == cmdline.as_bytes()).then_some(pid)
    })
}

#[test]
fn setup_steps_run_in_the_environment_sandbox() {
    require_root!();
    let steps = [
        // What the step sees of ids, network, cgroup and seccomp.
        "cat /proc/self/uid_map > /uidmap; cat /proc/self/gid_map > /gidmap; ls /sys/class/net > /netifs; readlink /proc/self/ns/net > /netns; grep ^Seccomp: /proc/self/status > /seccomp",
        // Long enough for the test to find it from the host and read its cgroup.
        "sleep 2.71828",
        // Host memory through a device node: mknod must fail (a 1-byte read only if not).
        "if mknod /mknod-x c 1 1 2>/dev/null; then head -c 1 /mknod-x > /dev/null && echo read > /mknod || echo made > /mknod; else echo refused > /mknod; fi; rm -f /mknod-x",
        // Ownership and modes a package install leaves: other users' files, setuid binaries.
        "mkdir /owned && echo x > /owned/f && chown 1000:1001 /owned/f && cp /bin/busybox /suid && chown 0:5 /suid && chmod 4755 /suid && echo quiet > /dev/null",
    ];
    let setup = steps
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = Project::new(
        "berth-buildsec-",
        "berthbuildsec",
        &format!("name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\nsetup = [{setup}]\n"),
    );
    let b = Berth::new();
    let p = dir.path();
    let mut up = b
        .cmd()
        .current_dir(p)
        .arg("up")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // From the host: the step's processes sit in a cgroup under berth's own (where the
    // devices allowlist and limits of environments apply), not in berth's or the root's.
    let mut step_cgroup = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while step_cgroup.is_none() && std::time::Instant::now() < deadline {
        if up.try_wait().unwrap().is_some() {
            break;
        }
        step_cgroup = find_process("sleep\x002.71828\x00")
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = up.wait_with_output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "up failed:\n{o}\n{e}");
    let cg = step_cgroup.expect("the sleeping build step was never seen on the host");
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    // The pids hierarchy on cgroup v1 (hybrid hosts keep a near-empty v2 beside it), else
    // the unified one; the devices allowlist joins the same leaf.
    let v1: Vec<&str> = cg
        .lines()
        .filter(|l| l.split(':').nth(1).is_some_and(|c| c == "pids"))
        .collect();
    let managed = match v1.is_empty() {
        true => cg.lines().filter(|l| l.starts_with("0::")).collect(),
        false => v1,
    };
    assert!(!managed.is_empty(), "{cg}");
    for line in managed {
        assert!(
            line.contains("/berth/step-"),
            "the step's cgroup is not under berth's own:\n{cg}\n(berth's: {own})"
        );
    }

    // The steps' network records went with them.
    let leftovers: Vec<String> = fs::read_dir(b.home.path().join("envs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert!(leftovers.is_empty(), "build steps left {leftovers:?}");

    // A user namespace: root inside is not the host's root.
    for map in ["/uidmap", "/gidmap"] {
        let text = cat(&b, p, map);
        let first: Vec<u64> = text
            .split_whitespace()
            .take(3)
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(first[0], 0, "{map}: {text}");
        assert_ne!(
            first[1], 0,
            "{map}: root inside must not be host root: {text}"
        );
        // The whole 65536 range, so package managers' users (apt's _apt is 42) exist.
        assert!(first[2] >= 65536, "{map}: {text}");
    }

    // Its own network namespace: loopback and its veth, none of the host's interfaces.
    let host_ns = fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        cat(&b, p, "/netns").trim(),
        host_ns.to_string_lossy(),
        "the step ran in the host's network namespace"
    );
    let mut ifs: Vec<String> = cat(&b, p, "/netifs").lines().map(str::to_string).collect();
    ifs.sort();
    assert_eq!(ifs, ["eth0", "lo"], "interfaces a build step sees");

    // The seccomp allowlist, no device nodes.
    assert_eq!(cat(&b, p, "/seccomp").trim(), "Seccomp:\t2");
    assert_eq!(cat(&b, p, "/mknod").trim(), "refused");

    // Ownership as host root would have left it, in the store and inside.
    let f = layer_with(b.home.path(), "owned/f");
    let meta = |rel: &str| fs::symlink_metadata(f.join(rel)).unwrap();
    assert_eq!((meta("owned/f").uid(), meta("owned/f").gid()), (1000, 1001));
    assert_eq!((meta("owned").uid(), meta("owned").gid()), (0, 0));
    assert_eq!((meta("suid").uid(), meta("suid").gid()), (0, 5));
    assert_eq!(meta("suid").mode() & 0o7777, 0o4755, "setuid bit kept");
    let inside = b
        .ok_both(
            p,
            &[
                "exec", "--", "stat", "-c", "%u:%g %a", "/owned/f", "/suid", "/",
            ],
        )
        .0;
    assert_eq!(inside, "1000:1001 644\n0:5 4755\n0:0 755\n");
    b.ok_both(p, &["destroy"]);
}

#[test]
fn apt_installs_a_package_in_the_build_sandbox() {
    require_root!();
    assert!(
        Path::new("/usr/sbin/debootstrap").exists() || Path::new("/usr/bin/mmdebstrap").exists(),
        "debootstrap is needed: apt-get install debootstrap (scripts/install-deps does)"
    );
    let dir = Project::builder("berth-buildapt-", "berthbuildapt")
        .without_rootfs()
        .create("name = \"{name}\"\n[image]\nfrom = \"debootstrap:bookworm\"\npackages = [\"hello\"]\nsetup = [\"cat /proc/self/uid_map > /uidmap\"]\n");
    let b = Berth::new();
    let (out, err) = b.ok_both(dir.path(), &["up"]);
    // apt drops to its _apt user for downloads; without that user mapped it would go on
    // "unsandboxed as root" with only a notice.
    assert!(
        !format!("{out}{err}").contains("unsandboxed"),
        "apt could not use its _apt sandbox:\n{out}\n{err}"
    );
    assert_eq!(
        b.ok_both(dir.path(), &["exec", "--", "hello"]).0,
        "Hello, world!\n"
    );
    let map = cat(&b, dir.path(), "/uidmap");
    assert_ne!(map.split_whitespace().nth(1), Some("0"), "{map}");
    // dpkg's database in the layer belongs to host root, as after a root install.
    let layer = layer_with(b.home.path(), "usr/bin/hello");
    let status = fs::metadata(layer.join("var/lib/dpkg/status")).unwrap();
    assert_eq!((status.uid(), status.gid()), (0, 0));
    let hello = fs::metadata(layer.join("usr/bin/hello")).unwrap();
    assert_eq!((hello.uid(), hello.gid()), (0, 0));
    b.ok_both(dir.path(), &["destroy"]);
}

#[test]
fn rootless_build_steps_get_their_own_network_where_pasta_can_run() {
    if let Some(why) = root_skip_reason() {
        eprintln!("skipped: {why} (to create the test user)");
        return;
    }
    let user = berth_e2e::user::TestUser::create("berthbs");
    let dir = Project::new(
        "berth-buildrl-",
        "berthbuildrl",
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\nsetup = [\"readlink /proc/self/ns/net > /netns; ls /sys/class/net > /netifs\"]\n",
    );
    user.own(dir.path());
    let run = |args: &[&str]| {
        let o = user.berth(dir.path(), args);
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "berth {args:?} as {}:\n{out}\n{err}",
            user.name
        );
        out
    };
    run(&["up"]);
    // pasta needs /dev/net/tun usable by the user (mode 0666, the usual one); without it the
    // step keeps the user's own network (nothing of root's to reach), as berth documents.
    let pasta = std::process::Command::new("runuser")
        .args(["-u", &user.name, "--", "sh", "-c"])
        .arg("command -v pasta >/dev/null && test -r /dev/net/tun -a -w /dev/net/tun")
        .status()
        .unwrap()
        .success();
    let host_ns = fs::read_link("/proc/self/ns/net").unwrap();
    let step_ns = run(&["exec", "--", "cat", "/netns"]);
    if pasta {
        assert_ne!(
            step_ns.trim(),
            host_ns.to_string_lossy(),
            "the rootless step ran in the host's network namespace although pasta can run"
        );
    } else {
        eprintln!(
            "note: pasta cannot run for {} here (/dev/net/tun); checked the fallback",
            user.name
        );
        assert_eq!(step_ns.trim(), host_ns.to_string_lossy());
    }
    let ifs = run(&["exec", "--", "cat", "/netifs"]);
    assert!(ifs.lines().any(|l| l == "lo"), "{ifs}");
    run(&["destroy"]);
}
