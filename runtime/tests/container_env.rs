//! Starts real container environments over a busybox root filesystem and checks isolation,
//! exec, mounts, limits, services, security and cleanup. Needs root (CI runs as root); prints
//! why and passes when it cannot run.
//!
//! Run: `cargo test -p berth-runtime --test container_env [-- NAME-FILTER]`

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use berth_runtime::backend::EnvStatus;
use berth_runtime::backend::ExecRequest;
use berth_runtime::container::{ContainerBackend, MountSpec};
use support::{BusyboxRootfs, Env, LeakCheck};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // This binary doubles as berth's supervisor, like `berth __supervisor`.
    if args.get(1).map(String::as_str) == Some(berth_runtime::container::launch::SUPERVISOR_ARG) {
        std::process::exit(berth_runtime::container::launch::main(Path::new(&args[2])));
    }
    // Helper modes, run as a child process by the tests below.
    match args.get(1).map(String::as_str) {
        Some("__start_env") => std::process::exit(start_env_child(&args[2])),
        Some("__rootless_check") => std::process::exit(rootless_child(
            Path::new(&args[2]),
            Path::new(&args[3]),
            &args[4],
        )),
        _ => {}
    }
    if let Some(why) = support::skip_reason() {
        eprintln!("container_env: skipped: {why}");
        return;
    }
    support::run_tests(&[
        ("isolation_exec_and_cleanup", isolation_exec_and_cleanup),
        ("escape_attempts_fail", escape_attempts_fail),
        (
            "memory_limit_oom_kills_and_is_reported",
            memory_limit_oom_kills_and_is_reported,
        ),
        ("pids_and_cpu_limits", pids_and_cpu_limits),
        ("services_restart_and_log", services_restart_and_log),
        (
            "killed_supervisor_is_dead_and_stop_cleans",
            killed_supervisor_is_dead_and_stop_cleans,
        ),
        (
            "abort_at_every_start_step_is_repaired",
            abort_at_every_start_step_is_repaired,
        ),
        ("tty_exec_through_a_pty", tty_exec_through_a_pty),
        (
            "volume_tmpfs_and_readonly_mounts",
            volume_tmpfs_and_readonly_mounts,
        ),
        (
            "build_step_runs_once_and_keeps_upper",
            build_step_runs_once_and_keeps_upper,
        ),
        ("rootless_start_exec_stop", rootless_start_exec_stop),
        (
            "privileged_runs_from_a_sealed_binary",
            privileged_runs_from_a_sealed_binary,
        ),
        (
            "network_namespace_hook_and_host_mode",
            network_namespace_hook_and_host_mode,
        ),
        (
            "root_is_entered_while_the_network_hook_runs",
            root_is_entered_while_the_network_hook_runs,
        ),
        ("concurrent_environments", concurrent_environments),
        (
            "cgroup_v2_driver_on_the_unified_hierarchy",
            cgroup_v2_driver_on_the_unified_hierarchy,
        ),
        ("long_state_dir_path", long_state_dir_path),
        ("control_protocol_edge_cases", control_protocol_edge_cases),
        ("freeze_and_thaw", freeze_and_thaw),
        ("stop_escalates_to_sigkill", stop_escalates_to_sigkill),
        (
            "hung_supervisor_does_not_block_stop",
            hung_supervisor_does_not_block_stop,
        ),
    ]);
}

fn isolation_exec_and_cleanup() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        // A developer's folder (not root's: a root-owned folder others can reach is bound
        // with the environment's root unprivileged there, see SPEC.md `[[mounts]]`).
        let shared = support::temp_dir();
        fs::write(shared.path().join("from-host"), "hello from host\n").unwrap();
        std::os::unix::fs::chown(shared.path(), Some(4242), Some(4242)).unwrap();
        let (mut spec, home) = Env::spec("iso", rootfs.path());
        spec.mounts.push(MountSpec::Bind {
            source: shared.path().to_path_buf(),
            target: "/work".into(),
            readonly: false,
            idmap: true,
            owner_inside: None,
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

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn escape_attempts_fail() {
    let before = LeakCheck::snapshot();
    let secret = format!("/root/.berth-escape-test-{}", std::process::id());
    fs::write(&secret, "host secret\n").unwrap();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _cleanup = Remove(secret.clone());
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("escape", rootfs.path());
        let env = Env::start(spec, home);
        // mount(2) is refused.
        let (code, _, err) = env.sh("mkdir -p /mnt/x && mount -t tmpfs none /mnt/x");
        assert_ne!(code, 0, "mount succeeded");
        assert!(
            err.contains("not permitted") || err.contains("denied"),
            "{err}"
        );
        // Kernel modules: init_module is refused before the kernel even looks at the file.
        let (code, _, err) = env.sh("echo junk > /tmp/x.ko && insmod /tmp/x.ko");
        assert_ne!(code, 0);
        assert!(err.contains("not permitted"), "insmod: {err}");
        // /proc/sysrq-trigger is read-only ("h" only prints help in the kernel log). Kernels
        // without CONFIG_MAGIC_SYSRQ have no such file; the write must fail either way.
        let (code, _, err) = env.sh("echo h > /proc/sysrq-trigger");
        assert_ne!(code, 0, "sysrq-trigger writable");
        if Path::new("/proc/sysrq-trigger").exists() {
            assert!(err.contains("Read-only") || err.contains("denied"), "{err}");
        } else {
            eprintln!(
                "  note: this kernel has no /proc/sysrq-trigger; checked that the write fails"
            );
        }
        // The host's /root is not reachable.
        assert_ne!(env.run(&["cat", &secret]).0, 0);
        let (_, out, _) =
            env.sh("cat /proc/1/root/root/.berth* 2>/dev/null; ls /proc/1/root/ | head -3");
        assert!(!out.contains("host secret"));
        // Host processes are not visible, so cannot be ptraced; PID 1 is not inspectable.
        let host_pid = std::process::id();
        assert_ne!(env.run(&["ls", &format!("/proc/{host_pid}/status")]).0, 0);
        assert_ne!(
            env.run(&["cat", "/proc/1/environ"]).0,
            0,
            "supervisor must not be dumpable"
        );
        assert_ne!(env.run(&["readlink", "/proc/1/exe"]).0, 0);
        // Device nodes cannot be created.
        let (code, _, _) = env.sh("mknod /tmp/sda b 8 0");
        assert_ne!(code, 0, "mknod succeeded");
        // No nested user namespace (berth ran as root), no keyrings.
        assert_ne!(env.run(&["unshare", "-U", "true"]).0, 0);
        // Masked paths.
        assert!(!fs::read("/proc/timer_list").unwrap().is_empty());
        assert_eq!(env.sh("wc -c < /proc/timer_list").1.trim(), "0");
        assert_eq!(env.sh("ls /proc/acpi | wc -l").1.trim(), "0");
        // Capabilities: exactly the OCI default set, no_new_privs, seccomp filter mode.
        let (_, status, _) = env.run(&["cat", "/proc/self/status"]);
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
                .unwrap()
        };
        assert_eq!(field("CapEff:"), "00000000a80425fb");
        assert_eq!(field("CapBnd:"), "00000000a80425fb");
        assert_eq!(field("NoNewPrivs:"), "1");
        assert_eq!(field("Seccomp:"), "2");
        // No host fds leak into processes.
        let (_, fds, _) = env.sh("ls /proc/self/fd");
        let mut n: Vec<&str> = fds.split_whitespace().collect();
        n.sort();
        assert_eq!(n, vec!["0", "1", "2", "3"], "fds: {fds}");
        // Writable root owned by the environment's root, which is not the host's root.
        let upper_owner =
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&env.spec.upper_dir).unwrap());
        assert_ne!(upper_owner, 0);
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn memory_limit_oom_kills_and_is_reported() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("oom", rootfs.path());
        spec.resources.memory = Some(32 << 20);
        let env = Env::start(spec, home);
        assert_eq!(env.run(&["true"]).0, 0);
        let (code, _, err) = env.run(&["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]);
        assert_eq!(code, 137, "dd should be OOM-killed: {err}");
        let st = ContainerBackend.status(env.dir()).unwrap();
        let usage = st.usage.unwrap();
        assert!(usage.oom_kills.unwrap_or(0) >= 1, "{usage:?}");
        assert!(usage.memory_peak.unwrap() <= 32 << 20);
        assert_eq!(
            st.status,
            EnvStatus::Running,
            "the environment survives its OOM kill"
        );
        assert_eq!(env.run(&["true"]).0, 0);
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn pids_and_cpu_limits() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("pids", rootfs.path());
        spec.resources.pids = Some(16);
        spec.resources.cpus = Some(0.5);
        let env = Env::start(spec, home);
        let (_, _, err) = env.sh("for i in $(seq 40); do sleep 30 & done; echo done");
        assert!(
            err.contains("fork"),
            "forks beyond the limit must fail: {err}"
        );
        let st = ContainerBackend.status(env.dir()).unwrap();
        let pids = st.usage.unwrap().pids_current.unwrap();
        assert!((10..=16).contains(&pids), "{pids} processes with pids = 16");
        // Everything but PID 1 goes; the environment keeps working.
        env.sh("kill -9 -1");
        assert_eq!(env.run(&["true"]).0, 0);
        let state: serde_json::Value =
            serde_json::from_slice(&fs::read(env.dir().join("state.json")).unwrap()).unwrap();
        // Half a core: a 50 ms quota per 100 ms period, in v1's or v2's file.
        let cg = &state["cgroups"];
        let (file, want) = match cg["version"].as_str() {
            Some("v2") => (
                Path::new(cg["dir"].as_str().unwrap()).join("cpu.max"),
                "50000 100000",
            ),
            _ => (
                Path::new(cg["dirs"]["cpu"].as_str().unwrap()).join("cpu.cfs_quota_us"),
                "50000",
            ),
        };
        assert_eq!(fs::read_to_string(&file).unwrap().trim(), want, "{file:?}");
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn services_restart_and_log() {
    use envfile_spec::plan::{RestartPolicy, ServicePlan};
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("svc", rootfs.path());
        spec.services.insert(
            "flaky".into(),
            ServicePlan {
                command: vec!["sh".into(), "-c".into(), "echo run $WHO; exit 2".into()],
                restart: RestartPolicy::OnFailure,
                env: [("WHO".to_string(), "flaky".to_string())].into(),
                workdir: None,
            },
        );
        spec.services.insert(
            "steady".into(),
            ServicePlan {
                command: vec!["sh".into(), "-c".into(), "echo up; exec sleep 1000".into()],
                restart: RestartPolicy::No,
                env: Default::default(),
                workdir: Some("/tmp".into()),
            },
        );
        let env = Env::start(spec, home);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let st = ContainerBackend.status(env.dir()).unwrap();
            let flaky = st
                .services
                .iter()
                .find(|s| s.name == "flaky")
                .unwrap()
                .clone();
            if flaky.restarts >= 2 {
                assert_eq!(flaky.last_exit, Some(2));
                let steady = st.services.iter().find(|s| s.name == "steady").unwrap();
                assert!(steady.pid.is_some(), "{steady:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flaky was not restarted: {flaky:?}"
            );
            sleep_ms(50);
        }
        let log = String::from_utf8(
            berth_runtime::container::logs::read_service_log(env.dir(), "flaky").unwrap(),
        )
        .unwrap();
        assert!(log.matches("run flaky").count() >= 2, "{log}");
        assert!(log.contains("exited with code 2; restarting"), "{log}");
        let steady = String::from_utf8(
            berth_runtime::container::logs::read_service_log(env.dir(), "steady").unwrap(),
        )
        .unwrap();
        assert_eq!(steady, "up\n");
        env.stop();
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn killed_supervisor_is_dead_and_stop_cleans() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("kill9", rootfs.path());
        spec.resources.memory = Some(64 << 20);
        let env = Env::start(spec, home);
        env.sh("sleep 1000 & sleep 1000 &");
        let pid = ContainerBackend.status(env.dir()).unwrap().pid.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ContainerBackend.status(env.dir()).unwrap().status != EnvStatus::Dead {
            assert!(
                std::time::Instant::now() < deadline,
                "status never said dead"
            );
            sleep_ms(10);
        }
        let err = ContainerBackend
            .exec(
                env.dir(),
                &ExecRequest {
                    argv: vec!["true".into()],
                    ..Default::default()
                },
                stdio(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        env.stop();
        assert_eq!(
            ContainerBackend.status(env.dir()).unwrap().status,
            EnvStatus::Stopped
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn stdio() -> [std::os::fd::BorrowedFd<'static>; 3] {
    // SAFETY: fds 0-2 stay open for the whole test process.
    unsafe { [0, 1, 2].map(|fd| std::os::fd::BorrowedFd::borrow_raw(fd)) }
}

/// Child mode: start the environment described by `<dir>/test-spec.json` (fault injection).
fn start_env_child(spec_path: &str) -> i32 {
    let spec: berth_runtime::container::ContainerSpec =
        serde_json::from_slice(&fs::read(spec_path).unwrap()).unwrap();
    match ContainerBackend.start(&spec) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("start failed: {e}");
            2
        }
    }
}

fn abort_at_every_start_step_is_repaired() {
    let before = LeakCheck::snapshot();
    let rootfs = BusyboxRootfs::new();
    for step in berth_runtime::container::fault::STEPS {
        let (mut spec, home) = Env::spec("fault", rootfs.path());
        spec.resources.memory = Some(64 << 20);
        let spec_path = home.path().join("test-spec.json");
        fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let out = std::process::Command::new("/proc/self/exe")
            .args(["__start_env", spec_path.to_str().unwrap()])
            .env("BERTH_ABORT_AT", step)
            .output()
            .unwrap();
        assert!(!out.status.success(), "start did not stop at {step}");
        let st = ContainerBackend.status(&spec.state_dir).unwrap();
        assert!(
            matches!(st.status, EnvStatus::Dead | EnvStatus::Stopped),
            "{step}: {st:?}"
        );
        ContainerBackend
            .stop(&spec.state_dir, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("stop after abort at {step}: {e}"));
        LeakCheck::snapshot().assert_same(&before);
        // And the environment starts fine afterwards.
        let env = Env::start(spec, home);
        assert_eq!(env.run(&["true"]).0, 0, "after abort at {step}");
        env.stop();
        drop(env);
        LeakCheck::snapshot().assert_same(&before);
    }
}

fn tty_exec_through_a_pty() {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("tty", rootfs.path());
        let env = Env::start(spec, home);
        // The test plays the user's terminal emulator: it owns the master of a PTY whose slave
        // is berth's "terminal".
        let pty = nix::pty::openpty(
            Some(&nix::pty::Winsize {
                ws_row: 33,
                ws_col: 77,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            None,
        )
        .unwrap();
        let session = ContainerBackend
            .exec_tty(
                env.dir(),
                &ExecRequest {
                    argv: vec!["/bin/sh".into()],
                    winsize: Some((33, 77)),
                    ..Default::default()
                },
            )
            .unwrap();
        let slave = pty.slave;
        let (tid_tx, client_tid) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
            berth_runtime::container::terminal::run_terminal(session, slave.as_fd(), slave.as_fd())
                .unwrap()
        });
        let mut term = fs::File::from(pty.master);
        term.write_all(b"echo hel''lo; stty size; tty\r").unwrap();
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(seen.contains("hello\r\n") && seen.contains("33 77") && seen.contains("/dev/pts/"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "terminal output so far: {seen:?}"
            );
            let mut buf = [0u8; 4096];
            let n = term.read(&mut buf).unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Window size follows SIGWINCH.
        let ws = libc::winsize {
            ws_row: 40,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on the test's own PTY master.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&term),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        assert_eq!(rc, 0);
        let tid = client_tid.recv().unwrap();
        // SAFETY: signalling a live thread of this process (it blocks SIGWINCH into a signalfd).
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGWINCH) }, 0);
        sleep_ms(50);
        term.write_all(b"stty size\r").unwrap();
        let mut seen = String::new();
        while !seen.contains("40 100") {
            assert!(
                std::time::Instant::now() < deadline,
                "after resize: {seen:?}"
            );
            let mut buf = [0u8; 4096];
            let n = term.read(&mut buf).unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        term.write_all(b"exit 3\r").unwrap();
        // Keep reading so the client never blocks on a full terminal buffer.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = term.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        });
        assert_eq!(client.join().unwrap(), 3);
        drop(reader);
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn volume_tmpfs_and_readonly_mounts() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let ro = support::temp_dir();
        fs::write(ro.path().join("f"), "ro\n").unwrap();
        let (mut spec, home) = Env::spec("mounts", rootfs.path());
        let vol = home.path().join("volumes/data");
        spec.mounts.push(MountSpec::Volume {
            source: vol.clone(),
            target: "/data".into(),
            readonly: false,
        });
        spec.mounts.push(MountSpec::Tmpfs {
            target: "/scratch".into(),
            size: Some(1 << 20),
        });
        spec.mounts.push(MountSpec::Bind {
            source: ro.path().to_path_buf(),
            target: "/ro".into(),
            readonly: true,
            idmap: true,
            owner_inside: None,
        });
        spec.mounts.push(MountSpec::Bind {
            source: ro.path().to_path_buf(),
            target: "/ro-plain".into(),
            readonly: true,
            idmap: false,
            owner_inside: None,
        });
        let env = Env::start(spec.clone(), home);
        assert_eq!(env.sh("echo kept > /data/x && id -u > /data/who").0, 0);
        assert_eq!(env.run(&["cat", "/ro/f"]).1, "ro\n");
        assert_ne!(env.sh("echo no > /ro/g").0, 0, "read-only bind is writable");
        assert_eq!(env.run(&["cat", "/ro-plain/f"]).1, "ro\n");
        assert_ne!(
            env.sh("echo no > /ro-plain/g").0,
            0,
            "read-only plain bind is writable"
        );
        let (_, df, _) = env.sh("df -k /scratch | tail -1");
        assert!(
            df.split_whitespace().nth(1) == Some("1024"),
            "tmpfs size: {df}"
        );
        assert_eq!(env.sh("echo x > /scratch/y").0, 0);
        env.stop();
        assert_eq!(fs::read_to_string(vol.join("x")).unwrap(), "kept\n");
        // Restart: the volume and the writable layer persist, the tmpfs does not.
        assert_eq!(
            env.sh_after_restart("cat /data/x; ls /scratch | wc -l"),
            "kept\n0\n"
        );
        // destroy removes the environment's folder but keeps the named volume.
        ContainerBackend
            .destroy(env.dir(), Duration::from_secs(5))
            .unwrap();
        assert!(!env.dir().exists());
        assert_eq!(fs::read_to_string(vol.join("x")).unwrap(), "kept\n");
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn build_step_runs_once_and_keeps_upper() {
    use berth_runtime::container::step::{run_step, OutputStream, StepRequest};
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let t = support::temp_dir();
        let (upper, work, scratch) = (
            t.path().join("upper"),
            t.path().join("work"),
            t.path().join("scratch"),
        );
        for d in [&upper, &work, &scratch] {
            fs::create_dir_all(d).unwrap();
        }
        let req = StepRequest {
            lower_layers: vec![rootfs.path().to_path_buf()],
            upper: upper.clone(),
            work,
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo built > /etc/built; echo to-out; echo to-err >&2; sleep 30 & exit 4".into(),
            ],
            env: vec!["A=1".into()],
            workdir: None,
            scratch: scratch.clone(),
            net_home: None,
            user: None,
            cache_mounts: Vec::new(),
            no_network: false,
            mounts: Vec::new(),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_step(&req, &mut |s, b| match s {
            OutputStream::Stdout => out.extend_from_slice(b),
            OutputStream::Stderr => err.extend_from_slice(b),
        })
        .unwrap();
        assert_eq!(code, 4);
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"to-out\n"[..], &b"to-err\n"[..])
        );
        let built = upper.join("etc/built");
        assert_eq!(fs::read_to_string(&built).unwrap(), "built\n");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&built).unwrap()),
            0,
            "a build step's files carry real ids"
        );
        assert_eq!(
            fs::read_dir(&scratch).unwrap().count(),
            0,
            "scratch state left behind"
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

const ROOTLESS_USER: &str = "berthtest";

fn rootless_start_exec_stop() {
    let created = std::process::Command::new("id")
        .arg(ROOTLESS_USER)
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true);
    if created {
        // A system user gets no /etc/subuid range, so nothing overlaps root's ranges.
        let st = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                ROOTLESS_USER,
            ])
            .status()
            .unwrap();
        assert!(st.success(), "useradd failed");
    }
    struct DelUser(bool);
    impl Drop for DelUser {
        fn drop(&mut self) {
            if self.0 {
                let _ = std::process::Command::new("userdel")
                    .arg(ROOTLESS_USER)
                    .status();
            }
        }
    }
    let _del = DelUser(created);
    let before = LeakCheck::snapshot();
    let rootfs = BusyboxRootfs::new();
    let home = support::temp_dir();
    let user = nix::unistd::User::from_name(ROOTLESS_USER)
        .unwrap()
        .unwrap();
    std::os::unix::fs::chown(
        home.path(),
        Some(user.uid.as_raw()),
        Some(user.gid.as_raw()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(rootfs.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A rootless user's layer store belongs to that user (it unpacked the layers).
    let st = std::process::Command::new("chown")
        .args(["-R", &format!("{ROOTLESS_USER}:{ROOTLESS_USER}")])
        .arg(rootfs.path())
        .status()
        .unwrap();
    assert!(st.success());
    let run_as_user = |mode: &str| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                ROOTLESS_USER,
                "--regid",
                ROOTLESS_USER,
                "--init-groups",
                "--reset-env",
            ])
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .args([
                "__rootless_check",
                rootfs.path().to_str().unwrap(),
                home.path().to_str().unwrap(),
                mode,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "rootless check ({mode}) failed:\n{stderr}"
        );
    };
    run_as_user("single");
    // With a subordinate id range, newuidmap/newgidmap map 65536 ids. Only with the user this
    // test created, whose /etc/subuid entries it can add and remove again.
    if created && Path::new("/usr/bin/newuidmap").exists() {
        struct Restore(Vec<(&'static str, Option<Vec<u8>>)>);
        impl Drop for Restore {
            fn drop(&mut self) {
                for (p, c) in &self.0 {
                    let _ = match c {
                        Some(c) => fs::write(p, c),
                        None => fs::remove_file(p),
                    };
                }
            }
        }
        let _restore = Restore(
            ["/etc/subuid", "/etc/subgid"]
                .iter()
                .map(|p| (*p, fs::read(p).ok()))
                .collect(),
        );
        for p in ["/etc/subuid", "/etc/subgid"] {
            let mut c = fs::read_to_string(p).unwrap_or_default();
            c.push_str(&format!("{ROOTLESS_USER}:300000:65536\n"));
            fs::write(p, c).unwrap();
        }
        let _ = fs::remove_dir_all(home.path().join("envs"));
        run_as_user("subuid");
        eprintln!("  checked rootless with subordinate ids through newuidmap/newgidmap");
    } else {
        eprintln!(
            "  note: rootless with subordinate ids not checked (user existed or no newuidmap)"
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// Child mode, run as an unprivileged user: start, exec, stop with a single-id mapping.
fn rootless_child(rootfs: &Path, home: &Path, mode: &str) -> i32 {
    let dir = home.join("envs/rootless");
    let mut spec = berth_runtime::container::ContainerSpec::new(
        "rootless",
        "rootless",
        &dir,
        vec![rootfs.to_path_buf()],
    );
    spec.user_mapping = match mode {
        "single" => berth_runtime::container::UserMappingChoice::SingleId,
        _ => berth_runtime::container::UserMappingChoice::Auto,
    };
    if let Err(e) = ContainerBackend.start(&spec) {
        eprintln!(
            "rootless start: {e}\n{}",
            fs::read_to_string(dir.join("logs/supervisor.log")).unwrap_or_default()
        );
        return 1;
    }
    let out = tempfile::tempfile().unwrap();
    let null = fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsFd;
    let req = ExecRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "id -u; hostname; echo x > /etc/new-file; wc -l < /proc/self/uid_map; cat /proc/1/cmdline".into(),
        ],
        ..Default::default()
    };
    let code = ContainerBackend.exec(&dir, &req, [null.as_fd(), out.as_fd(), out.as_fd()]);
    let text = {
        use std::io::{Read, Seek};
        let mut f = out;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        s
    };
    // With subordinate ids, other users inside work too.
    let dev = ContainerBackend.exec(
        &dir,
        &ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "mkdir /tmp/d && echo x > /tmp/d/f".into(),
            ],
            user: Some("dev".into()),
            ..Default::default()
        },
        [null.as_fd(), null.as_fd(), null.as_fd()],
    );
    let lines = if mode == "single" { "1\n" } else { "2\n" };
    let dev_ok = if mode == "single" {
        matches!(dev, Ok(c) if c != 0)
    } else {
        matches!(dev, Ok(0))
    };
    let stopped = ContainerBackend.stop(&dir, Duration::from_secs(5));
    if !text.contains(&format!("rootless\n{lines}")) || !dev_ok {
        eprintln!("{mode}: unexpected map or user switch: {text:?}, dev: {dev:?}");
        return 1;
    }
    match (code, stopped) {
        (Ok(0), Ok(())) if text.starts_with("0\nrootless\n") && text.contains("__supervisor") => {
            let owner = std::os::unix::fs::MetadataExt::uid(
                &fs::metadata(spec.upper_dir.join("etc/new-file")).unwrap(),
            );
            if owner != nix::unistd::getuid().as_raw() {
                eprintln!("new file owned by {owner}, expected the invoking user");
                return 1;
            }
            // destroy removes everything, also what other users inside created.
            if let Err(e) = ContainerBackend.destroy(&dir, Duration::from_secs(5)) {
                eprintln!("destroy: {e}");
                return 1;
            }
            if dir.exists() {
                eprintln!("destroy left {}", dir.display());
                return 1;
            }
            0
        }
        (c, s) => {
            eprintln!("rootless exec: {c:?}, stop: {s:?}, output: {text:?}");
            1
        }
    }
}

fn privileged_runs_from_a_sealed_binary() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("priv", rootfs.path());
        spec.privileged = true;
        let env = Env::start(spec, home);
        let (code, out, err) = env.run(&["readlink", "/proc/1/exe"]);
        assert_eq!(code, 0, "{err}");
        // A sealed view: the binary through a detached read-only overlay (shown as
        // `/<name>`, no host path) or a sealed memfd copy, never the host's file.
        let host_exe = fs::read_link("/proc/self/exe").unwrap();
        let shown = out.trim();
        assert!(
            shown.contains("memfd:berth")
                || (Path::new(shown).parent() == Some(Path::new("/"))
                    && Path::new(shown) != host_exe),
            "supervisor runs from {out:?}"
        );
        assert_ne!(
            env.sh("echo x >> /proc/1/exe").0,
            0,
            "the supervisor's binary is writable"
        );
        let (_, status, _) = env.run(&["cat", "/proc/self/status"]);
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Seccomp:") && l.ends_with('0')),
            "privileged has no filter"
        );
        assert_eq!(env.run(&["id", "-u"]).1.trim(), "0");
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&fs::metadata(&env.spec.upper_dir).unwrap()),
            0
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn network_namespace_hook_and_host_mode() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("net", rootfs.path());
        let mut seen = None;
        let host_ns = fs::read_link("/proc/self/ns/net").unwrap();
        ContainerBackend
            .start_with_hook(&spec, &mut |pid| {
                seen = Some(fs::read_link(format!("/proc/{pid}/ns/net")).unwrap());
                Ok(())
            })
            .unwrap();
        let env = Env { spec, home };
        let ns = seen.expect("hook not called");
        assert_ne!(
            ns, host_ns,
            "isolated mode must have its own network namespace"
        );
        let (_, dev, _) = env.run(&["cat", "/proc/net/dev"]);
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, vec!["lo"]);

        let (mut spec, home) = Env::spec("hostnet", rootfs.path());
        spec.network = envfile_spec::plan::NetworkMode::Host;
        let host = Env::start(spec, home);
        assert_ne!(
            host.sh("echo x > /sys/kernel/uevent_helper").0,
            0,
            "host /sys must be read-only"
        );
        let (_, dev, _) = host.run(&["cat", "/proc/net/dev"]);
        assert_eq!(
            dev.lines().count(),
            fs::read_to_string("/proc/net/dev").unwrap().lines().count()
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// The supervisor enters its root filesystem while the starter's network step (the hook)
/// runs, not after it (issue 17's cold start: the two overlap), and starts nothing inside
/// before the hook is done.
fn root_is_entered_while_the_network_hook_runs() {
    use std::os::unix::fs::MetadataExt;
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("overlap", rootfs.path());
        let host_root = fs::metadata("/").unwrap();
        let mut entered = None;
        ContainerBackend
            .start_with_hook(&spec, &mut |pid| {
                // /proc/<pid>/root is the host's root until the supervisor's pivot_root.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                let inside = || {
                    fs::metadata(format!("/proc/{pid}/root"))
                        .is_ok_and(|m| (m.dev(), m.ino()) != (host_root.dev(), host_root.ino()))
                };
                while !inside() && std::time::Instant::now() < deadline {
                    sleep_ms(5);
                }
                let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .unwrap_or_default();
                entered = Some((inside(), children));
                Ok(())
            })
            .unwrap();
        let env = Env { spec, home };
        let (inside, children) = entered.expect("hook not called");
        assert!(
            inside,
            "the supervisor waited for the network step before entering its root"
        );
        assert_eq!(
            children.trim(),
            "",
            "something ran inside before the network step ended"
        );
        assert_eq!(env.run(&["true"]).0, 0);
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn concurrent_environments() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    let rootfs = rootfs.path().to_path_buf();
                    scope.spawn(move || {
                        let (mut spec, home) = Env::spec(&format!("conc{i}"), &rootfs);
                        spec.resources.pids = Some(64);
                        let env = Env { spec, home };
                        for round in 0..2 {
                            ContainerBackend
                                .start(&env.spec)
                                .unwrap_or_else(|e| panic!("env {i} round {round}: {e}"));
                            let (code, out, _) = env.sh(&format!("echo {i}-{round}; hostname"));
                            assert_eq!((code, out), (0, format!("{i}-{round}\nconc{i}\n")));
                            env.stop();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// This host is cgroup v1 hybrid: every controller is bound to a v1 hierarchy, so the v2
/// (unified) hierarchy only tracks processes. That part of the v2 driver runs for real here;
/// its limit files are unit-tested against a temp dir (cgroups::v2 tests).
fn cgroup_v2_driver_on_the_unified_hierarchy() {
    use berth_runtime::container::cgroups::{kill_and_remove, CgroupLayout};
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(unified) = mountinfo.lines().find(|l| l.contains(" - cgroup2 ")) else {
        eprintln!("  note: no cgroup2 mount on this host; skipped");
        return;
    };
    let mount_point = unified.split(' ').nth(4).unwrap().to_string();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_string();
    let id = format!("v2test-{}", std::process::id());
    let dir = Path::new(&mount_point)
        .join(own.trim_start_matches('/'))
        .join("berth")
        .join(&id);
    let layout = CgroupLayout::V2 { dir: dir.clone() };
    let cg = layout.driver();
    cg.create().unwrap();
    // A limit needs a delegated controller; the error says so instead of failing obscurely.
    let controllers = fs::read_to_string(
        dir.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("cgroup.controllers"),
    )
    .unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        let e = cg
            .apply(&envfile_spec::plan::Resources {
                memory: Some(1 << 26),
                cpus: None,
                pids: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("not delegated"), "{e}");
    }
    // SAFETY: the child only sleeps and exits.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            std::thread::sleep(Duration::from_secs(30));
            // SAFETY: plain exit of the forked child.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    cg.join(child.as_raw()).unwrap();
    assert_eq!(cg.procs(), vec![child.as_raw()]);
    kill_and_remove(&*cg, Duration::from_secs(5)).unwrap();
    let _ = nix::sys::wait::waitpid(child, None);
    assert!(!dir.exists(), "cgroup dir left behind");
}

/// The control socket's path exceeds sockaddr_un's 108 bytes: still reachable.
fn long_state_dir_path() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (mut spec, home) = Env::spec("long", rootfs.path());
        let deep = home
            .path()
            .join("x".repeat(50))
            .join("y".repeat(50))
            .join("envs/long");
        spec.state_dir = deep.clone();
        spec.upper_dir = deep.join("upper");
        spec.work_dir = deep.join("work");
        assert!(spec.control_socket().as_os_str().len() > 108);
        let env = Env::start(spec, home);
        assert_eq!(env.run(&["true"]).0, 0);
        env.stop();
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// Garbage on the control socket gets an error, never a dead supervisor; signals reach the
/// process group of an exec; a vanished caller's processes get SIGHUP.
fn control_protocol_edge_cases() {
    use berth_runtime::container::control::{self, ControlClient, Request, Response};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("proto", rootfs.path());
        let env = Env::start(spec, home);
        let sock = env.spec.control_socket();
        let garbage: [&[u8]; 5] = [
            &[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 2, b'{', b'}'],
            &[0, 0, 0, 4, b'n', b'u', b'l', b'l'],
            b"\x00\x00",
        ];
        for g in garbage {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.write_all(g).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            if answer.len() > 4 {
                let r: Response = serde_json::from_slice(&answer[4..]).unwrap();
                assert!(matches!(r, Response::Error { .. }), "{r:?}");
            }
        }
        // exec without its three fds is refused with an explanation.
        let mut c = ControlClient::connect(&sock).unwrap();
        c.send(
            &Request::Exec(ExecRequest {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            &[],
        )
        .unwrap();
        assert!(matches!(c.receive().unwrap().0, Response::Error { .. }));
        assert!(control::ping(&sock));

        // A forwarded signal ends the process: 128 + 15.
        let null = fs::File::open("/dev/null").unwrap();
        let mut s = ContainerBackend
            .exec_start(
                env.dir(),
                &ExecRequest {
                    argv: vec!["sleep".into(), "100".into()],
                    ..Default::default()
                },
                [null.as_fd(), null.as_fd(), null.as_fd()],
            )
            .unwrap();
        s.signal(libc::SIGTERM).unwrap();
        assert_eq!(s.wait().unwrap(), 143);

        // A caller that goes away takes its processes with it (SIGHUP to their group).
        let s = ContainerBackend
            .exec_start(
                env.dir(),
                &ExecRequest {
                    argv: vec!["sleep".into(), "101".into()],
                    ..Default::default()
                },
                [null.as_fd(), null.as_fd(), null.as_fd()],
            )
            .unwrap();
        let visible = |env: &Env| env.sh("ps -o args | grep -q '^sleep 101'").0 == 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !visible(&env) {
            assert!(
                std::time::Instant::now() < deadline,
                "the check must see the running process"
            );
            sleep_ms(10);
        }
        drop(s);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while visible(&env) {
            assert!(
                std::time::Instant::now() < deadline,
                "orphaned exec still running"
            );
            sleep_ms(20);
        }
    }
    LeakCheck::snapshot().assert_same(&before);
}

fn freeze_and_thaw() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("freeze", rootfs.path());
        let env = Env::start(spec, home);
        env.sh("(while true; do echo x >> /tmp/n; done) >/dev/null 2>&1 &");
        let counter = env.spec.upper_dir.join("tmp/n");
        let read = || fs::metadata(&counter).map(|m| m.len()).unwrap_or(0);
        sleep_ms(100);
        ContainerBackend.set_frozen(env.dir(), true).unwrap();
        let a = read();
        assert!(a > 0, "the writer never ran");
        sleep_ms(200);
        assert_eq!(read(), a, "a frozen environment kept running");
        ContainerBackend.set_frozen(env.dir(), false).unwrap();
        sleep_ms(200);
        assert_ne!(read(), a, "a thawed environment did not resume");
        env.stop();
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// A process that ignores SIGTERM is killed after the grace period; nothing is left.
fn stop_escalates_to_sigkill() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("stubborn", rootfs.path());
        let env = Env::start(spec, home);
        assert_eq!(
            env.sh("(trap '' TERM; while true; do sleep 1; done) >/dev/null 2>&1 &")
                .0,
            0
        );
        sleep_ms(100);
        let t = std::time::Instant::now();
        ContainerBackend
            .stop(env.dir(), Duration::from_millis(300))
            .unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "stop did not wait for the grace period: {took:?}"
        );
        assert_eq!(
            ContainerBackend.status(env.dir()).unwrap().status,
            EnvStatus::Stopped
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}

/// A supervisor that stopped answering (SIGSTOP here) does not hang status or stop: status
/// still reports the process, stop gives up waiting for an answer and kills it.
fn hung_supervisor_does_not_block_stop() {
    let before = LeakCheck::snapshot();
    {
        let rootfs = BusyboxRootfs::new();
        let (spec, home) = Env::spec("hung", rootfs.path());
        let env = Env::start(spec, home);
        let pid = ContainerBackend.status(env.dir()).unwrap().pid.unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        let st = ContainerBackend.status(env.dir()).unwrap();
        assert_eq!((st.status, st.processes), (EnvStatus::Running, None));
        ContainerBackend
            .stop(env.dir(), Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            ContainerBackend.status(env.dir()).unwrap().status,
            EnvStatus::Stopped
        );
    }
    LeakCheck::snapshot().assert_same(&before);
}
