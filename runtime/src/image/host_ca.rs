//! The host's trusted CA certificates, made available to build steps and environments
//! (`[image].host_ca`, on by default): behind a TLS-intercepting proxy every HTTPS fetch
//! inside would otherwise fail with "self-signed certificate in certificate chain".
//!
//! [`HostCas::from_host`] reads the host's bundle and the local certificates under
//! `/usr/local/share/ca-certificates`. [`HostCas::write_tree`] writes the layer berth puts
//! right over the base image (below packages, so `apt` over https and `pip`/`npm` in setup
//! steps trust them too), keyed by the certificates' content:
//!
//! - `/etc/berth/ca-certificates.crt`: the image's own bundle (when it has one) plus the
//!   host's certificates; the variables of [`CA_ENV`] point at it, so every TLS client finds
//!   it whatever the distribution.
//! - the image's store (`/etc/ssl/certs/ca-certificates.crt` or `/etc/pki/tls/certs/ca-bundle.crt`
//!   when a regular file, or a new `/etc/ssl/certs/ca-certificates.crt` when the image has
//!   none) merged the same way;
//! - `/usr/local/share/ca-certificates/berth-host/*.crt`: the host's local certificates, so a
//!   later `update-ca-certificates` (installing `ca-certificates`) keeps trusting them.
//!
//! The image's files are read through each layer without following symlinks (an image could
//! otherwise make berth read a host file into the layer).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Where the merged bundle lives inside.
pub const BUNDLE_PATH: &str = "/etc/berth/ca-certificates.crt";

/// Variables set (under the plan's `[env]`) to [`BUNDLE_PATH`] in build steps and
/// environments.
pub const CA_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CARGO_HTTP_CAINFO",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// Host bundles, in the order distributions use them (Debian/Ubuntu/Alpine, Fedora/RHEL,
/// openSUSE, Arch/macOS-style).
pub(super) const HOST_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The local certificates `update-ca-certificates` adds to the bundle.
pub(super) const HOST_LOCAL_DIR: &str = "/usr/local/share/ca-certificates";

/// Image stores merged when they are regular files.
const IMAGE_STORES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
];

/// No certificate bundle is this large; a larger file is not read.
const MAX_BUNDLE: u64 = 16 << 20;

/// The host's certificates.
#[derive(Debug, Clone)]
pub struct HostCas {
    /// PEM certificate blocks of the host's bundle, then of its local certificates, deduplicated.
    certificates: Vec<String>,
    /// The local certificates as files (name, content).
    local: Vec<(String, Vec<u8>)>,
    key: String,
    /// Where they were read from; `false` when only the key is known (from the stamp cache,
    /// [`HostCas::from_host_cached`]): [`HostCas::write_tree`] reads them first.
    loaded: bool,
    /// The host's bundle candidates and local folder (the host's own outside tests).
    bundles: Vec<PathBuf>,
    local_dir: PathBuf,
}

impl HostCas {
    /// The host's certificates, or `None` when the host has neither a bundle nor local
    /// certificates.
    pub fn from_host() -> io::Result<Option<HostCas>> {
        let bundles: Vec<PathBuf> = HOST_BUNDLES.iter().map(PathBuf::from).collect();
        Self::from_candidates(&bundles, Path::new(HOST_LOCAL_DIR))
    }

    /// From the first of `bundles` that is a file, and the local certificates under
    /// `local_dir`.
    pub(super) fn from_candidates(
        bundles: &[PathBuf],
        local_dir: &Path,
    ) -> io::Result<Option<HostCas>> {
        let bundle = bundles.iter().map(PathBuf::as_path).find(|p| p.is_file());
        let mut cas = Self::from_paths(bundle, local_dir)?;
        if let Some(c) = &mut cas {
            c.bundles = bundles.to_vec();
            c.local_dir = local_dir.to_path_buf();
        }
        Ok(cas)
    }

    /// The certificates of the key `key` read from `bundles` and `local_dir` only when
    /// needed (see [`HostCas::from_host_cached`]).
    pub(super) fn unread(key: String, bundles: &[PathBuf], local_dir: &Path) -> HostCas {
        HostCas {
            certificates: Vec::new(),
            local: Vec::new(),
            key,
            loaded: false,
            bundles: bundles.to_vec(),
            local_dir: local_dir.to_path_buf(),
        }
    }

    /// Whether the certificates were read (not only their key known).
    pub fn is_read(&self) -> bool {
        self.loaded
    }

    /// These certificates, read now when only their key was known; an error when the host's
    /// are no longer those of the key.
    fn read(&self) -> io::Result<std::borrow::Cow<'_, HostCas>> {
        if self.loaded {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        match Self::from_candidates(&self.bundles, &self.local_dir)? {
            Some(c) if c.key == self.key => Ok(std::borrow::Cow::Owned(c)),
            _ => Err(io::Error::other(
                "the host's CA certificates changed while berth was using them; run the command again",
            )),
        }
    }

    /// From a bundle file and a folder of local `.crt` files (searched recursively).
    pub fn from_paths(bundle: Option<&Path>, local_dir: &Path) -> io::Result<Option<HostCas>> {
        let mut certificates = Vec::new();
        if let Some(b) = bundle {
            certificates.extend(pem_blocks(&read_limited(b)?));
        }
        let mut local = Vec::new();
        collect_local(local_dir, local_dir, &mut local)?;
        local.sort();
        for (_, bytes) in &local {
            for block in pem_blocks(bytes) {
                if !certificates.contains(&block) {
                    certificates.push(block);
                }
            }
        }
        if certificates.is_empty() {
            return Ok(None);
        }
        let mut h = Sha256::new();
        h.update(b"berth-host-ca-v1\n");
        for c in &certificates {
            h.update(c.as_bytes());
        }
        for (name, bytes) in &local {
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(bytes);
        }
        Ok(Some(HostCas {
            certificates,
            local,
            key: hex::encode(h.finalize()),
            loaded: true,
            bundles: bundle.map(Path::to_path_buf).into_iter().collect(),
            local_dir: local_dir.to_path_buf(),
        }))
    }

    /// Content hash: part of the cache key of the layer and of every step above it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The variables pointing TLS clients at [`BUNDLE_PATH`].
    pub fn env() -> Vec<(String, String)> {
        CA_ENV
            .iter()
            .map(|k| (k.to_string(), BUNDLE_PATH.to_string()))
            .collect()
    }

    /// The bundle of [`BUNDLE_PATH`] for an image of `layers` (bottom → top): the image's
    /// first store, then the host's certificates. A Dockerfile's `RUN` steps get it mounted
    /// for their run only (`dockerfile::run_step`).
    pub fn bundle(&self, layers: &[PathBuf]) -> io::Result<Vec<u8>> {
        bundle_rel(layers)?;
        let read = self.read()?;
        let mut image_blocks = Vec::new();
        for store in IMAGE_STORES {
            if let Found::File(bytes) = lookup(layers, store)? {
                image_blocks = pem_blocks(&bytes);
                break;
            }
        }
        Ok(merge(image_blocks, &read.certificates)
            .concat()
            .into_bytes())
    }

    /// Writes the layer's files into `dir` (an empty folder), merging with what `layers`
    /// (bottom → top) already hold.
    pub fn write_tree(&self, layers: &[PathBuf], dir: &Path) -> io::Result<()> {
        let read = self.read()?;
        let this: &HostCas = &read;
        // The berth bundle: the image's first store, then the host's certificates.
        let mut stores_found = false;
        let mut image_blocks: Vec<String> = Vec::new();
        for store in IMAGE_STORES {
            match lookup(layers, store)? {
                Found::File(bytes) => {
                    stores_found = true;
                    let merged = merge(pem_blocks(&bytes), &this.certificates);
                    if image_blocks.is_empty() {
                        image_blocks = merged.clone();
                    }
                    write_file(dir, store, merged.concat().as_bytes())?;
                }
                Found::Other => stores_found = true,
                Found::Missing | Found::Dir => {}
            }
        }
        if !stores_found && creatable(layers, IMAGE_STORES[0])? {
            write_file(dir, IMAGE_STORES[0], this.certificates.concat().as_bytes())?;
        }
        let bundle = merge(image_blocks, &this.certificates);
        let rel = bundle_rel(layers)?;
        write_file(dir, rel, bundle.concat().as_bytes())?;
        let local_dir = "usr/local/share/ca-certificates/berth-host";
        for (name, bytes) in &this.local {
            let rel = format!("{local_dir}/{}", name.replace('/', "_"));
            if creatable(layers, &rel)? {
                write_file(dir, &rel, bytes)?;
            }
        }
        Ok(())
    }
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let f = fs::File::open(path)?;
    let mut out = Vec::new();
    f.take(MAX_BUNDLE).read_to_end(&mut out)?;
    Ok(out)
}

fn collect_local(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let path = e.path();
        let meta = fs::metadata(&path)?;
        if meta.is_dir() {
            collect_local(root, &path, out)?;
        } else if meta.is_file() && path.extension().is_some_and(|x| x == "crt") {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            out.push((name, read_limited(&path)?));
        }
    }
    Ok(())
}

/// The PEM certificate blocks of a bundle, each normalized to end with a newline.
fn pem_blocks(bytes: &[u8]) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    let mut rest = &text[..];
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + end + END.len()];
        let block: String = block.lines().map(|l| format!("{}\n", l.trim())).collect();
        if !out.contains(&block) {
            out.push(block);
        }
        rest = &rest[start + end + END.len()..];
    }
    out
}

fn merge(mut base: Vec<String>, add: &[String]) -> Vec<String> {
    for c in add {
        if !base.contains(c) {
            base.push(c.clone());
        }
    }
    base
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)?;
    io::Write::write_all(&mut f, bytes)
}

/// What the merged view of the layers has at a path.
enum Found {
    Missing,
    Dir,
    File(Vec<u8>),
    /// A symlink, device, … (or a file where a folder is on the way).
    Other,
}

/// Looks `rel` up in the merged view of `layers` (top first; a whiteout hides what is below).
fn lookup(layers: &[PathBuf], rel: &str) -> io::Result<Found> {
    for layer in layers.iter().rev() {
        match lookup_in_layer(layer, rel)? {
            InLayer::Absent => continue,
            InLayer::Whiteout => return Ok(Found::Missing),
            InLayer::Found(f) => return Ok(f),
        }
    }
    Ok(Found::Missing)
}

/// Whether berth's layer can put a file at `rel`: every folder on the way is a folder or
/// missing in the image.
/// [`BUNDLE_PATH`] relative to the root, when an image of `layers` can hold it there (folders
/// on the way, and a file or nothing at the end); else the error that says why not.
fn bundle_rel(layers: &[PathBuf]) -> io::Result<&'static str> {
    let rel = BUNDLE_PATH.trim_start_matches('/');
    if !creatable(layers, rel)? {
        return Err(io::Error::other(format!(
            "the image has something other than a folder on the way to {BUNDLE_PATH}"
        )));
    }
    Ok(rel)
}

fn creatable(layers: &[PathBuf], rel: &str) -> io::Result<bool> {
    let parts: Vec<&str> = rel.split('/').collect();
    for i in 1..parts.len() {
        match lookup(layers, &parts[..i].join("/"))? {
            Found::Missing => return Ok(true),
            Found::Dir => {}
            Found::File(_) | Found::Other => return Ok(false),
        }
    }
    Ok(matches!(
        lookup(layers, rel)?,
        Found::Missing | Found::File(_)
    ))
}

enum InLayer {
    Absent,
    Whiteout,
    Found(Found),
}

/// `rel` in one layer folder, walked a component at a time without following symlinks
/// (layers are read-only once unpacked, so nothing changes between the checks).
fn lookup_in_layer(layer: &Path, rel: &str) -> io::Result<InLayer> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut path = layer.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(InLayer::Absent),
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        let last = i + 1 == parts.len();
        if ft.is_char_device() && meta.rdev() == 0 {
            return Ok(InLayer::Whiteout);
        }
        if ft.is_dir() {
            continue;
        }
        if !last || !ft.is_file() {
            return Ok(InLayer::Found(Found::Other));
        }
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        let mut bytes = Vec::new();
        f.take(MAX_BUNDLE).read_to_end(&mut bytes)?;
        return Ok(InLayer::Found(Found::File(bytes)));
    }
    Ok(InLayer::Found(Found::Dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: u8) -> String {
        format!("-----BEGIN CERTIFICATE-----\nAAA{n}\n-----END CERTIFICATE-----\n")
    }

    #[test]
    fn host_certificates_are_merged_into_the_image_store_and_berth_bundle() {
        let d = tempfile::tempdir().unwrap();
        let host_bundle = d.path().join("host.crt");
        fs::write(&host_bundle, format!("{}{}", cert(1), cert(2))).unwrap();
        let local = d.path().join("local");
        fs::create_dir_all(local.join("corp")).unwrap();
        fs::write(local.join("corp/proxy.crt"), cert(3)).unwrap();
        fs::write(local.join("ignored.pem"), cert(9)).unwrap();
        let cas = HostCas::from_paths(Some(&host_bundle), &local)
            .unwrap()
            .unwrap();

        // An image with its own store (one certificate shared with the host).
        let lower = d.path().join("l0");
        fs::create_dir_all(lower.join("etc/ssl/certs")).unwrap();
        fs::write(
            lower.join("etc/ssl/certs/ca-certificates.crt"),
            format!("{}{}", cert(7), cert(1)),
        )
        .unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        cas.write_tree(std::slice::from_ref(&lower), &out).unwrap();
        let store = fs::read_to_string(out.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(store, [cert(7), cert(1), cert(2), cert(3)].concat());
        assert_eq!(
            fs::read_to_string(out.join("etc/berth/ca-certificates.crt")).unwrap(),
            store
        );
        assert_eq!(
            fs::read_to_string(
                out.join("usr/local/share/ca-certificates/berth-host/corp_proxy.crt")
            )
            .unwrap(),
            cert(3)
        );
        assert!(!out
            .join("usr/local/share/ca-certificates/berth-host/ignored.pem")
            .exists());

        // The key follows the content.
        fs::write(local.join("corp/proxy.crt"), cert(4)).unwrap();
        let changed = HostCas::from_paths(Some(&host_bundle), &local)
            .unwrap()
            .unwrap();
        assert_ne!(changed.key(), cas.key());
        assert!(HostCas::from_paths(None, &d.path().join("none"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn symlinks_in_the_image_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("ca-certificates.crt"), cert(66)).unwrap();
        fs::write(secret.join("ca-bundle.crt"), cert(67)).unwrap();
        let host = d.path().join("host.crt");
        fs::write(&host, cert(1)).unwrap();
        let cas = HostCas::from_paths(Some(&host), &d.path().join("none"))
            .unwrap()
            .unwrap();
        // `etc/ssl/certs` is a symlink to a host folder; `etc/pki/tls/certs/ca-bundle.crt`
        // a symlink to a host file.
        let lower = d.path().join("l0");
        fs::create_dir_all(lower.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink(&secret, lower.join("etc/ssl/certs")).unwrap();
        fs::create_dir_all(lower.join("etc/pki/tls/certs")).unwrap();
        std::os::unix::fs::symlink(
            secret.join("ca-bundle.crt"),
            lower.join("etc/pki/tls/certs/ca-bundle.crt"),
        )
        .unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        cas.write_tree(std::slice::from_ref(&lower), &out).unwrap();
        let bundle = fs::read_to_string(out.join("etc/berth/ca-certificates.crt")).unwrap();
        assert_eq!(bundle, cert(1), "nothing read through a symlink");
        assert!(!out.join("etc/ssl").exists() && !out.join("etc/pki").exists());
    }

    #[test]
    fn a_whiteout_hides_a_lower_store() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host.crt");
        fs::write(&host, cert(1)).unwrap();
        let cas = HostCas::from_paths(Some(&host), &d.path().join("none"))
            .unwrap()
            .unwrap();
        let l0 = d.path().join("l0");
        fs::create_dir_all(l0.join("etc/ssl/certs")).unwrap();
        fs::write(l0.join("etc/ssl/certs/ca-certificates.crt"), cert(5)).unwrap();
        let l1 = d.path().join("l1");
        fs::create_dir_all(l1.join("etc/ssl/certs")).unwrap();
        if nix::sys::stat::mknod(
            &l1.join("etc/ssl/certs/ca-certificates.crt"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .is_err()
        {
            eprintln!("skipped: creating a whiteout needs CAP_MKNOD");
            return;
        }
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        cas.write_tree(&[l0, l1], &out).unwrap();
        assert_eq!(
            fs::read_to_string(out.join("etc/ssl/certs/ca-certificates.crt")).unwrap(),
            cert(1)
        );
    }
}
