//! End to end under qemu TCG (never KVM here): a Debian cloud kernel fetched by berth, a
//! busybox root disk, the static agent; exec semantics, persistence across down/up, a killed
//! VMM, and that `stop` leaves no process, socket or disk lock behind. Takes a few seconds
//! per boot. Skips (saying why) when qemu, busybox-static or mkfs.ext4 are missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_e2e::host::have;
use berth_runtime::state::BerthHome;
use berth_runtime::vm::kernel::Mirror;
use berth_runtime::vm::{VmBackend, VmSpec};
use envfile_spec::plan::{KernelSource, MountKind, MountPlan, RestartPolicy, ServicePlan, VmmKind};

/// The static agent: BERTH_AGENT, else built into target/agent-static.
fn static_agent() -> PathBuf {
    match std::env::var_os("BERTH_AGENT") {
        Some(p) => p.into(),
        None => berth_e2e::vm::static_agent(),
    }
}

fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in ["etc", "dev", "proc", "sys", "tmp", "run", "root", "var/log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .unwrap();
}

/// Stops the VM whatever happens to the test.
struct VmGuard<'a> {
    backend: &'a VmBackend,
    state_dir: PathBuf,
}

impl Drop for VmGuard<'_> {
    fn drop(&mut self) {
        let _ = self.backend.stop(&self.state_dir, Duration::from_secs(5));
    }
}

#[test]
fn debian_kernel_under_qemu_tcg() {
    for (tool, arg, pkg) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("qemu-img", "--version", "qemu-utils"),
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("/bin/busybox", "true", "busybox-static"),
    ] {
        if !have(tool, arg) {
            eprintln!("skipping: {tool} is missing (apt-get install {pkg})");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = BerthHome::at(tmp.path().join("home")).unwrap();
    // Kernels are cached across test runs (a download of ~30 MB), everything else is private.
    let kernel_cache = berth_e2e::vm::kernel_cache();
    std::fs::create_dir_all(&kernel_cache).unwrap();
    let _ = std::fs::remove_dir(home.kernels_dir());
    std::os::unix::fs::symlink(&kernel_cache, home.kernels_dir()).unwrap();
    let layer = tmp.path().join("layer");
    busybox_rootfs(&layer);

    let backend = VmBackend::with_mirror(home.clone(), Mirror::discover());
    let state_dir = home.env_dir("vmtest-00000000");
    let spec = VmSpec {
        name: "vmtest".into(),
        state_dir: state_dir.clone(),
        layers: vec![layer],
        kernel: KernelSource::Debian {
            package: "linux-image-cloud-amd64".into(),
            version: None,
        },
        modules: None,
        memory: 256 << 20,
        vcpus: 1,
        vmm: VmmKind::Qemu,
        env: BTreeMap::from([("GREETING".to_string(), "hello-from-env".to_string())]),
        services: BTreeMap::from([(
            "ticker".to_string(),
            ServicePlan {
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $SVC_VAR >> /tmp/ticker; exit 1".into(),
                ],
                restart: RestartPolicy::OnFailure,
                env: BTreeMap::from([("SVC_VAR".to_string(), "tick".to_string())]),
                workdir: None,
            },
        )]),
        mounts: vec![MountPlan {
            source: None,
            target: "/scratch".into(),
            kind: MountKind::Tmpfs,
            readonly: false,
            ignore: vec![],
            size: Some(1 << 20),
            unsafe_host_path: false,
        }],
        ports: vec![],
        network: envfile_spec::plan::NetworkMode::Isolated,
        provider: None,
        workdir: None,
        user: None,
        disk_size: Some(256 << 20),
        agent: Some(static_agent()),
        boot_timeout: Duration::from_secs(120),
        hosts: Vec::new(),
        secrets: false,
        secret_env: Vec::new(),
        hold_services: false,
    };
    let _guard = VmGuard {
        backend: &backend,
        state_dir: state_dir.clone(),
    };
    let st = backend.start(&spec).unwrap();
    assert_eq!(st.accel, "tcg");
    assert!(st.boot_ms.is_some());
    eprintln!("booted {} in {} ms", st.kernel_release, st.boot_ms.unwrap());

    let mut conn = backend.connect(&state_dir).unwrap();
    let uname = conn.run(&["uname", "-r"]).unwrap();
    let guest_release = String::from_utf8_lossy(&uname.stdout).trim().to_string();
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(guest_release, st.kernel_release);
    assert!(guest_release.contains("cloud-amd64"), "{guest_release}");
    assert_ne!(guest_release, host_release.trim());

    let out = conn
        .run(&["/bin/sh", "-c", "echo to-out; echo to-err >&2; exit 7"])
        .unwrap();
    assert_eq!(out.status.code, 7);
    assert_eq!(out.stdout, b"to-out\n");
    assert_eq!(out.stderr, b"to-err\n");
    let out = conn
        .run(&[
            "/bin/sh",
            "-c",
            "hostname; echo $GREETING; grep -c ' /scratch tmpfs' /proc/mounts",
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vmtest\nhello-from-env\n1\n"
    );
    // The default working directory is the user's home, or `/` when the image has no such
    // folder (as Docker does); before, the agent refused to run the command (exit 126).
    let out = conn
        .run(&[
            "/bin/sh",
            "-c",
            "echo nohome:x:1234:1234::/home/nohome:/bin/sh >> /etc/passwd",
        ])
        .unwrap();
    assert_eq!(out.status.code, 0);
    let no_home = conn
        .client
        .start(berth_runtime::vm::agent_proto::Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), "pwd; id -u".into()],
            user: Some("nohome".into()),
            ..Default::default()
        })
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = conn.client.wait(&no_home, &mut out, &mut err).unwrap();
    assert_eq!(
        (status.code, String::from_utf8_lossy(&out).as_ref()),
        (0, "/\n1234\n"),
        "{}",
        String::from_utf8_lossy(&err)
    );
    // The service runs with its environment and is restarted after failing (1 s back-off).
    std::thread::sleep(Duration::from_millis(2500));
    let out = conn.run(&["cat", "/tmp/ticker"]).unwrap();
    let ticks = String::from_utf8_lossy(&out.stdout).matches("tick").count();
    assert!(
        ticks >= 2,
        "service ran {ticks} times: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = conn
        .run(&["/bin/sh", "-c", "echo persisted > /root/state && sync"])
        .unwrap();
    assert_eq!(out.status.code, 0);
    // Other clients use the other channels while this one is open; an exec in one channel
    // runs while a session in another is still going.
    let mut second = backend.connect(&state_dir).unwrap();
    let slow = conn
        .client
        .start(berth_runtime::vm::agent_proto::Exec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "read line; echo got $line".into(),
            ],
            ..Default::default()
        })
        .unwrap();
    let quick = second.run(&["echo", "parallel"]).unwrap();
    assert_eq!(quick.stdout, b"parallel\n");
    slow.stdin(b"hello\n").unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = conn.client.wait(&slow, &mut out, &mut err).unwrap();
    assert_eq!((status.code, out.as_slice()), (0, &b"got hello\n"[..]));
    let third = backend.connect(&state_dir).unwrap();
    let fourth = backend.connect(&state_dir).unwrap();
    assert!(matches!(
        backend.connect(&state_dir),
        Err(berth_runtime::vm::VmError::Busy)
    ));
    drop((second, third, fourth, conn));

    // down: nothing left behind.
    let pid = st.process.unwrap();
    backend.stop(&state_dir, Duration::from_secs(20)).unwrap();
    assert!(!pid.alive(), "qemu still runs after stop");
    // The guest powered itself off (agent → reboot → qemu -no-reboot exits), no kill needed.
    let console = std::fs::read_to_string(&st.console_log).unwrap_or_default();
    assert!(
        console.contains("reboot: Restarting system"),
        "no clean poweroff:\n{console}"
    );
    assert!(!state_dir.join("control.sock").exists());
    assert!(!state_dir.join("qemu.pid").exists());
    assert!(!backend.status(&state_dir).unwrap().running);
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&st.disk)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "disk still locked: {}",
        String::from_utf8_lossy(&info.stderr)
    );

    // up again: the environment's changes persisted; then kill -9 of the VMM and recovery.
    let st = backend.start(&spec).unwrap();
    let out = backend
        .exec_capture(&state_dir, &["cat", "/root/state"])
        .unwrap();
    assert_eq!(out.stdout, b"persisted\n");
    let pid = st.process.unwrap();
    // SAFETY: SIGKILL to the qemu process this test started.
    unsafe { libc::kill(pid.pid, libc::SIGKILL) };
    assert!(pid.wait_exit(Duration::from_secs(10)));
    assert!(!backend.status(&state_dir).unwrap().running);
    let st = backend.start(&spec).unwrap();
    let out = backend
        .exec_capture(&state_dir, &["cat", "/root/state"])
        .unwrap();
    assert_eq!(out.stdout, b"persisted\n");
    backend
        .destroy(&state_dir, Duration::from_secs(10))
        .unwrap();
    assert!(!st.process.unwrap().alive());
    assert!(!st.disk.exists(), "destroy removes the environment's disk");
}
