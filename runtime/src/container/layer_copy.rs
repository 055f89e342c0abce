//! Image layers for an environment whose layer store has no id-mapped mounts: copies owned by
//! the environment's ids (stored by [`crate::image::layer_copies`]), mounted as the overlay's
//! lower layers as they are.
//!
//! [`copy_layer`] gives every file the host id its on-disk id maps to in the environment's
//! range (what an id-mapped mount shows; an id outside the range becomes the overflow id
//! 65534, as unmapped ids show there), keeps the set-id bits chown(2) clears, moves file
//! capabilities to the namespace's root (version 3 with the range's root: they work inside and
//! nowhere else) and the ids of POSIX ACLs into the range, and keeps every other extended
//! attribute (overlayfs' opaque markers). Nothing in a layer can lead the copy elsewhere:
//! symlinks are copied as links, never followed, and everything is created afresh under a
//! staging folder only root can reach. **No device node is created**: an image's device
//! nodes (a hostile layer may carry `/dev/sda`-like nodes) are left out of the copy and
//! counted (they could not be opened inside anyway: the overlay is nodev); only overlayfs'
//! whiteouts (character device 0:0, which no driver backs) are made. The copies live in the
//! home's `layer-copies/` (0700, like `layers/`), so their setuid files are out of every
//! other user's reach, and the overlay over them is mounted `nodev` as always.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};

use super::error::{ContainerError, Context, Result};
use super::idmap::IdMapping;
use super::idmap_probe::{self, IdmapSupport};
use super::spec::ContainerSpec;
use crate::image::layer_copies::{range_key, CopiesInUse, LayerCopies};
use crate::image::xattrs;

/// The host id a file gets when its on-disk id has none in the environment's range.
const OVERFLOW_ID: u32 = 65534;
const CAPS_XATTR: &str = "security.capability";
const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_V2_LEN: usize = 20;
const VFS_CAP_V3_LEN: usize = 24;

/// What a copy left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Character and block devices of the layer (whiteouts excepted), not created.
    pub skipped_devices: u64,
}

/// The name of `mapping`'s layer copies.
pub fn mapping_key(m: &IdMapping) -> String {
    let t = |rs: &[super::idmap::IdRange]| -> Vec<(u32, u32, u32)> {
        rs.iter().map(|r| (r.inside, r.outside, r.count)).collect()
    };
    range_key(&t(&m.uids), &t(&m.gids))
}

/// For a start as host root with a user namespace: when the filesystem of the image layers
/// refuses id-mapped mounts, the spec with copies of the layers owned by `mapping`'s ids as
/// its lowers (made now where missing), and the notice for `up`; `None` when the layers can be
/// id-mapped (or nothing is id-mapped: rootless, privileged). Records in the environment's
/// folder which copies it uses, so `berth image prune` keeps them.
pub fn lowers_for(
    spec: &ContainerSpec,
    mapping: Option<&IdMapping>,
    is_root: bool,
) -> Result<Option<(ContainerSpec, String)>> {
    let (Some(mapping), true) = (mapping, is_root) else {
        return Ok(None);
    };
    let Some(first) = spec.lower_layers.first() else {
        return Ok(None);
    };
    let store = LayerCopies::of_layer(first);
    let home = store.as_ref().map(|(s, _)| s.home().to_path_buf());
    // One probe per filesystem: the layers of one store share it (checked: same device).
    let mut refused: Option<(PathBuf, IdmapSupport)> = None;
    let mut seen: Vec<u64> = Vec::new();
    for layer in &spec.lower_layers {
        let dev = fs::metadata(layer)
            .map_err(|e| ContainerError::path_io("cannot inspect the image layer", layer, e))?
            .dev();
        if seen.contains(&dev) {
            continue;
        }
        seen.push(dev);
        let s = idmap_probe::probe(layer, home.as_deref())?;
        if !s.supported {
            refused = Some((layer.parent().unwrap_or(layer).to_path_buf(), s));
            break;
        }
    }
    let Some((at, support)) = refused else {
        let _ = LayerCopies::record_use(&spec.state_dir, None);
        return Ok(None);
    };
    let why = format!(
        "id-mapped mounts are not available on {} at {} ({})",
        support.fs,
        at.display(),
        support.refusal.as_deref().unwrap_or("refused")
    );
    let Some((store, _)) = store else {
        return Err(ContainerError::Setup(format!(
            "{why}, and the image layer {} is not in a berth layer store, so berth cannot keep copies of it owned by the environment's ids; put the layers on a filesystem with id-mapped mounts (ext4, xfs, btrfs)",
            first.display()
        )));
    };
    let range = mapping_key(mapping);
    let _lock = crate::image::ImageStore::open(
        &crate::state::BerthHome::at(store.home())
            .map_err(|e| ContainerError::Setup(e.to_string()))?,
    )
    .lock_shared()
    .map_err(|e| ContainerError::Setup(e.to_string()))?;
    let range_dir = store
        .range_dir(&range)
        .map_err(|e| ContainerError::Setup(e.to_string()))?;
    let mut lowers = Vec::new();
    let mut names = Vec::new();
    let mut skipped = 0;
    for layer in &spec.lower_layers {
        let Some((_, name)) =
            LayerCopies::of_layer(layer).filter(|(s, _)| s.home() == store.home())
        else {
            return Err(ContainerError::Setup(format!(
                "{why}, and the image layer {} is not in the layer store of {}; berth keeps copies only of its own layers",
                layer.display(),
                store.home().display()
            )));
        };
        let path = range_dir.join(&name);
        if !path.is_dir() {
            let staging = crate::state::BerthHome::at(store.home())
                .and_then(|h| h.staging_dir("layer-copy"))
                .map_err(|e| ContainerError::Setup(e.to_string()))?;
            let tree = staging.path().join("tree");
            let report = copy_layer(layer, &tree, mapping).map_err(|e| {
                ContainerError::Setup(format!(
                    "{why}; berth copies the image layers owned by the environment's ids instead, and that failed: {e}"
                ))
            })?;
            skipped += report.skipped_devices;
            store
                .install(&tree, &range, &name)
                .context(|| format!("cannot move the layer copy into {}", path.display()))?;
        }
        lowers.push(path);
        names.push(name);
    }
    LayerCopies::record_use(
        &spec.state_dir,
        Some(&CopiesInUse {
            range,
            layers: names,
        }),
    )
    .map_err(|e| ContainerError::Setup(e.to_string()))?;
    let mut with = spec.clone();
    with.lower_layers = lowers;
    with.premapped_lowers = true;
    let mut notice = format!(
        "{why}; berth uses copies of the image layers owned by the environment's ids (more disk, slower first start)"
    );
    if skipped > 0 {
        notice.push_str(&format!(
            "; {skipped} device node(s) of the image were left out of the copies (berth never creates host device nodes for an environment; use `devices` in berth.toml)"
        ));
    }
    Ok(Some((with, notice)))
}

/// Copies the layer `src` to the new folder `dst` with every id moved into `mapping`'s host
/// range (see the module documentation).
pub fn copy_layer(src: &Path, dst: &Path, mapping: &IdMapping) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Folders get their mode and times after their content is in.
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let mut todo: Vec<(PathBuf, PathBuf)> = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from, to)) = todo.pop() {
        let meta =
            fs::symlink_metadata(&from).context(|| format!("cannot inspect {}", from.display()))?;
        let ft = meta.file_type();
        let made = (|| -> io::Result<bool> {
            if ft.is_dir() {
                fs::DirBuilder::new().mode(0o700).create(&to)?;
                for e in fs::read_dir(&from)? {
                    let e = e?;
                    todo.push((e.path(), to.join(e.file_name())));
                }
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        fs::hard_link(first, &to)?;
                        return Ok(false);
                    }
                    links.insert((meta.dev(), meta.ino()), to.clone());
                }
                let mut r = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&from)?;
                let mut w = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&to)?;
                io::copy(&mut r, &mut w)?;
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            } else if ft.is_char_device() && meta.rdev() == 0 {
                // An overlayfs whiteout: no driver behind it.
                mknod(&to, SFlag::S_IFCHR, Mode::empty(), 0)?;
            } else if ft.is_char_device() || ft.is_block_device() {
                report.skipped_devices += 1;
                return Ok(false);
            } else if ft.is_fifo() {
                mknod(&to, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)?;
            } else if ft.is_socket() {
                mknod(&to, SFlag::S_IFSOCK, Mode::from_bits_truncate(0o600), 0)?;
            } else {
                return Ok(false);
            }
            Ok(true)
        })()
        .context(|| format!("cannot copy {}", from.display()))?;
        if !made {
            continue;
        }
        if ft.is_dir() {
            dirs.push((to, meta));
        } else {
            finish(&from, &to, &meta, mapping)
                .context(|| format!("cannot give {} the environment's ids", to.display()))?;
        }
    }
    for (to, meta) in dirs.iter().rev() {
        let from = src.join(to.strip_prefix(dst).unwrap_or(Path::new("")));
        finish(&from, to, meta, mapping)
            .context(|| format!("cannot give {} the environment's ids", to.display()))?;
    }
    Ok(report)
}

/// Owner, extended attributes, mode and times of the copy `to` of `from`.
fn finish(from: &Path, to: &Path, meta: &fs::Metadata, m: &IdMapping) -> io::Result<()> {
    let uid = m.host_uid(meta.uid()).unwrap_or(OVERFLOW_ID);
    let gid = m.host_gid(meta.gid()).unwrap_or(OVERFLOW_ID);
    std::os::unix::fs::lchown(to, Some(uid), Some(gid))?;
    let is_link = meta.file_type().is_symlink();
    for (key, value) in xattrs::list(from)? {
        let value = if key == CAPS_XATTR {
            match caps_for_range(&value, m) {
                Some(v) => v,
                None => continue,
            }
        } else if ACL_XATTRS.contains(&key.as_str()) {
            acl_ids_outside(&value, m)
        } else {
            value
        };
        xattrs::set(to, &key, &value)?;
    }
    if !is_link {
        // After the chown, which clears set-id bits.
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let times = [
        nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec()),
        nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    ];
    nix::sys::stat::utimensat(
        None,
        to,
        &times[0],
        &times[1],
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// File capabilities as they work for the environment's root: a version 2 entry (no root id:
/// host root's) or a version 3 one becomes version 3 with the host id the range gives its root
/// id; `None` (dropped) when that id is outside the range, as an id-mapped mount would not
/// honour them either.
pub fn caps_for_range(value: &[u8], m: &IdMapping) -> Option<Vec<u8>> {
    let word = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().unwrap_or([0; 4]));
    let (on_disk_root, body) = match value.len() {
        VFS_CAP_V2_LEN if word(0) & VFS_CAP_REVISION_MASK == VFS_CAP_REVISION_2 => {
            (0, &value[4..VFS_CAP_V2_LEN])
        }
        VFS_CAP_V3_LEN if word(0) & VFS_CAP_REVISION_MASK == VFS_CAP_REVISION_3 => {
            (word(VFS_CAP_V2_LEN), &value[4..VFS_CAP_V2_LEN])
        }
        _ => return None,
    };
    let root = m.host_uid(on_disk_root)?;
    let magic = VFS_CAP_REVISION_3 | (word(0) & !VFS_CAP_REVISION_MASK);
    let mut v3 = magic.to_le_bytes().to_vec();
    v3.extend_from_slice(body);
    v3.extend_from_slice(&root.to_le_bytes());
    Some(v3)
}

/// A POSIX ACL with the ids of its named entries moved into the range (outside it: the
/// overflow id); anything malformed is kept as it is.
pub fn acl_ids_outside(value: &[u8], m: &IdMapping) -> Vec<u8> {
    const HEADER: usize = 4;
    const ENTRY: usize = 8;
    let mut out = value.to_vec();
    if value.len() < HEADER || !(value.len() - HEADER).is_multiple_of(ENTRY) {
        return out;
    }
    for entry in out[HEADER..].chunks_exact_mut(ENTRY) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let host = match tag {
            0x02 => m.host_uid(id).unwrap_or(OVERFLOW_ID),
            0x08 => m.host_gid(id).unwrap_or(OVERFLOW_ID),
            _ => continue,
        };
        entry[4..8].copy_from_slice(&host.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Vec<u8> {
        let mut v = (VFS_CAP_REVISION_2 | 1).to_le_bytes().to_vec();
        v.extend_from_slice(&(1u32 << 13).to_le_bytes());
        v.extend_from_slice(&[0; 12]);
        v
    }

    #[test]
    fn capabilities_move_to_the_ranges_root() {
        let m = IdMapping::root_range(100000);
        let v3 = caps_for_range(&v2(), &m).unwrap();
        assert_eq!(v3.len(), VFS_CAP_V3_LEN);
        assert_eq!(
            u32::from_le_bytes(v3[0..4].try_into().unwrap()),
            VFS_CAP_REVISION_3 | 1
        );
        assert_eq!(&v3[4..20], &v2()[4..20]);
        assert_eq!(u32::from_le_bytes(v3[20..24].try_into().unwrap()), 100000);
        // A version 3 entry of an id inside the range moves with it; outside: dropped.
        let mut other = v3.clone();
        other[20..24].copy_from_slice(&5u32.to_le_bytes());
        let moved = caps_for_range(&other, &m).unwrap();
        assert_eq!(
            u32::from_le_bytes(moved[20..24].try_into().unwrap()),
            100005
        );
        other[20..24].copy_from_slice(&70000u32.to_le_bytes());
        assert_eq!(caps_for_range(&other, &m), None);
        assert_eq!(caps_for_range(&[1, 2, 3], &m), None);
    }

    #[test]
    fn acl_ids_move_into_the_range() {
        let m = IdMapping::root_range(100000);
        let acl = |u: u32, g: u32| {
            let mut v = 2u32.to_le_bytes().to_vec();
            for (tag, id) in [(0x01u16, u32::MAX), (0x02, u), (0x08, g), (0x20, u32::MAX)] {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&4u16.to_le_bytes());
                v.extend_from_slice(&id.to_le_bytes());
            }
            v
        };
        assert_eq!(acl_ids_outside(&acl(1000, 5), &m), acl(101000, 100005));
        assert_eq!(acl_ids_outside(&acl(70000, 5), &m), acl(65534, 100005));
        assert_eq!(acl_ids_outside(&[2, 0, 0], &m), vec![2, 0, 0]);
    }

    /// A hostile layer: setuid-root and setgid files, a device node of a disk, a character
    /// device, a whiteout, a symlink out of the layer, a hard link, a fifo, an id outside the
    /// range. The copy never creates a device node, never follows the link, and keeps the
    /// set-id bits only on files owned by the environment's ids.
    #[test]
    fn a_hostile_layer_is_copied_without_host_device_nodes() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: copying ids and device nodes needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("layer");
        let outside = t.path().join("outside");
        fs::create_dir_all(src.join("usr/bin")).unwrap();
        fs::create_dir_all(src.join("dev")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let own =
            |p: &Path, u: u32, g: u32| std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
        let suid = src.join("usr/bin/su");
        fs::write(&suid, b"#!/bin/sh\n").unwrap();
        own(&suid, 0, 0);
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        let sgid = src.join("usr/bin/wall");
        fs::write(&sgid, b"x").unwrap();
        own(&sgid, 0, 5);
        fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2755)).unwrap();
        xattrs::set(&suid, CAPS_XATTR, &v2()).unwrap();
        mknod(
            &src.join("dev/sda"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(8, 0),
        )
        .unwrap();
        mknod(
            &src.join("dev/mem"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 1),
        )
        .unwrap();
        mknod(&src.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        mknod(
            &src.join("fifo"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, src.join("escape")).unwrap();
        fs::create_dir_all(src.join("opaque")).unwrap();
        xattrs::set(&src.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
        fs::hard_link(&sgid, src.join("usr/bin/wall2")).unwrap();
        let far = src.join("far");
        fs::write(&far, b"x").unwrap();
        own(&far, 70000, 70000);
        fs::set_permissions(&far, fs::Permissions::from_mode(0o4755)).unwrap();

        let m = IdMapping::root_range(100000);
        let dst = t.path().join("copy");
        let report = copy_layer(&src, &dst, &m).unwrap();
        assert_eq!(report.skipped_devices, 2);

        // No device node anywhere in the copy but the whiteout.
        let mut devices = Vec::new();
        crate::container::layer_ids::walk_tree(&dst, &mut |p, md| {
            let ft = md.file_type();
            if (ft.is_char_device() && md.rdev() != 0) || ft.is_block_device() {
                devices.push(p.to_path_buf());
            }
            Ok(())
        })
        .unwrap();
        assert!(devices.is_empty(), "device nodes were created: {devices:?}");
        assert!(!dst.join("dev/sda").exists() && !dst.join("dev/mem").exists());
        let wh = fs::symlink_metadata(dst.join("gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        // Set-id bits stay, on the environment's ids, never host root's.
        let md = fs::metadata(dst.join("usr/bin/su")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (100000, 100000, 0o4755)
        );
        let md = fs::metadata(dst.join("usr/bin/wall")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (100000, 100005, 0o2755)
        );
        let md2 = fs::metadata(dst.join("usr/bin/wall2")).unwrap();
        assert_eq!(md2.ino(), md.ino(), "hard links stay links");
        let md = fs::metadata(dst.join("far")).unwrap();
        assert_eq!(
            md.uid(),
            OVERFLOW_ID,
            "ids outside the range become the overflow id"
        );
        // Capabilities work for the environment's root only.
        let caps = xattrs::read(&dst.join("usr/bin/su"), CAPS_XATTR)
            .unwrap()
            .unwrap();
        assert_eq!(caps, caps_for_range(&v2(), &m).unwrap());
        assert_eq!(
            xattrs::read(&dst.join("opaque"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        // The link is a link, pointing where it did, and nothing was written outside.
        assert_eq!(fs::read_link(dst.join("escape")).unwrap(), outside);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        // The source is untouched.
        let md = fs::metadata(&suid).unwrap();
        assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o4755));
    }
}
