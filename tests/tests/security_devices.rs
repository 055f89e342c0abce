//! Security of image contents: setuid files, file capabilities and device nodes of a pulled
//! image must give neither other local users nor the environment itself anything of the host.
//! Each test is an exploit with a harmless payload (a probe that prints its euid, or opens a
//! node and asks `KVM_GET_API_VERSION`, which creates nothing).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use berth_e2e::host::root_skip_reason;
use berth_e2e::oci::{busybox_layer, layer_dir, Compression, Image, Layer, Registry, TarBuilder};
use berth_e2e::probe::DeviceProbe;
use berth_e2e::project::Project;
use berth_e2e::user::TestUser;
use berth_e2e::{require_root, text, Berth};

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// busybox, plus a layer holding a setuid-root probe and world-writable device nodes:
/// `/opt/kvm` (10:232, /dev/kvm) and `/opt/mem` (1:1, /dev/mem).
fn hostile_image(probe: &DeviceProbe) -> Image {
    let mut t = TarBuilder::new();
    t.dir("opt/")
        .raw("opt/probe", b'0', 0o4755, "", &probe.bytes())
        .char_device("opt/kvm", 0o666, 10, 232)
        .char_device("opt/mem", 0o666, 1, 1);
    Image::new(
        vec![
            busybox_layer(Compression::Gzip),
            Layer::new(t.finish(), Compression::Gzip),
        ],
        host_arch(),
    )
}

/// A registry serving the hostile image, a berth home and a project using it.
struct Setup {
    _reg: Registry,
    b: Berth,
    project: Project,
    image: Image,
}

impl Setup {
    fn new(probe: &DeviceProbe, extra_toml: &str) -> Option<Setup> {
        let reg = Registry::start()?;
        let image = hostile_image(probe);
        reg.push_image("hostile", "latest", &image);
        let b = Berth::new();
        let project = Project::builder("berth-sec-", "sec-")
            .without_rootfs()
            .create(&format!(
                "name = \"{{name}}\"\n{extra_toml}\n[image]\nfrom = \"{}/hostile:latest\"\n",
                reg.addr
            ));
        Some(Setup {
            _reg: reg,
            b,
            project,
            image,
        })
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let o = self.b.run_in(self.project.path(), args);
        let (out, err) = text(&o);
        (o.status.success(), out, err)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.b.ok(self.project.path(), args)
    }

    /// stdout of a command inside, whatever its exit code.
    fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["exec", "--"];
        args.extend_from_slice(cmd);
        self.run(&args).1
    }

    fn env_id(&self) -> String {
        let out = self.ok(&["ls", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == self.project.name.as_str())
            .and_then(|e| e["env_id"].as_str())
            .unwrap_or_else(|| panic!("{} not in {out}", self.project.name))
            .to_string()
    }

    fn hostile_layer(&self) -> std::path::PathBuf {
        layer_dir(self.b.home.path(), &self.image.layers[1].diff_id())
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn other_users_cannot_reach_setuid_files_or_device_nodes_of_the_store() {
    require_root!();
    let probe = DeviceProbe::build();
    let Some(s) = Setup::new(&probe, "") else {
        return;
    };
    // Like /var/lib/berth made by an older berth (umask 022): every folder world-readable.
    fs::set_permissions(s.b.home.path(), fs::Permissions::from_mode(0o755)).unwrap();
    s.ok(&["up"]);
    // The environment's root leaves a setuid file (owned by its host uid) in the writable layer.
    s.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "busybox cp /opt/probe /opt/suid && busybox chmod 4755 /opt/suid",
    ]);
    let layer = s.hostile_layer();
    assert_eq!(
        mode(&layer.join("opt/probe")),
        0o4755,
        "the image keeps its setuid bit inside its own layer"
    );
    let upper_suid =
        s.b.home
            .path()
            .join("envs")
            .join(s.env_id())
            .join("upper/opt/suid");
    assert!(upper_suid.exists(), "{}", upper_suid.display());

    let user = TestUser::create("bsdev");
    // Payload 1: a setuid-root binary of the image, run by another user.
    let o = user.run(layer.join("opt/probe"), &["euid"]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success() && !out.contains("euid="),
        "another user ran the image's setuid-root probe: {out}{err}"
    );
    // Payload 2: the image's world-writable /dev/kvm node, opened by another user.
    let o = user.run(
        &probe.path,
        &["kvm", &layer.join("opt/kvm").to_string_lossy()],
    );
    let out = text(&o).0;
    assert_eq!(
        out, "open=EACCES\n",
        "another user reached the image's device node"
    );
    // Payload 3: a setuid file the environment wrote into its writable layer.
    let o = user.run(&upper_suid, &["euid"]);
    let (out, err) = text(&o);
    assert!(
        !o.status.success() && !out.contains("euid="),
        "another user ran a setuid file of the writable layer: {out}{err}"
    );

    let home = s.b.home.path();
    assert_eq!(mode(home), 0o711);
    for d in ["layers", "blobs", "images", "tmp", "volumes", "kernels"] {
        assert_eq!(mode(&home.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&home.join("envs").join(s.env_id())) & 0o007, 0);
    // The environment still works after the tightening, and again after a restart.
    assert_eq!(s.exec(&["echo", "alive"]), "alive\n");
    s.ok(&["down"]);
    s.ok(&["up"]);
    assert_eq!(s.exec(&["/opt/suid", "euid"]), "euid=0\n");
    s.ok(&["destroy"]);
}

#[test]
fn device_nodes_of_an_image_do_not_open_inside_the_environment() {
    require_root!();
    let probe = DeviceProbe::build();
    let Some(s) = Setup::new(&probe, "") else {
        return;
    };
    s.ok(&["up"]);
    let kvm = s.exec(&["/opt/probe", "kvm", "/opt/kvm"]);
    assert!(
        kvm == "open=EACCES\n" || kvm == "open=EPERM\n",
        "the image's 10:232 node opened inside: {kvm}"
    );
    let mem = s.exec(&["/opt/probe", "open", "/opt/mem"]);
    assert!(
        mem == "open=EACCES\n" || mem == "open=EPERM\n",
        "the image's 1:1 node opened inside: {mem}"
    );
    // Nothing but the default nodes in /dev.
    assert_eq!(s.exec(&["/opt/probe", "kvm", "/dev/kvm"]), "open=ENOENT\n");
    assert_eq!(s.exec(&["/opt/probe", "open", "/dev/null"]), "open=ok\n");
    s.ok(&["destroy"]);
}

#[test]
fn a_device_listed_in_devices_is_reachable_and_nothing_else() {
    require_root!();
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: this host has no /dev/kvm");
        return;
    }
    let probe = DeviceProbe::build();
    let host_api = probe.run(&["kvm", "/dev/kvm"]);
    assert!(host_api.starts_with("api="), "{host_api}");
    let Some(s) = Setup::new(&probe, "devices = [\"/dev/kvm\"]") else {
        return;
    };
    s.ok(&["up"]);
    assert_eq!(s.exec(&["/opt/probe", "kvm", "/dev/kvm"]), host_api);
    // The same device through the image's own node stays closed (the layers are nodev).
    let kvm = s.exec(&["/opt/probe", "kvm", "/opt/kvm"]);
    assert_eq!(kvm, "open=EACCES\n");
    assert_eq!(
        s.exec(&["/opt/probe", "open", "/dev/fuse"]),
        "open=ENOENT\n"
    );
    s.ok(&["destroy"]);
}

#[test]
fn a_build_step_with_mknod_cannot_open_host_devices() {
    require_root!();
    let probe = DeviceProbe::build();
    // Build steps run in the environments' sandbox: in a user namespace the kernel refuses
    // `mknod` of a device node, and the devices cgroup would refuse opening one anyway. Each
    // attempt is recorded on its own, so a node that got made and opened shows as `api=` or
    // `open=ok`.
    let Some(s) = Setup::new(&probe, "") else {
        return;
    };
    let toml = fs::read_to_string(s.project.path().join("berth.toml")).unwrap();
    fs::write(
        s.project.path().join("berth.toml"),
        format!(
            "{toml}setup = [\"busybox mknod /dev/k c 10 232 || echo mknod=refused > /probe.out; /opt/probe kvm /dev/k >> /probe.out; busybox mknod /dev/m c 1 1 || echo mknod=refused >> /probe.out; /opt/probe open /dev/m >> /probe.out; /opt/probe open /dev/null >> /probe.out; true\"]\n"
        ),
    )
    .unwrap();
    s.ok(&["up"]);
    let out = s.exec(&["cat", "/probe.out"]);
    // The KVM probe prints `api=N` only when the ioctl worked; `open=ok` must come from
    // /dev/null alone (the last line).
    assert!(
        !out.contains("api="),
        "a build step reached /dev/kvm:\n{out}"
    );
    assert_eq!(
        out.matches("open=ok").count(),
        1,
        "a build step opened 1:1:\n{out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("open=ok"),
        "/dev/null must open:\n{out}"
    );
    s.ok(&["destroy"]);
}

#[test]
fn a_home_made_with_the_old_modes_is_tightened_by_the_next_command() {
    let b = Berth::new();
    let home = b.home.path();
    assert!(b.run_in(Path::new("/"), &["ls"]).status.success());
    let layer = home.join("layers/0123abcd");
    fs::create_dir_all(layer.join("bin")).unwrap();
    fs::write(layer.join("bin/tool"), b"kept").unwrap();
    fs::create_dir_all(home.join("envs/old-12345678/upper")).unwrap();
    fs::write(home.join("envs/old-12345678/upper/data"), b"kept too").unwrap();
    for d in [
        "", "layers", "blobs", "images", "tmp", "volumes", "kernels", "envs",
    ] {
        fs::set_permissions(home.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(
        home.join("envs/old-12345678"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let o = b.run_in(Path::new("/"), &["ls"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let expect_home = if root_skip_reason().is_none() {
        0o711
    } else {
        0o700
    };
    assert_eq!(mode(home), expect_home);
    for d in ["layers", "blobs", "images", "tmp", "volumes", "kernels"] {
        assert_eq!(mode(&home.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&home.join("envs/old-12345678")) & 0o067, 0);
    assert_eq!(fs::read(layer.join("bin/tool")).unwrap(), b"kept");
    assert_eq!(
        fs::read(home.join("envs/old-12345678/upper/data")).unwrap(),
        b"kept too"
    );
}

#[test]
fn devices_outside_dev_and_malformed_patterns_are_refused_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("berth.toml"),
        "devices = [\"/dev/kvm\", \"/tmp/evil\", \"/dev/dri/[card\", \"/dev/../etc/shadow\"]\n[image]\nfrom = \"alpine\"\n",
    )
    .unwrap();
    let b = Berth::new();
    let o = b.run_in(dir.path(), &["validate"]);
    let (out, err) = text(&o);
    let all = format!("{out}{err}");
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(all.contains(":1:24") && all.contains("/tmp/evil"), "{all}");
    assert!(all.contains(":1:37") && all.contains("[card"), "{all}");
    assert!(all.contains(":1:55") && all.contains(".."), "{all}");
    assert!(!all.contains(":1:12"), "/dev/kvm is valid: {all}");
}

#[test]
fn doctor_reports_the_defences_and_an_open_store() {
    let b = Berth::new();
    let home = b.home.path();
    assert!(b.run_in(Path::new("/"), &["ls"]).status.success());
    let status_of = |b: &Berth| -> serde_json::Value {
        let o = b.run_in(Path::new("/"), &["doctor", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}: {:?}", text(&o)));
        let mut by_name = serde_json::Map::new();
        for c in report["checks"].as_array().unwrap() {
            by_name.insert(c["name"].as_str().unwrap().to_string(), c.clone());
        }
        serde_json::Value::Object(by_name)
    };
    let checks = status_of(&b);
    for name in ["device control", "seccomp", "user namespaces"] {
        assert!(
            checks.get(name).is_some(),
            "doctor has no `{name}`: {checks}"
        );
    }
    assert_eq!(checks["store permissions"]["status"], "ok", "{checks}");
    fs::set_permissions(home.join("layers"), fs::Permissions::from_mode(0o755)).unwrap();
    let checks = status_of(&b);
    let store = &checks["store permissions"];
    assert_eq!(store["status"], "missing", "{store}");
    assert!(
        store["fix"].as_str().unwrap().contains("chmod 700"),
        "{store}"
    );
    assert!(b.run_in(Path::new("/"), &["ls"]).status.success());
    assert_eq!(status_of(&b)["store permissions"]["status"], "ok");
}

#[test]
fn a_device_node_in_a_bound_host_folder_does_not_open_inside() {
    require_root!();
    let probe = DeviceProbe::build();
    let Some(s) = Setup::new(&probe, "") else {
        return;
    };
    // A project folder holding a device node (an archive unpacked as root can leave one).
    let shared = s.project.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let node = std::ffi::CString::new(shared.join("kvm").to_string_lossy().as_bytes()).unwrap();
    // SAFETY: mknod on a NUL-terminated path in the test's own folder.
    let rc = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 232)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    // The node is kept from the environment by the bind mount's nodev alone (EACCES), before
    // the devices cgroup would answer EPERM.
    let toml = fs::read_to_string(s.project.path().join("berth.toml")).unwrap();
    fs::write(
        s.project.path().join("berth.toml"),
        format!("{toml}[[mounts]]\nsource = \"shared\"\ntarget = \"/work\"\n"),
    )
    .unwrap();
    s.ok(&["up"]);
    assert_eq!(s.exec(&["/opt/probe", "kvm", "/work/kvm"]), "open=EACCES\n");
    s.ok(&["destroy"]);
}
