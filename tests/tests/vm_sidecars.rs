//! Sidecars beside a VM environment through the real binary, under qemu TCG (never KVM on
//! the development machines), in one VM boot: two real Redis servers (Debian's
//! redis-server in busybox root filesystems), each a container of its own on berth's bridge,
//! both on port 6379; the guest reaches each by its name (the agent's block of the guest's
//! `/etc/hosts`), a changed sidecar restarts alone (the VM keeps running and still reaches it
//! by name), `down` stops the group, and `destroy` leaves nothing: no process, veth, lease, mount or cgroup.
//!
//! Needs root, qemu, mkfs.ext4, busybox-static, redis-server and a reachable Debian mirror
//! (for the kernel, cached in `target/berth-test-cache/kernels`); skips saying why otherwise.

use std::path::{Path, PathBuf};
use std::process::Output;

use berth_e2e::host::{copy_program_with_libs, have, root_skip_reason};
use berth_e2e::project::Project;
use berth_e2e::{text, Berth};

const TOML: &str = r#"
name = "{name}"
backend = "vm"
on_up = ["redis-cli -h cache ping > /root/on_up_answer 2>&1"]
[image]
from = "rootfs:./rootfs"
[vm]
kernel = "debian:linux-image-cloud-amd64"
vmm = "qemu"
memory = "256MiB"
vcpus = 1
[services.cache]
image = "rootfs:./redis-rootfs"
command = ["/bin/sh", "-c", "sleep 1; exec /usr/bin/redis-server --port 6379 --protected-mode no --dir /data"]
mounts = [{ source = "cache-data", target = "/data", type = "volume" }]
ready = { tcp = 6379, timeout = "60s" }
[services.store]
image = "rootfs:./redis-rootfs"
after = ["cache"]
command = ["/usr/bin/redis-server", "--port", "6379", "--protected-mode", "no"]
ready = { command = "/usr/bin/redis-server --version", timeout = "60s" }
"#;

fn skip_reason() -> Option<String> {
    if let Some(why) = root_skip_reason() {
        return Some(why);
    }
    for (tool, arg, pkg) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("qemu-img", "--version", "qemu-utils"),
        ("mkfs.ext4", "-V", "e2fsprogs"),
        ("/bin/busybox", "true", "busybox-static"),
        ("/usr/bin/redis-server", "--version", "redis-server"),
        ("/usr/bin/redis-cli", "--version", "redis-tools"),
    ] {
        if !have(tool, arg) {
            return Some(format!("{tool} is missing (apt-get install {pkg})"));
        }
    }
    None
}

struct Run<'a> {
    berth: &'a Berth,
    project: &'a Project,
    agent: PathBuf,
}

impl Run<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.berth
            .cmd()
            .env("BERTH_AGENT", &self.agent)
            .current_dir(self.project.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok_both(&self, args: &[&str]) -> (String, String) {
        let o = self.run(args);
        let (out, err) = text(&o);
        assert!(
            o.status.success(),
            "berth {args:?} failed ({:?}):\n{out}\n{err}\n{}",
            o.status,
            self.console()
        );
        (out, err)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_both(args).0
    }

    /// `redis-cli -h HOST ARGS…` inside the VM.
    fn redis(&self, host: &str, args: &[&str]) -> String {
        let mut argv = vec!["exec", "--", "redis-cli", "-h", host];
        argv.extend_from_slice(args);
        self.ok(&argv).trim().to_string()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    fn console(&self) -> String {
        let envs = self.berth.home.path().join("envs");
        let mut all = String::new();
        for e in std::fs::read_dir(envs).into_iter().flatten().flatten() {
            let log = e.path().join("logs").join("console.log");
            all.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        all
    }
}

fn pid(v: &serde_json::Value) -> u64 {
    v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {v}"))
}

#[test]
fn a_vm_reaches_its_redis_sidecars_by_name_on_the_bridge() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let berth = Berth::new();
    let kernel_cache = berth_e2e::vm::kernel_cache();
    std::fs::create_dir_all(&kernel_cache).unwrap();
    std::os::unix::fs::symlink(&kernel_cache, berth.home.path().join("kernels")).unwrap();
    let project = Project::new("berth-vm-sidecar-", "vs-", TOML);
    copy_program_with_libs(
        Path::new("/usr/bin/redis-cli"),
        &project.path().join("rootfs"),
    );
    let redis = project.path().join("redis-rootfs");
    berth_e2e::host::busybox_rootfs(&redis);
    copy_program_with_libs(Path::new("/usr/bin/redis-server"), &redis);
    let vm = Run {
        berth: &berth,
        project: &project,
        agent: berth_e2e::vm::static_agent(),
    };
    let before = project.snapshot(&berth);

    let (_, err) = vm.ok_both(&["up"]);
    let cache = err.find("waiting for sidecar cache to be ready (tcp 6379)");
    let store = err.find("waiting for sidecar store to be ready");
    assert!(
        cache.is_some() && store.is_some() && cache < store,
        "cache, then store:\n{err}"
    );
    // The sidecars were ready before on_up, which reached cache by its name.
    assert_eq!(
        vm.ok(&["exec", "--", "cat", "/root/on_up_answer"]).trim(),
        "PONG"
    );
    // Two servers on the same port, each with an address of its own on the bridge, named
    // in the guest's /etc/hosts.
    assert_eq!(vm.redis("cache", &["set", "who", "the cache"]), "OK");
    assert_eq!(vm.redis("store", &["set", "who", "the store"]), "OK");
    assert_eq!(vm.redis("cache", &["get", "who"]), "the cache");
    assert_eq!(vm.redis("store", &["get", "who"]), "the store");
    let hosts = vm.ok(&["exec", "--", "cat", "/etc/hosts"]);
    let status = vm.status();
    let sidecars = status["sidecars"].as_array().unwrap();
    assert_eq!(sidecars.len(), 2, "{status}");
    for s in sidecars {
        assert_eq!(s["status"], "running", "{status}");
        assert_eq!(s["ready"], true, "{status}");
        let name = s["name"].as_str().unwrap();
        let line = hosts
            .lines()
            .find(|l| l.ends_with(&format!("\t{name}")))
            .unwrap_or_else(|| panic!("{name} is not in the guest's /etc/hosts:\n{hosts}"));
        let address = line.split('\t').next().unwrap();
        assert!(
            address.starts_with(berth.subnet.trim_end_matches("0/24")),
            "{name} at {address}, not on the test's bridge {}:\n{hosts}",
            berth.subnet
        );
    }

    // A changed sidecar restarts alone: the VM and the other sidecar keep running, and the
    // guest still reaches it by name.
    let vm_pid = pid(&status);
    let cache_pid = pid(&sidecars[0]);
    let store_pid = pid(&sidecars[1]);
    project.write(&TOML.replace(
        "\"--protected-mode\", \"no\"]",
        "\"--protected-mode\", \"no\", \"--databases\", \"4\"]",
    ));
    vm.ok(&["up"]);
    let after = vm.status();
    assert_eq!(pid(&after), vm_pid, "the VM was restarted");
    assert_eq!(pid(&after["sidecars"][0]), cache_pid, "cache was restarted");
    assert_ne!(
        pid(&after["sidecars"][1]),
        store_pid,
        "store was not restarted"
    );
    assert_eq!(
        vm.redis("store", &["config", "get", "databases"]),
        "databases\n4"
    );
    assert_eq!(vm.redis("cache", &["get", "who"]), "the cache");

    // down stops the VM, then its sidecars (the reverse of their start).
    vm.ok(&["down"]);
    let down = vm.status();
    for s in down["sidecars"].as_array().unwrap() {
        assert_ne!(s["status"], "running", "{down}");
    }

    // destroy --volumes removes the VM, the sidecars, their veths, leases and volume.
    let volume = berth.home.path().join("volumes/cache-data");
    assert!(volume.exists(), "no volume for the sidecar");
    vm.ok(&["destroy", "--volumes"]);
    assert!(
        !volume.exists(),
        "destroy --volumes kept the sidecar's volume"
    );
    before.assert_nothing_leaked(&project.snapshot(&berth));
}
