//! Shared fixtures of the container integration tests: a busybox root filesystem, an
//! environment guard that always stops what it started, a leak check, a tiny test runner.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_runtime::backend::ExecRequest;
use berth_runtime::container::{ContainerBackend, ContainerSpec};

/// A marker in every path these tests create (temp dirs, so state dirs and socket paths), so
/// that leak checks look only at this test process's own mounts, cgroups and processes: other
/// berth test suites may run on the same machine at the same time.
pub fn marker() -> String {
    format!("berth-ct-{}-", std::process::id())
}

/// A fresh temp dir carrying the [`marker`].
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&marker())
        .tempdir()
        .unwrap()
}

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (namespaces, overlayfs, cgroups); run as root, as CI does".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("needs /bin/busybox (Debian package busybox-static)".into());
    }
    None
}

/// A busybox root filesystem in a fresh temp dir (root-owned, like the shared layer store).
pub struct BusyboxRootfs {
    pub dir: tempfile::TempDir,
}

impl BusyboxRootfs {
    pub fn new() -> BusyboxRootfs {
        let dir = temp_dir();
        let r = dir.path();
        for d in [
            "bin", "etc", "root", "tmp", "proc", "sys", "dev", "home/dev", "var", "usr/bin",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(r.join("root"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            // Linking `busybox` to itself would replace the binary by a self-symlink.
            if applet.is_empty() || applet == "busybox" {
                continue;
            }
            let _ = std::os::unix::fs::symlink("busybox", r.join("bin").join(applet));
        }
        fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1000::/home/dev:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n").unwrap();
        fs::write(
            r.join("etc/group"),
            "root:x:0:\ntty:x:5:\ndev:x:1000:\nnogroup:x:65534:\n",
        )
        .unwrap();
        std::os::unix::fs::chown(r.join("home/dev"), Some(1000), Some(1000)).unwrap();
        fs::write(r.join("etc/layer-file"), "from the layer\n").unwrap();
        BusyboxRootfs { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A started environment that is stopped (and its state removed) on drop, also on failure.
pub struct Env {
    pub spec: ContainerSpec,
    pub home: tempfile::TempDir,
}

impl Env {
    /// A spec over `rootfs` in a fresh state dir; tweak it, then call [`Env::start`].
    pub fn spec(name: &str, rootfs: &Path) -> (ContainerSpec, tempfile::TempDir) {
        let home = temp_dir();
        let id = format!("{name}-{}", std::process::id());
        let spec = ContainerSpec::new(
            &id,
            name,
            &home.path().join("envs").join(&id),
            vec![rootfs.to_path_buf()],
        );
        (spec, home)
    }

    pub fn start(spec: ContainerSpec, home: tempfile::TempDir) -> Env {
        let env = Env { spec, home };
        match ContainerBackend.start(&env.spec) {
            Ok(_) => env,
            Err(e) => {
                let log = fs::read_to_string(env.spec.logs_dir().join("supervisor.log"))
                    .unwrap_or_default();
                panic!("start failed: {e}\nsupervisor.log:\n{log}");
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.spec.state_dir
    }

    /// Runs a command; returns (exit code, stdout, stderr).
    pub fn run(&self, argv: &[&str]) -> (i32, String, String) {
        self.run_req(ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    pub fn sh(&self, script: &str) -> (i32, String, String) {
        self.run(&["/bin/sh", "-c", script])
    }

    pub fn run_req(&self, req: ExecRequest) -> (i32, String, String) {
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let null = fs::File::open("/dev/null").unwrap();
        let code = ContainerBackend
            .exec(self.dir(), &req, [null.as_fd(), out.as_fd(), err.as_fd()])
            .unwrap_or_else(|e| panic!("exec {:?}: {e}", req.argv));
        let read = |mut f: fs::File| {
            use std::io::{Read, Seek};
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            s
        };
        (code, read(out), read(err))
    }

    /// Starts the (stopped) environment again, runs a script, stops it; returns its stdout.
    pub fn sh_after_restart(&self, script: &str) -> String {
        ContainerBackend.start(&self.spec).unwrap();
        let out = self.sh(script).1;
        self.stop();
        out
    }

    pub fn stop(&self) {
        ContainerBackend
            .stop(self.dir(), Duration::from_secs(5))
            .unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Err(e) = ContainerBackend.stop(self.dir(), Duration::from_secs(2)) {
            eprintln!("cleanup of {} failed: {e}", self.spec.env_id);
        }
    }
}

/// Host state that an environment must not leave behind: mounts, cgroup directories, and
/// berth processes, limited to this test process's own (see [`marker`]). Environments never
/// create host network devices (their network namespace holds only a loopback), so those are
/// not compared: other suites on the machine create veths concurrently. Compare a snapshot
/// taken before with one taken after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakCheck {
    pub mounts: BTreeSet<String>,
    pub cgroups: BTreeSet<PathBuf>,
    pub processes: BTreeSet<String>,
}

impl LeakCheck {
    pub fn snapshot() -> LeakCheck {
        let marker = marker();
        let pid_suffix = format!("-{}", std::process::id());
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&marker))
            .map(|l| l.splitn(3, ' ').nth(2).unwrap_or("").to_string())
            .collect();
        let mut cgroups = BTreeSet::new();
        for ctrl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            walk_berth_dirs(&ctrl.path(), &mut cgroups, 0);
        }
        // Environment ids of these tests end in the test process's pid.
        cgroups.retain(|p: &PathBuf| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&pid_suffix) || n.contains(&format!("{pid_suffix}-")))
        });
        let mut processes = BTreeSet::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&marker) {
                processes.insert(format!("{name} {cmd}"));
            }
        }
        LeakCheck {
            mounts,
            cgroups,
            processes,
        }
    }

    /// Panics with the difference when `after` differs from `self`.
    pub fn assert_same(&self, after: &LeakCheck) {
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
            a.symmetric_difference(b).cloned().collect()
        };
        let m = diff(&self.mounts, &after.mounts);
        assert!(m.is_empty(), "mounts leaked or lost: {m:#?}");
        let c: Vec<_> = self.cgroups.symmetric_difference(&after.cgroups).collect();
        assert!(c.is_empty(), "cgroup dirs leaked: {c:#?}");
        let p = diff(&self.processes, &after.processes);
        assert!(p.is_empty(), "processes leaked: {p:#?}");
    }
}

fn walk_berth_dirs(dir: &Path, out: &mut BTreeSet<PathBuf>, depth: usize) {
    if depth > 6 {
        return;
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            if p.components().any(|c| c.as_os_str() == "berth") {
                out.insert(p.clone());
            }
            walk_berth_dirs(&p, out, depth + 1);
        }
    }
}

/// Runs named tests in order, each isolated with catch_unwind; exits non-zero on failure.
pub fn run_tests(tests: &[(&str, fn())]) {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        ran += 1;
        eprintln!("test {name} ...");
        let t0 = std::time::Instant::now();
        match std::panic::catch_unwind(f) {
            Ok(()) => eprintln!("test {name} ... ok ({:?})", t0.elapsed()),
            Err(_) => {
                eprintln!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    eprintln!(
        "\n{} passed, {} failed: {failed:?}",
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
