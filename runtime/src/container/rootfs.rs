//! [`OverlayRootfs`]: the environment's root filesystem. An overlay of the image layers
//! (id-mapped when the environment has a user namespace and berth is root) with the
//! environment's upper/work dirs, the `[[mounts]]`, `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`; then, inside the new namespaces, `/proc`, `/sys` (read-only), `/dev`
//! (tmpfs, standard nodes, its own devpts, shm, mqueue), `pivot_root`, and the OCI default
//! masked and read-only paths ([`rootfs_enter`](super::rootfs_enter)).
//!
//! Every path inside the rootfs is resolved with `openat2(RESOLVE_IN_ROOT)`
//! ([`in_root`](super::in_root)), so a symlink in an image (`/work -> /root`) can never redirect
//! a mount onto the host.

use std::fs;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use envfile_spec::plan::NetworkMode;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use super::detached_overlay::{self, Made};
use super::error::{ContainerError, Context, Result};
use super::idmap::{
    attach_clone, idmapped_bind, owner_group, user_namespace_with, CloneFlags, IdMapping,
};
use super::idmap_probe;
pub use super::in_root::{ensure_in_root, Owner};
use super::mount_api::{attach_tree, clone_tree};
use super::root_bind;
pub use super::rootfs_enter::{DEVICES, MASKED_PATHS, READONLY_PATHS};
use super::spec::{ContainerSpec, MountSpec};
use crate::state::fd_path;

/// Mount points under a bind-mounted host folder (`/work/node_modules` with `.` at `/work`)
/// that do not exist yet are created in that host folder before anything is mounted, from the
/// host side and owned like the folder itself, as Docker does (a mount point must exist, and
/// a bind shows the host folder as it is). Created through the mount instead, they would
/// fail with EOVERFLOW on an id-mapped bind (host root has no id in the environment's
/// mapping) or land owned by root (or the environment's subordinate ids) in the user's
/// checkout. Paths resolve inside the host folder (`RESOLVE_IN_ROOT`): a symlink in the
/// checkout cannot lead the creation out of it. `chown`: berth is host root and gives the
/// new folders the owner of the bind's source (rootless, they belong to the caller anyway).
fn create_nested_mount_points(mounts: &[&MountSpec], chown: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let comps = |t: &str| -> Vec<String> {
        t.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect()
    };
    for (i, m) in mounts.iter().enumerate() {
        let target = comps(m.target());
        // The deepest folder bind above this target (`mounts` is sorted by depth).
        let parent = mounts[..i].iter().rev().find_map(|p| match p {
            MountSpec::Bind {
                source, target: t, ..
            } => {
                let pc = comps(t);
                (pc.len() < target.len() && target.starts_with(&pc) && source.is_dir())
                    .then_some((source, pc.len()))
            }
            _ => None,
        });
        let Some((source, depth)) = parent else {
            continue;
        };
        let is_dir = match m {
            MountSpec::Bind { source, .. } => fs::metadata(source).is_ok_and(|m| m.is_dir()),
            _ => true,
        };
        let meta = fs::metadata(source).context(|| {
            format!(
                "mount source {} is missing; create it or fix [[mounts]]",
                source.display()
            )
        })?;
        let owner = chown.then(|| (meta.uid(), meta.gid()));
        let host_root = open_dir(source)?;
        let rel = format!("/{}", target[depth..].join("/"));
        ensure_in_root(host_root.as_fd(), &rel, is_dir, owner).map_err(|e| {
            ContainerError::Setup(format!(
                "cannot create the mount point of {} inside {} (the folder mounted at /{}): {e}",
                m.target(),
                source.display(),
                target[..depth].join("/")
            ))
        })?;
    }
    Ok(())
}

/// Gives the staged file `opened` (a build step's secret or agent socket, made for this
/// container alone) the owner `(uid, gid)` inside: from the host side (berth is root) the
/// host ids they map to; from inside the user namespace (rootless) the ids themselves, which
/// the namespace's root may set on its own files when both are mapped.
fn give_inside(
    opened: &fs::File,
    source: &Path,
    (uid, gid): (u32, u32),
    mapping: Option<&IdMapping>,
    host_side: bool,
) -> Result<()> {
    let unmapped = || {
        ContainerError::Invalid(format!(
            "uid={uid},gid={gid} has no id in the build step's user namespace; rootless, ids other than your own need ranges for your user in /etc/subuid and /etc/subgid (and newuidmap/newgidmap installed), or leave uid=/gid= out"
        ))
    };
    let ids = match (mapping, host_side) {
        (Some(m), true) => (m.host_uid(uid), m.host_gid(gid)),
        (Some(m), false) => (m.host_uid(uid).map(|_| uid), m.host_gid(gid).map(|_| gid)),
        (None, _) => (Some(uid), Some(gid)),
    };
    let (Some(u), Some(g)) = ids else {
        return Err(unmapped());
    };
    // Through the descriptor's own link: the object opened, never a path swapped meanwhile.
    std::os::unix::fs::chown(fd_path(opened), Some(u), Some(g)).map_err(|e| {
        if e.raw_os_error() == Some(libc::EINVAL) {
            unmapped()
        } else {
            ContainerError::Setup(format!(
                "cannot give {} to {uid}:{gid} inside: {e}",
                source.display()
            ))
        }
    })
}

/// The detached id-mapped clones of the layers the overlay was made from (the overlay holds
/// its own references). Closing the last descriptor of a detached mount dissolves it, and
/// the kernel waits for an RCU grace period there (`synchronize_rcu_expedited` in
/// `namespace_unlock`, milliseconds on a busy machine, once per layer): the launcher keeps
/// them until it has let the environment go on, so that wait is off the path of the start.
#[must_use = "dropping the clones waits for RCU grace periods: keep them off the start's path"]
pub struct LayerClones {
    _held: Vec<OwnedFd>,
}

/// The root filesystem of one environment, mounted at `<state_dir>/rootfs`.
pub struct OverlayRootfs<'a> {
    pub(super) spec: &'a ContainerSpec,
    pub(super) mapping: Option<&'a IdMapping>,
}

impl<'a> OverlayRootfs<'a> {
    pub fn new(spec: &'a ContainerSpec, mapping: Option<&'a IdMapping>) -> Self {
        OverlayRootfs { spec, mapping }
    }

    pub fn mount_point(&self) -> PathBuf {
        self.spec.state_dir.join("rootfs")
    }

    /// Stage 1, in a private mount namespace: the overlay, the `[[mounts]]` except tmpfs, and
    /// the files under /etc. `idmap_userns` is the environment's user namespace when berth is
    /// root (layers and `idmap` binds are id-mapped into it); `owner` is the host id pair of the
    /// environment's root, for files berth creates (`None` when already inside the namespace).
    /// The caller keeps the returned [`LayerClones`] until the environment has been let go on.
    pub fn mount_layers(
        &self,
        idmap_userns: Option<&OwnedFd>,
        owner: Owner,
    ) -> Result<LayerClones> {
        let spec = self.spec;
        let target = self.mount_point();
        mkdir_p(&target)?;
        let clones = match idmap_userns.filter(|_| !spec.premapped_lowers) {
            Some(ns) => self.mount_idmapped_overlay(ns, &target)?,
            None => {
                let userxattr = owner.is_none() && self.mapping.is_some();
                self.mount_overlay(&spec.lower_layers, &target, userxattr)?;
                LayerClones { _held: Vec::new() }
            }
        };
        let root = open_dir(&target)?;
        let mut mounts: Vec<&MountSpec> = spec.mounts.iter().collect();
        mounts.sort_by_key(|m| m.target().split('/').filter(|c| !c.is_empty()).count());
        create_nested_mount_points(&mounts, owner.is_some())?;
        let mut mounted: Option<Vec<(u64, u64)>> = None;
        for (n, m) in mounts.into_iter().enumerate() {
            match m {
                MountSpec::Bind {
                    source,
                    target,
                    readonly,
                    idmap,
                    owner_inside,
                } => {
                    // Opened once: the owner, the folders above and the mount are all of
                    // this one object, whatever happens to the path meanwhile.
                    let opened = root_bind::open_source(source).context(|| {
                        format!(
                            "mount source {} is missing; create it or fix [[mounts]]",
                            source.display()
                        )
                    })?;
                    if let Some(ids) = owner_inside {
                        give_inside(&opened, source, *ids, self.mapping, owner.is_some())?;
                    }
                    let meta = opened
                        .metadata()
                        .context(|| format!("cannot read the mount source {}", source.display()))?;
                    let t = ensure_in_root(root.as_fd(), target, meta.is_dir(), owner)?;
                    let flags = CloneFlags {
                        readonly: *readonly,
                        nosuid: true,
                        nodev: true,
                    };
                    // The environment's root becomes the owner of the source folder: see
                    // `IdMapping::for_bind_owner`. A folder owned by root is bound so only
                    // when no other local user can reach it (`root_bind`); otherwise without
                    // id-mapping, so files created in it belong to the environment's
                    // unprivileged host range and root's files stay read-only to it.
                    use std::os::unix::fs::MetadataExt;
                    let from = fd_path(&opened);
                    let named = |e: ContainerError| match e {
                        // The mount is made from the descriptor: name the source instead.
                        ContainerError::Io {
                            context,
                            source: err,
                        } => ContainerError::Io {
                            context: context.replace(
                                &from.display().to_string(),
                                &source.display().to_string(),
                            ),
                            source: err,
                        },
                        other => other,
                    };
                    // Where the source's filesystem refuses id-mapped mounts the folder is
                    // bound as it is, so the environment's root stays an unprivileged host id
                    // there (`up` says so: `root_bind::notices`); never the other way round.
                    match (idmap_userns, self.mapping, idmap) {
                        (Some(_), Some(env), true)
                            if (meta.uid() != 0
                                || root_bind::reachable_only_by_root(
                                    &opened,
                                    mounted.get_or_insert_with(|| root_bind::mounted_sources(spec)),
                                ))
                                && idmap_probe::probe(&from, spec.net_home.as_deref())?
                                    .supported =>
                        {
                            let gid = owner_group(meta.uid(), meta.gid());
                            let ns = user_namespace_with(&env.for_bind_owner(meta.uid(), gid))?;
                            idmapped_bind(&from, &fd_path(&t), &ns, flags).map_err(named)?
                        }
                        _ => attach_clone(&from, &fd_path(&t), None, flags).map_err(named)?,
                    }
                }
                MountSpec::Volume {
                    source,
                    target,
                    readonly,
                } => {
                    let t = ensure_in_root(root.as_fd(), target, true, owner)?;
                    let flags = CloneFlags {
                        readonly: *readonly,
                        nosuid: true,
                        nodev: true,
                    };
                    attach_clone(source, &fd_path(&t), None, flags)?;
                }
                MountSpec::Tmpfs { .. } => {}
                MountSpec::OverlayBind {
                    lowers,
                    upper,
                    sub,
                    target,
                } => super::overlay_bind::mount_overlay_bind(
                    &super::overlay_bind::OverlayBind {
                        lowers,
                        upper: upper.as_ref(),
                        sub,
                        target,
                    },
                    n,
                    &spec.state_dir,
                    root.as_fd(),
                    idmap_userns,
                    self.mapping,
                    owner.is_none() && self.mapping.is_some(),
                    owner,
                    spec.net_home.as_deref(),
                )?,
            }
        }
        self.write_etc_files(root.as_fd(), owner)?;
        self.stage_devices(owner)?;
        Ok(clones)
    }

    /// The overlay over id-mapped clones of the layers. Where the kernel takes the clones as
    /// layer descriptors ([`detached_overlay`]) they stay detached; otherwise each is attached
    /// at `lower/N` of the state folder for a classic mount.
    fn mount_idmapped_overlay(&self, ns: &OwnedFd, target: &Path) -> Result<LayerClones> {
        let spec = self.spec;
        let flags = CloneFlags {
            readonly: true,
            nosuid: false,
            nodev: true,
        };
        // overlayfs lists lowerdirs top first.
        let trees = spec
            .lower_layers
            .iter()
            .rev()
            .map(|layer| clone_tree(layer, Some(ns), flags))
            .collect::<Result<Vec<_>>>()?;
        match detached_overlay::overlay_from_layer_fds(
            &trees,
            &spec.upper_dir,
            &spec.work_dir,
            spec.volatile_upper,
        ) {
            Ok(Made::Mount(overlay)) => {
                attach_tree(&overlay, target).context(|| {
                    format!(
                        "cannot attach the overlay root filesystem at {}",
                        target.display()
                    )
                })?;
                return Ok(LayerClones { _held: trees });
            }
            // Refused: descriptor layers came with 6.13, detached and O_PATH ones (such as
            // these clones) with 6.15. The classic mount below reports any real problem (an
            // upper the kernel refuses, a missing layer) as it always did.
            Ok(Made::Unsupported) | Err(_) => {}
        }
        let mut lowers = Vec::with_capacity(trees.len());
        for (i, tree) in trees.iter().rev().enumerate() {
            let at = spec.state_dir.join("lower").join(i.to_string());
            mkdir_p(&at)?;
            attach_tree(tree, &at).context(|| {
                format!(
                    "cannot attach the id-mapped mount of {} at {}",
                    spec.lower_layers[i].display(),
                    at.display()
                )
            })?;
            lowers.push(at);
        }
        self.mount_overlay(&lowers, target, false)?;
        Ok(LayerClones { _held: trees })
    }

    /// The overlay of `lowers` (bottom first) by `mount(2)`; `userxattr` when mounted from
    /// inside a user namespace (trusted.* xattrs are not available there).
    fn mount_overlay(&self, lowers: &[PathBuf], target: &Path, userxattr: bool) -> Result<()> {
        let spec = self.spec;
        // overlayfs lists lowerdirs top first.
        let lowerdir: Vec<String> = lowers
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            spec.upper_dir.display(),
            spec.work_dir.display()
        );
        if userxattr {
            // Mounted from inside a user namespace: trusted.* xattrs are not available.
            opts.push_str(",userxattr");
        }
        if spec.volatile_upper {
            opts.push_str(",volatile");
        }
        // nodev: a device node of an image (or one copied up) must never open through the
        // environment's root; the devices it may use are bound into its own /dev.
        if let Err(e) = mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(opts.as_str()),
        ) {
            if let Some(refused) = upper_refused(&spec.upper_dir, userxattr) {
                return Err(refused);
            }
            return Err(ContainerError::sys(
                format!(
                    "cannot mount the overlay root filesystem at {} ({opts}); check that the layers exist and that the upper and work dirs are on one filesystem",
                    target.display()
                ),
                e,
            ));
        }
        Ok(())
    }

    /// Where stage 1 attaches host device `i` for stage 2 to bind into the environment's /dev.
    pub(super) fn staged_device(&self, i: usize) -> PathBuf {
        self.spec.state_dir.join("devices").join(i.to_string())
    }

    /// Prepares each allowed host device at [`staged_device`](Self::staged_device), still in
    /// the host's user namespace, for stage 2 to bind into the environment's /dev. As root
    /// with a user namespace the host's node (e.g. `/dev/kvm`, 0600 root) would be out of the
    /// environment's root's reach, and devtmpfs has no id-mapped mounts: berth makes a node
    /// of the same type and number, mode and the environment's root as owner, on a tmpfs of
    /// its own (not nodev). Otherwise the host's node is bound. The mounts live in the
    /// launcher's private mount namespace only, so nothing is left behind.
    fn stage_devices(&self, owner: Owner) -> Result<()> {
        if self.spec.devices.is_empty() {
            return Ok(());
        }
        let dir = self.spec.state_dir.join("devices");
        mkdir_p(&dir)?;
        if owner.is_some() {
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("mode=755,size=64k"),
            )
            .context(|| format!("cannot mount a tmpfs for device nodes at {}", dir.display()))?;
        }
        for (i, d) in self.spec.devices.iter().enumerate() {
            let at = self.staged_device(i);
            let give = |e: ContainerError| {
                ContainerError::Setup(format!(
                    "cannot give {} (from `devices` in berth.toml) to the environment: {e}",
                    d.path.display()
                ))
            };
            match owner {
                Some((uid, gid)) => {
                    use std::os::unix::fs::MetadataExt;
                    let meta = fs::metadata(&d.path)
                        .map_err(|e| give(ContainerError::path_io("cannot inspect", &d.path, e)))?;
                    let kind = match d.kind {
                        super::devices::DeviceType::Char => nix::sys::stat::SFlag::S_IFCHR,
                        super::devices::DeviceType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    };
                    nix::sys::stat::mknod(
                        &at,
                        kind,
                        Mode::from_bits_truncate(meta.mode() & 0o666),
                        nix::sys::stat::makedev(d.major.into(), d.minor.into()),
                    )
                    .map_err(|e| {
                        give(ContainerError::sys(
                            format!("cannot mknod {}", at.display()),
                            e,
                        ))
                    })?;
                    nix::unistd::chown(&at, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                        .map_err(|e| {
                            give(ContainerError::sys(
                                format!("cannot chown {}", at.display()),
                                e,
                            ))
                        })?;
                }
                None => {
                    if !at.exists() {
                        fs::File::create(&at)
                            .map_err(|e| give(ContainerError::path_io("cannot create", &at, e)))?;
                    }
                    bind(&d.path, &at, false, false).map_err(give)?;
                }
            }
        }
        Ok(())
    }

    fn write_etc_files(&self, root: BorrowedFd<'_>, owner: Owner) -> Result<()> {
        let dir = self.spec.state_dir.join("etc");
        mkdir_p(&dir)?;
        let host = &self.spec.hostname;
        // With its own network namespace the environment reaches no resolver until its
        // network is set up: the starter's network step writes this file then, in place
        // (see `container::network_attach`), before anything runs inside. Until then it keeps
        // what the last start wrote, or says there is no DNS.
        let resolv = match self.spec.network {
            NetworkMode::Host => Some(fs::read_to_string("/etc/resolv.conf").unwrap_or_default()),
            _ if dir.join("resolv.conf").exists() => None,
            _ => Some(NO_DNS_RESOLV_CONF.to_string()),
        };
        let files = [
            ("hosts", Some(format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{host}\n"))),
            ("hostname", Some(format!("{host}\n"))),
            ("resolv.conf", resolv),
        ];
        for (name, content) in files {
            let p = dir.join(name);
            if let Some(content) = content {
                write_if_changed(&p, content.as_bytes())
                    .context(|| format!("cannot write {}", p.display()))?;
            }
            if let Some((u, g)) = owner {
                use std::os::unix::fs::MetadataExt;
                let owned = fs::metadata(&p).is_ok_and(|m| m.uid() == u && m.gid() == g);
                if !owned {
                    nix::unistd::chown(&p, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                        .context(|| format!("cannot chown {}", p.display()))?;
                }
            }
            let t = match ensure_in_root(root, &format!("/etc/{name}"), false, owner) {
                Ok(t) => t,
                // A single-id rootless environment over a layer it does not own cannot create
                // files in the image's /etc; it keeps the image's version then.
                Err(ContainerError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EACCES) =>
                {
                    eprintln!("berth: cannot create /etc/{name} in the image (permission denied); keeping the image's");
                    continue;
                }
                Err(e) => return Err(e),
            };
            bind(&p, &fd_path(&t), false, true)?;
        }
        Ok(())
    }
}

/// When overlayfs refuses the filesystem of `upper` as a writable layer (FUSE filesystems,
/// network filesystems: they lack whiteouts by rename, `O_TMPFILE` or trusted xattrs), the
/// error that says so. Asked with a trial overlay of an empty folder whose upper and work dirs
/// sit beside `upper`, removed again; `None` when the trial mounts (the failure was elsewhere).
fn upper_refused(upper: &Path, userxattr: bool) -> Option<ContainerError> {
    let parent = upper.parent()?;
    let trial = parent.join(format!(".overlay-trial-{}", std::process::id()));
    let dirs = ["lower", "upper", "work", "mnt"].map(|d| trial.join(d));
    let made = dirs.iter().all(|d| fs::create_dir_all(d).is_ok());
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}{}",
        dirs[0].display(),
        dirs[1].display(),
        dirs[2].display(),
        if userxattr { ",userxattr" } else { "" }
    );
    let result = made.then(|| {
        mount(
            Some("overlay"),
            &dirs[3],
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
    });
    if let Some(Ok(())) = result {
        let _ = nix::mount::umount2(&dirs[3], nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = crate::state::remove_tree(&trial);
    match result {
        Some(Err(e)) => {
            let fs = super::idmap_probe::fs_type(parent).unwrap_or_else(|| "its filesystem".into());
            Some(ContainerError::Setup(format!(
                "overlayfs cannot keep the environment's writable layer on {fs} at {} ({e}: the kernel refuses {fs} as an overlay upper directory); put BERTH_HOME on a local filesystem such as ext4, xfs, btrfs or tmpfs",
                upper.display()
            )))
        }
        _ => None,
    }
}

pub(super) fn mkdir_p(p: &Path) -> Result<()> {
    fs::create_dir_all(p).context(|| format!("cannot create {}", p.display()))
}

pub(super) fn open_dir(p: &Path) -> Result<OwnedFd> {
    let f = fs::File::open(p).context(|| format!("cannot open {}", p.display()))?;
    Ok(OwnedFd::from(f))
}

/// A recursive bind mount; `nodev` for anything but the environment's device nodes.
pub(super) fn bind(source: &Path, target: &Path, readonly: bool, nodev: bool) -> Result<()> {
    if readonly || nodev {
        let flags = CloneFlags {
            readonly,
            nosuid: false,
            nodev,
        };
        return attach_clone(source, target, None, flags);
    }
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .context(|| {
        format!(
            "cannot bind-mount {} into the environment",
            source.display()
        )
    })
}

/// `/etc/resolv.conf` of an environment that has no resolver to reach (loopback only).
pub const NO_DNS_RESOLV_CONF: &str = "# berth: this environment has no DNS (loopback only)\n";

/// Writes `content` to `path` unless it already holds exactly that. A restart then leaves
/// the environment's /etc files alone: truncating a file on ext4 can wait for the journal,
/// which cost milliseconds on every start. The file keeps its inode (it may be bind-mounted
/// into a starting environment already).
pub fn write_if_changed(path: &Path, content: &[u8]) -> std::io::Result<()> {
    match fs::read(path) {
        Ok(old) if old == content => Ok(()),
        _ => fs::write(path, content),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_are_rewritten_only_when_their_content_changes() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("hosts");
        write_if_changed(&p, b"a\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"a\n");
        let before = fs::metadata(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_if_changed(&p, b"a\n").unwrap();
        let same = fs::metadata(&p).unwrap();
        assert_eq!(
            (before.mtime(), before.mtime_nsec()),
            (same.mtime(), same.mtime_nsec()),
            "an unchanged file must not be written again"
        );
        write_if_changed(&p, b"longer content\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"longer content\n");
        write_if_changed(&p, b"b\n").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"b\n");
    }
}
