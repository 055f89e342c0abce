//! Copies of image layers owned by one environment id range, for berth homes whose filesystem
//! has no id-mapped mounts (overlayfs and tmpfs on 6.1 kernels, FUSE filesystems, berth inside
//! a container-based CI runner). Where the kernel id-maps the shared layer store into each
//! environment's user namespace, these are not needed; elsewhere every id of a layer is moved
//! into the environment's range in a copy, as podman does without id-mapped mounts.
//!
//! ```text
//! layer-copies/                      0700, root's alone like layers/ (setuid files of images)
//!   <range>/<diff-id-hex>/           one layer, its ids moved into <range>
//! envs/<id>/layer-copies.json        which copies the environment's last start used
//! ```
//!
//! `<range>` names the id mapping (`u0-100000-65536.g0-100000-65536`: inside, host start and
//! count of each uid and gid range), so every environment with the same range shares one copy
//! of a layer. A copy is made in `tmp/` and renamed in whole, so a copy that exists is
//! complete. `berth image prune` removes copies no environment's record lists (an environment
//! that is destroyed, or started over other layers, or with another range, gives them up).
//! The copies are made by `container::layer_copy` (which knows id mappings); this module only
//! names, records and removes them.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{read_json, remove_tree, set_mode, write_json, StateError};

/// The folder of the copies in a berth home.
pub const COPIES_DIR: &str = "layer-copies";
/// An environment's record of the copies it uses, in its state folder.
pub const ENV_RECORD: &str = "layer-copies.json";

/// What an environment's last start mounted: copies of `layers` for `range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiesInUse {
    pub range: String,
    pub layers: Vec<String>,
}

/// The layer copies of one berth home.
#[derive(Debug, Clone)]
pub struct LayerCopies {
    home: PathBuf,
}

impl LayerCopies {
    pub fn new(home: &Path) -> Self {
        LayerCopies {
            home: home.to_path_buf(),
        }
    }

    /// The store and name of a layer of a berth home's layer store (`<home>/layers/<hex>`);
    /// `None` for a folder elsewhere.
    pub fn of_layer(layer: &Path) -> Option<(LayerCopies, String)> {
        let store = layer.parent()?;
        if store.file_name()? != "layers" {
            return None;
        }
        let name = layer.file_name()?.to_str()?.to_string();
        Some((LayerCopies::new(store.parent()?), name))
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn root(&self) -> PathBuf {
        self.home.join(COPIES_DIR)
    }

    /// Where the copy of layer `layer` for `range` is (or will be).
    pub fn path(&self, range: &str, layer: &str) -> PathBuf {
        self.root().join(range).join(layer)
    }

    /// Creates `layer-copies/<range>/` (the store `0700`) and returns it.
    pub fn range_dir(&self, range: &str) -> Result<PathBuf, StateError> {
        let dir = self.root().join(range);
        crate::state::create_dir_all(&dir)?;
        set_mode(&self.root(), 0o700)?;
        set_mode(&dir, 0o700)?;
        Ok(dir)
    }

    /// Moves a finished copy at `staged` into place. Another start may have made the same copy
    /// meanwhile: then that one stays and `staged` is removed.
    pub fn install(&self, staged: &Path, range: &str, layer: &str) -> io::Result<PathBuf> {
        let to = self.path(range, layer);
        match fs::rename(staged, &to) {
            Ok(()) => Ok(to),
            Err(_) if to.is_dir() => {
                let _ = remove_tree(staged);
                Ok(to)
            }
            Err(e) => Err(e),
        }
    }

    /// Records in `state_dir` which copies the environment uses (or that it uses none).
    pub fn record_use(state_dir: &Path, used: Option<&CopiesInUse>) -> Result<(), StateError> {
        let p = state_dir.join(ENV_RECORD);
        match used {
            Some(u) => write_json(&p, u),
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(StateError::Write { path: p, source: e })
                }
                _ => Ok(()),
            },
        }
    }

    /// (range, layer) of every copy an environment of this home records.
    fn in_use(&self) -> Result<BTreeSet<(String, String)>, StateError> {
        let mut out = BTreeSet::new();
        let Ok(rd) = fs::read_dir(self.home.join("envs")) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            // The environment's own container and its sidecars (`sidecars/<name>/`).
            let sidecars = fs::read_dir(e.path().join("sidecars"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|s| s.path());
            for dir in std::iter::once(e.path()).chain(sidecars) {
                let rec: Option<CopiesInUse> = read_json(&dir.join(ENV_RECORD))?;
                if let Some(r) = rec {
                    out.extend(r.layers.into_iter().map(|l| (r.range.clone(), l)));
                }
            }
        }
        Ok(out)
    }

    /// Removes the copies no environment records; returns how many and their size. Called
    /// under the image store's exclusive lock.
    pub fn prune(&self) -> Result<(usize, u64), StateError> {
        let keep = self.in_use()?;
        let (mut removed, mut bytes) = (0, 0);
        let Ok(ranges) = fs::read_dir(self.root()) else {
            return Ok((0, 0));
        };
        for range in ranges.flatten() {
            let range_name = range.file_name().to_string_lossy().into_owned();
            let Ok(layers) = fs::read_dir(range.path()) else {
                continue;
            };
            let mut left = 0;
            for layer in layers.flatten() {
                let name = layer.file_name().to_string_lossy().into_owned();
                if keep.contains(&(range_name.clone(), name.clone())) {
                    left += 1;
                    continue;
                }
                let path = layer.path();
                bytes += tree_size(&path);
                let gone = self.home.join("tmp").join(format!(
                    "removing-copy-{}-{}",
                    std::process::id(),
                    crate::state::unique_suffix()
                ));
                fs::rename(&path, &gone)
                    .and_then(|()| remove_tree(&gone))
                    .map_err(|source| StateError::Write { path, source })?;
                removed += 1;
            }
            if left == 0 {
                let _ = fs::remove_dir(range.path());
            }
        }
        Ok((removed, bytes))
    }
}

/// The name of an id mapping's copies: each uid and gid range as `inside-outside-count`.
pub fn range_key(uids: &[(u32, u32, u32)], gids: &[(u32, u32, u32)]) -> String {
    let part = |rs: &[(u32, u32, u32)]| {
        rs.iter()
            .map(|(i, o, c)| format!("{i}-{o}-{c}"))
            .collect::<Vec<_>>()
            .join("+")
    };
    format!("u{}.g{}", part(uids), part(gids))
}

/// Bytes of the regular files under `path` (symlinks not followed).
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                todo.extend(rd.flatten().map(|e| e.path()));
            }
        } else if m.is_file() {
            total += m.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_of_the_store_has_copies_beside_it_and_others_none() {
        let (c, name) = LayerCopies::of_layer(Path::new("/h/layers/abc")).unwrap();
        assert_eq!(c.home(), Path::new("/h"));
        assert_eq!(name, "abc");
        assert_eq!(
            c.path("r", "abc"),
            Path::new("/h/layer-copies/r/abc").to_path_buf()
        );
        assert!(LayerCopies::of_layer(Path::new("/srv/rootfs")).is_none());
        assert_eq!(
            range_key(&[(0, 100000, 65536)], &[(0, 100000, 65536)]),
            "u0-100000-65536.g0-100000-65536"
        );
        assert_eq!(
            range_key(&[(0, 1000, 1), (1, 300000, 65535)], &[(0, 5, 1)]),
            "u0-1000-1+1-300000-65535.g0-5-1"
        );
    }

    #[test]
    fn prune_keeps_what_an_environment_records_and_removes_the_rest() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        fs::create_dir_all(h.join("tmp")).unwrap();
        let c = LayerCopies::new(h);
        for (range, layer) in [("r1", "a"), ("r1", "b"), ("r2", "a")] {
            let dir = c.range_dir(range).unwrap().join(layer);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("f"), b"12345").unwrap();
        }
        let env = h.join("envs/web-1");
        fs::create_dir_all(&env).unwrap();
        let used = CopiesInUse {
            range: "r1".into(),
            layers: vec!["a".into()],
        };
        LayerCopies::record_use(&env, Some(&used)).unwrap();
        assert_eq!(c.prune().unwrap(), (2, 10));
        assert!(c.path("r1", "a").is_dir());
        assert!(!c.path("r1", "b").exists());
        assert!(!h.join("layer-copies/r2").exists(), "an emptied range goes");
        // Without the record (environment destroyed or started without copies) it goes too.
        LayerCopies::record_use(&env, None).unwrap();
        LayerCopies::record_use(&env, None).unwrap();
        assert_eq!(c.prune().unwrap(), (1, 5));
        assert!(!h.join("layer-copies/r1").exists());
        // A damaged record removes nothing.
        let dir = c.range_dir("r3").unwrap().join("x");
        fs::create_dir_all(&dir).unwrap();
        fs::write(env.join(ENV_RECORD), b"{not json").unwrap();
        assert!(c.prune().is_err());
        assert!(dir.is_dir());
    }

    #[test]
    fn prune_keeps_the_copies_a_sidecar_records() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        fs::create_dir_all(h.join("tmp")).unwrap();
        let c = LayerCopies::new(h);
        for layer in ["env-layer", "redis-layer"] {
            fs::create_dir_all(c.range_dir("r1").unwrap().join(layer)).unwrap();
        }
        let env = h.join("envs/web-1");
        let sidecar = env.join("sidecars/db");
        fs::create_dir_all(&sidecar).unwrap();
        for (dir, layer) in [(&env, "env-layer"), (&sidecar, "redis-layer")] {
            let used = CopiesInUse {
                range: "r1".into(),
                layers: vec![layer.into()],
            };
            LayerCopies::record_use(dir, Some(&used)).unwrap();
        }
        assert_eq!(c.prune().unwrap().0, 0);
        assert!(c.path("r1", "redis-layer").is_dir());
    }

    #[test]
    fn a_copy_made_twice_keeps_the_first() {
        let home = tempfile::tempdir().unwrap();
        let c = LayerCopies::new(home.path());
        c.range_dir("r").unwrap();
        let s1 = home.path().join("s1");
        let s2 = home.path().join("s2");
        for s in [&s1, &s2] {
            fs::create_dir_all(s).unwrap();
            fs::write(s.join("f"), s.to_string_lossy().as_bytes()).unwrap();
        }
        let p = c.install(&s1, "r", "l").unwrap();
        assert_eq!(c.install(&s2, "r", "l").unwrap(), p);
        assert!(!s2.exists());
        assert_eq!(
            fs::read(p.join("f")).unwrap(),
            s1.to_string_lossy().as_bytes()
        );
    }
}
