//! `backend = "vm"` through the real binary, under qemu TCG (never KVM on the development
//! machines): `up`, `exec` (guest kernel, exit codes, separate stdout/stderr, stdin), `logs`
//! of a service, `shell` on a terminal, `status --json` with the VM's facts, reconcile, kill -9 of qemu → dead →
//! `up` recovers, `snapshot save|ls|restore|rm` of the disk, read-only shares enforced by the host, `down` leaves no process, socket or disk lock, `destroy`, and `run`; without virtio-fs, bind and volume mounts served by live sync (read-only one-way).
//!
//! The same tests run under berth's own VMM in the nested guest (`tests/tests/nested.rs` sets
//! `BERTH_TEST_VMM=kvm` there; never on the host, whose /dev/kvm is kvm_pvm): `vmm = "kvm"`,
//! bind and volume mounts served by sync, `[[ports]]` through virtio-net on a tap on berth's
//! bridge with NAT, snapshots of the stopped VM (berth's VMM cannot pause a running one).
//!
//! berth is used as installed: the binary and the static `berth-agent` copied into one
//! folder, no BERTH_AGENT. The Debian kernel is cached in `target/berth-test-cache/kernels`
//! (shared with the runtime's `vm_qemu` test), so it is downloaded once. Needs root, qemu,
//! mkfs.ext4, busybox-static and a reachable Debian mirror; skips saying why otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use berth_e2e::host::{
    busybox_rootfs, copy_program_with_libs, files_containing, have, root_skip_reason, HostSnapshot,
};
use berth_e2e::ports::free_port;
use berth_e2e::{berth_bin, text, Berth};

/// Whether the VMs run under berth's own VMM (`BERTH_TEST_VMM=kvm`, only inside the nested
/// guest) instead of qemu under TCG.
fn own_vmm() -> bool {
    match std::env::var("BERTH_TEST_VMM").as_deref() {
        Err(_) | Ok("qemu") => false,
        Ok("kvm") => {
            assert!(
                berth_e2e::nested::is_nested(),
                "BERTH_TEST_VMM=kvm runs only in the nested guest (tests/tests/nested.rs): \
                 this host's /dev/kvm must never boot a kernel"
            );
            true
        }
        Ok(other) => panic!("BERTH_TEST_VMM={other}: expected qemu or kvm"),
    }
}

/// `berth_toml` with the VMM the tests use (the files name `vmm = "qemu"`).
fn with_vmm(berth_toml: &str) -> String {
    assert!(berth_toml.contains("vmm = \"qemu\""), "{berth_toml}");
    if own_vmm() {
        berth_toml.replace("vmm = \"qemu\"", "vmm = \"kvm\"")
    } else {
        berth_toml.to_string()
    }
}

fn skip_reason() -> Option<String> {
    if let Some(why) = root_skip_reason() {
        return Some(why);
    }
    for (tool, arg, pkg) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("qemu-img", "--version", "qemu-utils"),
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("/bin/busybox", "true", "busybox-static"),
    ] {
        if !have(tool, arg) {
            return Some(format!("{tool} is missing (apt-get install {pkg})"));
        }
    }
    None
}

/// berth as a package installs it: the binary with the static agent beside it.
struct Installed {
    dir: tempfile::TempDir,
}

impl Installed {
    fn new() -> Installed {
        let dir = tempfile::Builder::new()
            .prefix("berth-install-")
            .tempdir()
            .unwrap();
        std::fs::copy(berth_bin(), dir.path().join("berth")).unwrap();
        std::fs::copy(
            berth_e2e::vm::static_agent(),
            dir.path().join("berth-agent"),
        )
        .unwrap();
        Installed { dir }
    }
}

/// The longest one berth command of these tests may take: a VM's first boot under the nested
/// guest's emulation takes about a minute, a whole test in it three.
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

struct Vm<'a> {
    berth: &'a Berth,
    exe: PathBuf,
    project: PathBuf,
    /// Extra environment of every command.
    env: Vec<(&'static str, &'static str)>,
}

impl Vm<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.env("BERTH_HOME", self.berth.home.path())
            .env("NO_COLOR", "1")
            .env_remove("BERTH_AGENT")
            .envs(self.env.iter().copied())
            .current_dir(&self.project)
            .args(args);
        c
    }

    /// Runs berth with `args`; one that hangs fails the test within [`COMMAND_LIMIT`],
    /// saying which command and what ran then.
    fn run(&self, args: &[&str]) -> Output {
        berth_e2e::bounded_wait::output_within(&mut self.cmd(args), COMMAND_LIMIT, &|| {
            self.consoles()
        })
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "berth {args:?} failed ({:?}):\n{out}\n{err}\n{}",
            o.status,
            self.consoles()
        );
        out
    }

    /// The guests' console logs, the VMMs' own logs and the sync processes' logs, for failure
    /// messages.
    fn consoles(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(self.berth.home.path().join("envs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for name in ["console.log", "vmm.log", "qemu.log", "sync.log"] {
                let log = e.path().join("logs").join(name);
                let Ok(text) = std::fs::read_to_string(&log) else {
                    continue;
                };
                all.push_str(&format!("--- {} ---\n{text}\n", log.display()));
            }
        }
        all
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }
}

/// `/proc/<pid>` is gone or a zombie waiting for its reaper.
fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The virtiofsd processes serving folders of the environment in `env_dir` (named in their
/// arguments, or, when berth hands them the socket, in their environment's
/// `BERTH_SHARE_SOCKET`).
fn virtiofsd_of(env_dir: &Path) -> Vec<String> {
    let dir = env_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let environ = String::from_utf8_lossy(&environ);
            let share = format!("BERTH_SHARE_SOCKET={dir}/");
            (cmd.contains("virtiofsd") && (cmd.contains(&dir) || environ.contains(&share)))
                .then_some(cmd)
        })
        .collect()
}

fn wait_gone(pid: i64) -> bool {
    for _ in 0..100 {
        if process_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Runs a QMP command on qemu's monitor socket (as a `snapshot save` killed midway would
/// have: `stop` leaves the VM paused).
fn qmp(socket: &Path, command: &str) {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{cmd}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(!line.contains("\"error\""), "{cmd}: {line}");
            if line.contains("\"return\"") {
                break;
            }
        }
    }
}

const TOML: &str = r#"
name = "{name}"
backend = "vm"
on_up = ["echo on-up-ran >> /root/on_up", "test -f /work/hello.txt"]
[image]
from = "rootfs:./rootfs"
[env]
GREETING = "hello from the plan"
[vm]
kernel = "debian:linux-image-cloud-amd64"
vmm = "qemu"
memory = "256MiB"
vcpus = 1
[services]
ticker = { command = ["sh", "-c", "echo tick $GREETING ${VM_TOKEN:+token-set}; echo tock; sleep 1000"] }
web = { command = ["sh", "-c", "mkdir -p /srv && echo served-from-the-guest > /srv/index.html && exec httpd -f -p 80 -h /srv"] }
[secrets]
VM_TOKEN = { from_file = "secret.txt", as_env = true }
[[ports]]
host = {port}
guest = 80
[[mounts]]
source = "./src"
target = "/work"
type = "sync"
ignore = ["build/"]
[[mounts]]
source = "./src"
target = "/ro"
readonly = true
[[mounts]]
source = "cache"
target = "/cache"
type = "volume"
"#;

/// A berth home using the shared kernel cache, berth installed with its agent, and a
/// project folder (prefix `prefix`) holding a busybox `rootfs/` and `src/hello.txt`.
fn workspace(prefix: &str) -> (Berth, Installed, tempfile::TempDir, PathBuf) {
    let berth = Berth::new();
    // The kernel cache the runtime's vm_qemu test uses: downloaded once per checkout.
    let kernel_cache = berth_e2e::vm::kernel_cache();
    std::fs::create_dir_all(&kernel_cache).unwrap();
    std::os::unix::fs::symlink(&kernel_cache, berth.home.path().join("kernels")).unwrap();
    let installed = Installed::new();
    let project = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    busybox_rootfs(&project.path().join("rootfs"));
    let src = project.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "from the host\n").unwrap();
    (berth, installed, project, src)
}

/// A read-only virtio-fs share refuses writes, and the host enforces it: a guest that remounts
/// the share read-write still cannot write.
fn read_only_share_is_enforced_by_the_host(vm: &Vm, src: &Path) {
    let o = vm.run(&["exec", "--", "touch", "/ro/nope"]);
    assert_ne!(o.status.code(), Some(0), "a read-only share took a write");
    assert!(!src.join("nope").exists());
    let o = vm.run(&[
        "exec",
        "--",
        "sh",
        "-c",
        "mount -o remount,rw /ro && grep ' /ro ' /proc/mounts && touch /ro/nope",
    ]);
    let (out, err) = text(&o);
    assert!(
        out.contains(" rw,") || out.contains(" rw "),
        "the guest could not remount /ro rw: {out}\n{err}"
    );
    assert_ne!(
        o.status.code(),
        Some(0),
        "a remounted read-only share took a write"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!src.join("nope").exists());
}

/// `snapshot save|ls|restore|rm` of a running qemu VM: the disk (synced, paused while copied,
/// resumed) is valid after the base image cache is cleared; a VM left paused by a killed save
/// is resumed by the next command; restore reboots the VM on the old disk. Returns the pid of
/// the restarted VM.
fn snapshot_of_the_running_qemu_vm(vm: &Vm, env_dir: &Path, pid: i64) -> i64 {
    let berth = vm.berth;
    vm.ok(&["exec", "--", "sh", "-c", "echo before > /root/snap.txt"]);
    // A VM left paused by an interrupted save is resumed by the next one.
    qmp(&env_dir.join("qmp.sock"), "stop");
    let out = vm.ok(&["snapshot", "save", "one"]);
    assert!(out.contains("saved snapshot one of"), "{out}");
    assert_eq!(vm.status()["pid"].as_i64(), Some(pid), "save kept the VM");
    assert_eq!(vm.ok(&["exec", "--", "cat", "/root/snap.txt"]), "before\n");
    // Left paused by a killed save, the VM is resumed (with a notice) by exec, and by up.
    qmp(&env_dir.join("qmp.sock"), "stop");
    let o = vm.run(&["exec", "--", "cat", "/root/snap.txt"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exec of a paused VM:\n{out}\n{err}");
    assert_eq!(out, "before\n");
    assert!(err.contains("the VM was paused"), "{err}");
    qmp(&env_dir.join("qmp.sock"), "stop");
    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.contains("is up to date"),
        "{out}\n{err}"
    );
    assert!(err.contains("the VM was paused"), "{out}\n{err}");
    assert_eq!(vm.ok(&["exec", "--", "cat", "/root/snap.txt"]), "before\n");
    assert!(!vm
        .run(&["exec", "--", "true"])
        .stderr
        .starts_with(b"berth: notice"));
    vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo after > /root/snap.txt; echo new > /root/extra; sync",
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&vm.ok(&["snapshot", "ls", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "one", "{list}");
    let folder = env_dir
        .join("snapshots")
        .join(list[0]["disk"].as_str().unwrap());
    assert!(folder.join("disk.qcow2").is_file() && folder.join("base.ext4").is_file());
    for e in std::fs::read_dir(berth.home.path().join("disks"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "ext4") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let out = vm.ok(&["snapshot", "restore", "one"]);
    assert!(
        out.contains("restored snapshot one of") && out.contains("started it again"),
        "{out}"
    );
    let st = vm.status();
    assert_eq!(st["status"], "running", "{st}");
    let restarted = st["pid"].as_i64().unwrap();
    assert!(wait_gone(pid), "the VM was not stopped for the restore");
    let pid = restarted;
    assert_eq!(
        vm.ok(&[
            "exec",
            "--",
            "sh",
            "-c",
            "cat /root/snap.txt /root/state; ls /root"
        ]),
        "before\nkept\non_up\nsnap.txt\nstate\n"
    );
    vm.ok(&["snapshot", "rm", "one"]);
    assert!(vm.ok(&["snapshot", "ls"]).contains("has no snapshots"));
    assert!(!folder.exists(), "rm left {}", folder.display());

    pid
}

/// The host's SSH agent and git credential helper in the VM's sessions, through streams the
/// agent opens on the command's channel: `ssh-add -l` lists the host agent's key in `exec`,
/// `shell` and an SSH session; `git push` over HTTP authenticates with the host's credential
/// store (added to `~/.gitconfig` after `up`: the next `up` notices, while a warm `up` of an
/// unchanged configuration runs no git); the session's folder is
/// private and goes with the session; `[credentials]` turns both off (left off).
/// `listen`/`host_address`: where a host server listens and how the guest reaches it.
fn forwarded_credentials(vm: &Vm, name: &str, git_home: &Path, listen: &str, host_address: &str) {
    use berth_e2e::forwarded::{GitServer, SshAgent, KEY_COMMENT};
    let t0 = std::time::Instant::now();
    let agent = SshAgent::start();
    let password = format!("vm-pw-marker-{}", std::process::id());
    let server = GitServer::start(listen, "ada", &password);
    let store = git_home.join("credentials");
    std::fs::write(
        &store,
        format!("http://ada:{password}@{host_address}%3a{}\n", server.port),
    )
    .unwrap();
    // A warm `up` runs no git while nothing git reads changed since the last (a git that
    // fails and leaves a mark stands in for the host's), and runs it again once
    // `~/.gitconfig` changed: the credential helper added below reaches the sessions.
    let fake = git_home.join("fake-bin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("git"), "#!/bin/sh\ntouch \"$0.ran\"\nexit 1\n").unwrap();
    std::fs::set_permissions(
        fake.join("git"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let o = vm.cmd(&["up"]).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        !fake.join("git.ran").exists(),
        "a warm up ran the host's git"
    );
    let gitconfig = git_home.join(".gitconfig");
    let mut text_before = std::fs::read_to_string(&gitconfig).unwrap();
    text_before.push_str(&format!(
        "[credential]\n\thelper = store --file {}\n",
        store.display()
    ));
    std::fs::write(&gitconfig, text_before).unwrap();
    vm.ok(&["up"]);
    let sock = agent.socket();
    let with_agent = |args: &[&str]| -> String {
        let o = vm
            .cmd(args)
            .env("SSH_AUTH_SOCK", &sock)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "berth {args:?}: {out}\n{err}");
        format!("{out}{err}")
    };
    let script = format!(
        "set -e; ssh-add -l; d=$(dirname $SSH_AUTH_SOCK); stat -c \"dir=%a:%u\" $d; echo $d > /tmp/where; \
         cd /tmp; git init -q r; cd r; echo one > f; git add f; git commit -q -m from-the-vm; \
         git push -q {url} HEAD:main 2>&1; echo pushed; \
         if grep -rqs {password} /root /tmp; then echo LEAKED-INSIDE; fi; cd /; rm -rf /tmp/r",
        url = server.url_via(host_address)
    );
    let out = with_agent(&["exec", "--", "sh", "-c", &script]);
    assert!(
        out.contains(KEY_COMMENT) && out.contains("dir=700:0") && out.contains("pushed"),
        "{out}"
    );
    assert!(!out.contains("LEAKED-INSIDE"), "{out}");
    assert_eq!(server.log().trim(), "from-the-vm|Ada Vm|ada@vm.example");
    // shell (stdin not a terminal: the shell reads its commands from it).
    let mut shell = vm
        .cmd(&["shell"])
        .env("SSH_AUTH_SOCK", &sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"ssh-add -l\n")
        .unwrap();
    let o = shell.wait_with_output().unwrap();
    assert!(text(&o).0.contains(KEY_COMMENT), "shell: {:?}", text(&o));
    // An SSH session: berth's own forwarding of the ProxyCommand's SSH_AUTH_SOCK.
    let cfg = git_home.join("ssh_config");
    std::fs::write(&cfg, vm.ok(&["ssh-config"])).unwrap();
    let o = Command::new("timeout")
        .args(["120", "ssh", "-F"])
        .arg(&cfg)
        .args([
            "-o",
            "ForwardAgent=no",
            &format!("berth-{name}"),
            "ssh-add -l",
        ])
        .env("SSH_AUTH_SOCK", &sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(text(&o).0.contains(KEY_COMMENT), "ssh: {:?}", text(&o));
    // `[credentials]` turns both off (no restart); the first session's folder went with it.
    let toml_path = vm.project.join("berth.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap();
    std::fs::write(
        &toml_path,
        format!("{toml}[credentials]\nssh_agent = false\ngit_credentials = false\n"),
    )
    .unwrap();
    vm.ok(&["up"]);
    let out = with_agent(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo agent=${SSH_AUTH_SOCK:-none}; git config --get-all credential.helper || echo no-helper; \
         test -e $(cat /tmp/where) || echo gone",
    ]);
    assert_eq!(out, "agent=none\nno-helper\ngone\n");
    eprintln!("forwarded credentials: {:?}", t0.elapsed());
}

#[test]
fn vm_environment_through_the_cli() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (berth, installed, project, src) = workspace("berth-vmproj-");
    let port = free_port();
    let name = format!(
        "vm-{}",
        project
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
            .trim_start_matches("berth-vmproj-")
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    );
    std::fs::write(
        project.path().join("berth.toml"),
        with_vmm(
            &TOML
                .replace("{name}", &name)
                .replace("{port}", &port.to_string()),
        ),
    )
    .unwrap();
    // `[secrets]` and the host user's git identity reach the guest (its tmpfs), never a
    // host file: the VM's disk, records and logs are searched for the marker at the end.
    let marker = format!("vm-secret-marker-{}", std::process::id());
    std::fs::write(project.path().join("secret.txt"), &marker).unwrap();
    let git_home = tempfile::Builder::new()
        .prefix("berth-vm-git-home-")
        .tempdir()
        .unwrap();
    std::fs::write(
        git_home.path().join(".gitconfig"),
        "[user]\n\tname = Ada Vm\n\temail = ada@vm.example\n",
    )
    .unwrap();
    let rootfs = project.path().join("rootfs");
    for program in [
        "/usr/bin/git",
        "/usr/lib/git-core/git-remote-http",
        "/usr/bin/ssh-add",
    ] {
        copy_program_with_libs(Path::new(program), &rootfs);
    }
    let vm = Vm {
        berth: &berth,
        exe: installed.dir.path().join("berth"),
        project: project.path().to_path_buf(),
        env: vec![(
            "HOME",
            Box::leak(
                git_home
                    .path()
                    .to_string_lossy()
                    .into_owned()
                    .into_boxed_str(),
            ),
        )],
    };
    let home = berth.home.path().to_string_lossy().into_owned();
    let before = HostSnapshot::take(&[&home]);
    let own = own_vmm();
    let (provider, accel, provider_text) = if own {
        ("kvm", "kvm", "berth's VMM (kvm)")
    } else {
        ("qemu", "tcg", "qemu (tcg)")
    };
    let disk_file = if own { "disk.img" } else { "disk.qcow2" };

    // up: the image's layers become the VM's disk; the agent is found beside berth.
    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "up failed:\n{out}\n{err}\n{}",
        vm.consoles()
    );
    assert!(out.contains("created and started"), "{out}");
    assert!(
        !err.contains("not forwarded") && !out.contains("not forwarded"),
        "qemu VMs forward ports: {out}\n{err}"
    );
    // The sync mount is synced over the agent channel: no notice about it (the progress
    // lines of the on_up steps name their commands, which mention it).
    assert!(
        !err.lines()
            .filter(|l| !l.starts_with("on_up "))
            .any(|l| l.contains("/work")),
        "{err}"
    );
    assert!(!err.contains("skipped"), "VMs skip no mounts: {err}");
    // berth's VMM shares no folders: the bind and volume mounts are synced, saying so.
    for what in ["bind mount on /ro", "volume mount on /cache"] {
        assert_eq!(
            err.contains(&format!("{what} is served as a sync mount")),
            own,
            "{err}"
        );
    }
    let st = vm.status();
    assert_eq!(st["status"], "running", "{st}");
    let facts = &st["vm"];
    assert_eq!(facts["provider"], provider, "{st}");
    assert_eq!(facts["accel"], accel, "{st}");
    assert_eq!(facts["vcpus"], 1, "{st}");
    assert_eq!(facts["memory"], 256u64 << 20, "{st}");
    assert!(facts["boot_ms"].as_u64().is_some(), "{st}");
    let release = facts["kernel_release"].as_str().unwrap().to_string();
    assert!(release.contains("cloud-amd64"), "{st}");
    let pid = st["pid"].as_i64().unwrap();
    let env_dir = berth
        .home
        .path()
        .join("envs")
        .join(st["env_id"].as_str().unwrap());
    let human = vm.ok(&["status"]);
    assert!(human.contains(&format!("kernel:   {release}")), "{human}");
    assert!(
        human.contains(&format!(
            "vm:       {provider_text}, 1 vCPU(s), 256 MiB memory"
        )),
        "{human}"
    );

    // exec: the guest's kernel, exit codes, stdout and stderr apart, stdin forwarded.
    let uname = vm.ok(&["exec", "--", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(uname.trim(), release);
    // (In the nested guest the host runs the same Debian kernel: the command line tells.)
    if !berth_e2e::nested::is_nested() {
        assert_ne!(uname.trim(), host.trim(), "exec ran on the host kernel");
    }
    let cmdline = vm.ok(&["exec", "--", "cat", "/proc/cmdline"]);
    assert!(
        cmdline.contains("berth.root=/dev/vda"),
        "exec ran outside the VM: {cmdline}"
    );
    let o = vm.run(&["exec", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    let o = vm.run(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{:?}", text(&o));
    assert_eq!(text(&o), ("to-out\n".into(), "to-err\n".into()));
    let mut child = vm
        .cmd(&[
            "exec",
            "-e",
            "EXTRA=x1",
            "--",
            "sh",
            "-c",
            "read line; echo got $line $EXTRA; echo $GREETING; cat /root/on_up",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "got hello x1\nhello from the plan\non-up-ran\n"
    );

    // The secret: a file on the guest's tmpfs, 0400, the shell user's (root here), and a
    // variable; the host's git identity in the guest's system gitconfig.
    let out = vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "cat /run/secrets/VM_TOKEN; echo; stat -c '%a %U' /run/secrets/VM_TOKEN; \
         grep ' /run/secrets ' /proc/mounts | cut -d' ' -f3; echo \"env=$VM_TOKEN\"; \
         git config user.name; echo $GIT_CONFIG_SYSTEM",
    ]);
    assert_eq!(
        out,
        format!("{marker}\n400 root\ntmpfs\nenv={marker}\nAda Vm\n/run/berth/gitconfig\n")
    );

    // ports: the guest's NIC is up (qemu's user network; under berth's VMM virtio-net on a tap
    // on berth's bridge) and its web service answers through the forwarded host port.
    assert!(
        berth_e2e::vm::http_get_forwarded(port, Duration::from_secs(20))
            .contains("served-from-the-guest")
    );
    let ip = vm.ok(&["exec", "--", "sh", "-c", "ip -4 addr; cat /etc/resolv.conf"]);
    // Outbound: the default route reaches the host (qemu: 10.0.2.2 is the host's loopback;
    // berth's VMM: the bridge's address, through the bridge).
    let (listen, host_address) = if own {
        // `network:  address 10.88.0.2, gateway 10.88.0.1`
        let (address, gateway) = human
            .lines()
            .find_map(|l| {
                let rest = l.split_once("address ")?.1;
                let (a, g) = rest.split_once(", gateway ")?;
                Some((a.trim().to_string(), g.trim().to_string()))
            })
            .unwrap_or_else(|| panic!("no address in status:\n{human}"));
        assert!(
            ip.contains(&format!("inet {address}/")) && ip.contains("nameserver"),
            "{ip}\n{human}"
        );
        ("0.0.0.0", gateway)
    } else {
        assert!(
            ip.contains("10.0.2.15/24") && ip.contains("nameserver 10.0.2.3"),
            "{ip}"
        );
        ("127.0.0.1", "10.0.2.2".to_string())
    };
    let outside = std::net::TcpListener::bind((listen, 0)).unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = outside.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got
    });
    vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        &format!("echo out-of-the-guest | nc -w 5 {host_address} {outside_port}"),
    ]);
    assert_eq!(accepted.join().unwrap(), "out-of-the-guest\n");

    // The sync mount (live sync over the agent channel): `up` waited for the first pass,
    // changes go both ways (visible after `berth sync --flush`), the ignored folder stays
    // on its side. Bind and volume mounts are virtio-fs shares under qemu (read-only mounts
    // refuse writes), synced under berth's VMM; a volume lives under volumes/.
    assert_eq!(
        virtiofsd_of(&env_dir).len(),
        if own { 0 } else { 2 },
        "one virtiofsd per shared folder (the sync mount has none)"
    );
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/work/hello.txt"]),
        "from the host\n"
    );
    vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo from the guest > /work/out.txt; mkdir -p /work/build; echo obj > /work/build/guest.o",
    ]);
    std::fs::write(src.join("late.txt"), "written while up\n").unwrap();
    std::fs::create_dir(src.join("build")).unwrap();
    std::fs::write(src.join("build/host.o"), "obj\n").unwrap();
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        std::fs::read_to_string(src.join("out.txt")).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/work/late.txt"]),
        "written while up\n"
    );
    assert!(
        !src.join("build/guest.o").exists(),
        "ignored file copied to the host"
    );
    assert_eq!(
        vm.ok(&["exec", "--", "ls", "/work/build"]),
        "guest.o\n",
        "ignored file copied into the guest"
    );
    // `berth status` and `berth sync` show the mount as for a container.
    let human = vm.ok(&["status"]);
    assert!(human.contains(" ⇄ /work: "), "{human}");
    assert!(
        vm.ok(&["sync"]).contains(" ⇄ /work: watching"),
        "sync state"
    );
    let sync_json = || std::fs::read_to_string(env_dir.join("sync.json")).ok();
    let sync_pid = |j: &str| -> i64 {
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        v["process"]["pid"].as_i64().unwrap()
    };
    let first_sync = sync_pid(&sync_json().expect("sync.json while up"));
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/ro/hello.txt"]),
        "from the host\n"
    );
    if own {
        // A read-only sync mount is one-way: what the guest writes never reaches the host
        // (vm_folders_without_virtio_fs_are_synced checks that it is undone inside).
        vm.ok(&["exec", "--", "touch", "/ro/nope"]);
        vm.ok(&["sync", "--flush"]);
        assert!(
            !src.join("nope").exists(),
            "a read-only sync mount took a write"
        );
    } else {
        read_only_share_is_enforced_by_the_host(&vm, &src);
    }
    vm.ok(&["exec", "--", "sh", "-c", "echo kept > /cache/v.txt"]);
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        std::fs::read_to_string(berth.home.path().join("volumes/cache/v.txt")).unwrap(),
        "kept\n"
    );

    // logs: the service's output, kept in the guest.
    let mut logs = String::new();
    for _ in 0..50 {
        logs = vm.ok(&["logs", "-n", "1"]);
        if !logs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two services (ticker, and web which prints nothing): lines carry the service's name.
    assert_eq!(logs, "ticker | tock\n");
    assert_eq!(
        vm.ok(&["logs", "ticker"]),
        "tick hello from the plan token-set\ntock\n"
    );
    assert_ne!(vm.run(&["logs", "nope"]).status.code(), Some(0));

    // shell on a terminal: the guest's PTY has the caller's size and follows a resize.
    if have("expect", "-v") {
        let script = format!(
            r##"set timeout 60
spawn {exe} shell
expect "# "
send "stty size\r"
expect "24 80"
stty rows 40 columns 132 < $spawn_out(slave,name)
sleep 0.5
send "stty size\r"
expect "40 132"
send "exit 5\r"
expect eof
catch wait result
exit [lindex $result 3]
"##,
            exe = vm.exe.display()
        );
        let o = Command::new("expect")
            .args(["-c", &script])
            .env("BERTH_HOME", berth.home.path())
            .current_dir(project.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(5), "shell: {:?}", text(&o));
    } else {
        eprintln!(
            "note: expect is missing, the terminal part was skipped (apt-get install expect)"
        );
    }

    // Reconcile: an unchanged plan on a running VM is a no-op.
    let out = vm.ok(&["up"]);
    assert!(out.contains("is up to date"), "{out}");
    assert_eq!(vm.status()["pid"].as_i64(), Some(pid));
    // (Leaves `[credentials]` off.)
    forwarded_credentials(&vm, &name, git_home.path(), listen, &host_address);
    // kill -9 of the sync process: the next `up` (nothing else changed) restarts it, and it
    // catches up with what changed meanwhile.
    // SAFETY: SIGKILL to the sync process this test's `up` started.
    unsafe { libc::kill(first_sync as i32, libc::SIGKILL) };
    assert!(wait_gone(first_sync));
    std::fs::write(src.join("while-killed.txt"), "sync was down\n").unwrap();
    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.contains("is up to date"),
        "{out}\n{err}\n{}",
        vm.consoles()
    );
    assert!(err.contains("sync process was not running"), "{err}");
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/work/while-killed.txt"]),
        "sync was down\n"
    );
    let first_sync = sync_pid(&sync_json().expect("sync.json after the restart"));
    vm.ok(&["exec", "--", "sh", "-c", "echo kept > /root/state; sync"]);

    // kill -9 of qemu: status says dead, exec says not running, up recovers with the disk.
    // SAFETY: SIGKILL to the qemu process this test's `up` started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_gone(pid));
    let o = vm.run(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["status"], "dead", "{st}");
    assert_eq!(vm.run(&["exec", "--", "true"]).status.code(), Some(3));
    // The sync process notices and ends; nothing on the host is lost, and the next `up`
    // starts a new one that converges with what changed meanwhile.
    assert!(wait_gone(first_sync), "the sync process outlived its VM");
    assert_eq!(
        std::fs::read_to_string(src.join("out.txt")).unwrap(),
        "from the guest\n"
    );
    std::fs::write(src.join("while-down.txt"), "written while down\n").unwrap();
    let out = vm.ok(&["up"]);
    assert!(out.contains("started"), "{out}");
    let st = vm.status();
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(vm.ok(&["exec", "--", "cat", "/root/state"]), "kept\n");
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/work/while-down.txt"]),
        "written while down\n"
    );
    let second_sync = sync_pid(&sync_json().expect("sync.json after up"));

    // snapshot: qemu's disk of the running VM; berth's own VMM cannot pause a running VM and
    // says so (snapshots of the stopped VM below work for both).
    let pid = if own {
        let o = vm.run(&["snapshot", "save", "one"]);
        let (out, err) = text(&o);
        assert!(
            !o.status.success() && err.contains("stop it with `berth down` first"),
            "{out}\n{err}"
        );
        assert_eq!(
            vm.status()["pid"].as_i64(),
            Some(pid),
            "the failed save kept the VM"
        );
        pid
    } else {
        snapshot_of_the_running_qemu_vm(&vm, &env_dir, pid)
    };

    // down: the guest powers off; no process, socket, pid file or disk lock stays.
    let out = vm.ok(&["down"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(wait_gone(pid), "the VMM still runs after down");
    assert!(
        process_gone(second_sync),
        "the sync process outlived `down`"
    );
    assert!(sync_json().is_none(), "sync.json left after down");
    for _ in 0..50 {
        if virtiofsd_of(&env_dir).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        virtiofsd_of(&env_dir),
        Vec::<String>::new(),
        "virtiofsd left after down"
    );
    for f in [
        "control.sock",
        "control-1.sock",
        "control.lock",
        "qemu.pid",
        "vm.json",
    ] {
        assert!(!env_dir.join(f).exists(), "{f} left after down");
    }
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(env_dir.join(disk_file))
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "the disk is still locked after down: {}",
        String::from_utf8_lossy(&info.stderr)
    );
    let st = vm.status();
    assert_eq!(st["status"], "stopped", "{st}");
    assert!(
        st.get("vm").is_none(),
        "a stopped VM shows no VM facts: {st}"
    );
    // A stopped VM's snapshot is its disk as it is; restoring it does not start the VM.
    vm.ok(&["snapshot", "save", "two"]);
    let list: serde_json::Value =
        serde_json::from_str(&vm.ok(&["snapshot", "ls", "--json"])).unwrap();
    let saved = env_dir
        .join("snapshots")
        .join(list[0]["disk"].as_str().unwrap())
        .join(disk_file);
    let out = vm.ok(&["snapshot", "restore", "two"]);
    assert!(!out.contains("started it again"), "{out}");
    assert_eq!(vm.status()["status"], "stopped");
    let same = Command::new("qemu-img")
        .arg("compare")
        .arg(env_dir.join(disk_file))
        .arg(&saved)
        .output()
        .unwrap();
    assert!(same.status.success(), "{:?}", text(&same));
    assert_eq!(vm.run(&["exec", "--", "true"]).status.code(), Some(3));

    // A busy host port: `up` fails before starting qemu, naming the port and its holder,
    // and leaves nothing running.
    let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "up with a busy port succeeded:\n{out}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("already in use"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(holder);
    let st = vm.status();
    assert_eq!(st["status"], "stopped", "{st}");
    for f in ["control.sock", "qemu.pid", "vm.json"] {
        assert!(!env_dir.join(f).exists(), "{f} left after a failed up");
    }

    // The secret is on no host file: not the VM's disk, records, logs or snapshots.
    let found = files_containing(berth.home.path(), &marker);
    assert!(found.is_empty(), "the secret was written to {found:?}");

    // destroy removes the environment's folder (its disk with it).
    vm.ok(&["destroy"]);
    assert!(!env_dir.exists(), "destroy left {}", env_dir.display());

    // run: a throw-away VM, the command's exit code and output, nothing left afterwards.
    let o = vm.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "uname -r; echo run-err >&2; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{:?}", text(&o));
    assert_eq!(text(&o).0.trim(), release);
    assert!(text(&o).1.contains("run-err"), "{:?}", text(&o));
    // The VM is stopped and removed by the run's removal process, after the exit code.
    berth.wait_for_background_teardowns();
    let left: Vec<_> = std::fs::read_dir(berth.home.path().join("envs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run left {left:?}");

    let after = HostSnapshot::take(&[&home]);
    before.assert_nothing_leaked(&after);
}

/// Without virtio-fs (here forced with `BERTH_VIRTIOFSD=none`; berth's own VMM always), `bind`
/// and `volume` mounts are served by live sync over the agent channel: `up` says so, an
/// `exec -w` into a missing folder fails naming it, the
/// folders arrive, a volume's guest writes reach its folder under volumes/, a `readonly` bind
/// mount is one-way (an edit inside is undone, the host keeps its file), and `down` leaves
/// no sync process and no virtiofsd.
#[test]
fn vm_folders_without_virtio_fs_are_synced() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (berth, installed, project, src) = workspace("berth-vmsyncproj-");
    std::fs::write(
        project.path().join("berth.toml"),
        with_vmm(
            r#"name = "vm-nofs"
backend = "vm"
[image]
from = "rootfs:./rootfs"
[vm]
kernel = "debian:linux-image-cloud-amd64"
vmm = "qemu"
memory = "256MiB"
vcpus = 1
[[mounts]]
source = "./src"
target = "/ro"
readonly = true
[[mounts]]
source = "data"
target = "/data"
type = "volume"
"#,
        ),
    )
    .unwrap();
    let vm = Vm {
        berth: &berth,
        exe: installed.dir.path().join("berth"),
        project: project.path().to_path_buf(),
        env: vec![("BERTH_VIRTIOFSD", "none")],
    };
    let home = berth.home.path().to_string_lossy().into_owned();
    let before = HostSnapshot::take(&[&home]);

    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "up failed:\n{out}\n{err}\n{}",
        vm.consoles()
    );
    for what in ["bind mount on /ro", "volume mount on /data"] {
        assert!(
            err.contains(&format!("{what} is served as a sync mount")),
            "no notice for the {what}: {err}"
        );
    }
    let st = vm.status();
    let env_dir = berth
        .home
        .path()
        .join("envs")
        .join(st["env_id"].as_str().unwrap());
    let pid = st["pid"].as_i64().unwrap();
    assert!(virtiofsd_of(&env_dir).is_empty(), "virtiofsd runs");
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/ro/hello.txt"]),
        "from the host\n"
    );

    // An asked-for working directory that does not exist fails the command, naming it (exit
    // 126, worded as the container backend does).
    let o = vm.run(&["exec", "-w", "/nope", "--", "true"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(126), "{out}\n{err}");
    assert!(
        err.contains("cannot change to the working directory /nope: No such file"),
        "{err}"
    );

    // The volume: guest writes reach volumes/data on the host.
    vm.ok(&["exec", "--", "sh", "-c", "echo kept > /data/state.txt"]);
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        std::fs::read_to_string(berth.home.path().join("volumes/data/state.txt")).unwrap(),
        "kept\n"
    );

    // The read-only bind mount: an edit and a new file inside are undone; the host is
    // untouched; host edits still arrive.
    vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo changed inside > /ro/hello.txt; echo new > /ro/made-inside.txt",
    ]);
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        std::fs::read_to_string(src.join("hello.txt")).unwrap(),
        "from the host\n"
    );
    assert!(
        !src.join("made-inside.txt").exists(),
        "a guest file reached the host"
    );
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/ro/hello.txt"]),
        "from the host\n",
        "the edit inside was not undone"
    );
    assert_eq!(
        vm.run(&["exec", "--", "test", "-e", "/ro/made-inside.txt"])
            .status
            .code(),
        Some(1),
        "the file made inside was not removed"
    );
    std::fs::write(src.join("hello.txt"), "edited on the host\n").unwrap();
    vm.ok(&["sync", "--flush"]);
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/ro/hello.txt"]),
        "edited on the host\n"
    );

    let sync_pid = {
        let j = std::fs::read_to_string(env_dir.join("sync.json")).expect("sync.json while up");
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v["process"]["pid"].as_i64().unwrap()
    };
    vm.ok(&["down"]);
    assert!(wait_gone(pid), "qemu still runs after down");
    assert!(wait_gone(sync_pid), "the sync process outlived `down`");
    assert!(
        !env_dir.join("sync.json").exists(),
        "sync.json left after down"
    );
    vm.ok(&["destroy"]);
    before.assert_nothing_leaked(&HostSnapshot::take(&[&home]));
}

/// A `bind` share of a folder owned by a local user (berth as root): virtiofsd acts as that
/// user, never as host root. The guest's root copies busybox into the share and makes it
/// setuid, and writes a file: on the host both belong to the folder's owner (so the setuid bit
/// gives at most that user), and a file of host root's in the folder is not writable from the
/// guest. Before berth ran virtiofsd in a user namespace, all of it belonged to host root.
#[test]
fn vm_bind_share_acts_as_the_folders_owner_not_host_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let (berth, installed, project, src) = workspace("berth-vmownproj-");
    let user = berth_e2e::user::TestUser::create("berthvo");
    user.own(&src);
    // The project folder is root's and private (as root's checkouts under /root are): the
    // user's virtiofsd is served the folder without walking through it.
    std::fs::set_permissions(project.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let owner = std::fs::metadata(&src).unwrap().uid();
    assert_ne!(owner, 0);
    std::fs::write(src.join("roots.txt"), "root's\n").unwrap();
    std::fs::set_permissions(
        src.join("roots.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(
        project.path().join("berth.toml"),
        r#"name = "vm-owner"
backend = "vm"
[image]
from = "rootfs:./rootfs"
[vm]
kernel = "debian:linux-image-cloud-amd64"
vmm = "qemu"
memory = "256MiB"
vcpus = 1
[[mounts]]
source = "./src"
target = "/work"
type = "bind"
"#,
    )
    .unwrap();
    let vm = Vm {
        berth: &berth,
        exe: installed.dir.path().join("berth"),
        project: project.path().to_path_buf(),
        env: Vec::new(),
    };
    let home = berth.home.path().to_string_lossy().into_owned();
    let before = HostSnapshot::take(&[&home]);
    let o = vm.run(&["up"]);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "up failed:\n{out}\n{err}\n{}",
        vm.consoles()
    );
    let st = vm.status();
    let env_dir = berth
        .home
        .path()
        .join("envs")
        .join(st["env_id"].as_str().unwrap());
    assert_eq!(
        virtiofsd_of(&env_dir).len(),
        1,
        "the share has no virtiofsd"
    );

    vm.ok(&[
        "exec",
        "--",
        "sh",
        "-c",
        "cp /bin/busybox /work/s && chmod 4755 /work/s && echo x > /work/f",
    ]);
    let s = std::fs::metadata(src.join("s")).unwrap();
    let f = std::fs::metadata(src.join("f")).unwrap();
    assert_eq!(
        (s.uid(), f.uid()),
        (owner, owner),
        "files the guest's root made belong to uid {} / {} on the host, not the folder's owner {owner}",
        s.uid(),
        f.uid()
    );
    assert_ne!(s.gid(), 0, "the setuid file has group root");
    assert_ne!(f.gid(), 0, "the file has group root");
    // A setuid bit the guest keeps is the owner's at most: running the file as the user does
    // not give euid 0 (Debian's busybox also drops privileges for most applets; the owner
    // check above is what proves it).
    // The user can reach the file now.
    std::fs::set_permissions(project.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let id = src.join("id");
    std::os::unix::fs::symlink("s", &id).unwrap();
    let o = user.run(&id, &["-u"]);
    assert_eq!(text(&o).0.trim(), owner.to_string(), "{:?}", text(&o));
    assert!(
        s.mode() & 0o4000 == 0 || s.uid() != 0,
        "a setuid host-root file was made"
    );
    // Inside, the owner's files appear as root's.
    assert_eq!(
        vm.ok(&["exec", "--", "stat", "-c", "%u", "/work/hello.txt"])
            .trim(),
        "0"
    );
    // Host root's file in the folder cannot be changed from the guest.
    let o = vm.run(&["exec", "--", "sh", "-c", "echo guest >> /work/roots.txt"]);
    assert_ne!(o.status.code(), Some(0), "the guest wrote root's file");
    assert_eq!(
        std::fs::read_to_string(src.join("roots.txt")).unwrap(),
        "root's\n"
    );

    vm.ok(&["down"]);
    vm.ok(&["destroy"]);
    before.assert_nothing_leaked(&HostSnapshot::take(&[&home]));
}
