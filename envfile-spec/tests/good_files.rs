//! Valid berth.toml files: templates, defaults, name derivation, every key normalized into the
//! plan, warnings, discovery and plan hashes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use envfile_spec::plan::*;
use envfile_spec::{discover, load, parse, templates, ErrorKind, ImageReference, Severity};

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("berth.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn ok(dir: &Path, text: &str) -> Plan {
    let file = write(dir, text);
    match load(&file) {
        Ok(l) => {
            assert!(
                l.warnings.is_empty(),
                "unexpected warnings:\n{}",
                l.warnings.render(false)
            );
            l.plan
        }
        Err(r) => panic!("expected a valid file, got:\n{}", r.render(false)),
    }
}

#[test]
fn every_template_validates_in_a_fresh_folder() {
    for t in templates::list() {
        let dir = tempdir("berth-tpl-");
        let plan = ok(dir.path(), t.text);
        assert_eq!(plan.file, dir.path().join("berth.toml"));
        assert!(!plan.mounts.is_empty(), "{} mounts nothing", t.name);
        // With an explicit name, too.
        let named = ok(dir.path(), &t.text_with_name(Some("demo-1")));
        assert_eq!(named.name, "demo-1", "{}", t.name);
        assert_eq!(
            named.changed_sections(&plan),
            [Section::Name],
            "{}: only the name differs",
            t.name
        );
    }
}

#[test]
fn defaults_are_filled_in() {
    let parent = tempdir("berth-defaults-");
    let dir = parent.path().join("My Project_1");
    std::fs::create_dir(&dir).unwrap();
    let plan = ok(&dir, "[image]\nfrom = \"debian\"\n");
    assert_eq!(plan.name, "my-project-1");
    assert_eq!(plan.project_dir, dir);
    assert_eq!(plan.backend, BackendKind::Container);
    assert!(plan.on_up.is_empty());
    assert_eq!(
        plan.image.from,
        ImageSource::Oci {
            reference: ImageReference::parse("docker.io/library/debian:latest").unwrap()
        }
    );
    assert!(plan.image.packages.is_empty() && plan.image.setup.is_empty());
    assert!(plan.image.inputs.is_empty() && plan.image.host_ca);
    assert_eq!(plan.image.workdir, "/", "no mount of the project folder");
    assert!(plan.on_create.is_empty());
    assert!(plan.env.is_empty() && plan.mounts.is_empty() && plan.ports.is_empty());
    assert_eq!(plan.resources, Resources::default());
    assert_eq!(plan.network.mode, NetworkMode::Isolated);
    assert_eq!(plan.shell.user, None);
    assert_eq!(plan.shell.workdir.as_deref(), Some("/"));
    assert_eq!(plan.shell.command, ["/bin/sh", "-l"]);
    assert!(plan.services.is_empty());
    assert_eq!(plan.vm, None);
}

#[test]
fn every_key_is_normalized_into_the_plan() {
    let dir = tempdir("berth-full-");
    let d = dir.path();
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::create_dir_all(d.join("rootfs")).unwrap();
    std::fs::create_dir_all(d.join("kernel/modules")).unwrap();
    std::fs::write(d.join("kernel/vmlinux"), "elf").unwrap();
    let text = r#"
name = "web"
backend = "vm"
on_up = ["./scripts/migrate", "echo up"]

[image]
from = "rootfs:./rootfs/"
packages = ["git", "curl=7.88.1-10", "python3>3"]
setup = ["make deps"]

[env]
RUST_LOG = "debug"
_X1 = ""

[[mounts]]
source = "./src/../src"
target = "/work/"
readonly = true

[[mounts]]
source = "."
target = "/sync"
type = "sync"
ignore = ["target/", "*.o"]

[[mounts]]
source = "cache"
target = "/cache"
type = "volume"

[[mounts]]
target = "/tmp"
type = "tmpfs"
size = "512MiB"

[[ports]]
host = 8080
guest = 80

[[ports]]
host = 8080
guest = 80
protocol = "udp"

[[ports]]
host = 9000
guest = 9000
address = "0.0.0.0"

[[ports]]
host = 9001
guest = 9001
address = "::1"

[resources]
memory = "2GiB"
cpus = 1.5
pids = 1024

[network]
mode = "isolated"

[shell]
user = "dev"
workdir = "/work/src"
command = "exec bash -l"

[services]
db = { command = ["postgres", "-D", "/data"], restart = "on-failure" }

[services.web]
command = ["./serve"]
restart = "always"
env = { PORT = "80" }
workdir = "/work"

[vm]
kernel = "kernel/vmlinux"
memory = 2147483648
vcpus = 2
vmm = "qemu"
modules = "./kernel/modules"
"#;
    let plan = ok(d, text);
    assert_eq!(plan.name, "web");
    assert_eq!(plan.backend, BackendKind::Vm);
    assert_eq!(plan.on_up, ["./scripts/migrate", "echo up"]);
    assert_eq!(
        plan.image,
        ImagePlan {
            from: ImageSource::Rootfs {
                path: d.join("rootfs")
            },
            packages: vec!["git".into(), "curl=7.88.1-10".into(), "python3>3".into()],
            setup: vec!["make deps".into()],
            inputs: Vec::new(),
            // The first mount of the project folder (`./src` is not it).
            workdir: "/sync".into(),
            host_ca: true,
            dockerfile: None,
            cache: None,
            cache_push: false,
        }
    );
    assert_eq!(
        plan.env,
        BTreeMap::from([
            ("RUST_LOG".into(), "debug".into()),
            ("_X1".into(), "".into())
        ])
    );
    assert_eq!(
        plan.mounts,
        vec![
            MountPlan {
                source: Some(d.join("src").to_string_lossy().into_owned()),
                target: "/work".into(),
                kind: MountKind::Bind,
                readonly: true,
                ignore: vec![],
                size: None,
                unsafe_host_path: false,
            },
            MountPlan {
                source: Some(d.to_string_lossy().into_owned()),
                target: "/sync".into(),
                kind: MountKind::Sync,
                readonly: false,
                ignore: vec!["target/".into(), "*.o".into()],
                size: None,
                unsafe_host_path: false,
            },
            MountPlan {
                source: Some("cache".into()),
                target: "/cache".into(),
                kind: MountKind::Volume,
                readonly: false,
                ignore: vec![],
                size: None,
                unsafe_host_path: false,
            },
            MountPlan {
                source: None,
                target: "/tmp".into(),
                kind: MountKind::Tmpfs,
                readonly: false,
                ignore: vec![],
                size: Some(512 << 20),
                unsafe_host_path: false,
            },
        ]
    );
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        plan.ports,
        vec![
            PortPlan {
                host: 8080,
                guest: 80,
                protocol: Protocol::Tcp,
                address: lo
            },
            PortPlan {
                host: 8080,
                guest: 80,
                protocol: Protocol::Udp,
                address: lo
            },
            PortPlan {
                host: 9000,
                guest: 9000,
                protocol: Protocol::Tcp,
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            },
            PortPlan {
                host: 9001,
                guest: 9001,
                protocol: Protocol::Tcp,
                address: "::1".parse().unwrap()
            },
        ]
    );
    assert_eq!(
        plan.resources,
        Resources {
            memory: Some(2 << 30),
            cpus: Some(1.5),
            pids: Some(1024)
        }
    );
    assert_eq!(
        plan.shell,
        ShellPlan {
            user: Some("dev".into()),
            workdir: Some("/work/src".into()),
            command: vec!["/bin/sh".into(), "-c".into(), "exec bash -l".into()],
        }
    );
    assert_eq!(
        plan.services["db"],
        ServicePlan {
            command: vec!["postgres".into(), "-D".into(), "/data".into()],
            restart: RestartPolicy::OnFailure,
            env: BTreeMap::new(),
            workdir: Some("/work/src".into()),
        }
    );
    assert_eq!(
        plan.services["web"],
        ServicePlan {
            command: vec!["./serve".into()],
            restart: RestartPolicy::Always,
            env: BTreeMap::from([("PORT".into(), "80".into())]),
            workdir: Some("/work".into()),
        }
    );
    assert_eq!(
        plan.vm,
        Some(VmPlan {
            kernel: KernelSource::Path {
                path: d.join("kernel/vmlinux")
            },
            memory: 2 << 30,
            vcpus: 2,
            vmm: VmmKind::Qemu,
            modules: Some(d.join("kernel/modules")),
        })
    );
}

#[test]
fn vm_defaults_and_debian_kernels() {
    let dir = tempdir("berth-vm-");
    let plan = ok(
        dir.path(),
        "backend = \"vm\"\n[image]\nfrom = \"debootstrap:bookworm\"\nmirror = \"http://deb.debian.org/debian\"\n[vm]\nkernel = \"debian:linux-image-cloud-amd64=6.1.0-1\"\n",
    );
    assert_eq!(
        plan.image.from,
        ImageSource::Debootstrap {
            suite: "bookworm".into(),
            mirror: Some("http://deb.debian.org/debian".into())
        }
    );
    assert_eq!(
        plan.vm,
        Some(VmPlan {
            kernel: KernelSource::Debian {
                package: "linux-image-cloud-amd64".into(),
                version: Some("6.1.0-1".into())
            },
            memory: 1 << 30,
            vcpus: 1,
            vmm: VmmKind::Auto,
            modules: None,
        })
    );
}

#[test]
fn shell_workdir_defaults_to_the_first_mount() {
    let dir = tempdir("berth-wd-");
    let plan = ok(
        dir.path(),
        "[image]\nfrom = \"alpine\"\n[[mounts]]\nsource = \".\"\ntarget = \"/code\"\n",
    );
    assert_eq!(plan.shell.workdir.as_deref(), Some("/code"));
}

#[test]
fn home_relative_sources_expand() {
    let dir = tempdir("berth-home-");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
    let plan = ok(
        dir.path(),
        "[image]\nfrom = \"alpine\"\n[[mounts]]\nsource = \"~\"\ntarget = \"/h\"\nreadonly = true\n",
    );
    assert_eq!(
        plan.mounts[0].source.as_deref(),
        Some(Path::new(&home).to_str().unwrap())
    );
}

#[test]
fn ignored_ports_are_a_warning_not_an_error() {
    let dir = tempdir("berth-warn-");
    let file = write(
        dir.path(),
        "[image]\nfrom = \"alpine\"\n[network]\nmode = \"host\"\n[[ports]]\nhost = 80\nguest = 80\n",
    );
    let loaded = load(&file).unwrap();
    let w = &loaded.warnings.diagnostics;
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].kind, w[0].severity),
        (ErrorKind::IgnoredSetting, Severity::Warning)
    );
    assert_eq!((w[0].line, w[0].column), (5, 3));
    assert!(loaded
        .warnings
        .render(false)
        .contains("warning[ignored-setting]"));
}

#[test]
fn a_bom_and_crlf_are_accepted() {
    let dir = tempdir("berth-bom-");
    let plan = ok(
        dir.path(),
        "\u{feff}name = \"x\"\r\n[image]\r\nfrom = \"alpine\"\r\n",
    );
    assert_eq!(plan.name, "x");
}

#[test]
fn relative_file_paths_resolve_against_the_current_folder() {
    // parse() with a relative path: host paths resolve against cwd/<parent>.
    let cwd = std::env::current_dir().unwrap();
    let plan = parse(
        b"[image]\nfrom = \"alpine\"\n",
        Path::new("sub/../berth.toml"),
    )
    .unwrap()
    .plan;
    assert_eq!(plan.file, cwd.join("berth.toml"));
    assert_eq!(plan.project_dir, cwd);
}

#[test]
fn endless_files_are_refused() {
    let report = load(Path::new("/dev/zero")).unwrap_err();
    assert_eq!(report.diagnostics[0].kind, ErrorKind::Unreadable);
    assert!(report.diagnostics[0].message.contains("larger than 4 MiB"));
}

#[test]
fn unreadable_file_is_reported() {
    let dir = tempdir("berth-unread-");
    let report = load(&dir.path().join("missing.toml")).unwrap_err();
    assert_eq!(report.diagnostics[0].kind, ErrorKind::Unreadable);
    assert!(report.render(false).contains("missing.toml"));
}

#[test]
fn discovery_walks_up_like_cargo() {
    let dir = tempdir("berth-disc-");
    let deep = dir.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    let above = dir
        .path()
        .ancestors()
        .any(|p| p.join("berth.toml").is_file());
    if !above {
        assert_eq!(discover(&deep), None);
    }
    let top = write(dir.path(), "[image]\nfrom = \"alpine\"\n");
    assert_eq!(discover(&deep), Some(top.clone()));
    assert_eq!(discover(dir.path()), Some(top));
    let mid = write(&dir.path().join("a"), "[image]\nfrom = \"alpine\"\n");
    assert_eq!(discover(&deep), Some(mid));
    // A folder named berth.toml is not a berth.toml.
    std::fs::create_dir_all(deep.join("berth.toml")).unwrap();
    assert_eq!(discover(&deep), Some(dir.path().join("a/berth.toml")));
}

#[test]
fn hashes_are_stable_and_per_section() {
    let dir = tempdir("berth-hash-");
    let base = "name = \"h\"\non_up = [\"true\"]\n[image]\nfrom = \"alpine:3.20\"\nworkdir = \"/w\"\n[env]\nA = \"1\"\n[[mounts]]\nsource = \".\"\ntarget = \"/w\"\n[[ports]]\nhost = 1080\nguest = 80\n[resources]\nmemory = \"1G\"\n[shell]\nuser = \"dev\"\nworkdir = \"/w\"\n[services.s]\ncommand = [\"sleep\", \"1\"]\n";
    let a = ok(dir.path(), base);
    let b = ok(dir.path(), base);
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 64);
    assert_eq!(a.section_hashes(), b.section_hashes());
    // Formatting and comments do not change the plan.
    let reformatted = base
        .replace(" = ", "=")
        .replace("[env]\n", "# comment\n[env]\n\n");
    assert_eq!(ok(dir.path(), &reformatted).hash(), a.hash());

    let edits: &[(&str, &str, Section)] = &[
        ("name = \"h\"", "name = \"h2\"", Section::Name),
        ("on_up = [\"true\"]", "on_up = [\"false\"]", Section::OnUp),
        ("alpine:3.20", "alpine:3.19", Section::Image),
        ("A = \"1\"", "A = \"2\"", Section::Env),
        ("target = \"/w\"", "target = \"/x\"", Section::Mounts),
        ("host = 1080", "host = 1081", Section::Ports),
        ("memory = \"1G\"", "memory = \"2G\"", Section::Resources),
        ("user = \"dev\"", "user = \"root\"", Section::Shell),
        (
            "[\"sleep\", \"1\"]",
            "[\"sleep\", \"2\"]",
            Section::Services,
        ),
    ];
    for (from, to, section) in edits {
        let changed = ok(dir.path(), &base.replace(from, to));
        assert_ne!(changed.hash(), a.hash(), "{section:?}");
        assert_eq!(changed.changed_sections(&a), [*section], "editing {from}");
    }
    let with_net = ok(
        dir.path(),
        &format!("{base}[network]\nmode = \"none\"\n")
            .replace("[[ports]]\nhost = 1080\nguest = 80\n", ""),
    );
    assert_eq!(
        with_net.changed_sections(&a),
        [Section::Ports, Section::Network]
    );
}

#[test]
fn a_defaulted_workdir_follows_the_first_mount() {
    let dir = tempdir("berth-follow-");
    let base = "[image]\nfrom = \"alpine\"\n[[mounts]]\nsource = \".\"\ntarget = \"/w\"\n";
    let a = ok(dir.path(), base);
    let b = ok(dir.path(), &base.replace("/w", "/x"));
    // The build's workdir follows the mount of the project folder too.
    assert_eq!(
        b.changed_sections(&a),
        [Section::Image, Section::Mounts, Section::Shell]
    );
}

#[test]
fn build_inputs_workdir_host_ca_and_on_create() {
    let dir = tempdir("berth-inputs-");
    std::fs::write(dir.path().join("package.json"), "{}").unwrap();
    std::fs::write(dir.path().join("package-lock.json"), "{}").unwrap();
    let plan = ok(
        dir.path(),
        "on_create = [\"npm ci\"]\n[image]\nfrom = \"debian\"\ninputs = [\"package*.json\"]\nhost_ca = false\n[[mounts]]\nsource = \"/tmp\"\ntarget = \"/tmp-host\"\n[[mounts]]\nsource = \".\"\ntarget = \"/app/\"\n",
    );
    assert_eq!(plan.on_create, ["npm ci"]);
    assert_eq!(plan.image.inputs, ["package*.json"]);
    assert_eq!(
        plan.image.workdir, "/app",
        "the mount of `.`, not the first mount"
    );
    assert!(!plan.image.host_ca);
    let explicit = ok(
        dir.path(),
        "[image]\nfrom = \"debian\"\nworkdir = \"/opt/app/\"\n[[mounts]]\nsource = \".\"\ntarget = \"/app\"\n",
    );
    assert_eq!(explicit.image.workdir, "/opt/app");
    assert_eq!(
        explicit.changed_sections(&plan),
        [
            Section::Image,
            Section::Mounts,
            Section::Shell,
            Section::OnCreate
        ]
    );
}

#[test]
fn devices_are_kept_in_order_without_duplicates_and_leave_old_plan_hashes_alone() {
    let dir = tempdir("berth-dev-");
    let plain = ok(dir.path(), "[image]\nfrom = \"alpine\"\n");
    assert!(plain.devices.is_empty());
    let json = serde_json::to_string(&plain).unwrap();
    assert!(
        !json.contains("devices"),
        "an empty `devices` must not change the plan's hash: {json}"
    );
    let plan = ok(
        dir.path(),
        "devices = [\"/dev/kvm\", \"/dev/dri/*\", \"/dev/kvm\"]\n[image]\nfrom = \"alpine\"\n",
    );
    assert_eq!(plan.devices, ["/dev/kvm", "/dev/dri/*"]);
    assert_eq!(plan.changed_sections(&plain), [Section::Devices]);
}

#[test]
fn devices_in_a_vm_are_a_warning() {
    let dir = tempdir("berth-devvm-");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"k").unwrap();
    let file = write(
        dir.path(),
        &format!(
            "backend = \"vm\"\ndevices = [\"/dev/kvm\"]\n[image]\nfrom = \"alpine\"\n[vm]\nkernel = \"{}\"\n",
            kernel.display()
        ),
    );
    let loaded = load(&file).unwrap();
    let w = &loaded.warnings.diagnostics;
    assert_eq!(w.len(), 1, "{}", loaded.warnings.render(false));
    assert_eq!(
        (w[0].kind, w[0].line, w[0].column),
        (ErrorKind::IgnoredSetting, 2, 1)
    );
}

#[test]
fn changes_are_described_with_what_changed() {
    let dir = tempdir("berth-describe-");
    let base =
        "[image]\nfrom = \"alpine\"\npackages = [\"curl\", \"git\"]\n[env]\nA = \"1\"\nB = \"2\"\n";
    let a = ok(dir.path(), base);
    let b = ok(
        dir.path(),
        &base
            .replace("\"curl\", \"git\"", "\"git\", \"make\"")
            .replace("B = \"2\"", "B = \"3\"\nC = \"4\""),
    );
    assert_eq!(
        a.describe_changes(&b),
        ["image (packages +make -curl)", "env (~B +C)"]
    );
    let c = ok(dir.path(), &base.replace("[env]\nA = \"1\"\n", "[env]\n"));
    assert_eq!(a.describe_changes(&c), ["env (-A)"]);
    let d = ok(
        dir.path(),
        &base.replace("from = \"alpine\"", "from = \"debian\"\nsetup = [\"true\"]"),
    );
    assert_eq!(a.describe_changes(&d), ["image (from, setup)"]);
}

#[test]
fn a_dockerfile_base_with_context_target_and_args() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    std::fs::create_dir_all(d.join("docker/ctx")).unwrap();
    std::fs::write(d.join("docker/Dockerfile"), "FROM x\n").unwrap();
    let plan = ok(
        d,
        "[image]\ndockerfile = \"docker/Dockerfile\"\ncontext = \"docker/ctx\"\ntarget = \"dev\"\nargs = { NODE_VERSION = \"20\" }\npackages = [\"git\"]\n",
    );
    let df = plan.image.dockerfile.clone().unwrap();
    assert_eq!(df.path, d.join("docker/Dockerfile"));
    assert_eq!(df.context, d.join("docker/ctx"));
    assert_eq!(df.target.as_deref(), Some("dev"));
    assert_eq!(df.args["NODE_VERSION"], "20");
    assert_eq!(plan.image.packages, ["git"]);
    // The default context is the project folder.
    let plan = ok(d, "[image]\ndockerfile = \"docker/Dockerfile\"\n");
    assert_eq!(plan.image.dockerfile.unwrap().context, d);
    // Files without it keep the plans (and hashes) they had.
    let plan = ok(d, "[image]\nfrom = \"debian\"\n");
    assert!(!serde_json::to_string(&plan).unwrap().contains("dockerfile"));
}
