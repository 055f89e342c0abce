//! The content keys of what a build step reads from a stage's or an image's layers
//! (`COPY --from`, `RUN --mount=type=bind,from=`): a hash of each entry's destination, kind,
//! mode, owner, size and content (or link target), so that a source stage that ran again
//! and made the same files reruns nothing after it (as BuildKit). Layers never change once
//! stored, so a key is kept in the berth home (`copy-keys/<hash of the entries' paths>`, with
//! the layer folders it was read from) and a build whose steps are all cached reads no file
//! again. `berth image prune` removes the keys of layers it removed ([`prune`]).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::context_digests::{hash_entry, remove_stale};
use crate::state::{create_private_dir, read_json, write_json_volatile};

/// The folder of the berth home the keys are kept in.
pub const KEYS_DIR: &str = "copy-keys";

#[derive(Debug, Serialize, Deserialize)]
struct KeptKey {
    /// Hex SHA-256 of the entries.
    key: String,
    /// The layer folders the entries were read from: the key goes when one of them does.
    layers: Vec<PathBuf>,
}

/// The content key of `entries` (the path of an entry in one of `layers`, and where the step
/// puts or sees it), owners included; kept in the berth home `home`.
pub fn content_key(
    home: &Path,
    layers: &[PathBuf],
    entries: &[(&Path, &str)],
) -> std::io::Result<String> {
    let mut which = Sha256::new();
    for (from, to) in entries {
        which.update(from.as_os_str().as_encoded_bytes());
        which.update(b"\0");
        which.update(to.as_bytes());
        which.update(b"\0");
    }
    let dir = home.join(KEYS_DIR);
    let memo = dir.join(hex::encode(which.finalize()));
    if let Ok(Some(k)) = read_json::<KeptKey>(&memo) {
        if k.key.len() == 64 && k.key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(k.key);
        }
    }
    let mut h = Sha256::new();
    for (from, to) in entries {
        let meta = fs::symlink_metadata(from)?;
        h.update(format!("{}:{}\0", meta.uid(), meta.gid()).as_bytes());
        hash_entry(&mut h, to, from, None)?;
    }
    let key = hex::encode(h.finalize());
    // Only a cache: a failed write costs a hash next time.
    if create_private_dir(&dir).is_ok() {
        let _ = write_json_volatile(
            &memo,
            &KeptKey {
                key: key.clone(),
                layers: layers.to_vec(),
            },
        );
    }
    Ok(key)
}

/// Removes the keys read from a layer folder that no longer exists (and unreadable ones)
/// from the berth home `home`: the number removed and their bytes. Run after the layers were
/// pruned, under the store's exclusive lock (no build is adding keys).
pub fn prune(home: &Path) -> (usize, u64) {
    remove_stale(&home.join(KEYS_DIR), |k: &KeptKey| {
        k.layers.iter().any(|l| !l.is_dir())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_kept_while_its_layers_exist_and_pruned_with_them() {
        let home = tempfile::tempdir().unwrap();
        let layers = tempfile::tempdir().unwrap();
        let (a, b) = (layers.path().join("a"), layers.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), b"same").unwrap();
        fs::write(b.join("f"), b"same").unwrap();
        let fa = a.join("f");
        let fb = b.join("f");
        let ka = content_key(home.path(), std::slice::from_ref(&a), &[(&fa, "/f")]).unwrap();
        let kb = content_key(home.path(), std::slice::from_ref(&b), &[(&fb, "/f")]).unwrap();
        assert_eq!(ka, kb, "keyed by content, not by where it is");
        // Kept: a changed file (which a stored layer never is) is not read again.
        fs::write(&fa, b"other").unwrap();
        assert_eq!(
            content_key(home.path(), std::slice::from_ref(&a), &[(&fa, "/f")]).unwrap(),
            ka
        );
        let keys = || fs::read_dir(home.path().join(KEYS_DIR)).unwrap().count();
        assert_eq!(keys(), 2);
        fs::write(home.path().join(KEYS_DIR).join("junk"), b"old format").unwrap();
        assert_eq!(prune(home.path()).0, 1, "the unreadable one");
        fs::remove_dir_all(&b).unwrap();
        assert_eq!(prune(home.path()).0, 1, "the one of the removed layer");
        assert_eq!(keys(), 1);
    }
}
