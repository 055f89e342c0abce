//! The nested guest ("L1"): a Linux VM under qemu **TCG** (`-accel tcg -cpu max`, never KVM on
//! the host, whose `/dev/kvm` is `kvm_pvm`) in which what this host cannot run directly is run
//! for real: berth's own VMM on L1's emulated `kvm_amd` (all of it software emulation in the
//! host's qemu process), a pure cgroup v2 hierarchy, a berth home on a filesystem without
//! id-mapped mounts.
//!
//! L1 boots the Debian cloud kernel berth fetches for its VMs (the shared kernel cache of the VM
//! tests, [`crate::vm::kernel_cache`]) with a busybox initramfs that loads the modules berth
//! needs ([`L1_MODULES`], resolved with berth's own module handling), mounts the host's `/`
//! read-only through `virtiofsd` under a tmpfs-upper overlay, and enters it with `switch_root`
//! (a `chroot`ed process could not create user namespaces). So every path of the host is there,
//! with the same contents: the test binaries under `target/`, `berth`, qemu, virtiofsd, nft.
//! Writes land in L1's memory and are gone when it stops. `/etc` is a copy taken at boot (the
//! host's tests add and remove users while L1 runs). `/tmp` and `/run` are fresh tmpfs;
//! `TMPDIR` (where [`crate::Berth`] homes and project folders go) is on a raw ext4 disk made on
//! the host ([`HomeFs::Ext4`], mounted at `/nested-disk`) or on the overlay root
//! ([`HomeFs::OverlayRoot`]). L1 has no network card: tests run there find the kernel and the
//! static agent already cached by the host (the harness fetches and builds them before boot).
//!
//! # Running things in L1
//! ```no_run
//! use std::time::Duration;
//! use berth_e2e::nested::{test_binary, Cgroups, Options, L1};
//! if let Some(why) = L1::unavailable() {
//!     eprintln!("skipped: {why}");
//!     return;
//! }
//! // cgroup v2: `Cgroups::V2` mounts `cgroup2` on /sys/fs/cgroup instead of the host-like
//! // v1 hybrid; `home: HomeFs::OverlayRoot` puts TMPDIR (so berth homes) on the overlay root.
//! let mut l1 = L1::boot(&Options { cgroups: Cgroups::V2, ..Options::default() });
//! // A shell script (busybox or the host's tools), its exit code and output (stdout and
//! // stderr together):
//! let o = l1.sh("cat /sys/fs/cgroup/cgroup.controllers", Duration::from_secs(30));
//! assert_eq!(o.code, 0, "{}", o.output);
//! // An e2e test binary of this package (built on the host with `cargo test --no-run`),
//! // with `--exact` test names; `BERTH_TEST_NESTED=1` is set in L1 (see [`is_nested`]):
//! let o = l1.run_test(&test_binary("vm"), &["vm_environment_through_the_cli"], &[("BERTH_TEST_VMM", "kvm")], Duration::from_secs(600));
//! assert!(o.success(), "{}", l1.failure("vm tests", &o));
//! ```
//! Commands run one after the other, as root, in `/`, with the host's PATH, under a time limit
//! (busybox `timeout -s KILL` inside; the harness gives up 60 s later and reports the console).
//! Results come back through a writable virtio-fs folder (`/nested-xfer`). Dropping the [`L1`]
//! kills qemu and the virtiofsd processes and removes every file the harness made.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::host::have;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::state::BerthHome;
use berth_runtime::vm::kernel::initramfs::{module_name, read_module, resolve_modules, CpioWriter};
use berth_runtime::vm::kernel::{KernelStore, Mirror};
use envfile_spec::plan::KernelSource;

/// Set (to `1`) in every command the harness runs in L1.
pub const NESTED_ENV: &str = "BERTH_TEST_NESTED";

/// Whether this process runs inside L1 (under the harness).
pub fn is_nested() -> bool {
    std::env::var(NESTED_ENV).as_deref() == Ok("1")
}

/// The modules L1 loads, dependencies resolved from the kernel's modules: KVM (AMD: qemu's
/// `-cpu max` emulates SVM with nested paging), virtio-pci, virtio-fs and overlayfs for the
/// shared root, virtio-blk for the ext4 disk, and what berth's isolated networking needs (tap,
/// bridge, veth, nftables NAT).
pub const L1_MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "kvm-amd",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
    "overlay",
    "virtio_blk",
    "tun",
    "bridge",
    "veth",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
];

const QEMU: &str = "qemu-system-x86_64";
const VIRTIOFSD: &[&str] = &["/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"];
/// Where L1 mounts the ext4 disk (the exchange folder is `/nested-xfer`).
const DISK: &str = "/nested-disk";

/// Which cgroup hierarchy L1 mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// Like this host: v1 controllers under `/sys/fs/cgroup/<name>`, an empty v2 at
    /// `/sys/fs/cgroup/unified`.
    V1Hybrid,
    /// One `cgroup2` hierarchy on `/sys/fs/cgroup` with every controller.
    V2,
}

/// Where `TMPDIR` (berth homes and project folders of the tests) is in L1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeFs {
    /// A raw ext4 disk (id-mapped mounts work there), at `/nested-disk/tmp`.
    Ext4,
    /// The overlay root (over virtio-fs; no id-mapped mounts on kernel 6.1), at `/var/tmp/nested`.
    OverlayRoot,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub cgroups: Cgroups,
    pub home: HomeFs,
    /// L1's memory (its guests' memory comes out of it).
    pub memory_mib: u64,
    pub cpus: u32,
    /// Size of the (sparse) ext4 disk.
    pub disk_gib: u64,
    /// How long boot may take, from qemu's start until the command loop answers.
    pub boot_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cgroups: Cgroups::V1Hybrid,
            home: HomeFs::Ext4,
            memory_mib: 3072,
            cpus: 2,
            disk_gib: 16,
            boot_limit: Duration::from_secs(180),
        }
    }
}

/// What a command in L1 did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its exit code (137 when the time limit killed it).
    pub code: i32,
    /// stdout and stderr, interleaved.
    pub output: String,
    /// It ran out of its time limit.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }
}

/// A running L1 guest; see the module documentation.
pub struct L1 {
    dir: tempfile::TempDir,
    /// qemu first, then the virtiofsd processes: killed in this order on drop.
    children: Vec<(String, Child)>,
    next: u32,
    env: String,
    release: String,
}

/// The e2e test binary of this package named `name` (`tests/tests/<name>.rs`), built if needed
/// (`cargo test --no-run`, which also works while the calling test runs).
pub fn test_binary(name: &str) -> PathBuf {
    package_test_binary("berth-e2e", name)
}

/// The integration test binary `name` of workspace package `package` (e.g. `berth-runtime`'s
/// `runtime/tests/container_env.rs`), built if needed.
pub fn package_test_binary(package: &str, name: &str) -> PathBuf {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into()))
        .args(["test", "--no-run", "-q", "-p", package, "--test", name])
        .arg("--message-format=json")
        .current_dir(crate::vm::workspace())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the {name} test binary failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo named no executable for the {name} test"))
}

fn virtiofsd() -> Option<&'static str> {
    VIRTIOFSD.iter().copied().find(|p| Path::new(p).exists())
}

/// The qemu arguments must keep the host's `/dev/kvm` (`kvm_pvm`, which can restart the
/// machine) out of it: TCG only, no host CPU model.
fn assert_tcg_only(args: &[String]) {
    let joined = args.join(" ");
    assert!(
        args.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"),
        "L1 must run under TCG: {joined}"
    );
    for (i, a) in args.iter().enumerate() {
        let next = args.get(i + 1).map(String::as_str).unwrap_or("");
        let uses_kvm = a == "-enable-kvm"
            || a.contains("accel=kvm")
            || (a == "-accel" && next != "tcg")
            || (a == "-cpu" && next.starts_with("host"));
        assert!(
            !uses_kvm,
            "L1 would use the host's KVM ({a} {next}); never on these machines: {joined}"
        );
    }
}

impl L1 {
    /// Why L1 cannot run here, or `None`. It needs root (virtiofsd of the host's root), qemu,
    /// virtiofsd, mkfs.ext4 and busybox-static; and it does not nest inside itself.
    pub fn unavailable() -> Option<String> {
        if let Some(why) = crate::host::root_skip_reason() {
            return Some(why);
        }
        if is_nested() {
            return Some("already inside L1".into());
        }
        for (tool, arg, pkg) in [
            (QEMU, "--version", "qemu-system-x86"),
            ("mkfs.ext4", "-V", "e2fsprogs"),
            ("/bin/busybox", "true", "busybox-static"),
        ] {
            if !have(tool, arg) {
                return Some(format!("{tool} is missing (apt-get install {pkg})"));
            }
        }
        if virtiofsd().is_none() {
            return Some("virtiofsd is missing (apt-get install qemu-system-common)".into());
        }
        None
    }

    /// Boots L1 and waits until it runs commands; panics with the console when it does not.
    pub fn boot(opts: &Options) -> L1 {
        let preparing = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("berth-nested-")
            .tempdir()
            .unwrap();
        let tmpdir = match opts.home {
            HomeFs::Ext4 => format!("{DISK}/tmp"),
            HomeFs::OverlayRoot => "/var/tmp/nested".to_string(),
        };
        let agent = crate::vm::static_agent();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut l1 = L1 {
            dir,
            children: Vec::new(),
            next: 0,
            env: format!(
                "export PATH='{path}' HOME=/root TMPDIR='{tmpdir}' {NESTED_ENV}=1 \
                 BERTH_TEST_STATIC_AGENT='{}' RUST_BACKTRACE=1\n",
                agent.display()
            ),
            release: String::new(),
        };
        let (vmlinuz, initrd) = l1.initramfs();
        let xfer = l1.dir.path().join("xfer");
        for d in ["req", "res"] {
            fs::create_dir_all(xfer.join(d)).unwrap();
        }
        fs::write(
            xfer.join("stage2.sh"),
            stage2(opts, &tmpdir, &kept_under_tmp()),
        )
        .unwrap();
        fs::write(xfer.join("runner.sh"), RUNNER).unwrap();
        let disk = l1.dir.path().join("disk.ext4");
        if opts.home == HomeFs::Ext4 {
            fs::File::create(&disk)
                .unwrap()
                .set_len(opts.disk_gib << 30)
                .unwrap();
            let o = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
                .arg(&disk)
                .output()
                .unwrap();
            assert!(o.status.success(), "mkfs.ext4: {:?}", o);
        }
        let root_sock = l1.virtiofsd("root", Path::new("/"), "auto");
        let xfer_sock = l1.virtiofsd("xfer", &xfer, "none");
        let mem = format!("{}M", opts.memory_mib);
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-m".into(),
            mem.clone(),
            "-smp".into(),
            opts.cpus.to_string(),
            "-serial".into(),
            format!("file:{}", l1.dir.path().join("console.log").display()),
            "-kernel".into(),
            vmlinuz.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 loglevel=4".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-numa".into(),
            "node,memdev=mem".into(),
        ]);
        for (i, (tag, sock)) in [("host", &root_sock), ("xfer", &xfer_sock)]
            .iter()
            .enumerate()
        {
            args.extend([
                "-chardev".into(),
                format!("socket,id=fs{i},path={}", sock.display()),
                "-device".into(),
                format!("vhost-user-fs-pci,chardev=fs{i},tag={tag}"),
            ]);
        }
        if opts.home == HomeFs::Ext4 {
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw", disk.display()),
            ]);
        }
        assert_tcg_only(&args);
        // The boot limit counts from qemu's start: the host-side preparation above (the
        // static agent's `cargo build`, which waits for cargo's locks while other cargo runs
        // hold them; the kernel's download; the initramfs) is no part of the guest's boot.
        let prepared_in = preparing.elapsed();
        let started = Instant::now();
        let log = fs::File::create(l1.dir.path().join("qemu.log")).unwrap();
        let qemu = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        l1.children.insert(0, ("qemu".into(), qemu));
        let ready = xfer.join("res/ready");
        while !ready.exists() {
            if started.elapsed() > opts.boot_limit {
                panic!("{}", l1.failure_text("L1 did not boot in time", ""));
            }
            if let Some(st) = l1.children[0].1.try_wait().unwrap() {
                panic!("{}", l1.failure_text(&format!("qemu exited ({st})"), ""));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "nested: L1 ({}) ready in {:.1} s (host-side preparation before it: {:.1} s)",
            l1.release,
            started.elapsed().as_secs_f64(),
            prepared_in.as_secs_f64()
        );
        l1
    }

    /// The kernel of berth's VMs and L1's initramfs; records the release.
    fn initramfs(&mut self) -> (PathBuf, PathBuf) {
        let home = BerthHome::at(self.dir.path().join("home")).unwrap();
        let cache = crate::vm::kernel_cache();
        fs::create_dir_all(&cache).unwrap();
        let _ = fs::remove_dir(home.kernels_dir());
        std::os::unix::fs::symlink(&cache, home.kernels_dir()).unwrap();
        let kernel = KernelStore::new(home)
            .ensure(
                &KernelSource::Debian {
                    package: "linux-image-cloud-amd64".into(),
                    version: None,
                },
                None,
                &Mirror::discover(),
            )
            .unwrap_or_else(|e| panic!("fetching the Debian cloud kernel: {e}"));
        self.release = kernel.release.clone();
        let mdir = kernel
            .modules
            .clone()
            .expect("the Debian kernel package has modules");
        let order = resolve_modules(&mdir, L1_MODULES).unwrap();
        let missing: Vec<&&str> = L1_MODULES
            .iter()
            .filter(|m| !order.iter().any(|p| module_name(p) == m.replace('-', "_")))
            .collect();
        assert!(missing.is_empty(), "modules not found: {missing:?}");
        let path = self.dir.path().join("l1-initrd.cpio.gz");
        let file = fs::File::create(&path).unwrap();
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        let mut cpio = CpioWriter::new(gz);
        for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot"] {
            cpio.dir(d).unwrap();
        }
        cpio.char_device("dev/console", 0o600, 5, 1).unwrap();
        cpio.char_device("dev/null", 0o666, 1, 3).unwrap();
        cpio.file("bin/busybox", 0o755, &fs::read("/bin/busybox").unwrap())
            .unwrap();
        let mut list = Vec::new();
        for (i, rel) in order.iter().enumerate() {
            let name = format!("lib/modules/{i:02}-{}.ko", module_name(rel));
            cpio.file(&name, 0o644, &read_module(&mdir.join(rel)).unwrap())
                .unwrap();
            list.push(format!("/{name}"));
        }
        cpio.file("modules", 0o644, list.join("\n").as_bytes())
            .unwrap();
        cpio.file("init", 0o755, STAGE1.as_bytes()).unwrap();
        cpio.file("inittab", 0o644, INITTAB.as_bytes()).unwrap();
        cpio.finish().unwrap().finish().unwrap().flush().unwrap();
        (kernel.image, path)
    }

    /// Starts a virtiofsd serving `source`; returns its socket once it listens.
    fn virtiofsd(&mut self, name: &str, source: &Path, cache: &str) -> PathBuf {
        let sock = self.dir.path().join(format!("{name}.sock"));
        let log = fs::File::create(self.dir.path().join(format!("virtiofsd-{name}.log"))).unwrap();
        let child = Command::new(virtiofsd().unwrap())
            .arg(format!("--socket-path={}", sock.display()))
            .args(["-o", &format!("source={}", source.display())])
            .args(["-o", &format!("cache={cache}")])
            .args(["-o", "sandbox=chroot", "-o", "xattr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((format!("virtiofsd {name}"), child));
        for _ in 0..100 {
            // virtiofsd binds its socket, then listens (qemu's connection is refused in
            // between).
            if berth_runtime::host::unix_socket::is_listening(&sock).unwrap() {
                return sock;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{}", self.failure_text("virtiofsd did not listen", ""));
    }

    /// The kernel release L1 (and berth's VMs by default) runs.
    pub fn kernel_release(&self) -> &str {
        &self.release
    }

    /// Runs `script` (`sh`) in L1 with a time limit.
    pub fn sh(&mut self, script: &str, limit: Duration) -> Outcome {
        let n = self.next;
        self.next += 1;
        let xfer = self.dir.path().join("xfer");
        let req = xfer.join("req");
        let res = xfer.join("res");
        fs::write(
            req.join(format!("{n}.limit")),
            limit.as_secs().max(1).to_string(),
        )
        .unwrap();
        let staged = req.join(format!(".{n}.staged"));
        fs::write(&staged, format!("{}cd /\n{script}\n", self.env)).unwrap();
        fs::rename(&staged, req.join(format!("{n}.sh"))).unwrap();
        let started = Instant::now();
        let code_file = res.join(format!("{n}.code"));
        let out_file = res.join(format!("{n}.out"));
        loop {
            if let Ok(code) = fs::read_to_string(&code_file) {
                let elapsed = started.elapsed();
                let code: i32 = code.trim().parse().unwrap_or(-1);
                return Outcome {
                    code,
                    output: fs::read_to_string(&out_file).unwrap_or_default(),
                    timed_out: code == 137 && elapsed >= limit,
                    elapsed,
                };
            }
            let partial = || fs::read_to_string(&out_file).unwrap_or_default();
            if let Some(st) = self.children[0].1.try_wait().unwrap() {
                panic!(
                    "{}",
                    self.failure_text(&format!("qemu exited ({st}) during {script:?}"), &partial())
                );
            }
            if started.elapsed() > limit + Duration::from_secs(60) {
                panic!(
                    "{}",
                    self.failure_text(
                        &format!("L1 stopped answering during {script:?}"),
                        &partial()
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`sh`](Self::sh) that must succeed; returns its output.
    pub fn sh_ok(&mut self, script: &str, limit: Duration) -> String {
        let o = self.sh(script, limit);
        assert!(o.success(), "{}", self.failure(script, &o));
        o.output
    }

    /// Runs the tests `names` (exact names, one at a time, `--nocapture`) of the test binary
    /// `binary` in L1, with `env` added.
    pub fn run_test(
        &mut self,
        binary: &Path,
        names: &[&str],
        env: &[(&str, &str)],
        limit: Duration,
    ) -> Outcome {
        // L1 runs its own link (or copy) of the binary in the exchange folder: a rebuild on
        // the host while L1 runs replaces the file under `target/`, which the overlay root
        // would then answer with ESTALE.
        let name = binary.file_name().expect("a test binary path");
        let bin = self.dir.path().join("xfer/bin");
        fs::create_dir_all(&bin).unwrap();
        let own = bin.join(name);
        if !own.exists() && fs::hard_link(binary, &own).is_err() {
            fs::copy(binary, &own)
                .unwrap_or_else(|e| panic!("copying {} for L1: {e}", binary.display()));
        }
        let mut script = String::new();
        for (k, v) in env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!(
            "exec '/nested-xfer/bin/{}' --exact --test-threads=1 --nocapture {}",
            name.to_string_lossy(),
            names.join(" ")
        ));
        let o = self.sh(&script, limit);
        if o.success() {
            // A filter that matched nothing also exits 0.
            let ran: usize = o
                .output
                .lines()
                .filter_map(|l| l.strip_prefix("test result: ok. "))
                .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
                .sum();
            assert_eq!(ran, names.len(), "not every test ran:\n{}", o.output);
        }
        o
    }

    /// The last `lines` lines of L1's serial console.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A failure message for `what` that ended as `o`: its output and L1's console tail.
    pub fn failure(&self, what: &str, o: &Outcome) -> String {
        let why = if o.timed_out {
            format!(
                "{what} ran out of time after {:.0} s",
                o.elapsed.as_secs_f64()
            )
        } else {
            format!("{what} exited with {}", o.code)
        };
        self.failure_text(&why, &o.output)
    }

    fn failure_text(&self, why: &str, output: &str) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let tail: Vec<&str> = output.lines().collect();
        format!(
            "nested L1: {why}\n--- output (last 200 lines) ---\n{}\n--- L1 console (last 60 lines) ---\n{}\n--- qemu ---\n{}",
            tail[tail.len().saturating_sub(200)..].join("\n"),
            self.console_tail(60),
            read("qemu.log"),
        )
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stage 1, L1's `/init` in the initramfs: modules, the shared root under an overlay, the
/// exchange folder and the disk, then `switch_root` into busybox init.
const STAGE1: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
say() { echo "nested-l1: $*" > /dev/console; }
fail() { say "$*"; exit 1; }
for m in $($B cat /modules); do $B insmod "$m" || say "insmod $m failed"; done
$B mkdir -p /host /upper
$B mount -t virtiofs host /host -o ro || fail "cannot mount the host's root"
$B mount -t tmpfs -o mode=0755 upper /upper
$B mkdir -p /upper/data /upper/work
# L1's own /etc: a copy in the upper layer, so the host replacing /etc/passwd (its tests run
# useradd/userdel while L1 runs) never changes a file under L1's feet through the lower layer.
$B cp -a /host/etc /upper/data/etc || fail "cannot copy the host's /etc"
$B mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work /newroot || fail "cannot mount the overlay root"
$B mkdir -p /newroot/nested-xfer /newroot/nested-disk
$B mount -t virtiofs xfer /newroot/nested-xfer || fail "cannot mount the exchange folder"
if [ -b /dev/vda ]; then $B mount -t ext4 /dev/vda /newroot/nested-disk || fail "cannot mount the disk"; fi
$B cp /inittab /newroot/etc/inittab
for d in dev proc sys; do $B mount --move /$d /newroot/$d; done
exec $B switch_root /newroot /bin/busybox init
"#;

const INITTAB: &str = "::sysinit:/bin/busybox sh /nested-xfer/stage2.sh\n\
::once:/bin/busybox sh /nested-xfer/runner.sh\n";

/// The host folders L1 must still see although they are under `/tmp`, which L1 replaces by a
/// fresh tmpfs: the workspace (test binaries, the berth binary, the static agent) and the
/// cargo target folder, e.g. when CI checks the repository out under `/tmp`.
fn kept_under_tmp() -> Vec<PathBuf> {
    let mut keep = vec![crate::vm::workspace()];
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        keep.push(PathBuf::from(t));
    }
    keep.retain(|p| p.is_absolute() && p.starts_with("/tmp") && p != Path::new("/tmp"));
    keep.dedup();
    keep
}

/// The stage-2 lines that keep `keep` (host folders under `/tmp`) visible across the fresh
/// tmpfs mounted on `/tmp`: bound aside before, moved back after.
fn keep_across_tmp(keep: &[PathBuf]) -> (String, String) {
    let (mut before, mut after) = (String::new(), String::new());
    for (i, p) in keep.iter().enumerate() {
        let p = p.display();
        before.push_str(&format!(
            "mkdir -p /run/nested-keep/{i} && mount --bind '{p}' /run/nested-keep/{i}\n"
        ));
        after.push_str(&format!(
            "mkdir -p '{p}' && mount --move /run/nested-keep/{i} '{p}'\n"
        ));
    }
    (before, after)
}

/// Stage 2 (busybox init's sysinit, in the new root): the usual mounts, cgroups, loopback.
fn stage2(opts: &Options, tmpdir: &str, keep: &[PathBuf]) -> String {
    let (keep_before, keep_after) = keep_across_tmp(keep);
    let cgroups = match opts.cgroups {
        Cgroups::V2 => "mount -t cgroup2 none /sys/fs/cgroup\n".to_string(),
        Cgroups::V1Hybrid => {
            let mut s = "mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup\n".to_string();
            for c in [
                "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
            ] {
                s.push_str(&format!(
                    "mkdir /sys/fs/cgroup/{c} && mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{c}\n"
                ));
            }
            s.push_str(
                "mkdir /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd\n\
                 mkdir /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified\n",
            );
            s
        }
    };
    format!(
        "PATH=/bin:/sbin:/usr/bin:/usr/sbin\n\
         mkdir -p /dev/pts /dev/shm\n\
         mount -t devpts -o ptmxmode=0666 devpts /dev/pts\n\
         mount -t tmpfs tmpfs /dev/shm\n\
         mount -t tmpfs -o mode=0755 tmpfs /run\n\
         {keep_before}\
         mount -t tmpfs -o mode=1777 tmpfs /tmp\n\
         {keep_after}\
         {cgroups}\
         /bin/busybox ip link set lo up\n\
         /bin/busybox hostname nested-l1\n\
         mkdir -p '{tmpdir}' && chmod 1777 '{tmpdir}'\n\
         echo 'nested-l1: stage 2 done' > /dev/console\n"
    )
}

/// The command loop: runs each `req/N.sh` (N.limit seconds at most), writes `res/N.out` and
/// then `res/N.code`.
const RUNNER: &str = r#"B=/bin/busybox
X=/nested-xfer
uname -r > $X/res/.ready && $B mv $X/res/.ready $X/res/ready
echo "nested-l1: ready for commands" > /dev/console
while :; do
  for f in $X/req/*.sh; do
    [ -e "$f" ] || continue
    n=${f##*/}; n=${n%.sh}
    t=$($B cat $X/req/$n.limit)
    $B timeout -s KILL "$t" $B sh "$f" > $X/res/$n.out 2>&1 < /dev/null
    echo $? > $X/res/$n.tmp
    $B rm -f "$f" $X/req/$n.limit
    $B mv $X/res/$n.tmp $X/res/$n.code
  done
  $B sleep 0.2
done
"#;

#[cfg(test)]
mod tests {
    use super::{assert_tcg_only, keep_across_tmp, stage2, Cgroups, HomeFs, Options};
    use std::path::PathBuf;

    #[test]
    fn a_workspace_under_tmp_stays_visible_in_l1() {
        // CI may check the repository out under /tmp, which L1 covers with a fresh tmpfs:
        // the workspace is bound aside before and moved back after that mount.
        let keep = [PathBuf::from("/tmp/ci-clone/repo")];
        let (before, after) = keep_across_tmp(&keep);
        assert_eq!(
            before,
            "mkdir -p /run/nested-keep/0 && mount --bind '/tmp/ci-clone/repo' /run/nested-keep/0\n"
        );
        assert_eq!(
            after,
            "mkdir -p '/tmp/ci-clone/repo' && mount --move /run/nested-keep/0 '/tmp/ci-clone/repo'\n"
        );
        let opts = Options {
            cgroups: Cgroups::V2,
            home: HomeFs::Ext4,
            ..Options::default()
        };
        let script = stage2(&opts, "/nested-disk/tmp", &keep);
        let (b, t, a) = (
            script.find("mount --bind").unwrap(),
            script.find("tmpfs /tmp").unwrap(),
            script.find("mount --move").unwrap(),
        );
        assert!(b < t && t < a, "{script}");
        assert!(script.find("tmpfs /run").unwrap() < b, "{script}");
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn qemu_arguments_that_reach_the_hosts_kvm_are_refused() {
        assert_tcg_only(&args("-accel tcg -cpu max -m 3072M"));
        for bad in [
            "-accel tcg -enable-kvm",
            "-accel tcg -accel kvm",
            "-accel tcg -cpu host",
            "-accel tcg -machine pc,accel=kvm",
            "-cpu max",
        ] {
            let r = std::panic::catch_unwind(|| assert_tcg_only(&args(bad)));
            assert!(r.is_err(), "{bad} was accepted");
        }
    }
}
