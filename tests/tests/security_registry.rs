//! A registry is untrusted network input: it may stall, declare absurd sizes or serve
//! layers that unpack to far more than they weigh. Exploits with harmless payloads, through
//! the real binary, against hand-written TCP servers and a real loopback docker-registry.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::oci::{busybox_layer, layer_dir, sha256, Compression, Image, Layer, Registry};
use berth_e2e::{text, Berth};

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Runs `cmd`, killing it (and failing the test) after `limit`: code under test that hangs
/// must not hang the suite.
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), t0.elapsed());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "berth still ran after {limit:?} (it hangs): {:?}",
                text(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries of `dir` (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_kept(b: &Berth) {
    let home = b.home.path();
    assert_eq!(entries(&home.join("tmp")), Vec::<String>::new(), "tmp/");
    assert_eq!(
        entries(&home.join("blobs/sha256")),
        Vec::<String>::new(),
        "blobs/"
    );
    let layers: Vec<String> = entries(&home.join("layers"));
    assert!(layers.is_empty(), "layers/: {layers:?}");
}

/// A TCP server that accepts connections and never answers (holding them open).
struct StalledServer {
    addr: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StalledServer {
    fn start() -> StalledServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => a.lock().unwrap().push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        StalledServer {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for StalledServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.accepted.lock().unwrap().clear();
    }
}

#[test]
fn a_registry_that_accepts_and_never_answers_fails_within_the_read_timeout() {
    let server = StalledServer::start();
    let b = Berth::new();
    let mut cmd = b.cmd();
    cmd.env("BERTH_REGISTRY_READ_TIMEOUT", "1").args([
        "image",
        "pull",
        &format!("{}/stall:1", server.addr),
    ]);
    let (out, took) = run_within(cmd, Duration::from_secs(30));
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.contains(&server.addr), "names the registry: {err}");
    assert!(
        err.contains("BERTH_REGISTRY_READ_TIMEOUT"),
        "says what to do: {err}"
    );
    assert!(
        !server.accepted.lock().unwrap().is_empty(),
        "berth connected"
    );
    assert_nothing_kept(&b);
    // A bad value is refused, naming the variable.
    let o = b
        .cmd()
        .env("BERTH_REGISTRY_CONNECT_TIMEOUT", "soon")
        .args(["image", "pull", &format!("{}/stall:1", server.addr)])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("BERTH_REGISTRY_CONNECT_TIMEOUT"),
        "{:?}",
        text(&o)
    );
}

/// A server for one image whose only layer is declared `layer_size` bytes; it answers every
/// request for that layer with a body that never ends (headers, then silence), and records
/// the paths it was asked for.
struct HostileRegistry {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileRegistry {
    fn start(layer_size: u64) -> HostileRegistry {
        let layer_digest = format!("sha256:{}", "e".repeat(64));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": host_arch(), "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "d".repeat(64))]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }))
        .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let config_path = format!("/v2/huge/blobs/{}", sha256(&config));
        // What the layer starts with: the first 64 KiB of a real gzipped tar of 4 MiB of
        // incompressible data, so berth starts unpacking it.
        let mut data = vec![0u8; 4 << 20];
        let mut x: u32 = 12345;
        for b in data.iter_mut() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
        let mut t = berth_e2e::oci::TarBuilder::new();
        t.file("payload", &data);
        let mut prefix = Layer::new(t.finish(), Compression::Gzip).blob;
        prefix.truncate(64 << 10);
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                s.lock().unwrap().push(path.clone());
                let reply = |c: &mut TcpStream, ctype: &str, body: &[u8]| {
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body);
                };
                if path == "/v2/" {
                    reply(&mut c, "application/json", b"{}");
                } else if path.starts_with("/v2/huge/manifests/") {
                    reply(
                        &mut c,
                        "application/vnd.oci.image.manifest.v1+json",
                        &manifest,
                    );
                } else if path == config_path {
                    reply(&mut c, "application/octet-stream", &config);
                } else {
                    // The layer: a huge declared length, a little data, then silence.
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {layer_size}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = c.write_all(&prefix);
                    std::thread::sleep(Duration::from_secs(20));
                }
            }
        });
        HostileRegistry {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn asked_for_the_layer(&self) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.contains(&"e".repeat(64)))
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The server may sit in its 20 s silence: let it go on its own.
        drop(self.thread.take());
    }
}

#[test]
fn a_layer_declared_larger_than_the_free_space_is_refused_before_download() {
    const TIB: u64 = 1 << 40;
    let server = HostileRegistry::start(TIB);
    let b = Berth::new();
    let mut cmd = b.cmd();
    cmd.env("BERTH_REGISTRY_READ_TIMEOUT", "2").args([
        "image",
        "pull",
        &format!("{}/huge:1", server.addr),
    ]);
    let (out, _) = run_within(cmd, Duration::from_secs(30));
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&TIB.to_string()), "says the size: {err}");
    assert!(err.contains("free"), "says the free space: {err}");
    let tmp = b.home.path().join("tmp");
    assert!(
        err.contains(&tmp.display().to_string()),
        "says where: {err}"
    );
    assert!(
        !server.asked_for_the_layer(),
        "the layer was requested before the size was checked"
    );
    assert_nothing_kept(&b);
}

#[test]
fn a_registry_that_goes_silent_in_the_middle_of_a_layer_fails_within_the_read_timeout() {
    // Declared 64 MiB (fits any test machine's disk), two bytes sent, then silence.
    let server = HostileRegistry::start(64 << 20);
    let b = Berth::new();
    let mut cmd = b.cmd();
    cmd.env("BERTH_REGISTRY_READ_TIMEOUT", "1").args([
        "image",
        "pull",
        &format!("{}/huge:1", server.addr),
    ]);
    let (out, took) = run_within(cmd, Duration::from_secs(15));
    let (_, err) = text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(server.asked_for_the_layer());
    assert!(err.contains(&server.addr), "names the registry: {err}");
    assert!(err.contains("BERTH_REGISTRY_READ_TIMEOUT"), "{err}");
    assert_eq!(
        entries(&b.home.path().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

#[test]
fn a_normal_pull_from_a_real_registry_works_with_short_timeouts() {
    let Some(reg) = Registry::start() else { return };
    let img = Image::new(vec![busybox_layer(Compression::Gzip)], host_arch());
    reg.push_image("bb", "1", &img);
    let b = Berth::new();
    let o = b
        .cmd()
        .env("BERTH_REGISTRY_CONNECT_TIMEOUT", "1")
        .env("BERTH_REGISTRY_READ_TIMEOUT", "2")
        .args(["image", "pull", &format!("{}/bb:1", reg.addr)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let l = layer_dir(b.home.path(), &img.layers[0].diff_id());
    assert!(l.join("bin/busybox").is_file());
}

/// A GNU sparse tar (Debian's GNU tar, `--sparse`) of a 10 GiB file with a marker in the
/// middle, made from a sparse file of `truncate`.
fn sparse_layer_tar() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("big");
    let st = Command::new("truncate")
        .args(["-s", "10G"])
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .write_all_at(b"middle", 5 << 30)
        .unwrap();
    let out = Command::new("tar")
        .args([
            "--sparse",
            "--format=gnu",
            "--owner=0",
            "--group=0",
            "-cf",
            "-",
            "-C",
        ])
        .arg(d.path())
        .arg("big")
        .output()
        .expect("GNU tar is needed (package tar)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_sparse_10_gib_member_is_unpacked_sparse() {
    let Some(reg) = Registry::start() else { return };
    let tar = sparse_layer_tar();
    assert!(tar.len() < 1 << 20);
    let img = Image::new(vec![Layer::new(tar, Compression::Gzip)], host_arch());
    reg.push_image("sparse", "1", &img);
    let b = Berth::new();
    let mut cmd = b.cmd();
    cmd.args(["image", "pull", &format!("{}/sparse:1", reg.addr)]);
    let (o, _) = run_within(cmd, Duration::from_secs(300));
    assert!(o.status.success(), "{:?}", text(&o));
    let big = layer_dir(b.home.path(), &img.layers[0].diff_id()).join("big");
    let m = std::fs::metadata(&big).unwrap();
    assert_eq!(m.len(), 10 << 30);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} bytes on disk for one marker",
        m.blocks() * 512
    );
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 6];
    std::fs::File::open(&big)
        .unwrap()
        .read_exact_at(&mut buf, 5 << 30)
        .unwrap();
    assert_eq!(&buf, b"middle");
    assert_eq!(entries(&b.home.path().join("tmp")), Vec::<String>::new());
}

/// Starts a pull from a registry that stalls in the middle of the layer and returns once
/// berth unpacks it (its staging folder exists).
fn stalled_pull(b: &Berth, server: &HostileRegistry) -> std::process::Child {
    let child = b
        .cmd()
        .env("BERTH_REGISTRY_READ_TIMEOUT", "60")
        .args(["image", "pull", &format!("{}/huge:1", server.addr)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !staging(b).iter().any(|n| n.starts_with("layer-")) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no staging folder appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Entries of tmp/ other than partial downloads (which the next pull resumes).
fn staging(b: &Berth) -> Vec<String> {
    entries(&b.home.path().join("tmp"))
        .into_iter()
        .filter(|n| !n.ends_with(".partial"))
        .collect()
}

#[test]
fn sigterm_during_a_pull_leaves_no_half_unpacked_layer() {
    let server = HostileRegistry::start(64 << 20);
    let b = Berth::new();
    let mut child = stalled_pull(&b, &server);
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "berth ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    assert_eq!(staging(&b), Vec::<String>::new(), "left in tmp/");
}

#[test]
fn what_a_killed_pull_left_goes_at_the_next_command() {
    let server = HostileRegistry::start(64 << 20);
    let b = Berth::new();
    let mut child = stalled_pull(&b, &server);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!staging(&b).is_empty(), "kill -9 left nothing to clean up");
    let o = b.cmd().args(["image", "ls"]).output().unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(staging(&b), Vec::<String>::new(), "left in tmp/");
}
