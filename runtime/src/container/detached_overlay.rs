//! The environment's overlay made from layer descriptors: `fsopen("overlay")`, one
//! `lowerdir+` per layer given as the descriptor of its detached, id-mapped clone
//! ([`clone_tree`](super::mount_api::clone_tree)), `fsmount`. The clones are never attached
//! to a folder: no `lower/N` folder per start, no mount of them in any mount namespace, and
//! nothing to clean up whatever kills the launcher (a detached mount goes with its last
//! reference; the overlay holds its own). Kernels before `lowerdir+` took descriptors
//! (Linux 6.13) answer [`Made::Unsupported`]; 6.13 and 6.14 refuse detached and `O_PATH`
//! descriptors with an error. Either way the caller attaches the clones to folders for a
//! classic `mount(2)` instead.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{ContainerError, Result};
use super::fs_context::FsContext;

const MOUNT_ATTR_NODEV: u32 = 0x0000_0004;

/// What [`overlay_from_layer_fds`] made.
#[derive(Debug)]
pub enum Made {
    /// The overlay, detached (`nodev`), for [`attach_tree`](super::mount_api::attach_tree).
    Mount(OwnedFd),
    /// This kernel cannot take layers as descriptors; nothing was made.
    Unsupported,
}

/// An overlay of `lowers` (top first, each a detached mount) under the writable `upper` with
/// `work`, detached and `nodev`; `volatile`: see [`ContainerSpec::volatile_upper`]. Errors
/// name the kernel's own explanation where it gave one.
///
/// [`ContainerSpec::volatile_upper`]: super::spec::ContainerSpec::volatile_upper
pub fn overlay_from_layer_fds(
    lowers: &[OwnedFd],
    upper: &Path,
    work: &Path,
    volatile: bool,
) -> Result<Made> {
    let ctx = match FsContext::open(c"overlay") {
        Ok(ctx) => ctx,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOSYS | libc::ENODEV | libc::EPERM) => Ok(Made::Unsupported),
                _ => Err(ContainerError::io(
                    "cannot open an overlay context (fsopen)",
                    e,
                )),
            }
        }
    };
    for (i, lower) in lowers.iter().enumerate() {
        if let Err(e) = ctx.set_fd(c"lowerdir+", lower.as_fd()) {
            if i == 0 && e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(Made::Unsupported);
            }
            return Err(failed(
                &ctx,
                &format!("cannot add layer {i} to the overlay"),
                e,
            ));
        }
    }
    for (key, dir) in [(c"upperdir", upper), (c"workdir", work)] {
        let value = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
            ContainerError::Invalid(format!("{} contains a NUL byte", dir.display()))
        })?;
        ctx.set_string(key, &value).map_err(|e| {
            failed(
                &ctx,
                &format!("cannot use {} in the overlay", dir.display()),
                e,
            )
        })?;
    }
    if volatile {
        ctx.set_flag(c"volatile")
            .map_err(|e| failed(&ctx, "cannot make the overlay volatile", e))?;
    }
    ctx.create()
        .map_err(|e| failed(&ctx, "cannot create the overlay", e))?;
    let m = ctx
        .mount(MOUNT_ATTR_NODEV)
        .map_err(|e| failed(&ctx, "cannot mount the overlay (fsmount)", e))?;
    Ok(Made::Mount(m))
}

/// The error of a failed step, with the messages the kernel logged on the context.
fn failed(ctx: &FsContext, what: &str, e: std::io::Error) -> ContainerError {
    let log = ctx.kernel_log();
    let context = if log.is_empty() {
        what.to_string()
    } else {
        format!("{what} (the kernel says: {})", log.join("; "))
    };
    ContainerError::io(context, e)
}

#[cfg(test)]
mod tests {
    use super::super::idmap::{IdMapping, IdRange, MapWriter};
    use super::super::mount_api::{clone_tree, user_namespace_with, CloneFlags};
    use super::*;
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn mount_count() -> usize {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count()
    }

    /// The layers appear id-mapped through the overlay, writes land in the upper owned by
    /// the environment's root, and nothing of it exists outside its descriptors: no folder
    /// per layer, no mount in this namespace, nothing left once the descriptors are gone
    /// (as when a `kill -9` closes them).
    #[test]
    fn an_overlay_of_detached_id_mapped_layers_leaves_no_folder_or_mount_behind() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: id-mapped mounts need root");
            return;
        }
        let t = tempfile::Builder::new()
            .prefix("berth-detached-overlay")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = t.path();
        for sub in ["l0", "l1", "upper", "work"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(d.join("l0/a"), "bottom").unwrap();
        fs::write(d.join("l0/shadowed"), "bottom").unwrap();
        fs::write(d.join("l1/shadowed"), "top").unwrap();
        let before: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mounts_before = mount_count();

        let range = |outside| {
            vec![IdRange {
                inside: 0,
                outside,
                count: 65536,
            }]
        };
        let userns = user_namespace_with(&IdMapping {
            uids: range(300_000),
            gids: range(300_000),
            writer: MapWriter::Direct,
            deny_setgroups: false,
        })
        .unwrap();
        let flags = CloneFlags {
            readonly: true,
            nosuid: false,
            nodev: true,
        };
        // Top first, as overlayfs lists them.
        let lowers = [d.join("l1"), d.join("l0")]
            .iter()
            .map(|l| clone_tree(l, Some(&userns), flags).unwrap())
            .collect::<Vec<_>>();
        let mount = match overlay_from_layer_fds(&lowers, &d.join("upper"), &d.join("work"), false)
            .unwrap()
        {
            Made::Mount(m) => m,
            Made::Unsupported => {
                eprintln!("skipped: this kernel takes no overlay layers as descriptors");
                return;
            }
        };
        drop(lowers);
        let root = format!("/proc/self/fd/{}", mount.as_raw_fd());
        assert_eq!(fs::read_to_string(format!("{root}/a")).unwrap(), "bottom");
        assert_eq!(
            fs::read_to_string(format!("{root}/shadowed")).unwrap(),
            "top"
        );
        // Root's files of the layers, seen through the id-mapped layers: the mapped root.
        assert_eq!(fs::metadata(format!("{root}/a")).unwrap().uid(), 300_000);
        fs::write(format!("{root}/new"), "written").unwrap();
        assert_eq!(fs::read_to_string(d.join("upper/new")).unwrap(), "written");
        assert_eq!(
            mount_count(),
            mounts_before,
            "a detached overlay must not appear in the mount table"
        );
        let after: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after, "no folder may be made for the layers");
        drop(mount);
        assert_eq!(mount_count(), mounts_before);
    }

    #[test]
    fn a_bad_upper_is_named_with_the_kernels_reason() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let d = t.path();
        fs::create_dir(d.join("l0")).unwrap();
        let lowers = vec![clone_tree(&d.join("l0"), None, CloneFlags::default()).unwrap()];
        match overlay_from_layer_fds(
            &lowers,
            &d.join("missing-upper"),
            &d.join("missing-work"),
            false,
        ) {
            Ok(Made::Unsupported) => eprintln!("skipped: no descriptor layers on this kernel"),
            Ok(Made::Mount(_)) => panic!("an overlay over a missing upper must fail"),
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("missing-upper"), "{text}");
            }
        }
    }
}
