//! The Debian archive's indexes: mirror discovery from the host's apt sources, `InRelease`
//! (or `Release` + `Release.gpg`, authenticated by [`super::signature`]: sha256 of every index), `Packages.xz` (sha256 of every .deb), Debian version ordering and
//! following a kernel metapackage to the versioned image package.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::http;
use super::KernelError;

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITES: &[&str] = &["bookworm", "bookworm-updates"];

/// Where kernels are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub url: String,
    pub suites: Vec<String>,
    /// Keyrings whose keys may sign the mirror's `Release` files.
    pub keyrings: Vec<PathBuf>,
}

impl Mirror {
    /// A mirror nothing listens on, with no suites and no keys (tests that must not fetch).
    #[cfg(test)]
    pub fn unreachable() -> Mirror {
        Mirror {
            url: "http://127.0.0.1:9".into(),
            suites: Vec::new(),
            keyrings: Vec::new(),
        }
    }

    /// `BERTH_DEBIAN_MIRROR` / `BERTH_DEBIAN_SUITES` (comma separated), else the host's first
    /// Debian apt source, else deb.debian.org bookworm; signed by a key of
    /// `BERTH_DEBIAN_KEYRING` (`:`-separated files), else of Debian's archive keyring.
    pub fn discover() -> Mirror {
        let from_host = std::fs::read_dir("/etc/apt/sources.list.d")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".sources"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .find_map(|s| mirror_from_deb822(&s))
            .or_else(|| {
                std::fs::read_to_string("/etc/apt/sources.list")
                    .ok()
                    .and_then(|s| mirror_from_one_line(&s))
            });
        let mut m = from_host.unwrap_or_else(|| Mirror {
            url: DEFAULT_MIRROR.into(),
            suites: DEFAULT_SUITES.iter().map(|s| s.to_string()).collect(),
            keyrings: Vec::new(),
        });
        m.keyrings = super::signature::keyrings_from_env();
        if let Ok(url) = std::env::var("BERTH_DEBIAN_MIRROR") {
            m.url = url;
        }
        if let Ok(s) = std::env::var("BERTH_DEBIAN_SUITES") {
            m.suites = s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        m.url = m.url.trim_end_matches('/').to_string();
        m
    }
}

/// First `Types: deb` stanza of a deb822 sources file whose URI is a Debian archive (not the
/// security archive, which has its own layout of suites).
pub fn mirror_from_deb822(text: &str) -> Option<Mirror> {
    for stanza in parse_stanzas(text) {
        let types = stanza.get("Types").map(String::as_str).unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let uri = stanza.get("URIs")?.split_whitespace().next()?.to_string();
        if uri.contains("security") {
            continue;
        }
        let suites: Vec<String> = stanza
            .get("Suites")?
            .split_whitespace()
            .map(String::from)
            .collect();
        return Some(Mirror {
            url: uri,
            suites,
            keyrings: Vec::new(),
        });
    }
    None
}

/// The first `deb URI SUITE ...` line of a one-line sources.list.
pub fn mirror_from_one_line(text: &str) -> Option<Mirror> {
    let mut url = None;
    let mut suites = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
    {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        let (u, s) = (words.get(1)?, words.get(2)?);
        if u.contains("security") {
            continue;
        }
        match &url {
            None => url = Some(u.to_string()),
            Some(first) if first != u => continue,
            _ => {}
        }
        suites.push(s.to_string());
    }
    Some(Mirror {
        url: url?,
        suites,
        keyrings: Vec::new(),
    })
}

/// Parses deb822 text (blank-line separated stanzas, continuation lines start with space).
pub fn parse_stanzas(text: &str) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: HashMap<String, String> = HashMap::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last_key = None;
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(v) = last_key.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim().to_string(), v.trim().to_string());
            last_key = Some(k.trim().to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `SHA256:` section of a Release file: path → (hex digest, size).
pub fn release_checksums(release: &str) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    let mut in_sha = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_sha = line.trim_end() == "SHA256:";
            continue;
        }
        if in_sha {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [hash, size, path] = f[..] {
                if let Ok(size) = size.parse() {
                    out.insert(path.to_string(), (hash.to_ascii_lowercase(), size));
                }
            }
        }
    }
    out
}

/// One binary package in a Packages index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    pub depends: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
}

/// The kernel image packages (`linux-image-*`) of a Packages index.
pub fn kernel_packages(packages: &str) -> Vec<PackageEntry> {
    let mut out = Vec::new();
    for block in packages.split("\n\n") {
        if !block.starts_with("Package: linux-image-") && !block.contains("\nPackage: linux-image-")
        {
            continue;
        }
        let Some(s) = parse_stanzas(block).into_iter().next() else {
            continue;
        };
        let get = |k: &str| s.get(k).cloned().unwrap_or_default();
        out.push(PackageEntry {
            name: get("Package"),
            version: get("Version"),
            depends: get("Depends"),
            filename: get("Filename"),
            sha256: get("SHA256").to_ascii_lowercase(),
            size: get("Size").parse().unwrap_or(0),
        });
    }
    out
}

/// The `linux-image-*` package a metapackage depends on, if it is one.
pub fn image_dependency(depends: &str) -> Option<(String, Option<String>)> {
    for dep in depends.split(',') {
        let first = dep.split('|').next()?.trim();
        let (name, rest) = match first.find(' ') {
            Some(i) => (&first[..i], first[i..].trim()),
            None => (first, ""),
        };
        if name.starts_with("linux-image-") {
            let version = rest
                .strip_prefix("(=")
                .and_then(|r| r.strip_suffix(')'))
                .map(|v| v.trim().to_string());
            return Some((name.to_string(), version));
        }
    }
    None
}

/// Debian version comparison (epoch, upstream, revision; `~` sorts before everything).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(mut a: &[u8], mut b: &[u8]) -> Ordering {
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefix.
            loop {
                let (ca, cb) = (
                    a.first().copied().filter(|c| !c.is_ascii_digit()),
                    b.first().copied().filter(|c| !c.is_ascii_digit()),
                );
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                a = &a[1.min(a.len())..];
                b = &b[1.min(b.len())..];
            }
            // Digit run.
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let na: u128 = std::str::from_utf8(&a[..da])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let nb: u128 = std::str::from_utf8(&b[..db])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if na != nb {
                return na.cmp(&nb);
            }
            a = &a[da..];
            b = &b[db..];
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

/// Downloads `url` fully, checking size and sha256.
pub fn fetch_verified(url: &str, sha256: &str, size: Option<u64>) -> Result<Vec<u8>, KernelError> {
    let mut body = http::get(url)?;
    let mut data = Vec::new();
    body.read_to_end(&mut data)
        .map_err(|e| KernelError::Download {
            url: url.into(),
            reason: e.to_string(),
        })?;
    if let Some(size) = size {
        if data.len() as u64 != size {
            return Err(KernelError::Checksum {
                url: url.into(),
                reason: format!("{} bytes instead of {size}", data.len()),
            });
        }
    }
    let got = hex::encode(Sha256::digest(&data));
    if got != sha256 {
        return Err(KernelError::Checksum {
            url: url.into(),
            reason: format!("sha256 {got}, expected {sha256}"),
        });
    }
    Ok(data)
}

fn get_all(url: &str) -> Result<Option<Vec<u8>>, KernelError> {
    match http::get(url) {
        Ok(mut b) => {
            let mut data = Vec::new();
            b.read_to_end(&mut data)
                .map_err(|e| KernelError::Download {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
            Ok(Some(data))
        }
        Err(http::HttpError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The authenticated `Release` text of `suite` (from `InRelease`, else `Release` +
/// `Release.gpg`) and the address it came from; `None` when the mirror has no such suite.
/// A `Release` without a signature is refused, never used.
fn signed_release(mirror: &Mirror, suite: &str) -> Result<Option<(String, String)>, KernelError> {
    let base = format!("{}/dists/{suite}", mirror.url);
    let in_release = format!("{base}/InRelease");
    if let Some(data) = get_all(&in_release)? {
        let text = super::signature::verify_clearsigned(&in_release, &data, &mirror.keyrings)?;
        return Ok(Some((in_release, text)));
    }
    let release_url = format!("{base}/Release");
    let Some(release) = get_all(&release_url)? else {
        return Ok(None);
    };
    let sig_url = format!("{base}/Release.gpg");
    let signature = get_all(&sig_url)?.ok_or_else(|| KernelError::Signature {
        url: release_url.clone(),
        keyrings: mirror
            .keyrings
            .iter()
            .map(|k| k.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        reason: format!("the mirror has neither {in_release} nor {sig_url}"),
    })?;
    super::signature::verify_detached(&release_url, &release, &signature, &mirror.keyrings)?;
    let text = String::from_utf8(release).map_err(|_| KernelError::Index {
        url: release_url.clone(),
        reason: "not UTF-8".into(),
    })?;
    Ok(Some((release_url, text)))
}

/// Finds `package` (at `version`, else the newest) across the mirror's suites and follows
/// metapackages to the package that holds the kernel.
pub fn resolve(
    mirror: &Mirror,
    package: &str,
    version: Option<&str>,
) -> Result<PackageEntry, KernelError> {
    let mut all = Vec::new();
    for suite in &mirror.suites {
        let Some((release_url, release)) = signed_release(mirror, suite)? else {
            continue;
        };
        let sums = release_checksums(&release);
        let index = "main/binary-amd64/Packages.xz";
        let Some((sha, size)) = sums.get(index) else {
            return Err(KernelError::Index {
                url: release_url,
                reason: format!("no SHA256 entry for {index}"),
            });
        };
        let url = format!("{}/dists/{suite}/{index}", mirror.url);
        let xz = fetch_verified(&url, sha, Some(*size))?;
        let mut text = String::new();
        xz2::read::XzDecoder::new(&xz[..])
            .read_to_string(&mut text)
            .map_err(|e| KernelError::Index {
                url: url.clone(),
                reason: format!("cannot decompress: {e}"),
            })?;
        all.extend(kernel_packages(&text));
    }
    pick(&all, package, version, mirror)
}

/// Chooses the entry for `package` and follows `linux-image-*` dependencies (at most 3 hops).
pub fn pick(
    all: &[PackageEntry],
    package: &str,
    version: Option<&str>,
    mirror: &Mirror,
) -> Result<PackageEntry, KernelError> {
    let mut name = package.to_string();
    let mut want = version.map(String::from);
    for _ in 0..4 {
        let entry = all
            .iter()
            .filter(|p| p.name == name && want.as_ref().is_none_or(|v| *v == p.version))
            .max_by(|a, b| version_cmp(&a.version, &b.version))
            .ok_or_else(|| KernelError::NotFound {
                package: match &want {
                    Some(v) => format!("{name}={v}"),
                    None => name.clone(),
                },
                mirror: format!("{} ({})", mirror.url, mirror.suites.join(", ")),
            })?;
        match image_dependency(&entry.depends) {
            Some((dep, dep_version)) => {
                name = dep;
                want = dep_version;
            }
            None => return Ok(entry.clone()),
        }
    }
    Err(KernelError::NotFound {
        package: package.into(),
        mirror: "metapackage chain too long".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `files` (path → body, 404 otherwise) on 127.0.0.1 until a request for `/stop`.
    fn serve(files: HashMap<String, Vec<u8>>) -> (String, std::thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for s in listener.incoming() {
                let mut s = s.unwrap();
                let mut req = Vec::new();
                let mut byte = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                    req.push(byte[0]);
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let resp = match files.get(&path) {
                    Some(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend(body);
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = s.write_all(&resp);
                if path == "/stop" {
                    break;
                }
            }
        });
        (url, server)
    }

    #[test]
    fn release_files_are_used_only_when_signed() {
        if std::process::Command::new("gpgv")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: gpgv is missing (apt-get install gpgv)");
            return;
        }
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vm/kernel/testdata");
        let read = |n: &str| std::fs::read(data.join(n)).unwrap();
        let files: HashMap<String, Vec<u8>> = [
            ("/dists/clear/InRelease", read("InRelease")),
            ("/dists/detached/Release", read("Release")),
            ("/dists/detached/Release.gpg", read("Release.gpg")),
            ("/dists/unsigned/Release", read("Release")),
            ("/dists/stranger/InRelease", read("InRelease.unknown")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (url, server) = serve(files);
        let m = Mirror {
            url: url.clone(),
            suites: vec![],
            keyrings: vec![data.join("trusted.gpg")],
        };
        let release = String::from_utf8(read("Release")).unwrap();
        let (from, text) = signed_release(&m, "clear").unwrap().unwrap();
        assert_eq!(
            (from.as_str(), text.as_str()),
            (
                format!("{url}/dists/clear/InRelease").as_str(),
                release.as_str()
            )
        );
        let (from, text) = signed_release(&m, "detached").unwrap().unwrap();
        assert!(from.ends_with("/dists/detached/Release"), "{from}");
        assert_eq!(text, release);
        let e = signed_release(&m, "unsigned").unwrap_err().to_string();
        assert!(
            e.contains("is not signed by a trusted key") && e.contains("Release.gpg"),
            "{e}"
        );
        let e = signed_release(&m, "stranger").unwrap_err().to_string();
        assert!(e.contains("keys the keyrings do not have"), "{e}");
        assert!(signed_release(&m, "absent").unwrap().is_none());
        let _ = http::get(&format!("{url}/stop"));
        server.join().unwrap();
    }

    #[test]
    fn versions_order_like_dpkg() {
        use Ordering::*;
        let cases = [
            ("6.1.192-2", "6.1.176-1", Greater),
            ("1.0~rc1-1", "1.0-1", Less),
            ("1:0.9", "2.0", Greater),
            ("1.0-1", "1.0-1", Equal),
            ("1.0a", "1.0", Greater),
            ("1.0-10", "1.0-9", Greater),
            ("2.30-1+deb12u1", "2.30-1", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(version_cmp(a, b), want, "{a} vs {b}");
            assert_eq!(version_cmp(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn host_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        let m = mirror_from_deb822(deb822).unwrap();
        assert_eq!(m.url, "http://deb.debian.org/debian");
        assert_eq!(m.suites, vec!["bookworm", "bookworm-updates"]);
        let one = "deb http://security.debian.org/ bookworm-security main\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\ndeb http://ftp.de.debian.org/debian bookworm-updates main\n";
        let m = mirror_from_one_line(one).unwrap();
        assert_eq!(m.url, "http://ftp.de.debian.org/debian");
        assert_eq!(m.suites, vec!["bookworm", "bookworm-updates"]);
    }

    #[test]
    fn release_and_packages_parsing_and_metapackage_following() {
        let release = "Origin: Debian\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n ABCD 1234 main/binary-amd64/Packages.xz\n eeee 9 main/binary-amd64/Release\n";
        let sums = release_checksums(release);
        assert_eq!(
            sums["main/binary-amd64/Packages.xz"],
            ("abcd".to_string(), 1234)
        );
        assert_eq!(sums.len(), 2);

        let packages = "Package: bash\nVersion: 5\n\nPackage: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nFilename: pool/meta.deb\nSHA256: 11\nSize: 1\n\nPackage: linux-image-cloud-amd64\nVersion: 6.1.176-1\nDepends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)\nFilename: pool/old.deb\nSHA256: 22\nSize: 2\n\nPackage: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nDepends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\nDescription: Linux 6.1\n long text\nFilename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb\nSHA256: AB\nSize: 300\n";
        let all = kernel_packages(packages);
        assert_eq!(all.len(), 3);
        let m = Mirror {
            url: "http://x".into(),
            suites: vec!["s".into()],
            keyrings: vec![],
        };
        let img = pick(&all, "linux-image-cloud-amd64", None, &m).unwrap();
        assert_eq!(img.name, "linux-image-6.1.0-56-cloud-amd64");
        assert_eq!(img.sha256, "ab");
        assert_eq!(img.size, 300);
        let err = pick(&all, "linux-image-cloud-amd64", Some("6.1.176-1"), &m).unwrap_err();
        assert!(
            err.to_string()
                .contains("linux-image-6.1.0-50-cloud-amd64=6.1.176-1"),
            "{err}"
        );
        assert!(pick(&all, "linux-image-nope", None, &m).is_err());
        assert_eq!(image_dependency("kmod, linux-base"), None);
    }
}
