//! The stamp cache of the host's CA certificates ([`HostCas::from_host_cached`]): the key of
//! the certificates (their content hash) kept in the berth home with a stamp of the metadata
//! of every file [`HostCas::from_host`] reads, so that an unchanged host costs a few `stat`s
//! instead of reading and hashing the bundle on every `berth run` and cold `up`.
//!
//! The stamp hashes, for every bundle candidate (in order, missing ones too: a new file
//! earlier in the list changes which one is read) and every entry under the local folder (in
//! name order, folders walked), the path and the stat data a change of any kind moves:
//! device, inode, type and mode, size, modification and change time, of the file a link leads
//! to and of the link. As for a `rootfs:` base's stamp (`tree_stamp.rs`), a stamp in which
//! something changed less than the racy margin before it was taken (or claims a time in the
//! future) is not trusted, and one is stored only when a second stamp taken after reading is
//! equal. The cache is written without fsync: losing it costs one read of the bundle.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::host_ca::{HostCas, HOST_BUNDLES, HOST_LOCAL_DIR};
use crate::state::{read_json, write_json_volatile};

/// The file of the berth home the stamp and key are kept in.
pub const CACHE_FILE: &str = "host-ca-cache.json";

#[derive(Debug, Serialize, Deserialize)]
struct CaCache {
    /// Hex SHA-256 of the metadata (see the module documentation).
    stamp: String,
    /// The certificates' key; `None`: the host had none.
    key: Option<String>,
}

impl HostCas {
    /// [`HostCas::from_host`], answered from a cache in the berth home `home` when the
    /// metadata of every file it reads is what it was when the cache was written: reading
    /// and hashing the bundle (some 200 KiB, 140 certificates) was a good part of the CPU of
    /// every `berth run` and cold `up`. The certificates themselves are read only when a
    /// layer is written ([`HostCas::write_tree`]). See `host_ca_stamp`.
    pub fn from_host_cached(home: &Path) -> io::Result<Option<HostCas>> {
        let bundles: Vec<PathBuf> = HOST_BUNDLES.iter().map(PathBuf::from).collect();
        cached(
            &bundles,
            Path::new(HOST_LOCAL_DIR),
            &home.join(CACHE_FILE),
            super::tree_stamp::RACY_MARGIN,
        )
    }
}

/// [`HostCas::from_host_cached`] for the bundle candidates `bundles` and the local folder
/// `local_dir`, with the cache in `cache` and `margin` as the racy margin.
pub(super) fn cached(
    bundles: &[PathBuf],
    local_dir: &Path,
    cache: &Path,
    margin: Duration,
) -> io::Result<Option<HostCas>> {
    let before = stamp(bundles, local_dir, margin);
    if let Some(s) = &before {
        if let Ok(Some(kept)) = read_json::<CaCache>(cache) {
            if &kept.stamp == s {
                return Ok(kept.key.map(|key| HostCas::unread(key, bundles, local_dir)));
            }
        }
    }
    let cas = HostCas::from_candidates(bundles, local_dir)?;
    if let Some(s) = before {
        // Kept only when nothing changed while the files were read.
        if stamp(bundles, local_dir, margin).as_ref() == Some(&s) {
            let _ = write_json_volatile(
                cache,
                &CaCache {
                    stamp: s,
                    key: cas.as_ref().map(|c| c.key().to_string()),
                },
            );
        }
    }
    Ok(cas)
}

/// The stamp of what [`HostCas::from_candidates`] reads; `None` when something cannot be
/// looked at or changed within `margin` of now (racy).
fn stamp(bundles: &[PathBuf], local_dir: &Path, margin: Duration) -> Option<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let limit = now.checked_sub(margin)?;
    let limit = (limit.as_secs() as i64, limit.subsec_nanos() as i64);
    let mut text = String::new();
    for b in bundles {
        let is_file = entry(&mut text, "bundle", b, limit)?;
        if is_file {
            break;
        }
    }
    local(&mut text, local_dir, limit)?;
    Some(hex::encode(Sha256::digest(text.as_bytes())))
}

/// Adds the line of `path` (followed, and as a link) to `text`; whether it is a regular
/// file. `None` when it cannot be looked at or is racy.
fn entry(text: &mut String, tag: &str, path: &Path, limit: (i64, i64)) -> Option<bool> {
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = writeln!(text, "{tag} {} missing", path.display());
            return Some(false);
        }
        Err(_) => return None,
    };
    let target = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(_) => return None,
    };
    let mut line = format!("{tag} {}", path.display());
    for m in std::iter::once(&link).chain(target.as_ref()) {
        if (m.ctime(), m.ctime_nsec()) >= limit || (m.mtime(), m.mtime_nsec()) >= limit {
            return None;
        }
        let _ = write!(
            line,
            " {} {} {:o} {} {}.{} {}.{}",
            m.dev(),
            m.ino(),
            m.mode(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
    }
    text.push_str(&line);
    text.push('\n');
    Some(target.is_some_and(|m| m.is_file()))
}

/// Adds the lines of the local folder `dir` and everything under it, in name order.
fn local(text: &mut String, dir: &Path, limit: (i64, i64)) -> Option<()> {
    entry(text, "local", dir, limit)?;
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .ok()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Some(()),
        Err(_) => return None,
    };
    names.sort();
    for name in names {
        let path = dir.join(name);
        if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            local(text, &path, limit)?;
        } else {
            entry(text, "local", &path, limit)?;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(n: u32) -> String {
        format!("-----BEGIN CERTIFICATE-----\nMIIcert{n}\n-----END CERTIFICATE-----\n")
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in walk(dir) {
            if e.is_file() {
                out.push((
                    e.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&e).unwrap(),
                ));
            }
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    /// An unchanged host is answered from the cache without reading the certificates, which
    /// are read (and checked against the key) only to write the layer; any change of the
    /// bundle or of a local certificate reads them again; a racy stamp is not kept.
    #[test]
    fn an_unchanged_host_is_answered_from_the_stamp_and_a_change_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("certs/ca-certificates.crt");
        let local_dir = d.path().join("local");
        fs::create_dir_all(bundle.parent().unwrap()).unwrap();
        fs::create_dir_all(local_dir.join("corp")).unwrap();
        fs::write(&bundle, cert(1) + &cert(2)).unwrap();
        fs::write(local_dir.join("corp/proxy.crt"), cert(3)).unwrap();
        let bundles = vec![d.path().join("missing.pem"), bundle.clone()];
        let cache = d.path().join(CACHE_FILE);
        let get = |margin| {
            cached(&bundles, &local_dir, &cache, margin)
                .unwrap()
                .unwrap()
        };

        // Racy (everything was just written): read, and no stamp kept.
        let racy = get(Duration::from_secs(3600));
        assert!(racy.is_read());
        assert!(!cache.exists(), "a racy stamp is not kept");

        let first = get(Duration::ZERO);
        assert!(first.is_read());
        assert_eq!(first.key(), racy.key());
        assert!(cache.exists());
        let again = get(Duration::ZERO);
        assert!(!again.is_read(), "unchanged: answered from the stamp");
        assert_eq!(again.key(), first.key());

        // The layer written from the key alone is the one written from the certificates.
        let (a, b) = (d.path().join("layer-a"), d.path().join("layer-b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        first.write_tree(&[], &a).unwrap();
        again.write_tree(&[], &b).unwrap();
        assert_eq!(files(&a), files(&b));
        assert!(!files(&a).is_empty());

        // A local certificate changes: read again, another key; the one answered from the
        // old stamp refuses to write a layer of certificates that are no longer its own.
        let stale = get(Duration::ZERO);
        assert!(!stale.is_read());
        fs::write(local_dir.join("corp/proxy.crt"), cert(4) + &cert(5)).unwrap();
        let changed = get(Duration::ZERO);
        assert!(changed.is_read());
        assert_ne!(changed.key(), first.key());
        let c = d.path().join("layer-c");
        fs::create_dir_all(&c).unwrap();
        assert!(stale.write_tree(&[], &c).is_err());

        // The bundle changes, or a candidate earlier in the list appears.
        let now = get(Duration::ZERO);
        assert!(!now.is_read());
        fs::write(&bundle, cert(1)).unwrap();
        assert!(get(Duration::ZERO).is_read());
        assert!(!get(Duration::ZERO).is_read());
        fs::write(&bundles[0], cert(9)).unwrap();
        let other = get(Duration::ZERO);
        assert!(other.is_read());
        assert_ne!(other.key(), now.key());
    }
}
