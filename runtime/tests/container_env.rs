//! Starts real container environments over a busybox root filesystem and checks isolation,
//! exec, mounts, limits, services, security and cleanup. Needs root (CI runs as root); prints
//! why and passes when it cannot run.
//!
//! Run: `cargo test -p berth-runtime --test container_env [-- NAME-FILTER]`

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use berth_runtime::container::control::ExecRequest;
use berth_runtime::container::{ContainerBackend, EnvStatus, MountSpec};
use support::{BusyboxRootfs, Env, LeakCheck};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // This binary doubles as berth's supervisor, like `berth __supervisor`.
    if args.get(1).map(String::as_str) == Some(berth_runtime::container::launch::SUPERVISOR_ARG) {
        std::process::exit(berth_runtime::container::launch::main(Path::new(&args[2])));
    }
    if let Some(why) = support::skip_reason() {
        eprintln!("container_env: skipped: {why}");
        return;
    }
    support::run_tests(&[("isolation_exec_and_cleanup", isolation_exec_and_cleanup)]);
}

fn isolation_exec_and_cleanup() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let shared = tempfile::tempdir().unwrap();
        fs::write(shared.path().join("from-host"), "hello from host\n").unwrap();
        let (mut spec, home) = Env::spec("iso", rootfs.path());
        spec.mounts.push(MountSpec::Bind {
            source: shared.path().to_path_buf(),
            target: "/work".into(),
            readonly: false,
            idmap: true,
        });
        spec.env.insert("GREETING".into(), "hi".into());
        let env = Env::start(spec, home);

        // PID 1 is the supervisor; the host's processes are invisible.
        let (code, out, _) = env.run(&["cat", "/proc/1/cmdline"]);
        assert_eq!(code, 0);
        assert!(out.contains("__supervisor"), "pid 1 is {out:?}");
        let (_, out, _) = env.sh("ls /proc | grep -c '^[0-9]'");
        let n: u32 = out.trim().parse().unwrap();
        assert!(
            n <= 4,
            "only the supervisor, sh and ls should be visible, saw {n}"
        );

        assert_eq!(env.run(&["hostname"]).1.trim(), "iso");

        // Exit codes and separate streams.
        assert_eq!(env.run(&["true"]).0, 0);
        assert_eq!(env.run(&["false"]).0, 1);
        assert_eq!(env.sh("exit 3").0, 3);
        assert_eq!(env.sh("kill -9 $$").0, 137);
        let (code, out, err) = env.sh("echo out; echo err >&2");
        assert_eq!((code, out.as_str(), err.as_str()), (0, "out\n", "err\n"));
        let (code, _, err) = env.run(&["/no/such/program"]);
        assert_eq!(code, 127, "{err}");
        assert!(err.contains("cannot run"), "{err}");

        // Environment, working directory, user.
        let (_, out, _) = env.run_req(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING $EXTRA $(pwd) $(id -u)".into(),
            ],
            env: vec!["EXTRA=x".into()],
            cwd: Some("/tmp".into()),
            user: Some("dev".into()),
            ..Default::default()
        });
        assert_eq!(out.trim(), "hi x /tmp 1000");

        // Root inside owns the layer's files, is not root outside.
        let (_, out, _) = env.sh("stat -c %u /etc/layer-file; id -u");
        assert_eq!(out, "0\n0\n");
        let (code, _, _) = env.sh("echo changed > /etc/layer-file");
        assert_eq!(code, 0);
        assert_eq!(
            fs::read_to_string(rootfs.path().join("etc/layer-file")).unwrap(),
            "from the layer\n",
            "the shared layer must stay untouched"
        );

        // Bind mount visible both ways.
        assert_eq!(env.run(&["cat", "/work/from-host"]).1, "hello from host\n");
        assert_eq!(env.sh("echo from-env > /work/from-env").0, 0);
        assert_eq!(
            fs::read_to_string(shared.path().join("from-env")).unwrap(),
            "from-env\n"
        );
        let st = ContainerBackend.status(env.dir()).unwrap();
        assert_eq!(st.status, EnvStatus::Running);
        env.stop();
        assert_eq!(
            ContainerBackend.status(env.dir()).unwrap().status,
            EnvStatus::Stopped
        );
        assert!(!env.dir().join("control.sock").exists());
    }
    LeakCheck::snapshot().assert_same(&before);
}

#[allow(dead_code)]
fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
