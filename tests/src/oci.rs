//! Test fixtures for the image side: OCI images built in memory (layers, configs, manifests,
//! indexes), a real `docker-registry` on loopback to push them to, and a small fake registry
//! that can demand bearer tokens, throttle or corrupt blobs and count requests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One layer: its uncompressed tar and the blob as pushed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
    pub media_type: String,
}

impl Layer {
    pub fn new(tar: Vec<u8>, c: Compression) -> Layer {
        let (blob, media_type) = match c {
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            tar,
            blob,
            media_type: media_type.to_string(),
        }
    }
    pub fn digest(&self) -> String {
        sha256(&self.blob)
    }
    pub fn diff_id(&self) -> String {
        sha256(&self.tar)
    }
}

/// Builds layer tars entry by entry. Paths are written verbatim (no checks), so tests can
/// build malicious layers too.
#[derive(Default)]
pub struct TarBuilder {
    out: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one entry with a raw ustar header: any name, type flag, mode and link target,
    /// unchecked (for traversal tests the tar crate's builder refuses to produce).
    pub fn raw(&mut self, name: &str, kind: u8, mode: u32, link: &str, data: &[u8]) -> &mut Self {
        self.raw_dev(name, kind, mode, link, data, (0, 0))
    }

    /// Like [`raw`](Self::raw), with the device numbers of a character or block device.
    fn raw_dev(
        &mut self,
        name: &str,
        kind: u8,
        mode: u32,
        link: &str,
        data: &[u8],
        (major, minor): (u32, u32),
    ) -> &mut Self {
        assert!(
            name.len() < 100 && link.len() < 100,
            "fixture names must be short"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"14000000000");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[329..336].copy_from_slice(format!("{major:07o}").as_bytes());
        h[337..344].copy_from_slice(format!("{minor:07o}").as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = self.out.len().div_ceil(512) * 512;
        self.out.resize(pad, 0);
        self
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, b'5', 0o755, "", b"")
    }
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, b'0', 0o644, "", data)
    }
    pub fn exec(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, b'0', 0o755, "", data)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, b'2', 0o777, target, b"")
    }
    /// A character device node (type `3`) with the given mode bits, owned by root.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.raw_dev(name, b'3', mode, "", b"", (major, minor))
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, b'1', 0o644, target, b"")
    }
    /// The entries so far, without the end-of-archive blocks (to concatenate).
    pub fn entries(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.entries();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// A busybox root filesystem layer: /bin/busybox plus a few applet links.
pub fn busybox_layer(c: Compression) -> Layer {
    let bb =
        std::fs::read("/bin/busybox").expect("busybox-static must be installed (/bin/busybox)");
    let mut t = TarBuilder::new();
    t.dir("bin/").exec("bin/busybox", &bb);
    for applet in ["sh", "ls", "cat", "true", "echo"] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.dir("etc/").file("etc/hostname", b"bb\n");
    Layer::new(t.finish(), c)
}

/// An image: layers plus its config and manifest bytes.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    pub fn new(layers: Vec<Layer>, arch: &str) -> Image {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin", "FIXTURE=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({
                "mediaType": l.media_type, "digest": l.digest(), "size": l.blob.len()
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Image {
            layers,
            config,
            manifest,
        }
    }
    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// Every blob and manifest, as a fake registry serves them for `repo`.
    pub fn routes(&self, repo: &str, tag: &str, routes: &mut Routes) {
        for l in &self.layers {
            routes.blob(repo, &l.blob);
        }
        routes.blob(repo, &self.config);
        routes.manifest(repo, tag, OCI_MANIFEST, &self.manifest);
        routes.manifest(repo, &self.manifest_digest(), OCI_MANIFEST, &self.manifest);
    }
}

/// An index over (image, arch) pairs.
pub fn index_of(images: &[(&Image, &str)]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": images.iter().map(|(i, arch)| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": i.manifest_digest(), "size": i.manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// An IPv4 address of this machine that is not loopback, if it has one.
pub fn non_loopback_ipv4() -> Option<String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `docker-registry` serving on a random loopback port from a temp folder; killed
/// on drop. Its access log (one line per request) is kept for tests that count requests.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    bin: &'static str,
    http: reqwest::blocking::Client,
}

impl Registry {
    /// Starts the registry, or `None` (with a message) when it is not installed.
    pub fn start() -> Option<Registry> {
        Self::start_with(None)
    }

    /// A registry demanding `user`/`password` (htpasswd, bcrypt, as `htpasswd -B` writes
    /// it), or `None` (with a message) when `docker-registry` or `htpasswd` is missing.
    pub fn start_with_htpasswd(user: &str, password: &str) -> Option<Registry> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Option<Registry> {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            eprintln!("SKIP: docker-registry is not installed (apt-get install docker-registry)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let auth_cfg = match auth {
            None => String::new(),
            Some((user, password)) => {
                let out = match Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                {
                    Ok(o) if o.status.success() => o.stdout,
                    _ => {
                        eprintln!(
                            "SKIP: htpasswd is not installed (apt-get install apache2-utils)"
                        );
                        return None;
                    }
                };
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out).unwrap();
                format!(
                    "auth: {{htpasswd: {{realm: berth-test, path: {}}}}}\n",
                    file.display()
                )
            }
        };
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}, secret: berth-test-upload-state}}\n{auth_cfg}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Self::spawn(bin, dir.path());
        let mut reg = Registry {
            child,
            addr,
            dir,
            bin,
            http: reqwest::blocking::Client::new(),
        };
        reg.wait_up();
        Some(reg)
    }

    /// The file the registry keeps the blob `digest` (`sha256:…`) in (to damage it).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn spawn(bin: &str, dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("registry.log"))
            .unwrap();
        Command::new(bin)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry")
    }

    fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(format!("http://{}/v2/", self.addr)).send() {
                if r.status().is_success() || r.status().as_u16() == 401 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the registry (as a crash would); [`Registry::restart`] brings it back on the
    /// same port with the same content (and the same `http.secret`, so upload sessions
    /// opened before stay valid, as on a production registry).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.bin, self.dir.path());
        self.wait_up();
    }

    /// The requests served so far, as `METHOD /path?query STATUS` (from the access log).
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("] \"")?;
                let (req, after) = rest.split_once('"')?;
                let mut parts = req.split(' ');
                let (method, path) = (parts.next()?, parts.next()?);
                let status = after.split_whitespace().next()?;
                Some(format!("{method} {path} {status}"))
            })
            .collect()
    }

    pub fn push_blob(&self, repo: &str, bytes: &[u8]) {
        let digest = sha256(bytes);
        let head = self
            .http
            .head(format!("http://{}/v2/{repo}/blobs/{digest}", self.addr))
            .send()
            .unwrap();
        if head.status().is_success() {
            return;
        }
        let r = self
            .http
            .post(format!("http://{}/v2/{repo}/blobs/uploads/", self.addr))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "start upload: {:?}", r.text());
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{}{loc}", self.addr)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .http
            .put(format!("{loc}{sep}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "finish upload: {:?}", r.text());
    }

    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let r = self
            .http
            .put(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                self.addr
            ))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "push manifest: {:?}", r.text());
    }

    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) {
        for l in &image.layers {
            self.push_blob(repo, &l.blob);
        }
        self.push_blob(repo, &image.config);
        self.push_manifest(repo, tag, OCI_MANIFEST, &image.manifest);
    }

    /// Pushes the images by digest and an index over them under `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[(&Image, &str)]) -> Vec<u8> {
        for (img, _) in images {
            for l in &img.layers {
                self.push_blob(repo, &l.blob);
            }
            self.push_blob(repo, &img.config);
            self.push_manifest(repo, &img.manifest_digest(), OCI_MANIFEST, &img.manifest);
        }
        let idx = index_of(images);
        self.push_manifest(repo, tag, OCI_INDEX, &idx);
        idx
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a fake registry serves: path → (content type, bytes).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    map: BTreeMap<String, (String, Vec<u8>)>,
    /// Upload sessions: `POST /v2/<repo>/blobs/uploads/` answers 202 with this `Location`.
    uploads: BTreeMap<String, String>,
}

impl Routes {
    pub fn blob(&mut self, repo: &str, bytes: &[u8]) {
        self.map.insert(
            format!("/v2/{repo}/blobs/{}", sha256(bytes)),
            ("application/octet-stream".into(), bytes.to_vec()),
        );
    }
    /// Serves `bytes` under `digest` (a corrupt blob when they do not match).
    pub fn blob_as(&mut self, repo: &str, digest: &str, bytes: &[u8]) {
        self.map.insert(
            format!("/v2/{repo}/blobs/{digest}"),
            ("application/octet-stream".into(), bytes.to_vec()),
        );
    }
    pub fn manifest(&mut self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        self.map.insert(
            format!("/v2/{repo}/manifests/{reference}"),
            (media_type.into(), bytes.to_vec()),
        );
    }
    /// Uploads to `repo` are sent to `location` (which may be anywhere: a hostile registry).
    pub fn upload_location(&mut self, repo: &str, location: &str) {
        self.uploads
            .insert(format!("/v2/{repo}/blobs/uploads/"), location.to_string());
    }
}

/// One request the fake registry saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorized: bool,
}

/// Holds back the body of a blob whose path contains `what` until a request whose path
/// contains `until` has arrived, or `limit` has passed (see [`FakeRegistry::hold`]).
#[derive(Debug, Clone, Default)]
pub struct Hold {
    pub what: String,
    pub until: String,
    pub limit: Duration,
    /// Bodies sent because the awaited request came, and because the limit passed.
    pub released_by_request: usize,
    pub released_by_limit: usize,
}

/// A minimal registry on loopback (HTTP/1.1, one connection per request).
pub struct FakeRegistry {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// While set, blob bodies are sent slowly (64 KiB every 25 ms).
    pub slow: Arc<AtomicBool>,
    /// While set, the blob bodies it names wait for a request (to show what a client asks
    /// while a download is still under way).
    pub hold: Arc<Mutex<Option<Hold>>>,
    /// The bearer tokens its `/token` endpoint handed out, and how long they stay valid.
    pub tokens: Arc<TokenClock>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const TOKEN: &str = "fixture-token-3f9a";

/// The bearer tokens a [`FakeRegistry`] handed out (`fixture-token-3f9a-N`, N in order of
/// issue). Valid forever unless [`TokenClock::expire_after`] was called: then each is valid
/// that long after its issue, and a request with an older one is answered 401 with the
/// challenge again, as a real token service's registry answers an expired token.
#[derive(Debug, Default)]
pub struct TokenClock {
    lifetime: Mutex<Option<Duration>>,
    issued: Mutex<Vec<Instant>>,
}

impl TokenClock {
    /// Tokens issued from now on (and those before) expire `lifetime` after their issue.
    pub fn expire_after(&self, lifetime: Duration) {
        *self.lifetime.lock().unwrap() = Some(lifetime);
    }

    /// How many tokens were handed out.
    pub fn issued(&self) -> usize {
        self.issued.lock().unwrap().len()
    }

    fn issue(&self) -> String {
        let mut issued = self.issued.lock().unwrap();
        issued.push(Instant::now());
        format!("{TOKEN}-{}", issued.len() - 1)
    }

    /// Whether `authorization` carries a token handed out and not expired.
    fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(n) = authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| t.strip_prefix(TOKEN))
            .and_then(|t| t.strip_prefix('-'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return false;
        };
        let Some(at) = self.issued.lock().unwrap().get(n).copied() else {
            return false;
        };
        self.lifetime
            .lock()
            .unwrap()
            .is_none_or(|lifetime| at.elapsed() < lifetime)
    }
}

impl FakeRegistry {
    /// Serves `routes`; with `require_token`, every /v2/ request needs the bearer token that
    /// its `/token` endpoint hands out for the challenge's service and scope.
    pub fn start(routes: Routes, require_token: bool) -> FakeRegistry {
        Self::start_with(routes, require_token, None)
    }

    /// Like [`FakeRegistry::start`]; with `token_basic` (`user:password`), the token
    /// endpoint hands out tokens only to requests with those basic credentials.
    pub fn start_with(
        routes: Routes,
        require_token: bool,
        token_basic: Option<&str>,
    ) -> FakeRegistry {
        Self::start_on("127.0.0.1", routes, require_token, token_basic)
    }

    /// Like [`FakeRegistry::start_with`], listening on `ip` (its `addr` names that ip).
    pub fn start_on(
        ip: &str,
        routes: Routes,
        require_token: bool,
        token_basic: Option<&str>,
    ) -> FakeRegistry {
        let token_basic = token_basic.map(|c| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        });
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let slow = Arc::new(AtomicBool::new(false));
        let hold: Arc<Mutex<Option<Hold>>> = Arc::new(Mutex::new(None));
        let tokens = Arc::new(TokenClock::default());
        let t2 = tokens.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, sl2, st2, a2) = (seen.clone(), slow.clone(), stop.clone(), addr.clone());
        let h2 = hold.clone();
        let routes = Arc::new(routes);
        let thread = std::thread::spawn(move || {
            while !st2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, s, sl, a) = (routes.clone(), s2.clone(), sl2.clone(), a2.clone());
                        let basic = token_basic.clone();
                        let h = h2.clone();
                        let t = t2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(
                                stream,
                                &r,
                                &s,
                                (&sl, &h, &t),
                                require_token,
                                basic.as_deref(),
                                &a,
                            );
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeRegistry {
            addr,
            seen,
            slow,
            hold,
            tokens,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    routes: &Routes,
    seen: &Mutex<Vec<Seen>>,
    (slow, hold, tokens): (&AtomicBool, &Mutex<Option<Hold>>, &TokenClock),
    require_token: bool,
    token_basic: Option<&str>,
    addr: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let authorized = tokens.accepts(headers.get("authorization").map(String::as_str));
    seen.lock().unwrap().push(Seen {
        path: path.to_string(),
        range: headers.get("range").cloned(),
        authorized,
    });
    let mut out = stream;
    let respond =
        |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| -> std::io::Result<()> {
            write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                body.len()
            )?;
            out.write_all(body)
        };
    if path == "/token" {
        let ok = query.contains("scope=repository%3A") || query.contains("scope=repository:");
        let ok = ok && query.contains("service=fixture");
        let ok = ok
            && token_basic
                .is_none_or(|b| headers.get("authorization").map(String::as_str) == Some(b));
        if ok {
            let body = format!(r#"{{"token":"{}"}}"#, tokens.issue());
            return respond(
                &mut out,
                "200 OK",
                "Content-Type: application/json\r\n",
                body.as_bytes(),
            );
        }
        return respond(&mut out, "400 Bad Request", "", b"bad token request");
    }
    if require_token && !authorized {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| {
                p.split_once("/manifests/")
                    .or_else(|| p.split_once("/blobs/"))
            })
            .map(|(r, _)| r)
            .unwrap_or("");
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fixture\",scope=\"repository:{repo}:pull\"\r\n"
        );
        return respond(
            &mut out,
            "401 Unauthorized",
            &challenge,
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        );
    }
    if path == "/v2/" {
        return respond(&mut out, "200 OK", "", b"{}");
    }
    if method == "POST" {
        if let Some(location) = routes.uploads.get(path) {
            return respond(
                &mut out,
                "202 Accepted",
                &format!("Location: {location}\r\n"),
                b"",
            );
        }
    }
    let Some((ctype, body)) = routes.map.get(path) else {
        return respond(
            &mut out,
            "404 Not Found",
            "",
            b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}",
        );
    };
    let start = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| *s < body.len());
    let digest_header = if path.contains("/manifests/") {
        format!("Docker-Content-Digest: {}\r\n", sha256(body))
    } else {
        String::new()
    };
    let (status, extra, slice) = match start {
        Some(s) => (
            "206 Partial Content",
            format!(
                "Content-Type: {ctype}\r\nContent-Range: bytes {s}-{}/{}\r\n{digest_header}",
                body.len() - 1,
                body.len()
            ),
            &body[s..],
        ),
        None => (
            "200 OK",
            format!("Content-Type: {ctype}\r\n{digest_header}"),
            &body[..],
        ),
    };
    if method == "HEAD" {
        return respond(&mut out, status, &extra, b"");
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        slice.len()
    )?;
    if path.contains("/blobs/") {
        wait_for_hold(path, hold, seen);
    }
    if path.contains("/blobs/") && slow.load(Ordering::SeqCst) {
        for chunk in slice.chunks(64 * 1024) {
            out.write_all(chunk)?;
            out.flush()?;
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    } else {
        out.write_all(slice)
    }
}

/// Waits while `hold` holds `path` back (see [`Hold`]), and counts why it ended.
fn wait_for_hold(path: &str, hold: &Mutex<Option<Hold>>, seen: &Mutex<Vec<Seen>>) {
    let Some(h) = hold.lock().unwrap().clone() else {
        return;
    };
    if !path.contains(&h.what) {
        return;
    }
    let start = Instant::now();
    let came = loop {
        if seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.path.contains(&h.until))
        {
            break true;
        }
        if start.elapsed() >= h.limit {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(h) = hold.lock().unwrap().as_mut() {
        if came {
            h.released_by_request += 1;
        } else {
            h.released_by_limit += 1;
        }
    }
}

/// Sum of the sizes of all files under `dir` (as `du -b` would count content).
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// Checks that every blob in a berth home hashes to its name.
pub fn assert_blobs_intact(home: &Path) {
    let dir = home.join("blobs/sha256");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let mut f = std::fs::File::open(e.path()).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        assert_eq!(
            hex::encode(h.finalize()),
            e.file_name().to_string_lossy(),
            "corrupt blob {}",
            e.path().display()
        );
    }
}

/// The unpacked layer folder for a diff-id in a berth home.
pub fn layer_dir(home: &Path, diff_id: &str) -> PathBuf {
    home.join("layers")
        .join(diff_id.trim_start_matches("sha256:"))
}
