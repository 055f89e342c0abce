//! Throw-away environments for `berth run`: a plan of their own (unique name, optionally a
//! private copy of the project), owned by the `berth run` process so that garbage
//! collection removes them when that process is gone.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use envfile_spec::plan::MountKind;
use envfile_spec::Plan;

use super::environments::Environments;
use super::error::EnvError;
use super::record::EnvRecord;
use crate::state::{self, StateError};

/// How a run's plan differs from the project's.
#[derive(Debug, Clone, Default)]
pub struct RunPlanOptions {
    /// Name (and hostname) of the run's environment; default `<name>-run-<random>`.
    pub name: Option<String>,
    /// Give the run a private copy of the project folder instead of live mounts of it.
    pub copy_source: bool,
    /// Sidecar volumes the run uses as they are (`run --keep-volumes`: shared with `up` and
    /// other runs, kept afterwards) instead of empty ones of its own.
    pub keep_volumes: Vec<String>,
}

impl Environments {
    /// The plan and environment id of a new throw-away environment derived from `plan`.
    /// With `copy_source`, the project folder is copied into the environment's folder and
    /// every bind or sync mount from inside the project points at the copy.
    pub fn prepare_run(
        &self,
        plan: &Plan,
        opts: &RunPlanOptions,
    ) -> Result<(Plan, String), EnvError> {
        let mut run = plan.clone();
        run.name = match &opts.name {
            Some(n) => {
                envfile_spec::name::check_name(n).map_err(|why| EnvError::BadRunName {
                    name: n.clone(),
                    why,
                })?;
                n.clone()
            }
            None => {
                let suffix = random_suffix();
                let keep = 63 - "-run-".len() - suffix.len();
                let base: String = plan.name.chars().take(keep).collect();
                format!("{}-run-{suffix}", base.trim_end_matches('-'))
            }
        };
        super::sidecars::private_run_volumes(&mut run, &opts.keep_volumes)?;
        let env_id = Self::env_id(&run);
        let dir = self.home().env_dir(&env_id);
        // Checked on the project itself: its copy would hide a link out of it.
        super::mount_source::check_mount_sources(plan, self.home().root(), &dir)?;
        // A finished run of the same name may still be being stopped by its removal process.
        if EnvRecord::load(&dir)?.is_some() && !self.wait_for_run_removal(&env_id)? {
            return Err(EnvError::RunNameTaken { name: run.name });
        }
        if opts.copy_source {
            let copy = dir.join("source");
            self.watch_own_run(&env_id)?;
            state::create_private_dir(&dir)?;
            copy_tree(&plan.project_dir, &copy)
                .and_then(|()| give_roots_files_to_env_root(&copy))
                .map_err(|source| StateError::Write {
                    path: copy.clone(),
                    source,
                })?;
            for m in &mut run.mounts {
                if !matches!(m.kind, MountKind::Bind | MountKind::Sync) {
                    continue;
                }
                if let Some(src) = &m.source {
                    if let Ok(rel) = Path::new(src).strip_prefix(&plan.project_dir) {
                        m.source = Some(copy.join(rel).to_string_lossy().into_owned());
                    }
                }
            }
        }
        Ok((run, env_id))
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = n.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Copies a folder tree: files (content, mode, mtime), folders, symlinks as symlinks. Device
/// nodes, sockets and fifos are skipped; nothing is followed out of the tree.
/// As root the copy keeps the owners too: a bind mount maps the environment's root to the
/// owner of the folder, so the copy of a user's project is writable inside exactly as the
/// project itself is.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    fs::create_dir_all(to)?;
    keep_owner(to, &meta)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // Never copy a copy into itself (the copy lives under BERTH_HOME, which may be
            // inside the project in tests).
            if dst.starts_with(&src) || to.starts_with(&src) {
                continue;
            }
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            symlink(fs::read_link(&src)?, &dst)?;
            keep_owner(&dst, &entry.metadata()?)?;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
            let m = entry.metadata()?;
            // chown clears setuid/setgid bits: the mode is set again after it.
            keep_owner(&dst, &m)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            let mtime = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
            let _ = nix::sys::stat::utimensat(
                None,
                &dst,
                &mtime,
                &mtime,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(())
}

/// A private copy of a folder of host root's is of no use to the environment's root, which
/// is an unprivileged host id on it (see `container::rootfs`): its files owned by host root
/// (user or group) are given to the environment's root host ids instead. Nothing is lost —
/// the copy is the environment's alone — and writes stay in the environment's id range, so
/// `berth run --copy-source` works in a root-owned checkout (CI). Only as root, only for
/// environments with a user namespace of their own.
fn give_roots_files_to_env_root(copy: &Path) -> io::Result<()> {
    use crate::container::idmap::{self, Invoker};
    use crate::container::spec::UserMappingChoice;
    let who = Invoker::current();
    if who.uid != 0 {
        return Ok(());
    }
    let Ok(Some(mapping)) = idmap::choose(UserMappingChoice::Auto, false, &who) else {
        return Ok(());
    };
    let (Some(uid), Some(gid)) = (mapping.host_uid(0), mapping.host_gid(0)) else {
        return Ok(());
    };
    fn walk(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        let (u, g) = ((m.uid() == 0).then_some(uid), (m.gid() == 0).then_some(gid));
        if u.is_some() || g.is_some() {
            std::os::unix::fs::lchown(p, u, g)?;
            if m.is_file() {
                // chown cleared setuid/setgid bits: the copy keeps its modes.
                fs::set_permissions(p, fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
        }
        if m.is_dir() {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(copy, uid, gid)
}

/// Gives `path` (not followed) the owner and group of `like` when berth runs as root.
fn keep_owner(path: &Path, like: &fs::Metadata) -> io::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(like.uid()), Some(like.gid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_modes_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("/etc/passwd", src.join("abs")).unwrap();
        symlink("sub/run.sh", src.join("rel")).unwrap();
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            fs::read_to_string(dst.join("sub/run.sh")).unwrap(),
            "#!/bin/sh\n"
        );
        assert_eq!(
            fs::metadata(dst.join("sub/run.sh")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(dst.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(dst.join("rel")).unwrap(),
            Path::new("sub/run.sh")
        );
    }

    #[test]
    fn copy_tree_does_not_recurse_into_its_own_destination() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "1").unwrap();
        let dst = d.path().join("home/envs/x/source");
        copy_tree(d.path(), &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("f")).unwrap(), "1");
        assert!(!dst.join("home").exists());
    }

    #[test]
    fn run_names_are_unique_and_valid() {
        let a = random_suffix();
        let b = random_suffix();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }
}
