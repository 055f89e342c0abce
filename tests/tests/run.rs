//! `berth run -- CMD` through the real binary: exit codes, output, timeouts, parallel runs,
//! private source copies, signals, and nothing left behind.

use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::host::HostSnapshot;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// A checkout over a busybox rootfs with its folder at `/work` and a file checked in.
fn project() -> Project {
    // The environment's root acts as the owner of a bind-mounted folder; a folder of host
    // root's is read-only to it (see tests/security_mounts.rs), so the checkout belongs to an
    // ordinary (here: unnamed) user.
    let p = Project::builder("berth-run-", "r").owner(4242).create(
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[[mounts]]\nsource = \".\"\ntarget = \"/work\"\n[shell]\nworkdir = \"/work\"\n",
    );
    let file = p.path().join("checked-in.txt");
    std::fs::write(&file, "original\n").unwrap();
    std::os::unix::fs::chown(&file, Some(4242), Some(4242)).unwrap();
    p
}

/// Environments left in the home once the background removals of finished runs are done.
fn envs_left(b: &Berth) -> usize {
    b.wait_for_background_teardowns();
    std::fs::read_dir(b.home.path().join("envs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn exit_codes_and_output_pass_through_and_nothing_is_left() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    for code in [0, 1, 3, 137] {
        let o = b.run_in(
            p.path(),
            &[
                "-q",
                "run",
                "--",
                "sh",
                "-c",
                &format!("echo out; echo err >&2; exit {code}"),
            ],
        );
        assert_eq!(o.status.code(), Some(code), "{:?}", text(&o));
        assert_eq!(text(&o), ("out\n".to_string(), "err\n".to_string()));
    }
    // A process killed by SIGKILL inside reports 137 like a shell would.
    let o = b.run_in(p.path(), &["-q", "run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(137));
    // 1 MB on each stream arrives complete and separate.
    let o = b.run_in(
        p.path(),
        &[
            "-q",
            "run",
            "--",
            "sh",
            "-c",
            "head -c 1048576 /dev/zero | tr '\\0' o; head -c 1048576 /dev/zero | tr '\\0' e >&2",
        ],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout.len(), 1 << 20);
    assert_eq!(o.stderr.len(), 1 << 20);
    assert!(o.stdout.iter().all(|&c| c == b'o') && o.stderr.iter().all(|&c| c == b'e'));
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn timeout_kills_the_environment_and_exits_124() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = b.run_in(
        p.path(),
        &[
            "-q",
            "run",
            "--timeout",
            "500ms",
            "--",
            "sh",
            "-c",
            "sleep 30 & sleep 30",
        ],
    );
    assert_eq!(o.status.code(), Some(124), "{:?}", text(&o));
    assert!(text(&o).1.contains("timed out"), "{:?}", text(&o));
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn parallel_runs_are_isolated_from_each_other() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let children: Vec<_> = (0..8)
        .map(|i| {
            b.cmd()
                .current_dir(p.path())
                .args([
                    "-q",
                    "run",
                    "--",
                    "sh",
                    "-c",
                    &format!("echo {i} > /tmp/mine; sleep 0.5; ls /tmp; cat /tmp/mine; hostname"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut hostnames = std::collections::BTreeSet::new();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "run {i}: {out}\n{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..2],
            ["mine", &i.to_string()[..]],
            "run {i} saw another's /tmp: {out}"
        );
        hostnames.insert(lines[2].to_string());
    }
    assert_eq!(hostnames.len(), 8, "runs shared a name: {hostnames:?}");
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn copy_source_leaves_the_checkout_untouched() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let o = b.run_in(
        p.path(),
        &[
            "-q",
            "run",
            "--copy-source",
            "--",
            "sh",
            "-c",
            "cat /work/checked-in.txt; echo changed > /work/checked-in.txt; touch /work/new",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "original\n");
    assert_eq!(
        std::fs::read_to_string(p.path().join("checked-in.txt")).unwrap(),
        "original\n"
    );
    assert!(!p.path().join("new").exists());
    // Without --copy-source the mount is live.
    let o = b.run_in(p.path(), &["-q", "run", "--", "touch", "/work/new"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(p.path().join("new").exists());
}

#[test]
fn keep_on_failure_leaves_the_environment_for_debugging() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let o = b.run_in(
        p.path(),
        &[
            "run",
            "--keep-on-failure",
            "--name",
            &format!("{}-dbg", p.name),
            "--",
            "sh",
            "-c",
            "echo state > /root/x; exit 2",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("shell"), "{:?}", text(&o));
    let env = format!("{}-dbg", p.name);
    let o = b.run_in(
        p.path(),
        &["--environment", &env, "exec", "--", "cat", "/root/x"],
    );
    assert_eq!(text(&o).0, "state\n");
    // A run that succeeds is not kept.
    let o = b.run_in(p.path(), &["-q", "run", "--keep-on-failure", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(envs_left(&b), 1);
    let o = b.run_in(p.path(), &["--environment", &env, "destroy"]);
    assert!(o.status.success());
    // The name is free again; a taken name is refused.
    let o = b.run_in(p.path(), &["-q", "run", "--name", "bad_name", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("--name"), "{:?}", text(&o));
}

/// CI runs as root in a checkout of root's: the live folder is read-only to the
/// environment's root (an unprivileged host id there), but a private copy is the
/// environment's own.
#[test]
fn copy_source_of_a_root_owned_checkout_is_writable_inside() {
    require_root!();
    let p = project();
    for f in [p.path().to_path_buf(), p.path().join("checked-in.txt")] {
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
    }
    let b = Berth::new();
    let o = b.run_in(
        p.path(),
        &[
            "-q",
            "run",
            "--",
            "sh",
            "-c",
            "touch /work/live 2>/dev/null && echo wrote",
        ],
    );
    assert_ne!(
        text(&o).0,
        "wrote\n",
        "root's live folder was writable inside"
    );
    assert!(!p.path().join("live").exists());
    let o = b.run_in(
        p.path(),
        &[
            "-q",
            "run",
            "--copy-source",
            "--",
            "sh",
            "-c",
            "echo changed > /work/checked-in.txt && touch /work/new && echo ok",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "ok\n");
    assert_eq!(
        std::fs::read_to_string(p.path().join("checked-in.txt")).unwrap(),
        "original\n"
    );
    assert_eq!(envs_left(&b), 0);
}

#[test]
fn json_summary_reports_durations() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let o = b.run_in(
        p.path(),
        &["-q", "run", "--json", "--", "sh", "-c", "exit 5"],
    );
    assert_eq!(o.status.code(), Some(5));
    let last = text(&o).0.lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["exit_code"], 5);
    for k in ["build", "start", "run", "teardown", "total"] {
        assert!(v["durations_ms"][k].is_u64(), "{last}");
    }
}

/// The host's git identity comes with the start of a run's environment: its supervisor
/// writes `/run/berth/gitconfig` before anything runs inside, so the command is the first
/// process it starts. (Before, a `write-gitconfig` builtin ran first, through its own
/// control round trip and fork, and the command was the supervisor's second child.)
#[test]
fn the_git_identity_comes_with_the_start_and_the_command_is_the_first_process_inside() {
    require_root!();
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("skipped: git is not installed (scripts/install-deps installs it)");
        return;
    }
    let p = project();
    let b = Berth::new();
    let host_home = tempfile::Builder::new()
        .prefix("berth-run-git-home-")
        .tempdir()
        .unwrap();
    std::fs::write(
        host_home.path().join(".gitconfig"),
        "[user]\n\tname = Ada Run\n\temail = ada@run.example\n",
    )
    .unwrap();
    // The host user's git only (no agent to forward: no session builtin either).
    let mut run = b.cmd();
    run.env("HOME", host_home.path())
        .env_remove("GIT_CONFIG_GLOBAL")
        .env_remove("SSH_AUTH_SOCK");
    let script = "echo $$; cat \"$GIT_CONFIG_SYSTEM\"";
    let o = run
        .current_dir(p.path())
        .args(["-q", "run", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        out.lines().next(),
        Some("2"),
        "the command is the supervisor's first child: {out}{err}"
    );
    assert!(
        out.contains("Ada Run") && out.contains("ada@run.example"),
        "{out}{err}"
    );
    assert_eq!(envs_left(&b), 0);
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Starts `berth run` of a long command and returns once the command runs inside.
fn start_long_run(p: &Project, b: &Berth) -> std::process::Child {
    let marker = p.path().join("started");
    let child = b
        .cmd()
        .current_dir(p.path())
        .args([
            "-q",
            "run",
            "--",
            "sh",
            "-c",
            "touch /work/started; sleep 60",
        ])
        .spawn()
        .unwrap();
    wait_for("the command to start", || marker.exists());
    child
}

#[test]
fn sigterm_stops_the_command_and_cleans_up() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let mut child = start_long_run(&p, &b);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn sigkill_of_berth_run_is_collected_by_the_next_command() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let mut child = start_long_run(&p, &b);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        envs_left(&b),
        1,
        "the killed run's environment should still be there"
    );
    // Any berth command collects it.
    let o = b.run_in(p.path(), &["ls"]);
    assert!(o.status.success());
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn ci_cache_carries_built_layers_to_a_fresh_machine() {
    require_root!();
    let p = project();
    let toml = std::fs::read_to_string(p.path().join("berth.toml")).unwrap().replace(
        "from = \"rootfs:./rootfs\"",
        "from = \"rootfs:./rootfs\"\nsetup = [\"echo built > /etc/built\", \"echo more >> /etc/built\"]",
    );
    std::fs::write(p.path().join("berth.toml"), toml).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("berth-cache");
    // Job 1 builds and exports.
    let job1 = Berth::new();
    let o = job1.run_in(p.path(), &["run", "--", "cat", "/etc/built"]);
    assert_eq!(text(&o).0, "built\nmore\n", "{:?}", text(&o));
    let o = job1.run_in(
        p.path(),
        &["image", "export", "--cache", cache_dir.to_str().unwrap()],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    // Job 2 starts from an empty store, imports, and runs no build step.
    let job2 = Berth::new();
    let o = job2.run_in(
        p.path(),
        &["image", "import", "--cache", cache_dir.to_str().unwrap()],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = job2.run_in(p.path(), &["run", "--", "cat", "/etc/built"]);
    let (out, err) = text(&o);
    assert_eq!(out, "built\nmore\n", "{err}");
    assert!(
        err.lines()
            .any(|l| l == "build: 2 steps cached, nothing to run"),
        "a step ran again:\n{err}"
    );
    assert!(!err.contains("setup["), "a step ran again:\n{err}");
}

/// `berth run` next to the project's running dev environment, which holds the declared host
/// port: the run publishes on a free port and says which and why; a fully cached build is one
/// line, not a line per step; `--quiet` leaves nothing but the command's own output.
#[test]
fn run_beside_the_dev_environment_publishes_elsewhere_and_quiet_prints_only_the_output() {
    require_root!();
    let p = project();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = std::fs::read_to_string(p.path().join("berth.toml"))
        .unwrap()
        .replace(
            "from = \"rootfs:./rootfs\"",
            "from = \"rootfs:./rootfs\"\nsetup = [\"echo built > /etc/built\", \"echo more >> /etc/built\"]",
        );
    std::fs::write(
        p.path().join("berth.toml"),
        format!("{toml}[[ports]]\nhost = {port}\nguest = 80\n"),
    )
    .unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = b.run_in(p.path(), &["up"]);
    assert!(o.status.success(), "{:?}", text(&o));

    let o = b.run_in(p.path(), &["run", "--", "cat", "/etc/built"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "run failed beside the dev environment:\n{err}"
    );
    assert_eq!(out, "built\nmore\n");
    let line = err
        .lines()
        .find(|l| l.contains(&format!("port {port} is in use")))
        .unwrap_or_else(|| panic!("no word on the taken port:\n{err}"));
    assert!(
        line.contains(&format!("(by environment {})", p.name))
            && line.contains("; published on 127.0.0.1:")
            && line.ends_with(" instead"),
        "{line}"
    );
    assert!(
        err.lines()
            .any(|l| l == "build: 2 steps cached, nothing to run"),
        "no one-line summary of the cached build:\n{err}"
    );
    assert!(!err.contains("(cached)"), "cached steps reprinted:\n{err}");

    let o = b.run_in(
        p.path(),
        &[
            "--quiet",
            "run",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "hello\n");
    assert_eq!(
        err, "oops\n",
        "--quiet printed more than the command's output"
    );

    let o = b.run_in(p.path(), &["destroy"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A `rootfs:` base is not read and hashed again while its metadata stamp is unchanged
/// (`images/*.tree-stamp`), and a change that keeps each file's size and mtime (written in
/// place, mtime put back as `touch -d` would) is still found: the ctime moved, berth hashes
/// the tree again and refuses to run against berth.lock, saying to run `berth up --update`.
#[test]
fn a_rootfs_base_changed_in_place_with_its_old_mtime_is_refused_against_the_lock() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let stamps = || {
        std::fs::read_dir(b.home.path().join("images"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".tree-stamp"))
                    .count()
            })
            .unwrap_or(0)
    };
    // A tree changed within the last seconds is hashed and not stamped (a change within the
    // same clock tick could hide): let the fresh rootfs settle.
    std::thread::sleep(Duration::from_millis(3200));
    for _ in 0..2 {
        let o = b.run_in(p.path(), &["-q", "run", "--", "true"]);
        assert!(o.status.success(), "{:?}", text(&o));
    }
    assert_eq!(stamps(), 1, "the unchanged base is stamped");
    assert!(p.path().join("berth.lock").is_file());

    let f = p.path().join("rootfs/etc/passwd");
    let before = std::fs::metadata(&f).unwrap();
    let content = std::fs::read_to_string(&f).unwrap();
    let changed = content.replacen("root:x", "toor:x", 1);
    assert_eq!(changed.len(), content.len());
    std::fs::write(&f, changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap()),
        "same size and mtime"
    );
    let o = b.run_in(p.path(), &["-q", "run", "--", "true"]);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("no longer matches") && err.contains("--update"),
        "{err}"
    );
    assert_eq!(envs_left(&b), 0);
}

/// Folders of finished runs being removed in the background (`tmp/run-removal-<pid>-<hex>`).
fn removals(b: &Berth) -> Vec<String> {
    std::fs::read_dir(b.home.path().join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("run-removal-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `berth run` reports the exit code as soon as the command ended; a child stops the
/// environment, moves its folder out of `envs/` and removes it afterwards, and first the
/// bridge when the run was its last user (deleting a bridge waits for the kernel's RCU grace periods, some 50 ms).
/// Killed before it could (the fault injected at `run-removal` aborts it, as a `kill -9`
/// would), its folder stays in `tmp/` and the bridge idle, and the next berth command
/// removes both.
#[test]
fn a_run_folder_whose_removal_was_killed_is_swept_by_the_next_command() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = b.run_in(p.path(), &["-q", "run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{:?}", text(&o));
    assert_eq!(envs_left(&b), 0);
    // Garbage collection stops watching the run when its folder leaves `envs/` (which
    // `envs_left` waited for).
    let watched = std::fs::read_dir(b.home.path().join("watch"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(watched, 0, "a finished run is still on the watch list");
    wait_for("the background removal", || removals(&b).is_empty());

    let run = b
        .cmd()
        .current_dir(p.path())
        .env("BERTH_ABORT_AT", "run-removal")
        .args(["-q", "run", "--", "true"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run_pid = run.id() as i32;
    let o = run.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(
        envs_left(&b),
        0,
        "out of envs/ once its removal process stopped it"
    );
    let bridge = std::path::Path::new("/sys/class/net").join(&b.bridge);
    // The removal process aborted: its folder stays, named after the dead process. (Until
    // that process renames it, the folder is named after `berth run`, which is gone too:
    // a sweep then would race the removal process's rename.)
    wait_for("the removal process to die", || {
        let left = removals(&b);
        left.len() == 1
            && left[0]
                .split('-')
                .nth(2)
                .and_then(|pid| pid.parse::<i32>().ok())
                .is_some_and(|pid| {
                    pid != run_pid && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                })
    });
    // Not removed by `berth run` itself: its removal process died before it got to it.
    assert!(
        bridge.exists(),
        "berth run removed the bridge itself, before it reported the exit code"
    );
    let o = b.run_in(p.path(), &["ls"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let left = removals(&b);
    assert!(left.is_empty(), "not swept by the next command: {left:?}");
    assert!(
        !bridge.exists(),
        "the idle bridge was not removed by the next command"
    );
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// `berth run` reports the exit code as soon as the command's status is known: stopping the
/// supervisor, removing the cgroups and the network are its detached removal process's work.
/// That process killed before it stopped anything (the fault injected at `run-stop` aborts it,
/// as a `kill -9` would) leaves the environment running, unlocked, with the record of a
/// `berth run` that is gone: the next berth command's garbage collection removes all of it
/// (processes, cgroups, network, folder). Fails on a `berth run` that stops the environment
/// itself before it returns (nothing is left for the next command then).
#[test]
fn a_run_whose_removal_was_killed_before_the_stop_is_collected_by_the_next_command() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = b
        .cmd()
        .current_dir(p.path())
        .env("BERTH_ABORT_AT", "run-stop")
        .args(["-q", "run", "--", "sh", "-c", "exit 5"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5), "{:?}", text(&o));
    // `envs_left` waits for the removal process: it died with the environment running.
    assert_eq!(envs_left(&b), 1, "berth run stopped the environment itself");
    let left = HostSnapshot::take(&[&p.name, &b.home.path().to_string_lossy(), &b.bridge]);
    assert!(
        !left.cgroups.is_empty() && !left.berth_processes.is_empty(),
        "the killed removal process's environment is not running: {left:?}"
    );
    let o = b.run_in(p.path(), &["ls"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(envs_left(&b), 0, "not collected by the next command");
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// Runs of one name back to back: the second waits for the first one's removal process
/// (which holds the environment's lock until its folder is out of `envs/`) instead of
/// finding the name taken.
#[test]
fn runs_of_one_name_back_to_back_wait_for_the_last_removal() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    for code in ["3", "4"] {
        let o = b.run_in(
            p.path(),
            &[
                "-q",
                "run",
                "--name",
                "same-run",
                "--",
                "sh",
                "-c",
                &format!("exit {code}"),
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(code.parse().unwrap()),
            "{:?}",
            text(&o)
        );
    }
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A `berth run` killed at `point` (`BERTH_ABORT_AT`, the process aborts as on SIGKILL).
fn aborted_run(p: &Project, b: &Berth, point: &str, extra: &[&str]) {
    let mut args = vec!["-q", "run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "true"]);
    let o = b
        .cmd()
        .current_dir(p.path())
        .env("BERTH_ABORT_AT", point)
        .args(&args)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "not aborted at {point}: {:?}",
        text(&o)
    );
    assert_eq!(envs_left(b), 1, "the run killed at {point} left nothing");
}

/// Garbage collection reads no other environment's record on an ordinary command, yet a
/// killed `berth run` is still removed by the next command of any project, however far it
/// got: before its record existed (its folder holds only the project's copy), halfway
/// through its start (cgroups made, no supervisor), or running; and by `berth ls`.
#[test]
fn a_run_killed_at_any_point_is_collected_by_the_next_command_and_by_ls() {
    require_root!();
    let p = project();
    let other = Project::new(
        "berth-run-other-",
        "o",
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n",
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    // Another project's command, which has nothing to do with the run.
    let next_command = || {
        let o = b.run_in(other.path(), &["status"]);
        assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    };
    b.ok(p.path(), &["-q", "run", "--", "true"]);

    // Killed after copying the project, before `up` recorded anything.
    aborted_run(&p, &b, "up-watch", &["--copy-source"]);
    next_command();
    assert_eq!(
        envs_left(&b),
        0,
        "the copy of a run killed before its record"
    );
    aborted_run(&p, &b, "up-watch", &["--copy-source"]);
    assert!(b.run_in(p.path(), &["ls"]).status.success());
    assert_eq!(envs_left(&b), 0, "ls left the copy of a killed run");
    // Killed with its folder locked, no record yet.
    aborted_run(&p, &b, "env-locked", &[]);
    next_command();
    assert_eq!(envs_left(&b), 0, "a run killed before its record");

    aborted_run(&p, &b, "cgroups-created", &[]);
    next_command();
    assert_eq!(envs_left(&b), 0, "a run killed halfway through its start");

    // Killed with its supervisor running and its network plumbed (veth, lease, bridge, NAT),
    // before `state.json` was written a second time: the supervisor's pid is in no record,
    // only the cgroups hold it.
    aborted_run(&p, &b, "network-attached", &[]);
    next_command();
    assert_eq!(
        envs_left(&b),
        0,
        "a run killed after its network was plumbed, its supervisor not yet recorded"
    );

    let mut child = start_long_run(&p, &b);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(envs_left(&b), 1);
    next_command();
    assert_eq!(envs_left(&b), 0, "a running run whose berth was killed");
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// The mount options of the environment's `/` as its own process sees them (mountinfo's
/// super options of the mount at `/`).
fn root_mount_options(b: &Berth, p: &Project, args: &[&str]) -> String {
    let mut argv = vec!["-q", "run"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&[
        "--",
        "awk",
        "$5 == \"/\" { print $NF }",
        "/proc/self/mountinfo",
    ]);
    let o = b.run_in(p.path(), &argv);
    assert!(o.status.success(), "{:?}", text(&o));
    text(&o).0
}

/// Whether overlay options `opts` make the writable layer volatile (`volatile`, shown as
/// `fsync=volatile` by Linux 6.17 and later).
fn is_volatile(opts: &str) -> bool {
    opts.trim()
        .split(',')
        .any(|o| o == "volatile" || o == "fsync=volatile")
}

#[test]
fn a_throw_away_runs_writable_layer_is_volatile_and_a_kept_runs_can_start_again() {
    require_root!();
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    // Unmounting a plain overlay writes back the whole filesystem its upper folder is on
    // (some 10-20 ms at the end of every run on a busy disk, and every other program's
    // writes with it); a layer removed right after need not be.
    let opts = root_mount_options(&b, &p, &[]);
    assert!(
        is_volatile(&opts),
        "a throw-away run's / is a plain overlay: {opts}"
    );
    // A kept run may be started again, which overlayfs refuses for a volatile layer.
    let env = format!("{}-kept", p.name);
    let opts = root_mount_options(&b, &p, &["--keep", "--name", &env]);
    assert!(!is_volatile(&opts), "a kept run's / is volatile: {opts}");
    b.ok(p.path(), &["--environment", &env, "down"]);
    b.ok(p.path(), &["--environment", &env, "up"]);
    let o = b.run_in(p.path(), &["--environment", &env, "exec", "--", "true"]);
    assert!(o.status.success(), "{:?}", text(&o));
    b.ok(p.path(), &["--environment", &env, "destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// The pid of the supervisor (`berth-init`) whose command line carries `tag`.
fn supervisor_of(tag: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (comm.trim() == "berth-init" && cmdline.contains(tag)).then_some(pid)
    })
}

/// The system calls `calls` (strace's `-e trace=`) of `args` run by berth in `p` and every
/// process it starts, as strace prints them; `None` when strace cannot run. Not for a command
/// that leaves a process behind (a kept environment's supervisor): strace waits for it.
fn strace_of_berth(b: &Berth, p: &Project, calls: &str, args: &[&str]) -> Option<String> {
    let trace = p.path().join("berth.trace");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-e", &format!("trace={calls}"), "-o"])
        .arg(&trace)
        .arg(berth_e2e::berth_bin())
        .args(args)
        .env("BERTH_HOME", b.home.path())
        .env("BERTH_BRIDGE", &b.bridge)
        .env("BERTH_SUBNET", &b.subnet)
        .current_dir(p.path())
        .output()
        .ok()?;
    assert!(o.status.success(), "{:?}", text(&o));
    let out = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    Some(out)
}

/// How many times `args` (run by berth in `p`) execs berth's binary, counted by strace.
fn execs_of_berth(b: &Berth, p: &Project, args: &[&str]) -> Option<usize> {
    let trace = strace_of_berth(b, p, "execve", args)?;
    let bin = berth_e2e::berth_bin().to_string_lossy().into_owned();
    Some(
        trace
            .lines()
            .filter(|l| l.contains("execve(") && !l.contains("= -1"))
            .filter(|l| l.contains(&format!("\"{bin}\"")) || l.contains("\"/proc/self/exe\""))
            .count(),
    )
}

/// A throw-away run's launcher is a fork of `berth run`, not a second exec of berth's binary
/// (`container::launcher_fork`: the exec, its loader and start-up were a tenth of a run's
/// CPU); a `--keep` run, whose environment may start again, keeps the exec as `up` does. The
/// forked supervisor (found by `berth run`'s command line, which it keeps, and seen by the
/// leak check as berth's) holds nothing of `berth run`'s: stdin is /dev/null, stdout and
/// stderr its log, and no descriptor reaches the environment's lock or anything else of the
/// home but its logs and control socket.
#[test]
fn a_throw_away_runs_supervisor_is_forked_from_berth_run_with_nothing_of_its_descriptors() {
    require_root!();
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (scripts/install-deps installs it)");
        return;
    }
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let once = execs_of_berth(&b, &p, &["-q", "run", "--", "true"]);
    assert_eq!(once, Some(1), "berth run execs berth once (itself)");
    // PID 1's command line: berth run's when forked, `__supervisor`'s when exec'd.
    let pid1 = "tr '\\0' ' ' < /proc/1/cmdline";
    let o = b.run_in(p.path(), &["-q", "run", "--", "sh", "-c", pid1]);
    let (out, err) = text(&o);
    assert!(
        out.contains(" run ") && !out.contains("__supervisor"),
        "{out}{err}"
    );
    let kept = format!("{}-kept", p.name);
    let args = [
        "-q", "run", "--keep", "--name", &kept, "--", "sh", "-c", pid1,
    ];
    let o = b.run_in(p.path(), &args);
    let (out, err) = text(&o);
    assert!(
        out.contains("__supervisor"),
        "a kept run's launcher is exec'd: {out}{err}"
    );
    let o = b.run_in(p.path(), &["--environment", &kept, "destroy"]);
    assert!(o.status.success(), "{:?}", text(&o));

    let started = p.path().join("started");
    let marker = format!("launcher-fork-{}", p.name);
    let mut child = b
        .cmd()
        .current_dir(p.path())
        .args([
            "-q",
            "run",
            "--",
            "sh",
            "-c",
            "touch /work/started; sleep 60",
            &marker,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the command to start", || started.exists());
    let home = b.home.path().to_string_lossy().into_owned();
    let pid = supervisor_of(&marker).expect("the run's supervisor");
    let seen = HostSnapshot::take(&[&home]).berth_processes;
    assert!(
        seen.iter().any(|s| s.starts_with(&format!("{pid} "))),
        "the leak check does not see the run's supervisor: {seen:?}"
    );
    let mut held = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let fd: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        let target = std::fs::read_link(e.path())
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        held.push((fd, target));
    }
    let target = |fd: i32| held.iter().find(|(f, _)| *f == fd).map(|(_, t)| t.as_str());
    assert_eq!(target(0), Some("/dev/null"), "{held:?}");
    for fd in [1, 2] {
        assert!(
            target(fd).is_some_and(|t| t.ends_with("/logs/supervisor.log")),
            "{held:?}"
        );
    }
    for (fd, t) in &held {
        assert!(
            !t.ends_with("/lock"),
            "fd {fd} is a lock of the home: {held:?}"
        );
        assert!(
            !t.starts_with(&home) || t.contains("/logs") || t.ends_with("control.sock"),
            "fd {fd} of berth run reached the supervisor: {held:?}"
        );
        assert!(
            !t.starts_with("/dev/pts"),
            "fd {fd} is a terminal: {held:?}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// The names of the files and folders `args` (run by berth in `p`) creates under the home's
/// `envs/`, counted by strace (opens that create, the target of renames, folders).
fn files_made_in_envs(b: &Berth, p: &Project, args: &[&str]) -> Option<Vec<String>> {
    let calls = "openat,openat2,rename,renameat2,mkdir,mkdirat";
    let trace = strace_of_berth(b, p, calls, args)?;
    let envs = format!("{}/envs/", b.home.path().display());
    let mut made = Vec::new();
    for l in trace.lines().filter(|l| !l.contains("= -1")) {
        let creates = l.contains("O_CREAT") || l.contains("rename") || l.contains("mkdir");
        // The last quoted path of the call: a rename's target, an open's or mkdir's path.
        let path = l.rsplit('"').nth(1).unwrap_or_default();
        if creates && path.starts_with(&envs) {
            made.push(path.rsplit('/').next().unwrap_or_default().to_string());
        }
    }
    Some(made)
}

/// A throw-away run keeps the host's git identity its start found in memory for its one
/// command, instead of recording it in `host-git.json`, and with loopback only it records no
/// `network.json` (nothing on the host to remove): files made and removed per run, and on ext4
/// without a journal every inode freed makes the next ones' allocation slower. The command
/// still gets the identity (`the_git_identity_comes_with_the_start_…`) and a run still says
/// it has loopback only. A kept run, which later sessions and `status` reach, records both.
#[test]
fn a_throw_away_run_records_no_host_git_identity_nor_loopback_network_and_a_kept_run_does() {
    require_root!();
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (scripts/install-deps installs it)");
        return;
    }
    let p = Project::builder("berth-run-", "r").create(
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[network]\nmode = \"none\"\n",
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    let made = files_made_in_envs(&b, &p, &["-q", "run", "--", "true"]).unwrap();
    assert!(made.iter().any(|f| f == "env.json"), "{made:?}");
    assert!(!made.iter().any(|f| f == "host-git.json"), "{made:?}");
    assert!(!made.iter().any(|f| f == "network.json"), "{made:?}");
    let o = b.run_in(p.path(), &["run", "--", "true"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        err.contains("loopback only, no outbound network"),
        "{out}{err}"
    );
    // Not under strace: the kept environment's supervisor outlives the run.
    let kept = format!("{}-kept", p.name);
    let o = b.run_in(
        p.path(),
        &["-q", "run", "--keep", "--name", &kept, "--", "true"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let st = b.ok(p.path(), &["--environment", &kept, "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let dir = b
        .home
        .path()
        .join("envs")
        .join(st["env_id"].as_str().unwrap());
    for f in ["host-git.json", "network.json"] {
        assert!(dir.join(f).is_file(), "a kept run records {f}");
    }
    let o = b.run_in(p.path(), &["--environment", &kept, "destroy"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(envs_left(&b), 0);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A throw-away run's lock file is its watch marker under a second name (one inode made and
/// freed per run instead of two; see `state::WatchList::link_run_marker`): both names stay
/// while it runs, and once a SIGTERM ended it neither name nor anything else is left. (A
/// kill at any point: `a_run_killed_at_any_point_is_collected_…`.)
#[test]
fn a_throw_away_runs_lock_file_is_its_watch_marker_under_a_second_name() {
    require_root!();
    use std::os::unix::fs::MetadataExt;
    let p = project();
    let b = Berth::new();
    let before = p.snapshot(&b);
    let mut child = start_long_run(&p, &b);
    let envs: Vec<_> = std::fs::read_dir(b.home.path().join("envs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(envs.len(), 1, "{envs:?}");
    let lock = std::fs::metadata(b.home.path().join("envs").join(&envs[0]).join("lock")).unwrap();
    let marker = b.home.path().join("watch").join(format!("{}.run", envs[0]));
    let marker = std::fs::metadata(marker).unwrap();
    assert_eq!((lock.dev(), lock.ino()), (marker.dev(), marker.ino()));
    assert_eq!(lock.nlink(), 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_eq!(envs_left(&b), 0);
    let watched = std::fs::read_dir(b.home.path().join("watch"))
        .unwrap()
        .count();
    assert_eq!(watched, 0, "a marker outlived its run");
    before.assert_nothing_leaked(&p.snapshot(&b));
}
