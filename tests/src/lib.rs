//! Support for berth's end-to-end tests: locating the real binary, isolated berth homes (with
//! `ok` helpers that assert a command succeeded), project folders over a busybox rootfs
//! ([`project`]), `require_root!` / `require_debian!` skips, and snapshots of host resources
//! (mounts, cgroups, processes, network devices) for leak checks.

pub mod bounded_wait;
pub mod debian;
pub mod dockerfile;
pub mod forwarded;
pub mod host;
pub mod nested;
pub mod oci;
pub mod ports;
pub mod probe;
pub mod project;
pub mod user;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `berth` binary under test: `BERTH_BIN`, else `target/<profile>/berth` of this
/// workspace (built by `scripts/test` before the tests run).
pub fn berth_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("berth");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "the berth binary was not found under {}; run `cargo build -p berth-cli` first (scripts/test does)",
        target.display()
    );
}

/// A berth invocation with its own BERTH_HOME, removed on drop. Each has its own bridge
/// (`BERTH_BRIDGE`) on its own subnet (`BERTH_SUBNET`), so tests running in parallel never
/// share leases, and "the bridge goes with the last environment" holds per test.
pub struct Berth {
    pub home: tempfile::TempDir,
    /// Bridge and nftables table name of this home's isolated environments.
    pub bridge: String,
    /// Its IPv4 subnet (a /24).
    pub subnet: String,
}

impl Default for Berth {
    fn default() -> Self {
        Self::new()
    }
}

impl Berth {
    pub fn new() -> Self {
        Self::in_folder(&std::env::temp_dir())
    }

    /// A berth with its home in a fresh folder inside `parent` (a filesystem a test chose).
    pub fn in_folder(parent: &Path) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        Berth {
            home: tempfile::Builder::new()
                .prefix("berth-home-")
                .tempdir_in(parent)
                .unwrap(),
            bridge: format!("berth{:05x}{:04x}", pid & 0xfffff, n & 0xffff),
            subnet: format!("10.{}.{}.0/24", 128 + pid % 96, n % 256),
        }
    }

    /// A command for the real binary with this test's home.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(berth_bin());
        c.env("BERTH_HOME", self.home.path());
        c.env("BERTH_BRIDGE", &self.bridge);
        c.env("BERTH_SUBNET", &self.subnet);
        c.env("NO_COLOR", "1");
        c.env_remove("BERTH_ABORT_AT");
        c
    }

    /// Runs berth with `args` in `dir` and returns its output.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.cmd().current_dir(dir).args(args).output().unwrap()
    }

    /// Runs berth with `args` in `dir`, asserts that it succeeded (the failure message has
    /// the exit status, stdout and stderr) and returns stdout and stderr.
    pub fn ok_both(&self, dir: &Path, args: &[&str]) -> (String, String) {
        let o = self.run_in(dir, args);
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "berth {args:?} failed ({:?}):\n{out}\n{err}",
            o.status
        );
        (out, err)
    }

    /// `berth status --json` in `dir`, parsed (asserting that it succeeded).
    pub fn status_json(&self, dir: &Path) -> serde_json::Value {
        serde_json::from_str(&self.ok(dir, &["status", "--json"])).unwrap()
    }

    /// [`ok_both`](Self::ok_both), returning stdout.
    pub fn ok(&self, dir: &Path, args: &[&str]) -> String {
        self.ok_both(dir, args).0
    }

    /// [`ok_both`](Self::ok_both), returning stdout followed by stderr (for messages berth
    /// writes to either).
    pub fn ok_combined(&self, dir: &Path, args: &[&str]) -> String {
        let (out, err) = self.ok_both(dir, args);
        format!("{out}{err}")
    }

    /// `berth logs <service>` in `dir` once it shows `needle` (at most 20 s): a service's
    /// output reaches its log when the supervisor copies it, after `up` returned. Fails,
    /// with the last log and the environment's status, when it never does.
    pub fn log_once_it_shows(&self, dir: &Path, service: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let logs = self.ok_combined(dir, &["logs", service]);
            if logs.contains(needle) {
                return logs;
            }
            if std::time::Instant::now() >= deadline {
                let status = text(&self.run_in(dir, &["status", "--json"]));
                panic!("the log of {service} never showed {needle:?} in 20 s: {logs:?}; status: {status:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits (at most 15 s) until no live process is tearing an environment down in the
    /// background: a finished `berth run`'s removal process (its environment, still in
    /// `envs/` and locked while that process stops it, then its folder
    /// `tmp/run-removal-<pid>-<hex>`), or the child of a `berth down` that finishes the stop
    /// (the environment locked while it removes cgroups and network); and, when either was
    /// the bridge's last user, this test's bridge, which that process removes last (idle
    /// until then: its record lists no lease). What a process that died leaves (the next
    /// berth command's to collect) is not waited for.
    pub fn wait_for_background_teardowns(&self) {
        // An environment folder whose lock someone holds: a run's removal process or a
        // `down`'s child stopping it (no other berth command runs while a test waits here).
        let stopping = || {
            std::fs::read_dir(self.home.path().join("envs"))
                .map(|d| {
                    d.flatten().any(|e| {
                        berth_runtime::state::FileLock::held_by_another(&e.path().join("lock"))
                            .is_ok_and(|held| held == Some(true))
                    })
                })
                .unwrap_or(false)
        };
        let bridge_idle = || {
            std::fs::read(
                Path::new(host::BRIDGE_RECORDS)
                    .join(&self.bridge)
                    .join("leases.json"),
            )
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|r| r["leases"].as_array().is_some_and(|l| l.is_empty()))
        };
        let live = || {
            std::fs::read_dir(self.home.path().join("tmp"))
                .map(|d| {
                    d.flatten().any(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("run-removal-")
                            .and_then(|rest| rest.split('-').next())
                            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
                    })
                })
                .unwrap_or(false)
        };
        for _ in 0..300 {
            if !stopping() && !live() && !bridge_idle() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Berth {
    /// Tears down every environment the test left (also when it failed half-way), so no
    /// supervisor, mount or cgroup outlives the test, and waits for the teardowns left to
    /// background processes before the home goes.
    fn drop(&mut self) {
        let Ok(out) = self.cmd().args(["ls", "--json"]).output() else {
            return;
        };
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for env in list.as_array().into_iter().flatten() {
            if let Some(id) = env.get("env_id").and_then(|v| v.as_str()) {
                let _ = self
                    .cmd()
                    .args(["--environment", id, "destroy", "--timeout", "2"])
                    .output();
            }
        }
        // A finished `berth run`'s removal process or a `down`'s child may still be at work
        // in this home: removed under it, its cgroups, bridge or folder would be left behind.
        self.wait_for_background_teardowns();
    }
}

/// Returns from the test (with the reason on stderr) unless it runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = $crate::host::root_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Returns from the test (with the reason on stderr) unless the shared Debian base can be
/// built here ([`debian::unavailable`]).
#[macro_export]
macro_rules! require_debian {
    () => {
        if let Some(why) = $crate::debian::unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Text of stdout and stderr, for assertions and failure messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
