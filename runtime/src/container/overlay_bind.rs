//! [`MountSpec::OverlayBind`]: one path of an overlay of folders bound into the environment
//! (a build step's `RUN --mount=type=bind`: part of the build context, or of a stage's or an
//! image's layers). The overlay is read-only, or writable with an upper folder of its own
//! whose content is thrown away afterwards: nothing is ever written into a lower folder.
//!
//! The overlay is mounted in the launcher's private mount namespace (beside the rootfs, under
//! the state folder); the bound path is resolved inside the merged tree with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no symlink (of the context, or of a
//! stage's tree pointing at a host path) is ever followed on the host, whatever changed since
//! the build planned the step. As root, the lowers are id-mapped like the rootfs layers (an
//! image layer's ids as the environment's) or, for a host folder, with its owner shown as the
//! environment's root; rootless they are shown as they are.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::error::{ContainerError, Context, Result};
use super::idmap::{idmapped_bind, owner_group, user_namespace_with, CloneFlags, IdMapping};
use super::idmap_probe;
use super::in_root::{ensure_in_root, Owner};
use super::mount_api::attach_clone;
pub use super::spec::{LowerIds, OverlayLower};
use crate::state::{fd_path, openat2, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS};

/// What to mount.
pub struct OverlayBind<'a> {
    /// Top first.
    pub lowers: &'a [OverlayLower],
    /// Upper and work folders (one filesystem, empty): writable, else read-only.
    pub upper: Option<&'a (PathBuf, PathBuf)>,
    /// The path in the merged tree to bind (relative; empty: its root).
    pub sub: &'a str,
    pub target: &'a str,
}

/// Mounts the overlay at `<state_dir>/bind-overlay/<n>` and binds its `sub` at `target` in
/// the rootfs `root`. `idmap_userns`: the environment's user namespace when berth is root and
/// mounts from the host side; `inside_userns`: the mount happens inside it (rootless).
#[allow(clippy::too_many_arguments)]
pub fn mount_overlay_bind(
    m: &OverlayBind<'_>,
    n: usize,
    state_dir: &Path,
    root: BorrowedFd<'_>,
    idmap_userns: Option<&OwnedFd>,
    mapping: Option<&IdMapping>,
    inside_userns: bool,
    owner: Owner,
    net_home: Option<&Path>,
) -> Result<()> {
    let base = state_dir.join("bind-overlay").join(n.to_string());
    let merged = base.join("merged");
    fs::create_dir_all(&merged).context(|| format!("cannot create {}", merged.display()))?;
    let mut lowers = Vec::new();
    for (i, l) in m.lowers.iter().enumerate() {
        let ns = match (idmap_userns, mapping, l.ids) {
            (Some(ns), _, LowerIds::Layer) => Some(
                ns.try_clone()
                    .context(|| "cannot duplicate the environment's user namespace".to_string())?,
            ),
            (Some(_), Some(env), LowerIds::Owner)
                if idmap_probe::probe(&l.path, net_home)?.supported =>
            {
                let meta = std::fs::metadata(&l.path)
                    .context(|| format!("cannot read the bind source {}", l.path.display()))?;
                let gid = owner_group(meta.uid(), meta.gid());
                Some(user_namespace_with(&env.for_bind_owner(meta.uid(), gid))?)
            }
            _ => None,
        };
        match ns {
            Some(ns) => {
                let at = base.join("lower").join(i.to_string());
                fs::create_dir_all(&at).context(|| format!("cannot create {}", at.display()))?;
                let flags = CloneFlags {
                    readonly: true,
                    nosuid: true,
                    nodev: true,
                };
                idmapped_bind(&l.path, &at, &ns, flags)?;
                lowers.push(at);
            }
            None => lowers.push(l.path.clone()),
        }
    }
    if lowers.len() == 1 && m.upper.is_none() {
        // A read-only overlay needs two lowers: an empty one under the only one.
        let empty = base.join("empty");
        fs::create_dir_all(&empty).context(|| format!("cannot create {}", empty.display()))?;
        lowers.push(empty);
    }
    let mut opts = format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|p| escaped(p))
            .collect::<Vec<_>>()
            .join(":")
    );
    if let Some((upper, work)) = m.upper {
        opts.push_str(&format!(
            ",upperdir={},workdir={}",
            escaped(upper),
            escaped(work)
        ));
    }
    if inside_userns {
        opts.push_str(",userxattr");
    }
    let mut flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    if m.upper.is_none() {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(|e| {
        ContainerError::sys(
            format!("cannot mount the bind source of {} ({opts})", m.target),
            e,
        )
    })?;
    let top = OwnedFd::from(
        fs::File::open(&merged).context(|| format!("cannot open {}", merged.display()))?,
    );
    let sub = if m.sub.is_empty() { "." } else { m.sub };
    let src = openat2(
        top.as_fd(),
        sub,
        libc::O_PATH,
        0,
        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    )
    .map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::ELOOP) {
            "a symlink is on the way, and a bind source never follows one".to_string()
        } else {
            e.to_string()
        };
        ContainerError::Invalid(format!(
            "the bind source `{}` of {}: {why}",
            m.sub, m.target
        ))
    })?;
    let is_dir = std::fs::metadata(fd_path(&src)).is_ok_and(|x| x.is_dir());
    let t = ensure_in_root(root, m.target, is_dir, owner)?;
    let clone = CloneFlags {
        readonly: m.upper.is_none(),
        nosuid: true,
        nodev: true,
    };
    attach_clone(&fd_path(&src), &fd_path(&t), None, clone)
}

/// A path as an overlay option value: `\\`, `:` and `,` escaped, so a folder named
/// `a:/etc` is one lower folder, never two.
fn escaped(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_separators_in_a_path_are_escaped() {
        assert_eq!(escaped(Path::new("/ctx/plain")), "/ctx/plain");
        assert_eq!(escaped(Path::new("/home/u/a:/etc")), "/home/u/a\\:/etc");
        assert_eq!(
            escaped(Path::new("/x,upperdir=/y\\z")),
            "/x\\,upperdir=/y\\\\z"
        );
    }
}
