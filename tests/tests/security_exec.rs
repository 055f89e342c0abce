//! Security regressions of the container backend's process launch and state folders, each an
//! exploit with a harmless payload (marker files in temporary folders):
//!
//! - a process started in the environment must never get its working directory on the host
//!   through a descriptor the supervisor holds (the runc CVE-2024-21626 class), whether the
//!   folder comes from `exec -w`, a service's `workdir` or a descriptor the caller passed;
//! - berth (root) must not follow a symlink planted in an environment's log folder;
//! - state files holding `[env]` values are private, and another user's environments are
//!   refused with "permission denied", not listed or called "not running";
//! - signals sent to PID 1 from inside do not kill the environment;
//! - a failed first `up` leaves no environment folder behind.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// A project folder with a busybox rootfs and `toml` (`{name}` replaced by a unique name).
fn project(toml: &str) -> Project {
    // Other users (the cross-user test) must be able to reach the project folder.
    Project::builder("berth-sec-", "sec-")
        .mode(0o755)
        .create(toml)
}

/// The single environment's state folder under the test's home.
fn env_dir(b: &Berth) -> PathBuf {
    let envs: Vec<PathBuf> = std::fs::read_dir(b.home.path().join("envs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(envs.len(), 1, "{envs:?}");
    envs[0].clone()
}

/// Every path under `dir` whose name starts with `prefix`.
fn find_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(prefix) {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    found
}

const WITH_SERVICE: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[env]
SECRET = "do-not-leak-4711"
[services]
ticker = { command = ["sh", "-c", "echo tick; sleep 1000"] }
"#;

/// The payload: from the working directory berth gave it, climb and leave a marker in every
/// folder on the way, and say whether an environment record (`env.json`) is in reach.
const CLIMB: &str = "pwd; for d in . .. ../.. ../../..; do touch $d/escape-marker-$$ 2>/dev/null; \
                     [ -e $d/env.json ] && echo ESCAPED-TO-STATE; done; true";

#[test]
fn exec_workdir_through_an_inherited_descriptor_stays_inside() {
    require_root!();
    let p = project(WITH_SERVICE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let state = env_dir(&b);
    let mut refused = Vec::new();
    for n in 3..=24 {
        let cwd = format!("/proc/self/fd/{n}");
        let o = b.run_in(p.path(), &["exec", "-w", &cwd, "--", "sh", "-c", CLIMB]);
        let (out, err) = text(&o);
        assert!(
            !out.contains("ESCAPED"),
            "exec -w {cwd} reached the environment's state folder on the host:\n{out}{err}"
        );
        if o.status.success() {
            // Landed somewhere inside the environment's root: pwd names a real path.
            assert!(out.starts_with('/'), "exec -w {cwd}: pwd says {out:?}");
        } else {
            refused.push((cwd, err));
        }
    }
    let leaked = find_named(b.home.path(), "escape-marker");
    assert!(leaked.is_empty(), "markers written on the host: {leaked:?}");
    for (cwd, err) in &refused {
        assert!(
            err.contains("working directory") && err.contains(cwd.as_str()),
            "exec -w {cwd} failed without naming the working directory:\n{err}"
        );
    }
    assert!(!refused.is_empty(), "no descriptor number was refused");
    assert!(
        find_named(p.path(), "escape-marker").is_empty(),
        "markers written in the project folder"
    );
    // The environment itself is fine.
    assert_eq!(b.ok(p.path(), &["exec", "--", "echo", "alive"]), "alive\n");
    let _ = state;
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn service_and_image_workdir_through_a_descriptor_stay_inside() {
    require_root!();
    // A berth.toml from an untrusted repository names descriptor paths as service folders,
    // and a symlink in the image leads there too.
    let mut toml = String::from(
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[services]\n\
         ticker = { command = [\"sh\", \"-c\", \"sleep 1000\"] }\n",
    );
    for n in 3..=12 {
        toml.push_str(&format!(
            "fd{n} = {{ command = [\"sh\", \"-c\", \"{}\"], workdir = \"/proc/self/fd/{n}\" }}\n",
            CLIMB.replace('"', "\\\"")
        ));
    }
    toml.push_str(&format!(
        "via-link = {{ command = [\"sh\", \"-c\", \"{}\"], workdir = \"/escape\" }}\n",
        CLIMB.replace('"', "\\\"")
    ));
    let p = project(&toml);
    std::os::unix::fs::symlink("/proc/self/fd/4", p.path().join("rootfs/escape")).unwrap();
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    // Give every service time to run its payload (or be refused).
    std::thread::sleep(Duration::from_millis(1500));
    let leaked = find_named(b.home.path(), "escape-marker");
    assert!(leaked.is_empty(), "markers written on the host: {leaked:?}");
    for (service, cwd) in [("fd4", "/proc/self/fd/4"), ("via-link", "/escape")] {
        let logs = b.ok(p.path(), &["logs", service]);
        assert!(
            !logs.contains("ESCAPED"),
            "service {service} reached the state folder: {logs}"
        );
        assert!(
            logs.contains(&format!("working directory {cwd}")),
            "service {service}: the refusal does not name its folder: {logs}"
        );
    }
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn a_host_folder_passed_as_a_stream_is_no_way_out() {
    require_root!();
    // The caller's own descriptors travel to the process (stdin here is a host folder): a
    // working directory reached through them is outside the root and must be refused, not
    // entered (runc's check since 1.1.12: the cwd must be reachable from the root).
    let p = project(WITH_SERVICE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("host-only-file"), "x").unwrap();
    let o = b
        .cmd()
        .current_dir(p.path())
        .args(["exec", "-w", "/proc/self/fd/0", "--", "sh", "-c"])
        .arg("ls; touch escape-marker-stdin")
        .stdin(std::fs::File::open(host.path()).unwrap())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        !out.contains("host-only-file"),
        "the process listed the host folder: {out}"
    );
    assert!(
        find_named(host.path(), "escape-marker").is_empty(),
        "the process wrote into the host folder"
    );
    assert!(!o.status.success(), "{out}{err}");
    assert!(
        err.contains("outside the environment") && err.contains("/proc/self/fd/0"),
        "{err}"
    );
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

fn run(b: &Berth, dir: &Path, args: &[&str]) -> Output {
    b.cmd()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn berth_does_not_follow_links_planted_in_the_log_folder() {
    require_root!();
    // What a process with the log folder in reach (the fd leak above) could plant: berth,
    // as root, must neither read nor append to what the links point at.
    let p = project(WITH_SERVICE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let state = env_dir(&b);
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("host-secret");
    std::fs::write(&secret, "host-secret-content\n").unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, "").unwrap();
    let logs = state.join("logs");
    std::os::unix::fs::symlink(&secret, logs.join("ticker.log.1")).unwrap();
    let o = run(&b, p.path(), &["logs", "ticker"]);
    let (out, err) = text(&o);
    assert!(
        !out.contains("host-secret-content"),
        "`berth logs` followed a planted link:\n{out}"
    );
    assert!(
        !o.status.success() && err.contains("symbolic link"),
        "the planted link is not reported:\n{out}{err}"
    );
    std::fs::remove_file(logs.join("ticker.log.1")).unwrap();

    b.ok(p.path(), &["down", "--timeout", "2"]);
    std::fs::remove_file(logs.join("supervisor.log")).unwrap();
    std::os::unix::fs::symlink(&victim, logs.join("supervisor.log")).unwrap();
    let o = run(&b, p.path(), &["up"]);
    let (out, err) = text(&o);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "",
        "`up` wrote through a planted link:\n{out}{err}"
    );
    assert!(
        !o.status.success() && err.contains("symbolic link"),
        "{out}{err}"
    );
    std::fs::remove_file(logs.join("supervisor.log")).unwrap();
    b.ok(p.path(), &["up"]);
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn secrets_are_private_and_other_users_are_refused() {
    require_root!();
    let p = project(WITH_SERVICE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    // As /var/lib/berth is made: a home other users may enter.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    b.ok(p.path(), &["up"]);
    let state = env_dir(&b);
    let id = state.file_name().unwrap().to_string_lossy().into_owned();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let user = berth_e2e::user::TestUser::create("bsecx");

    // The payload: another local user reads the environment's `[env]` values.
    for f in ["env.json", "spec.json"] {
        let path = state.join(f);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("do-not-leak-4711"),
            "{f} no longer holds the value: the test needs another file"
        );
        let o = user.run("cat", &[path.to_str().unwrap()]);
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("do-not-leak-4711"),
            "another user read {f}"
        );
    }
    // 0700, or 0710 for the group of the environment's mapped root (to reach its rootfs).
    assert_eq!(mode(&state) & 0o767, 0o700, "{}", state.display());
    let o = user.run("ls", &[state.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "another user listed the environment's folder"
    );
    for f in ["env.json", "spec.json", "state.json", "lock"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&state.join("logs")), 0o700);

    // Another user's berth on this home: refused, saying whose it is, never "not running".
    let elsewhere = Path::new("/");
    let home = b.home.path();
    for args in [
        vec!["ls"],
        vec!["--environment", &id, "status"],
        vec!["--environment", &id, "exec", "--", "true"],
        vec!["--environment", &id, "shell"],
        vec!["--environment", &id, "logs"],
    ] {
        let o = user.berth_with_home(home, elsewhere, &args);
        let (out, err) = text(&o);
        assert!(
            !o.status.success(),
            "berth {args:?} as another user:\n{out}{err}"
        );
        assert!(
            !out.contains(&p.name) && !err.contains("not running"),
            "berth {args:?} as another user:\n{out}{err}"
        );
        assert!(
            err.contains("permission denied") && err.contains("root"),
            "berth {args:?} does not say whose the environments are:\n{err}"
        );
    }
    drop(user);
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// The supervisor's pid on the host and whether the environment runs, from `status --json`.
fn supervisor(b: &Berth, dir: &Path) -> (Option<i64>, String) {
    let out = b.ok(dir, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["pid"].as_i64(),
        v["status"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn signals_from_inside_do_not_end_the_environment() {
    require_root!();
    let p = project(WITH_SERVICE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let (pid, status) = supervisor(&b, p.path());
    assert_eq!(status, "running");
    // The payload: the environment's root signals its PID 1 (the supervisor).
    for sig in [
        "TERM", "HUP", "INT", "QUIT", "USR1", "USR2", "ALRM", "PIPE", "TRAP",
    ] {
        let o = b.run_in(
            p.path(),
            &[
                "exec",
                "--",
                "sh",
                "-c",
                &format!("kill -{sig} 1; sleep 0.3; true"),
            ],
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "after SIG{sig}: {out}{err}");
        let (now, status) = supervisor(&b, p.path());
        assert_eq!(
            status, "running",
            "SIG{sig} from inside ended the environment"
        );
        assert_eq!(now, pid, "SIG{sig} from inside replaced the supervisor");
    }
    let ps = b.ok(p.path(), &["exec", "--", "sh", "-c", "ps -o pid,args"]);
    assert!(ps.contains("sleep 1000"), "the service was stopped: {ps}");

    // The host's signal still stops it (as does `down`).
    let pid = pid.expect("a running environment has a supervisor pid");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for(
        "the supervisor to stop on the host's SIGTERM",
        Duration::from_secs(15),
        || supervisor(&b, p.path()).1 != "running",
    );
    b.ok(p.path(), &["up"]);
    b.ok(p.path(), &["down", "--timeout", "5"]);
    assert_eq!(supervisor(&b, p.path()).1, "stopped");
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

#[test]
fn a_failed_first_up_leaves_no_environment_behind() {
    require_root!();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let p = project(&format!(
        "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n\
         [[ports]]\nhost = {port}\nguest = 80\n\
         [services]\nticker = {{ command = [\"sleep\", \"1000\"] }}\n"
    ));
    let b = Berth::new();
    let before = p.snapshot(&b);
    let o = run(&b, p.path(), &["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "up with a taken port: {out}{err}");
    assert!(
        err.contains(&port.to_string()),
        "the error names the port: {err}"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(b.home.path().join("envs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "a failed first up left {left:?}");
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert!(
        !ls.contains(&p.name),
        "ls lists the failed environment: {ls}"
    );
    before.assert_nothing_leaked(&p.snapshot(&b));

    // Once the port is free, up works; a later failed up keeps the existing environment.
    drop(held);
    b.ok(p.path(), &["up"]);
    b.ok(p.path(), &["down", "--timeout", "2"]);
    let again = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let o = run(&b, p.path(), &["up"]);
    assert!(!o.status.success());
    assert!(
        env_dir(&b).join("env.json").exists(),
        "a failed re-up removed the environment"
    );
    drop(again);
    b.ok(p.path(), &["destroy", "--timeout", "2"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
