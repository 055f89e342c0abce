//! Sidecar services (`[services.NAME]` with `image`) through the real binary, with a real
//! Redis server (Debian's redis-server, copied with its libraries into a busybox root
//! filesystem: the sidecar's own image) beside an app environment that has redis-cli.
//! Sidecars beside a VM: tests/vm_sidecars.rs.

use std::path::Path;

use berth_e2e::host::copy_program_with_libs;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// An app environment whose `on_up` asks the Redis sidecar for PING and the web sidecar for
/// a page (so `up` fails if `on_up` ran before the servers listen); both start a second late.
/// Redis keeps its data in the volume `redis-data`; the web sidecar starts after it and is
/// probed by a command inside it.
const WITH_REDIS: &str = r#"
name = "{name}"
on_up = ["redis-cli -h 127.0.0.1 ping > /tmp/on_up_answer 2>&1", "wget -qO- http://127.0.0.1:8080/page >> /tmp/on_up_answer"]
[image]
from = "rootfs:./rootfs"
[services.db]
image = "rootfs:./redis-rootfs"
command = ["/bin/sh", "-c", "echo redis sidecar starting; sleep 1; exec /usr/bin/redis-server --bind 127.0.0.1 --port 6379 --dir /data --appendonly yes"]
mounts = [{ source = "redis-data", target = "/data", type = "volume" }]
ready = { tcp = 6379, timeout = "30s" }
[services.web]
image = "rootfs:./rootfs"
after = ["db"]
command = ["/bin/sh", "-c", "sleep 1; mkdir -p /www; echo served by the web sidecar > /www/page; exec httpd -f -p 127.0.0.1:8080 -h /www"]
ready = { command = "wget -qO- http://127.0.0.1:8080/page", timeout = "30s" }
"#;

/// A project with redis-cli in the app's rootfs and redis-server in `redis-rootfs/`; `None`
/// (the test says why and passes) without Debian's redis-server.
fn redis_project(prefix: &str, toml: &str) -> Option<Project> {
    let (server, cli) = (
        Path::new("/usr/bin/redis-server"),
        Path::new("/usr/bin/redis-cli"),
    );
    if !server.exists() || !cli.exists() {
        eprintln!("skipped: needs redis-server and redis-cli (scripts/install-deps installs them)");
        return None;
    }
    let p = Project::new(prefix, "sc-", toml);
    copy_program_with_libs(cli, &p.path().join("rootfs"));
    let redis = p.path().join("redis-rootfs");
    berth_e2e::host::busybox_rootfs(&redis);
    copy_program_with_libs(server, &redis);
    Some(p)
}

fn redis(b: &Berth, p: &Project, args: &[&str]) -> String {
    let mut argv = vec!["exec", "--", "redis-cli", "-h", "127.0.0.1"];
    argv.extend_from_slice(args);
    b.ok(p.path(), &argv).trim().to_string()
}

#[test]
fn a_redis_sidecar_is_ready_before_on_up_and_keeps_its_data_in_its_volume() {
    require_root!();
    let Some(p) = redis_project("berth-sidecar-redis-", WITH_REDIS) else {
        return;
    };
    let b = Berth::new();
    let before = p.snapshot(&b);
    let (_, err) = b.ok_both(p.path(), &["up"]);
    let db = err.find("waiting for sidecar db to be ready (tcp 6379)");
    let web = err.find(
        "waiting for sidecar web to be ready (command `wget -qO- http://127.0.0.1:8080/page`)",
    );
    assert!(
        db.is_some() && web.is_some() && db < web,
        "db, then web (after = [\"db\"]):\n{err}"
    );
    // `ready` gated `on_up`: both servers answered it.
    let answer = b.ok(p.path(), &["exec", "--", "cat", "/tmp/on_up_answer"]);
    assert_eq!(answer, "PONG\nserved by the web sidecar\n");
    // The app reaches the sidecar on its own localhost; the host's localhost has no such
    // server on that port (unless something else of the host's listens there).
    assert_eq!(redis(&b, &p, &["ping"]), "PONG");
    assert_eq!(
        redis(&b, &p, &["set", "greeting", "kept across down"]),
        "OK"
    );

    // status lists the sidecar and its readiness; logs shows its server's output.
    let status = b.ok(p.path(), &["status"]);
    assert!(
        status.contains("db") && status.contains("sidecar"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&b.ok(p.path(), &["status", "--json"])).unwrap();
    let db = &json["sidecars"][0];
    assert_eq!(db["name"], "db", "{json}");
    assert_eq!(db["status"], "running", "{json}");
    assert_eq!(db["ready"], true, "{json}");
    let logs = b.ok(p.path(), &["logs", "db"]);
    assert!(logs.contains("redis sidecar starting"), "{logs}");
    assert!(logs.contains("Ready to accept connections"), "{logs}");
    // exec --service runs inside the sidecar: its own root holds the server.
    let inside = b.ok(
        p.path(),
        &[
            "exec",
            "--service",
            "db",
            "--",
            "ls",
            "/usr/bin/redis-server",
        ],
    );
    assert_eq!(inside.trim(), "/usr/bin/redis-server");
    // shell --service opens the sidecar's /bin/sh (here on a pipe: no terminal).
    let mut child = b
        .cmd()
        .current_dir(p.path())
        .args(["shell", "--service", "db"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hostname; ls /usr/bin/redis-server\nexit 3\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "db\n/usr/bin/redis-server\n"
    );

    // down stops the server; up starts it again over the same volume.
    b.ok(p.path(), &["down"]);
    let gone = b.run_in(p.path(), &["exec", "--service", "db", "--", "true"]);
    assert_ne!(
        gone.status.code(),
        Some(0),
        "the sidecar still runs after down"
    );
    b.ok(p.path(), &["up"]);
    assert_eq!(redis(&b, &p, &["get", "greeting"]), "kept across down");

    // A changed sidecar is restarted alone: the environment and the other sidecar keep
    // running (same pids).
    let pids_before = pids(&b, &p);
    p.write(&WITH_REDIS.replace("--appendonly yes", "--appendonly yes --databases 4"));
    b.ok(p.path(), &["up"]);
    let pids_after = pids(&b, &p);
    assert_eq!(
        pids_after[0], pids_before[0],
        "the environment was restarted"
    );
    assert_ne!(
        pids_after[1], pids_before[1],
        "the changed sidecar db was not restarted"
    );
    assert_eq!(
        pids_after[2], pids_before[2],
        "the unchanged sidecar web was restarted"
    );
    assert_eq!(
        redis(&b, &p, &["config", "get", "databases"]),
        "databases\n4"
    );
    assert_eq!(redis(&b, &p, &["get", "greeting"]), "kept across down");

    // A changed environment is restarted, and every sidecar with it (its network namespace
    // is a new one).
    p.write(&format!(
        "{}[env]\nCHANGED = \"yes\"\n",
        WITH_REDIS.replace("--appendonly yes", "--appendonly yes --databases 4")
    ));
    b.ok(p.path(), &["up"]);
    let pids_restarted = pids(&b, &p);
    for i in 0..3 {
        assert_ne!(pids_restarted[i], pids_after[i], "{i}: not restarted");
    }
    assert_eq!(redis(&b, &p, &["get", "greeting"]), "kept across down");

    // destroy keeps the volume; destroy --volumes removes it.
    let volume = b.home.path().join("volumes/redis-data");
    b.ok(p.path(), &["destroy"]);
    assert!(volume.exists(), "destroy removed the sidecar's volume");
    b.ok(p.path(), &["up"]);
    assert_eq!(redis(&b, &p, &["get", "greeting"]), "kept across down");
    b.ok(p.path(), &["destroy", "--volumes"]);
    assert!(
        !volume.exists(),
        "destroy --volumes kept the sidecar's volume"
    );
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// The supervisor pids of the environment, its sidecar db and its sidecar web.
fn pids(b: &Berth, p: &Project) -> [u64; 3] {
    let json: serde_json::Value =
        serde_json::from_str(&b.ok(p.path(), &["status", "--json"])).unwrap();
    let pid = |v: &serde_json::Value| v["pid"].as_u64().unwrap_or_else(|| panic!("{json}"));
    [
        pid(&json),
        pid(&json["sidecars"][0]),
        pid(&json["sidecars"][1]),
    ]
}

/// `berth run` brings its own sidecars: ready before the command, in a network namespace
/// of its own (two parallel runs both use 127.0.0.1:6379), with volumes of their own, all
/// removed afterwards.
#[test]
fn berth_run_gets_fresh_sidecars_of_its_own_and_removes_them() {
    require_root!();
    let Some(p) = redis_project("berth-sidecar-run-", WITH_REDIS) else {
        return;
    };
    let b = Berth::new();
    let before = p.snapshot(&b);
    let (out, err) = b.ok_both(
        p.path(),
        &["run", "--", "redis-cli", "-h", "127.0.0.1", "ping"],
    );
    assert_eq!(out.trim(), "PONG", "{err}");
    assert!(err.contains("waiting for sidecar db to be ready"), "{err}");

    let script = "redis-cli -h 127.0.0.1 get mine; redis-cli -h 127.0.0.1 set mine $WHO >/dev/null; sleep 2; redis-cli -h 127.0.0.1 get mine";
    let runs: Vec<std::process::Child> = ["first", "second"]
        .iter()
        .map(|who| {
            b.cmd()
                .current_dir(p.path())
                .args(["run", "-e", &format!("WHO={who}"), "--", "sh", "-c", script])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (who, child) in ["first", "second"].iter().zip(runs) {
        let o = child.wait_with_output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        // Nothing from an earlier run, nothing from the parallel one.
        assert_eq!(out, format!("\n{who}\n"), "{err}");
    }
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
    let volumes = b.home.path().join("volumes");
    let left: Vec<_> = std::fs::read_dir(&volumes)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "volumes left by the runs: {left:?}");
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// `berth run --keep-volumes NAME`: that sidecar volume is the named one itself (its data
/// outlives the run and reaches the next run that keeps it); without it a run's volume is
/// empty and removed; a name no sidecar mounts is refused before anything starts.
#[test]
fn berth_run_keeps_only_the_sidecar_volumes_it_names() {
    require_root!();
    let Some(p) = redis_project("berth-sidecar-keep-", WITH_REDIS) else {
        return;
    };
    let b = Berth::new();
    let before = p.snapshot(&b);
    let cli = |extra: &[&str], script: &str| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        b.ok(p.path(), &args).trim().to_string()
    };
    let set = "redis-cli -h 127.0.0.1 set kept yes >/dev/null && redis-cli -h 127.0.0.1 save";
    let get = "redis-cli -h 127.0.0.1 get kept";
    assert_eq!(cli(&["--keep-volumes", "redis-data"], set), "OK");
    let volume = b.home.path().join("volumes/redis-data");
    assert!(volume.join("dump.rdb").exists() || volume.join("appendonlydir").exists());
    assert_eq!(cli(&["--keep-volumes", "redis-data"], get), "yes");
    // Without --keep-volumes the run's volume is its own, empty one.
    assert_eq!(cli(&[], get), "");
    let left: Vec<_> = std::fs::read_dir(b.home.path().join("volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["redis-data"], "only the kept volume stays");

    let out = b.run_in(
        p.path(),
        &["run", "--keep-volumes", "redis-dat", "--", "true"],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--keep-volumes redis-dat: no sidecar mounts a volume of that name (the sidecars' volumes: redis-data)"),
        "{stderr}"
    );
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
    std::fs::remove_dir_all(&volume).unwrap();
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// berth.lock pins a sidecar's registry image by its manifest digest, beside the
/// environment's image: after the tag moves, `up` still runs the locked image, until
/// `up --update` pins the new one.
#[test]
fn berth_lock_pins_the_sidecars_image_until_update() {
    require_root!();
    use berth_e2e::oci::{busybox_layer, Compression, Image, Layer, Registry, TarBuilder};
    let Some(reg) = Registry::start() else { return };
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let version = |v: &str| {
        let mut t = TarBuilder::new();
        t.file("version", v.as_bytes());
        Image::new(
            vec![
                busybox_layer(Compression::Gzip),
                Layer::new(t.finish(), Compression::Gzip),
            ],
            arch,
        )
    };
    let (v1, v2) = (version("one"), version("two"));
    reg.push_image("server", "stable", &v1);
    let p = Project::new(
        "berth-sidecar-lock-",
        "sc-",
        &format!(
            "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[services.db]\nimage = \"{}/server:stable\"\ncommand = [\"sleep\", \"1000\"]\n",
            reg.addr
        ),
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    let served = |b: &Berth| {
        b.ok(
            p.path(),
            &["exec", "--service", "db", "--", "cat", "/version"],
        )
    };
    b.ok(p.path(), &["up"]);
    assert_eq!(served(&b), "one");
    let lock = std::fs::read_to_string(p.path().join("berth.lock")).unwrap();
    let entry = lock
        .split("[sidecars.db]")
        .nth(1)
        .unwrap_or_else(|| panic!("{lock}"));
    assert!(
        entry.contains(&format!("source = \"{}/server:stable\"", reg.addr))
            && entry.contains(&v1.manifest_digest()),
        "{lock}"
    );

    b.ok(p.path(), &["destroy"]);

    // The tag moves; another machine (a home with an empty store) still gets the locked
    // image, until `up --update`.
    reg.push_image("server", "stable", &v2);
    let other = Berth::new();
    let before_other = p.snapshot(&other);
    other.ok(p.path(), &["up"]);
    assert_eq!(served(&other), "one");
    other.ok(p.path(), &["up", "--update"]);
    assert_eq!(served(&other), "two");
    let lock = std::fs::read_to_string(p.path().join("berth.lock")).unwrap();
    assert!(lock.contains(&v2.manifest_digest()), "{lock}");
    other.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
    before_other.assert_nothing_leaked(&p.snapshot(&other));
}

#[test]
fn a_sidecar_that_never_becomes_ready_fails_up_with_its_log_and_leaves_nothing() {
    require_root!();
    let p = Project::new(
        "berth-sidecar-never-",
        "sc-",
        r#"
name = "{name}"
on_up = ["echo on-up-ran > /tmp/on_up"]
[image]
from = "rootfs:./rootfs"
[services.db]
image = "rootfs:./rootfs"
command = ["/bin/sh", "-c", "echo the broken server starts; echo it listens on no port; exec sleep 1000"]
mounts = [{ source = "never-data", target = "/data", type = "volume" }]
ready = { tcp = 1, timeout = "2s" }
"#,
    );
    let b = Berth::new();
    let before = p.snapshot(&b);
    let out = b.run_in(p.path(), &["up"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for expected in [
        "waiting for sidecar db to be ready (tcp 1)",
        "sidecar db did not become ready within 2.0s (tcp 1)",
        "the broken server starts",
        "it listens on no port",
        "services.db",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // Nothing is left: no environment, no sidecar, no process, mount or cgroup.
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
    assert!(
        !b.home.path().join("envs").exists()
            || std::fs::read_dir(b.home.path().join("envs"))
                .unwrap()
                .next()
                .is_none()
    );
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// A VM's sidecars run on berth's bridge (tests/vm_sidecars.rs); a VM that could not reach
/// them (`network.mode = "none"`; without root, no bridge) is refused before anything starts.
#[test]
fn a_vm_that_could_not_reach_its_sidecars_is_refused_and_starts_nothing() {
    require_root!();
    let b = Berth::new();
    let p = Project::new(
        "berth-sidecar-vm-",
        "sc-",
        "name = \"{name}\"\nbackend = \"vm\"\n[image]\nfrom = \"rootfs:./rootfs\"\n[vm]\nkernel = \"debian:linux-image-cloud-amd64\"\nvmm = \"qemu\"\n[network]\nmode = \"none\"\n[services.cache]\nimage = \"rootfs:./rootfs\"\ncommand = [\"sleep\", \"1000\"]\n",
    );
    b.ok(p.path(), &["validate"]);
    for args in [&["up"][..], &["run", "--", "true"][..]] {
        let out = b.run_in(p.path(), args);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "berth {args:?}:\n{stdout}\n{stderr}"
        );
        for expected in [
            "has sidecars it could not reach",
            "network.mode = \"none\"",
            "Remove network.mode",
        ] {
            assert!(
                stderr.contains(expected),
                "berth {args:?}: missing {expected:?} in:\n{stderr}"
            );
        }
    }
    let ls = b.ok(p.path(), &["ls", "--json"]);
    assert_eq!(ls.trim(), "[]", "{ls}");
}

#[test]
fn sidecar_mistakes_are_reported_with_their_lines_in_json() {
    let b = Berth::new();
    let p = Project::new(
        "berth-sidecar-bad-",
        "sc-",
        "[image]\nfrom = \"rootfs:./rootfs\"\n[services.a]\nimage = \"rootfs:./rootfs\"\nafter = [\"b\"]\nready = { tcp = 5432 }\n[services.b]\nimage = \"rootfs:./rootfs\"\nafter = [\"a\"]\nready = { tcp = 5432 }\n[services.web]\ncommand = [\"./app\"]\nready = { tcp = 80 }\n",
    );
    let out = b.run_in(p.path(), &["validate", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(String, u64, u64)> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64, u64)> = [
        ("service-cycle", 9, 10),
        ("duplicate-service-port", 10, 17),
        ("misplaced-key", 13, 1),
    ]
    .iter()
    .map(|(c, l, col)| (c.to_string(), *l, *col))
    .collect();
    assert_eq!(found, expected, "{}", String::from_utf8_lossy(&out.stdout));
}
