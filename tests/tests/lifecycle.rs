//! `up` / `status` / `exec` / `shell` / `logs` / `down` / `destroy` through the real binary,
//! on a busybox root filesystem, with a leak check after each test.

use std::process::Stdio;

use berth_e2e::host::HostSnapshot;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// A project folder with a busybox rootfs and a berth.toml; `{name}` in the body becomes a
/// name unique to this test, so parallel tests never share an environment.
fn project(toml: &str) -> Project {
    Project::new("berth-proj-", "life-", toml)
}

const BASIC: &str = r#"
name = "{name}"
on_up = ["echo on-up-ran > /tmp/on_up"]
[image]
from = "rootfs:./rootfs"
[env]
GREETING = "hi there"
[[mounts]]
source = "."
target = "/work"
[resources]
memory = "128MiB"
pids = 64
[shell]
workdir = "/work"
[services]
ticker = { command = ["sh", "-c", "echo tick; sleep 1000"] }
"#;

#[test]
fn up_exec_status_down_destroy_leave_nothing_behind() {
    require_root!();
    let p = project(BASIC);
    // The environment's root acts as the owner of a bind-mounted folder; a folder of host
    // root's is read-only to it (see tests/security_mounts.rs), so the project folder
    // belongs to an ordinary (here: unnamed) user, as a developer's checkout does.
    std::os::unix::fs::chown(p.path(), Some(4242), Some(4242)).unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let out = b.ok(p.path(), &["up"]);
    assert!(out.contains("created and started"), "{out}");

    // Isolation: pid 1 is the supervisor, the host's processes are invisible, hostname is
    // the environment's name, env vars and workdir come from the file.
    let ps = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'",
        ],
    );
    assert!(ps.contains("__supervisor"), "{ps}");
    let count: u32 = ps.lines().last().unwrap().trim().parse().unwrap();
    assert!(count < 10, "too many processes visible inside: {count}");
    let o = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "hostname; echo $GREETING; pwd; cat /tmp/on_up",
        ],
    );
    assert_eq!(o, format!("{}\nhi there\n/work\non-up-ran\n", p.name));

    // Exit codes and separate streams pass through exactly.
    for code in [0, 1, 3, 137] {
        let o = b.run_in(
            p.path(),
            &[
                "exec",
                "--",
                "sh",
                "-c",
                &format!("echo out; echo err >&2; exit {code}"),
            ],
        );
        assert_eq!(o.status.code(), Some(code));
        assert_eq!(text(&o), ("out\n".to_string(), "err\n".to_string()));
    }
    let o = b.run_in(
        p.path(),
        &[
            "exec",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A; pwd",
        ],
    );
    assert_eq!(text(&o).0, "1\n/tmp\n");

    // The live mount works both ways.
    std::fs::write(p.path().join("from-host"), "h").unwrap();
    let o = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "cat /work/from-host; echo i > /work/from-inside",
        ],
    );
    assert_eq!(o, "h");
    assert_eq!(
        std::fs::read_to_string(p.path().join("from-inside")).unwrap(),
        "i\n"
    );
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(p.path().join("from-inside")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (4242, 4242),
        "owned by the folder's owner"
    );

    // A no-op up is recognized.
    let out = b.ok(p.path(), &["up"]);
    assert!(out.contains("up to date"), "{out}");

    let st = b.ok(p.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["status"], "running");
    assert!(v["usage"]["pids_current"].as_u64().unwrap() >= 2, "{st}");

    let logs = b.log_once_it_shows(p.path(), "ticker", "tick");
    assert!(logs.starts_with("tick\n"), "{logs}");

    b.ok(p.path(), &["down"]);
    let o = b.run_in(p.path(), &["status"]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    let o = b.run_in(p.path(), &["exec", "--", "true"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).1.contains("not running"), "{:?}", text(&o));

    // The writable layer survives down/up; destroy removes it.
    b.ok(p.path(), &["up"]);
    b.ok(
        p.path(),
        &["exec", "--", "sh", "-c", "echo kept > /root/state"],
    );
    b.ok(p.path(), &["down"]);
    b.ok(p.path(), &["up"]);
    assert_eq!(
        b.ok(p.path(), &["exec", "--", "cat", "/root/state"]),
        "kept\n"
    );
    b.ok(p.path(), &["destroy"]);
    b.ok(p.path(), &["up"]);
    let o = b.run_in(p.path(), &["exec", "--", "cat", "/root/state"]);
    assert_eq!(o.status.code(), Some(1));
    b.ok(p.path(), &["destroy"]);
    assert_eq!(
        std::fs::read_dir(b.home.path().join("envs"))
            .unwrap()
            .count(),
        0
    );
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn changed_file_is_reported_and_applied() {
    require_root!();
    let p = project(BASIC);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    p.write(&BASIC.replace("pids = 64", "pids = 80"));
    let st = b.run_in(p.path(), &["status"]);
    assert!(
        text(&st)
            .0
            .contains("pending:  berth.toml changed (resources)"),
        "{:?}",
        text(&st)
    );
    let out = b.ok(p.path(), &["up"]);
    assert!(
        out.contains("restarted") && out.contains("changed: resources"),
        "{out}"
    );
    let st = b.ok(p.path(), &["status"]);
    assert!(st.contains("of 80"), "{st}");
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn memory_and_pids_limits_are_enforced() {
    require_root!();
    let p = project(&BASIC.replace(
        "[services]\nticker = { command = [\"sh\", \"-c\", \"echo tick; sleep 1000\"] }\n",
        "",
    ));
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    // A shell variable of 200 MB does not fit in 128 MiB: the shell is OOM-killed.
    let o = b.run_in(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "a=$(head -c 200000000 /dev/zero | tr '\\0' x); echo survived",
        ],
    );
    assert_ne!(
        text(&o).0,
        "survived\n",
        "a 256 MiB allocation survived a 128 MiB limit"
    );
    let st = b.ok(p.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert!(v["usage"]["oom_kills"].as_u64().unwrap_or(0) >= 1, "{st}");
    // 64 pids at most: a fork bomb is stopped, the environment survives.
    let o = b.run_in(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "for i in $(seq 100); do sleep 5 & done 2>/dev/null; wait; echo done",
        ],
    );
    let _ = o;
    let o = b.run_in(p.path(), &["exec", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn killed_supervisor_is_reported_dead_and_repaired() {
    require_root!();
    let p = project(BASIC);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let st: serde_json::Value =
        serde_json::from_str(&b.ok(p.path(), &["status", "--json"])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let o = b.run_in(p.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "dead", "{:?}", text(&o));
    // The image layers are detached id-mapped mounts held by the overlay alone: no
    // `lower/N` folder in the environment's folder, none left after the kill.
    for e in std::fs::read_dir(b.home.path().join("envs")).unwrap() {
        let dir = e.unwrap().path();
        assert!(
            !dir.join("lower").exists(),
            "{} holds per-start layer folders",
            dir.display()
        );
    }
    let out = b.ok(p.path(), &["up"]);
    assert!(out.contains("started"), "{out}");
    assert_eq!(b.ok(p.path(), &["exec", "--", "echo", "back"]), "back\n");
    let root_mount = b.ok(
        p.path(),
        &["exec", "--", "head", "-1", "/proc/self/mountinfo"],
    );
    assert!(
        root_mount.contains(" / / ") && !root_mount.contains("/lower/"),
        "the root overlay names per-start layer folders: {root_mount}"
    );
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn shell_without_a_terminal_reads_stdin() {
    require_root!();
    let p = project(BASIC);
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    let mut child = b
        .cmd()
        .current_dir(p.path())
        .args(["shell"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-shell $(pwd)\nexit 4\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from-shell /work\n");
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn shell_on_a_terminal_is_interactive() {
    require_root!();
    if which("script").is_none() {
        eprintln!("skipped: `script` (bsdutils) is not installed");
        return;
    }
    let p = project(BASIC);
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    // `script` gives berth a real terminal on stdin/stdout.
    let bin = berth_e2e::berth_bin();
    let mut child = std::process::Command::new("script")
        .args(["-qec", &format!("{} shell", bin.display()), "/dev/null"])
        .env("BERTH_HOME", b.home.path())
        .current_dir(p.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"tty; echo marker-$((6*7))\n").unwrap();
    stdin.write_all(b"exit 5\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("/dev/pts/"), "no terminal inside: {out}");
    assert!(out.contains("marker-42"), "{out}");
    drop(stdin);
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn env_option_reaches_an_environment_from_anywhere() {
    require_root!();
    let p = project(BASIC);
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(
        b.ok(
            elsewhere.path(),
            &["--environment", &p.name, "exec", "--", "hostname"]
        ),
        format!("{}\n", p.name)
    );
    let ls = b.ok(elsewhere.path(), &["ls"]);
    assert!(ls.contains(&p.name) && ls.contains("running"), "{ls}");
    b.ok(elsewhere.path(), &["--environment", &p.name, "destroy"]);
    let o = b.run_in(elsewhere.path(), &["--environment", &p.name, "status"]);
    assert_eq!(o.status.code(), Some(3));
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

#[test]
fn snapshots_capture_and_restore_the_writable_layer() {
    require_root!();
    let p = project(BASIC);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo one > /root/a; rm /etc/group; mkdir /opt; echo x > /opt/f",
        ],
    );
    let out = b.ok(p.path(), &["snapshot", "save", "s1"]);
    assert!(out.contains("saved snapshot s1"), "{out}");
    b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo two > /root/a; rm -r /opt; echo b > /root/b",
        ],
    );
    let ls: serde_json::Value =
        serde_json::from_str(&b.ok(p.path(), &["snapshot", "ls", "--json"])).unwrap();
    assert_eq!(ls[0]["name"], "s1");
    // Restoring a running environment restarts it on the snapshot's layer.
    let out = b.ok(p.path(), &["snapshot", "restore", "s1"]);
    assert!(out.contains("started it again"), "{out}");
    let o = b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "cat /root/a /opt/f; ls /root; test -e /etc/group || echo group-gone",
        ],
    );
    assert_eq!(o, "one\nx\na\ngroup-gone\n");
    // Restore on a stopped environment keeps it stopped.
    b.ok(p.path(), &["down"]);
    let out = b.ok(p.path(), &["snapshot", "restore", "s1"]);
    assert!(!out.contains("started it again"), "{out}");
    b.ok(p.path(), &["snapshot", "rm", "s1"]);
    let o = b.run_in(p.path(), &["snapshot", "restore", "s1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("no snapshot s1"), "{:?}", text(&o));
    let o = b.run_in(p.path(), &["snapshot", "save", "../escape"]);
    assert_eq!(o.status.code(), Some(1));
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn setup_steps_are_cached_layers() {
    require_root!();
    let toml = BASIC.replace(
        "from = \"rootfs:./rootfs\"",
        "from = \"rootfs:./rootfs\"\nsetup = [\"echo one > /etc/built\", \"echo two >> /etc/built\"]",
    );
    let p = project(&toml);
    let b = Berth::new();
    let o = b.run_in(p.path(), &["up"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(
        b.ok(p.path(), &["exec", "--", "cat", "/etc/built"]),
        "one\ntwo\n"
    );
    // Editing step 2 reruns step 2 only.
    p.write(&toml.replace("echo two", "echo TWO"));
    let o = b.run_in(p.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("changed: image"), "{out}");
    assert!(
        err.contains("setup[0]: echo one > /etc/built (cached)"),
        "{err}"
    );
    assert!(
        !err.contains("setup[1]: echo TWO >> /etc/built (cached)"),
        "{err}"
    );
    assert_eq!(
        b.ok(p.path(), &["exec", "--", "cat", "/etc/built"]),
        "one\nTWO\n"
    );
    // A failing step reports its exit code and leaves the running environment alone.
    p.write(&toml.replace("echo two >> /etc/built", "echo partial; exit 7"));
    let o = b.run_in(p.path(), &["up"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains('7') && err.contains("partial"), "{err}");
    assert_eq!(
        b.ok(p.path(), &["exec", "--", "cat", "/etc/built"]),
        "one\nTWO\n"
    );
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn logs_follow_prints_new_output() {
    require_root!();
    let toml = BASIC.replace(
        "ticker = { command = [\"sh\", \"-c\", \"echo tick; sleep 1000\"] }",
        "ticker = { command = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done\"] }",
    );
    let p = project(&toml);
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    let mut child = b
        .cmd()
        .current_dir(p.path())
        .args(["logs", "-F", "-n", "1", "ticker"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    use std::io::Read;
    while seen.lines().count() < 4 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "logs -F ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let nums: Vec<u32> = seen
        .lines()
        .take(4)
        .map(|l| l.trim_start_matches("tick-").parse().unwrap())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{seen}");
    b.ok(p.path(), &["destroy"]);
}

#[test]
fn concurrent_commands_on_ten_environments() {
    require_root!();
    let projects: Vec<Project> = (0..10).map(|_| project(BASIC)).collect();
    let b = Berth::new();
    let befores: Vec<HostSnapshot> = projects.iter().map(|p| p.snapshot(&b)).collect();
    // Two threads per environment, each doing up / exec / down: the per-environment lock
    // serializes them, different environments run in parallel.
    std::thread::scope(|s| {
        for p in &projects {
            for _ in 0..2 {
                let b = &b;
                s.spawn(move || {
                    b.ok(p.path(), &["-q", "up"]);
                    // The other thread may take it down meanwhile: then exec reports a
                    // stopped environment (3), or `true` is stopped with it (143 / 137).
                    let o = b.run_in(p.path(), &["exec", "--", "true"]);
                    assert!(
                        matches!(o.status.code(), Some(0 | 3 | 137 | 143)),
                        "{:?} {:?}",
                        o.status,
                        text(&o)
                    );
                    b.ok(p.path(), &["-q", "down"]);
                });
            }
        }
    });
    for (p, before) in projects.iter().zip(&befores) {
        b.ok(p.path(), &["-q", "destroy"]);
        before.assert_nothing_leaked(&p.snapshot(&b));
    }
}

/// `exec` while `down` waits for a service that ignores SIGTERM: the supervisor starts nothing
/// more, and `exec` says the environment is not running (exit 3), as it does a moment later
/// when the supervisor is gone; it is not a failure to start the environment (exit 1).
#[test]
fn exec_into_a_stopping_environment_reports_it_not_running() {
    require_root!();
    let toml = BASIC.replace(
        "ticker = { command = [\"sh\", \"-c\", \"echo tick; sleep 1000\"] }",
        "ticker = { command = [\"sh\", \"-c\", \"trap '' TERM; while true; do sleep 1; done\"] }",
    );
    let p = project(&toml);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["-q", "up"]);
    let mut down = b
        .cmd()
        .current_dir(p.path())
        .args(["-q", "down", "--timeout", "6"])
        .spawn()
        .unwrap();
    // Until the supervisor has the stop request, exec runs (0), or its `true` is stopped
    // with the environment (143); then the environment is stopping.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let o = loop {
        let o = b.run_in(p.path(), &["exec", "--", "true"]);
        if !matches!(o.status.code(), Some(0 | 143)) || std::time::Instant::now() > deadline {
            break o;
        }
    };
    assert!(down.wait().unwrap().success());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("is not running") && err.contains("berth up"),
        "{err}"
    );
    b.ok(p.path(), &["-q", "destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn a_state_folder_the_environment_cannot_reach_is_named() {
    require_root!();
    let p = project(BASIC);
    // A berth home inside a folder only root may enter: the environment's root (an
    // unprivileged host uid) could not reach its own files.
    let private = tempfile::Builder::new()
        .prefix("berth-private-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let home = private.path().join("home");
    let o = berth_e2e::Berth::new()
        .cmd()
        .env("BERTH_HOME", &home)
        .current_dir(p.path())
        .arg("up")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains(&format!("{} is not searchable", private.path().display()))
            && err.contains("chmod o+x"),
        "{err}"
    );
    let snapshot = HostSnapshot::take(&[&p.name, &home.to_string_lossy()]);
    assert!(
        snapshot.berth_processes.is_empty() && snapshot.cgroups.is_empty(),
        "{snapshot:?}"
    );
}

/// Sets root's entry in /etc/subuid and /etc/subgid for a test and puts the files back when
/// dropped: exactly as they were, or, when something else changed them meanwhile (another
/// test adding a user), with only root's entry restored.
struct RootSubids {
    original: Vec<(&'static str, String)>,
}

const SUBID_FILES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];

fn without_root(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("root:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

impl RootSubids {
    fn new() -> RootSubids {
        RootSubids {
            original: SUBID_FILES
                .iter()
                .map(|f| (*f, std::fs::read_to_string(f).unwrap_or_default()))
                .collect(),
        }
    }

    fn give_root(&self, start: u32) {
        for f in SUBID_FILES {
            let now = std::fs::read_to_string(f).unwrap_or_default();
            std::fs::write(f, format!("{}root:{start}:65536\n", without_root(&now))).unwrap();
        }
    }
}

impl Drop for RootSubids {
    fn drop(&mut self) {
        for (f, original) in &self.original {
            let now = std::fs::read_to_string(f).unwrap_or_default();
            let restored = if without_root(&now) == without_root(original) {
                original.clone()
            } else {
                let roots: String = original
                    .lines()
                    .filter(|l| l.starts_with("root:"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                format!("{}{roots}", without_root(&now))
            };
            let _ = std::fs::write(f, restored);
        }
    }
}

/// /etc/subuid moves root's range between two `up`s (an admin edits it; `adduser` takes the
/// block root's fallback used): the environment keeps the mapping it was created with, so
/// its writable layer and volume stay root's and writable inside, and `up` says why.
#[test]
fn the_id_mapping_survives_a_change_of_etc_subuid() {
    require_root!();
    let (a, b_start) = (2_100_000_000u32, 2_200_000_000u32);
    let toml = "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n\
                [[mounts]]\nsource = \"keep\"\ntarget = \"/data\"\ntype = \"volume\"\n";
    let p = project(toml);
    let b = Berth::new();
    let before = p.snapshot(&b);
    let subids = RootSubids::new();
    subids.give_root(a);
    b.ok(p.path(), &["up"]);
    b.ok(
        p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo v > /data/f; echo u > /etc/upper-file",
        ],
    );
    let st: serde_json::Value =
        serde_json::from_str(&b.ok(p.path(), &["status", "--json"])).unwrap();
    let env_id = st["env_id"].as_str().unwrap().to_string();
    use std::os::unix::fs::MetadataExt;
    let upper_file = b
        .home
        .path()
        .join("envs")
        .join(&env_id)
        .join("upper/etc/upper-file");
    assert_eq!(
        std::fs::metadata(&upper_file).unwrap().uid(),
        a,
        "the environment did not use root's range from /etc/subuid"
    );
    b.ok(p.path(), &["down"]);

    subids.give_root(b_start);
    let o = b.run_in(p.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("notice: /etc/subuid now gives root the host ids")
            && err.contains(&a.to_string()),
        "no notice about the changed /etc/subuid:\n{err}"
    );
    let owners = b.ok(p.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "stat -c %u:%g /data/f /etc/upper-file && echo w >> /data/f && echo w >> /etc/upper-file && touch /data/new /etc/new && echo writable",
        ],
    );
    assert_eq!(owners, "0:0\n0:0\nwritable\n", "files lost their owner");
    drop(subids);
    b.ok(p.path(), &["destroy", "--volumes"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A build step takes its ids as an environment's start does: when /etc/subuid moved root's
/// range after the home's first start, the home keeps its first range, and a step must run
/// in it too. (A step once chose from /etc/subuid alone and handed its writable root to ids
/// the start then did not map: `mkdir` in `/` failed with "Permission denied".)
#[test]
fn a_build_step_runs_in_the_homes_kept_id_range_after_etc_subuid_changes() {
    require_root!();
    let (a, b_start) = (2_100_000_000u32, 2_200_000_000u32);
    let first = project("name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n");
    let b = Berth::new();
    let before = first.snapshot(&b);
    let subids = RootSubids::new();
    subids.give_root(a);
    // The home's first start records root's range.
    b.ok(first.path(), &["-q", "run", "--", "true"]);
    subids.give_root(b_start);
    let step = project(
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n\
         setup = [\"mkdir /step-made && touch /step-made/f\"]\n",
    );
    let o = b.run_in(
        step.path(),
        &["-q", "run", "--", "stat", "-c", "%u:%g", "/step-made/f"],
    );
    let (out, err) = text(&o);
    drop(subids);
    assert!(o.status.success(), "the step failed:\n{out}\n{err}");
    assert_eq!(out, "0:0\n", "{err}");
    before.assert_nothing_leaked(&first.snapshot(&b));
}

/// `berth ls | head -0` and `berth status --json | head -c1`: a reader that goes away ends the
/// printing command quietly (as `ls` or `tail` end), never with a panic and exit code 101.
#[test]
fn printing_to_a_closed_pipe_ends_quietly() {
    require_root!();
    let p = project(BASIC);
    std::os::unix::fs::chown(p.path(), Some(4242), Some(4242)).unwrap();
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    for args in [&["ls"][..], &["status", "--json"], &["logs", "ticker"]] {
        let mut child = b
            .cmd()
            .current_dir(p.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader closes before berth writes anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "berth {args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "berth {args:?}: {err}");
    }
    b.ok(p.path(), &["destroy"]);
}
