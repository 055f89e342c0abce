//! A build step's writable layer, put back the way a host-root install would have left it.
//!
//! Build steps run as the root of a user namespace whose ids are a host range (root's
//! /etc/subuid range, else 100000..165536), like environments; the files they create carry
//! those host ids (root inside writes host uid 100000, apt's `_apt` writes 100042). The
//! layer store is shared and root-owned: image layers hold the real ids (0, 42, ...) and are
//! id-mapped into each environment. So before the step's upper directory becomes a layer,
//! [`unmap_tree`] moves every id of the range back to the id it had inside, puts back the
//! setuid/setgid bits and file capabilities chown(2) clears, and turns capabilities written
//! inside the namespace (version 3, carrying the namespace's root as host uid) into the plain
//! version 2 a root install writes; named entries of POSIX ACLs get their ids moved back too. The step's processes are all gone by then (its cgroup
//! was emptied), so nothing inside can swap paths while the tree is walked; symlinks are
//! never followed.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{Context, Result};
use super::idmap::IdMapping;
use crate::image::xattrs;

const CAPS_XATTR: &str = "security.capability";
/// POSIX ACLs, whose named entries carry ids (read and written as host ids here).
const ACL_XATTRS: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;
const ACL_HEADER_LEN: usize = 4;
const ACL_ENTRY_LEN: usize = 8;
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
const VFS_CAP_V2_LEN: usize = 20;
const VFS_CAP_V3_LEN: usize = 24;

/// Moves the ownership of everything under `root` (itself included) from `mapping`'s host
/// range back to the ids inside; ids outside the range (overlayfs whiteouts, files copied up
/// from lower layers) stay as they are.
pub fn unmap_tree(root: &Path, mapping: &IdMapping) -> Result<()> {
    walk_tree(root, &mut |path, meta| {
        unmap_one(path, meta, mapping)
            .context(|| format!("cannot give {} its ids back", path.display()))
    })
}

/// Calls `visit` on `root` and everything below it (folders listed before they are visited),
/// never following a symlink.
pub fn walk_tree(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<()>,
) -> Result<()> {
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta =
            fs::symlink_metadata(&path).context(|| format!("cannot inspect {}", path.display()))?;
        if meta.is_dir() {
            for entry in
                fs::read_dir(&path).context(|| format!("cannot list {}", path.display()))?
            {
                let entry = entry.context(|| format!("cannot list {}", path.display()))?;
                todo.push(entry.path());
            }
        }
        visit(&path, &meta)?;
    }
    Ok(())
}

/// `lchown` of `path` (described by `meta`, taken before) that keeps its setuid/setgid bits,
/// which chown(2) clears.
pub fn chown_keeping_setid(
    path: &Path,
    meta: &fs::Metadata,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)?;
    let mode = meta.mode() & 0o7777;
    if !meta.file_type().is_symlink() && mode & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

fn unmap_one(path: &Path, meta: &fs::Metadata, mapping: &IdMapping) -> io::Result<()> {
    let uid = mapping.inside_uid(meta.uid());
    let gid = mapping.inside_gid(meta.gid());
    let caps = match meta.is_file() {
        true => xattrs::read(path, CAPS_XATTR)?,
        false => None,
    };
    let moved = uid.is_some() || gid.is_some();
    if moved {
        // chown(2) also clears file capabilities: they are written back below.
        chown_keeping_setid(path, meta, uid, gid)?;
    }
    if let Some(caps) = caps {
        let host = host_root_caps(&caps, mapping);
        if moved || host != caps {
            xattrs::set(path, CAPS_XATTR, &host)?;
        }
    }
    if !meta.file_type().is_symlink() {
        for key in ACL_XATTRS {
            if let Some(acl) = xattrs::read(path, key)? {
                let inside = acl_ids_inside(&acl, mapping);
                if inside != acl {
                    xattrs::set(path, key, &inside)?;
                }
            }
        }
    }
    Ok(())
}

/// A POSIX ACL (`system.posix_acl_*` layout: a 4-byte version, then 8-byte entries of tag,
/// permissions and id) with the ids of its named user and group entries moved back from the
/// mapped range; anything malformed is kept as it is.
pub fn acl_ids_inside(value: &[u8], mapping: &IdMapping) -> Vec<u8> {
    let mut out = value.to_vec();
    if value.len() < ACL_HEADER_LEN || !(value.len() - ACL_HEADER_LEN).is_multiple_of(ACL_ENTRY_LEN)
    {
        return out;
    }
    for entry in out[ACL_HEADER_LEN..].chunks_exact_mut(ACL_ENTRY_LEN) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let inside = match tag {
            ACL_USER => mapping.inside_uid(id),
            ACL_GROUP => mapping.inside_gid(id),
            _ => None,
        };
        if let Some(i) = inside {
            entry[4..8].copy_from_slice(&i.to_le_bytes());
        }
    }
    out
}

/// Capabilities as a host-root install writes them: a version 3 entry whose root id is the
/// namespace's root becomes version 2 (no root id); anything else is kept unchanged.
pub fn host_root_caps(value: &[u8], mapping: &IdMapping) -> Vec<u8> {
    let word = |at: usize| u32::from_le_bytes(value[at..at + 4].try_into().unwrap_or([0; 4]));
    if value.len() != VFS_CAP_V3_LEN || word(0) & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_3 {
        return value.to_vec();
    }
    if mapping.inside_uid(word(VFS_CAP_V2_LEN)) != Some(0) {
        return value.to_vec();
    }
    let magic = VFS_CAP_REVISION_2 | (word(0) & VFS_CAP_FLAGS_EFFECTIVE);
    let mut v2 = magic.to_le_bytes().to_vec();
    v2.extend_from_slice(&value[4..VFS_CAP_V2_LEN]);
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(rootid: u32) -> Vec<u8> {
        let mut v = (VFS_CAP_REVISION_3 | VFS_CAP_FLAGS_EFFECTIVE)
            .to_le_bytes()
            .to_vec();
        v.extend_from_slice(&(1u32 << 13).to_le_bytes()); // CAP_NET_RAW permitted
        v.extend_from_slice(&[0; 12]);
        v.extend_from_slice(&rootid.to_le_bytes());
        v
    }

    #[test]
    fn namespace_root_caps_become_version_2() {
        let m = IdMapping::root_range(300_000);
        let v2 = host_root_caps(&v3(300_000), &m);
        assert_eq!(v2.len(), VFS_CAP_V2_LEN);
        assert_eq!(
            u32::from_le_bytes(v2[0..4].try_into().unwrap()),
            VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
        );
        assert_eq!(&v2[4..8], &(1u32 << 13).to_le_bytes());
        // Another namespace's root, or a version 2 entry: unchanged.
        assert_eq!(host_root_caps(&v3(5), &m), v3(5));
        assert_eq!(host_root_caps(&v2, &m), v2);
        assert_eq!(host_root_caps(&[1, 2, 3], &m), vec![1, 2, 3]);
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
    const NONE: u32 = u32::MAX;
    fn named_acl(user: u32, group: u32) -> Vec<u8> {
        acl(&[
            (0x01, 6, NONE),
            (ACL_USER, 4, user),
            (0x04, 4, NONE),
            (ACL_GROUP, 4, group),
            (0x10, 4, NONE),
            (0x20, 4, NONE),
        ])
    }

    #[test]
    fn acl_named_entries_move_back() {
        let m = IdMapping::root_range(300_000);
        assert_eq!(
            acl_ids_inside(&named_acl(301_234, 300_005), &m),
            named_acl(1234, 5)
        );
        // Ids outside the range, and malformed values, stay.
        assert_eq!(acl_ids_inside(&named_acl(7, 8), &m), named_acl(7, 8));
        assert_eq!(acl_ids_inside(&[2, 0, 0], &m), vec![2, 0, 0]);
    }

    #[test]
    fn ids_of_the_range_move_back_and_modes_survive() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to other ids needs root");
            return;
        }
        let m = IdMapping::root_range(300_000);
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("upper");
        fs::create_dir_all(root.join("dir")).unwrap();
        let file = root.join("dir/suid");
        fs::write(&file, b"x").unwrap();
        std::os::unix::fs::symlink("suid", root.join("dir/link")).unwrap();
        let outside = root.join("whiteout-like");
        fs::write(&outside, b"").unwrap();
        let own =
            |p: &Path, u: u32, g: u32| std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
        own(&root, 300_000, 300_000);
        own(&root.join("dir"), 301_000, 300_005);
        own(&file, 300_000, 300_042);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o4755)).unwrap();
        xattrs::set(&file, CAPS_XATTR, &v3(300_000)).unwrap();
        // ext4 (the temp folder's usual filesystem) keeps POSIX ACLs.
        let acl_dir = root.join("dir");
        xattrs::set(&acl_dir, ACL_XATTRS[1], &named_acl(301_234, 300_005)).unwrap();
        own(&root.join("dir/link"), 300_042, 300_042);
        own(&outside, 0, 0);

        unmap_tree(&root, &m).unwrap();
        let ids = |p: &Path| {
            let md = fs::symlink_metadata(p).unwrap();
            (md.uid(), md.gid())
        };
        assert_eq!(ids(&root), (0, 0));
        assert_eq!(ids(&root.join("dir")), (1000, 5));
        assert_eq!(ids(&file), (0, 42));
        assert_eq!(ids(&root.join("dir/link")), (42, 42));
        assert_eq!(ids(&outside), (0, 0));
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o4755);
        let caps = xattrs::read(&file, CAPS_XATTR).unwrap().unwrap();
        assert_eq!(
            caps.len(),
            VFS_CAP_V2_LEN,
            "capabilities kept, as version 2"
        );
    }
}
