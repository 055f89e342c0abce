//! A sidecar container (runtime/README.md, "Sidecars") over a busybox root filesystem: its
//! own root, pids and mounts, the environment's user and network namespaces, so the
//! environment reaches its server on `localhost`; stopping it leaves the environment alone;
//! a sidecar of an environment that is not running is refused; nothing leaks. Needs root
//! (CI runs as root); prints why and passes when it cannot run.
//!
//! Run: `cargo test -p berth-runtime --test container_sidecar`

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use berth_runtime::backend::Backend;
use berth_runtime::container::sidecar::{sidecar_spec, Joined};
use berth_runtime::container::spec::JoinSpec;
use berth_runtime::container::ContainerBackend;
use berth_runtime::image::ImageConfig;
use berth_runtime::state::BerthHome;
use envfile_spec::plan::{
    ImageSource, MountKind, MountPlan, Resources, RestartPolicy, ServicePlan, SidecarPlan,
};
use support::{BusyboxRootfs, Env, LeakCheck};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // This binary doubles as berth's supervisor, like `berth __supervisor`.
    if args.get(1).map(String::as_str) == Some(berth_runtime::container::launch::SUPERVISOR_ARG) {
        std::process::exit(berth_runtime::container::launch::main(Path::new(&args[2])));
    }
    if let Some(why) = support::skip_reason() {
        eprintln!("container_sidecar: skipped: {why}");
        return;
    }
    support::run_tests(&[
        (
            "a_sidecar_shares_localhost_and_ids_but_not_its_root_or_pids",
            a_sidecar_shares_localhost_and_ids_but_not_its_root_or_pids,
        ),
        (
            "a_sidecar_of_a_stopped_environment_is_refused",
            a_sidecar_of_a_stopped_environment_is_refused,
        ),
        (
            "a_sidecar_from_its_plan_keeps_its_volume_when_destroyed",
            a_sidecar_from_its_plan_keeps_its_volume_when_destroyed,
        ),
        (
            "a_privileged_environment_takes_only_a_privileged_sidecar",
            a_privileged_environment_takes_only_a_privileged_sidecar,
        ),
    ]);
}

/// A web server on 127.0.0.1:47613 serving `pong from the sidecar`.
fn server() -> ServicePlan {
    ServicePlan {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /www && echo pong from the sidecar > /www/index.html && exec httpd -f -p 127.0.0.1:47613 -h /www".into(),
        ],
        restart: RestartPolicy::No,
        env: BTreeMap::new(),
        workdir: Some("/".into()),
    }
}

fn ns(env: &Env, kind: &str) -> String {
    let (code, out, err) = env.run(&["readlink", &format!("/proc/self/ns/{kind}")]);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Polls `script` in `env` until it exits 0 (the server may take a moment to listen).
fn eventually(env: &Env, script: &str) -> String {
    for _ in 0..100 {
        let (code, out, _) = env.sh(script);
        if code == 0 {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("`{script}` never succeeded");
}

fn a_sidecar_shares_localhost_and_ids_but_not_its_root_or_pids() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("app", rootfs.path());
        let app = Env::start(spec, home);
        let (mut spec, home) = Env::spec("cache", rootfs.path());
        spec.join = Some(JoinSpec {
            env_dir: app.dir().to_path_buf(),
        });
        spec.services.insert("web".into(), server());
        let cache = Env::start(spec, home);

        // The environment reaches the sidecar's server on its own localhost; so does the
        // readiness probe (`ready = { tcp = 47613 }`), from the host, and only there.
        let page = eventually(&app, "wget -qO- http://127.0.0.1:47613/index.html");
        let probe = Joined::environment(app.dir()).unwrap();
        assert!(probe.tcp_answers(47613).unwrap());
        assert!(!probe.tcp_answers(47614).unwrap());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", 47613)).is_err(),
            "the host's own localhost has no such server"
        );
        assert_eq!(page, "pong from the sidecar\n");
        // One network and one user namespace (the same ids); mounts, pids, hostname its own.
        assert_eq!(ns(&app, "net"), ns(&cache, "net"));
        assert_eq!(ns(&app, "user"), ns(&cache, "user"));
        assert_eq!(
            app.run(&["cat", "/proc/self/uid_map"]).1,
            cache.run(&["cat", "/proc/self/uid_map"]).1
        );
        assert_ne!(ns(&app, "mnt"), ns(&cache, "mnt"));
        assert_ne!(ns(&app, "pid"), ns(&cache, "pid"));
        assert_eq!(cache.run(&["hostname"]).1.trim(), "cache");
        assert_eq!(app.run(&["hostname"]).1.trim(), "app");
        // Its own root: what it writes is not the environment's, and the other way round.
        assert_ne!(app.sh("test -e /www/index.html").0, 0);
        assert_eq!(app.sh("echo mine > /only-in-app").0, 0);
        assert_ne!(cache.sh("test -e /only-in-app").0, 0);
        // Its own pids: the environment does not see the server, the sidecar has its own PID 1.
        let (_, procs, _) = app.sh("cat /proc/[0-9]*/comm");
        assert!(!procs.contains("httpd"), "the environment sees {procs}");
        let (_, pid1, _) = cache.run(&["cat", "/proc/1/cmdline"]);
        assert!(
            pid1.contains("__supervisor"),
            "pid 1 of the sidecar is {pid1:?}"
        );
        let (_, procs, _) = cache.sh("cat /proc/[0-9]*/comm");
        assert!(procs.contains("httpd"), "the sidecar runs {procs}");

        // Stopping the sidecar ends its server and leaves the environment running.
        cache.stop();
        assert_ne!(app.sh("wget -qO- http://127.0.0.1:47613/index.html").0, 0);
        assert!(!probe.tcp_answers(47613).unwrap());
        assert_eq!(app.run(&["true"]).0, 0);
        assert!(ContainerBackend.still_running(app.dir()));
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn a_sidecar_of_a_stopped_environment_is_refused() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("gone", rootfs.path());
        let app = Env::start(spec, home);
        app.stop();
        let (mut spec, home) = Env::spec("orphan", rootfs.path());
        spec.join = Some(JoinSpec {
            env_dir: app.dir().to_path_buf(),
        });
        spec.services.insert("web".into(), server());
        let err = ContainerBackend.start(&spec).unwrap_err().to_string();
        assert!(
            err.contains("is not running") && err.contains("start the environment first"),
            "{err}"
        );
        assert!(
            Joined::environment(app.dir()).is_err(),
            "no probe of a stopped environment"
        );
        // A sidecar asking for a network of its own is refused before anything starts.
        spec.net_home = Some(home.path().to_path_buf());
        let err = ContainerBackend.start(&spec).unwrap_err().to_string();
        assert!(err.contains("cannot have a network set up for it"), "{err}");
        drop(home);
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// berth.toml's `[services.pages]` with `image`, over an image whose entrypoint and cmd run a
/// web server on 127.0.0.1:47613 serving its volume `/data`.
fn a_sidecar_from_its_plan_keeps_its_volume_when_destroyed() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("app", rootfs.path());
        let app = Env::start(spec, home);
        let berth_home = BerthHome::at(app.home.path()).unwrap();
        let plan = SidecarPlan {
            image: ImageSource::Rootfs {
                path: rootfs.path().to_path_buf(),
            },
            command: None,
            args: None,
            restart: RestartPolicy::No,
            env: BTreeMap::from([("PAGES".to_string(), "/data".to_string())]),
            workdir: None,
            mounts: vec![MountPlan {
                source: Some("pages".into()),
                target: "/data".into(),
                kind: MountKind::Volume,
                readonly: false,
                ignore: Vec::new(),
                size: None,
                unsafe_host_path: false,
            }],
            resources: Resources {
                memory: None,
                cpus: None,
                pids: Some(64),
            },
            ready: None,
            after: Vec::new(),
        };
        let config = ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["exec httpd -f -p 127.0.0.1:47613 -h $PAGES".into()],
            working_dir: Some("/data".into()),
            ..ImageConfig::default()
        };
        let spec = sidecar_spec(
            &berth_home,
            &app.spec.env_id,
            "pages",
            &plan,
            vec![rootfs.path().to_path_buf()],
            &config,
        )
        .unwrap();
        let pages = Env::start(spec, support::temp_dir());
        assert_eq!(
            pages.run(&["pwd"]).1.trim(),
            "/data",
            "the image's working folder"
        );
        assert_eq!(
            pages
                .sh("echo kept > /data/index.html && echo gone > /in-the-writable-layer")
                .0,
            0
        );
        assert_eq!(
            eventually(&app, "wget -qO- http://127.0.0.1:47613/index.html"),
            "kept\n"
        );
        // Its limits are its own: its cgroup (v1's or v2's) has pids.max 64.
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(pages.dir().join("state.json")).unwrap())
                .unwrap();
        let cg = &state["cgroups"];
        let dir = match cg["version"].as_str() {
            Some("v2") => cg["dir"].as_str().unwrap(),
            _ => cg["dirs"]["pids"].as_str().unwrap(),
        };
        let max = std::fs::read_to_string(Path::new(dir).join("pids.max")).unwrap();
        assert_eq!(max.trim(), "64", "{dir}");

        // Destroyed (writable layer and all) and started afresh: the volume is still there.
        ContainerBackend
            .destroy(pages.dir(), Duration::from_secs(5))
            .unwrap();
        assert!(!pages.dir().exists());
        assert_ne!(app.sh("wget -qO- http://127.0.0.1:47613/index.html").0, 0);
        ContainerBackend.start(&pages.spec).unwrap();
        assert_eq!(
            eventually(&app, "wget -qO- http://127.0.0.1:47613/index.html"),
            "kept\n"
        );
        assert_ne!(pages.sh("test -e /in-the-writable-layer").0, 0);
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// `up --privileged` has no user namespace: its sidecar joins only the network namespace,
/// and only a privileged sidecar may (an unprivileged one would run as the host's root).
fn a_privileged_environment_takes_only_a_privileged_sidecar() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("privapp", rootfs.path());
        spec.privileged = true;
        let app = Env::start(spec, home);
        let (mut spec, home) = Env::spec("privcache", rootfs.path());
        spec.join = Some(JoinSpec {
            env_dir: app.dir().to_path_buf(),
        });
        spec.services.insert("web".into(), server());
        let err = ContainerBackend.start(&spec).unwrap_err().to_string();
        assert!(err.contains("differ in --privileged"), "{err}");
        spec.privileged = true;
        let cache = Env::start(spec, home);
        eventually(&app, "wget -qO- http://127.0.0.1:47613/index.html");
        assert!(Joined::environment(app.dir())
            .unwrap()
            .tcp_answers(47613)
            .unwrap());
        assert_eq!(ns(&app, "net"), ns(&cache, "net"));
        assert_ne!(ns(&app, "mnt"), ns(&cache, "mnt"));
        // No user namespace on either side: both are the host's.
        let host_user = std::fs::read_link("/proc/self/ns/user").unwrap();
        assert_eq!(ns(&cache, "user"), host_user.to_string_lossy());

        // And an unprivileged environment takes no privileged sidecar.
        let (spec, home) = Env::spec("plainapp", rootfs.path());
        let plain = Env::start(spec, home);
        let (mut spec, _home) = Env::spec("rootcache", rootfs.path());
        spec.join = Some(JoinSpec {
            env_dir: plain.dir().to_path_buf(),
        });
        spec.privileged = true;
        spec.services.insert("web".into(), server());
        let err = ContainerBackend.start(&spec).unwrap_err().to_string();
        assert!(err.contains("differ in --privileged"), "{err}");
    }
    LeakCheck::snapshot().assert_same(&before);
}
