//! The last check of bind and sync mount sources, at `up`, on the real filesystem: the
//! berth.toml validator already refused what it can see (`/`, `/proc`, `..` out of the
//! project, a symbolic link out of it), but a link may have changed since, and only the
//! runtime knows where berth's own store is.
//!
//! Refused unless the mount says `unsafe_host_path = true`: the host's root, `/proc`, `/sys`,
//! `/dev`, the berth home or anything inside it (other environments' files, the layer store)
//! or a folder holding it, and a source inside the project folder whose real path is outside
//! it (a symbolic link on the way).

use std::path::Path;

use envfile_spec::plan::{MountKind, Plan};
use envfile_spec::UNSAFE_HOST_PATHS;

use super::error::EnvError;

/// Checks every bind/sync source of `plan`. `home` is the berth home; `own_dir` the folder of
/// the environment being brought up (a `berth run` copy of the project lives there).
pub(super) fn check_mount_sources(
    plan: &Plan,
    home: &Path,
    own_dir: &Path,
) -> Result<(), EnvError> {
    let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let own_dir = std::fs::canonicalize(own_dir).unwrap_or_else(|_| own_dir.to_path_buf());
    let project =
        std::fs::canonicalize(&plan.project_dir).unwrap_or_else(|_| plan.project_dir.clone());
    for m in &plan.mounts {
        if !matches!(m.kind, MountKind::Bind | MountKind::Sync) || m.unsafe_host_path {
            continue;
        }
        let Some(source) = &m.source else { continue };
        // A missing source is reported where it is mounted.
        let Ok(resolved) = std::fs::canonicalize(source) else {
            continue;
        };
        if let Some(why) = why_unsafe(
            Path::new(source),
            &resolved,
            &plan.project_dir,
            &project,
            &home,
            &own_dir,
        ) {
            return Err(EnvError::UnsafeMountSource {
                target: m.target.clone(),
                path: source.clone(),
                resolved,
                why,
            });
        }
    }
    Ok(())
}

fn why_unsafe(
    source: &Path,
    resolved: &Path,
    project_dir: &Path,
    project: &Path,
    home: &Path,
    own_dir: &Path,
) -> Option<String> {
    if resolved == Path::new("/") {
        return Some("is the host's root folder".into());
    }
    if let Some(k) = UNSAFE_HOST_PATHS.iter().find(|k| resolved.starts_with(k)) {
        return Some(format!("is inside {k}, a kernel filesystem of the host"));
    }
    if resolved.starts_with(home) && !resolved.starts_with(own_dir) {
        return Some(format!(
            "is inside berth's own store {} (images, layers and other environments)",
            home.display()
        ));
    }
    if home.starts_with(resolved) {
        return Some(format!(
            "holds berth's own store {} (images, layers and other environments)",
            home.display()
        ));
    }
    if source.starts_with(project_dir) && !resolved.starts_with(project) {
        return Some(format!(
            "is inside the project folder but leads outside the project folder {} through a symbolic link",
            project_dir.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_sources_are_named() {
        let p = Path::new("/proj");
        let h = Path::new("/var/lib/berth");
        let own = Path::new("/var/lib/berth/envs/x");
        let why = |s: &str, r: &str| why_unsafe(Path::new(s), Path::new(r), p, p, h, own);
        assert!(why("/", "/").unwrap().contains("root folder"));
        assert!(why("/proc/1", "/proc/1").unwrap().contains("/proc"));
        assert!(why("/proj/dev", "/dev").unwrap().contains("/dev"));
        assert!(why("/var/lib/berth/layers", "/var/lib/berth/layers")
            .unwrap()
            .contains("own store"));
        assert!(why("/var", "/var")
            .unwrap()
            .contains("holds berth's own store"));
        assert!(why("/proj/data", "/srv/data")
            .unwrap()
            .contains("symbolic link"));
        // A `berth run` copy of the project lives in the environment's own folder.
        assert_eq!(
            why(
                "/var/lib/berth/envs/x/source",
                "/var/lib/berth/envs/x/source"
            ),
            None
        );
        assert_eq!(why("/proj/src", "/proj/src"), None);
        // An absolute source outside the project was written on purpose.
        assert_eq!(why("/srv/data", "/srv/data"), None);
    }
}
