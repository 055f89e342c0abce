//! Keeping root's automatic id mapping stable across changes to `/etc/subuid`.
//!
//! As root, berth maps an environment's ids to root's range in `/etc/subuid`/`/etc/subgid`,
//! or, without one, to the first 65536-aligned block no user's subordinate ids overlap. Both
//! move when those files change (another `adduser` takes the block, an admin edits root's
//! entry), and the writable layer and volumes made under the old range would then show as
//! 65534 (`nogroup`) and be read-only inside. So the mapping an environment was created with
//! is kept: from its own record (`state.json`), else from its home's `BERTH_HOME/idmap.json`
//! (written by the first start, so volumes shared by a home's environments agree), with a
//! notice when `/etc/subuid` now says otherwise.
//!
//! A kept range must not overlap another user's subordinate ids (their rootless
//! environments would share host ids with this one). Then the ownership of the writable
//! layer and the volumes is repaired instead: every file owned by an id of the old range is
//! given the same offset in the new range, and the new range is used and recorded.

use std::path::{Path, PathBuf};

use super::error::{ContainerError, Context, Result};
use super::idmap::{self, IdMapping, IdRange, Invoker, MapWriter};
use super::layer_ids::{chown_keeping_setid, walk_tree};
use super::spec::{ContainerSpec, MountSpec, UserMappingChoice};

/// The home-level record of root's automatic mapping.
pub const HOME_IDMAP_FILE: &str = "idmap.json";

/// The mapping to start `spec` with, and a notice for the user when it is not what
/// `/etc/subuid` gives today. `recorded`: the mapping of the environment's previous start.
pub fn stable_mapping(
    spec: &ContainerSpec,
    who: &Invoker,
    recorded: Option<&IdMapping>,
) -> Result<(Option<IdMapping>, Option<String>)> {
    let fresh = idmap::choose(spec.user_mapping, spec.privileged, who)?;
    let Some(fresh_map) = fresh.clone() else {
        return Ok((None, None));
    };
    if spec.user_mapping != UserMappingChoice::Auto || who.uid != 0 {
        return Ok((fresh, None));
    }
    let home_file = home_of(&spec.state_dir).map(|h| h.join(HOME_IDMAP_FILE));
    let home_recorded: Option<IdMapping> = match &home_file {
        Some(f) => crate::state::read_json(f)?,
        None => None,
    };
    let earlier = recorded
        .filter(|m| is_root_range(m))
        .or(home_recorded.as_ref().filter(|m| is_root_range(m)))
        .cloned();
    let (chosen, notice) = match earlier {
        Some(old) if old != fresh_map => decide(spec, who, old, fresh_map.clone())?,
        Some(old) => (old, None),
        None => (fresh_map.clone(), None),
    };
    // The home's first mapping is recorded; later only a move to the new range (the old one
    // went to another user) replaces it.
    if let Some(f) = &home_file {
        if home_recorded.is_none()
            || (chosen == fresh_map && home_recorded.as_ref() != Some(&chosen))
        {
            crate::state::write_json(f, &chosen)?;
        }
    }
    Ok((Some(chosen), notice))
}

/// Keep `old`, or, when it now overlaps another user's subordinate ids, move the
/// environment's files to `fresh`.
fn decide(
    spec: &ContainerSpec,
    who: &Invoker,
    old: IdMapping,
    fresh: IdMapping,
) -> Result<(IdMapping, Option<String>)> {
    let others: Vec<(u32, u32)> = who
        .taken
        .iter()
        .copied()
        .filter(|r| !who.subuid.contains(r) && !who.subgid.contains(r))
        .collect();
    let describe = |m: &IdMapping| {
        let r = &m.uids[0];
        format!("{}–{}", r.outside, r.outside as u64 + r.count as u64 - 1)
    };
    if !ranges_overlap(&old, &others) {
        let notice = format!(
            "/etc/subuid now gives root the host ids {}, but {} was created with {}: berth keeps using {} so the files in its writable layer and volumes keep their owners (recorded in {})",
            describe(&fresh),
            spec.hostname,
            describe(&old),
            describe(&old),
            home_of(&spec.state_dir)
                .map(|h| h.join(HOME_IDMAP_FILE).display().to_string())
                .unwrap_or_else(|| "the environment's state.json".into())
        );
        return Ok((old, Some(notice)));
    }
    if ranges_overlap(&fresh, &[(old.uids[0].outside, old.uids[0].count)])
        || ranges_overlap(&fresh, &[(old.gids[0].outside, old.gids[0].count)])
    {
        return Err(ContainerError::Invalid(format!(
            "{} was created with the host ids {}, which /etc/subuid or /etc/subgid now gives another user, and root's new range {} overlaps the old one, so the files cannot be moved; give root a range of its own in /etc/subuid and /etc/subgid (e.g. `root:{}:65536`), then run `berth up` again",
            spec.hostname,
            describe(&old),
            describe(&fresh),
            idmap::root_fallback_start(&who.taken)
        )));
    }
    let mut moved = 0u64;
    for dir in owned_dirs(spec) {
        moved += shift_ownership(&dir, &old, &fresh)?;
    }
    let notice = format!(
        "the host ids {} that {} was created with now belong to another user in /etc/subuid: berth moved the owners of {moved} files of its writable layer and volumes to root's new range {}",
        describe(&old),
        spec.hostname,
        describe(&fresh)
    );
    Ok((fresh, Some(notice)))
}

/// `BERTH_HOME` of a state folder `BERTH_HOME/envs/<id>`.
fn home_of(state_dir: &Path) -> Option<PathBuf> {
    let envs = state_dir.parent()?;
    (envs.file_name()? == "envs").then(|| envs.parent().map(Path::to_path_buf))?
}

/// The shape of root's automatic mapping: one directly written range from id 0.
fn is_root_range(m: &IdMapping) -> bool {
    let one = |r: &[IdRange]| r.len() == 1 && r[0].inside == 0 && r[0].count > 1;
    m.writer == MapWriter::Direct && !m.deny_setgroups && one(&m.uids) && one(&m.gids)
}

fn ranges_overlap(m: &IdMapping, others: &[(u32, u32)]) -> bool {
    m.uids.iter().chain(&m.gids).any(|r| {
        let (s, e) = (r.outside as u64, r.outside as u64 + r.count as u64);
        others.iter().any(|&(os, oc)| {
            let (os, oe) = (os as u64, os as u64 + oc as u64);
            s < oe && os < e
        })
    })
}

/// The folders whose files belong to the environment's ids: its writable layer and its
/// named volumes.
fn owned_dirs(spec: &ContainerSpec) -> Vec<PathBuf> {
    let mut dirs = vec![spec.upper_dir.clone()];
    dirs.extend(spec.mounts.iter().filter_map(|m| match m {
        MountSpec::Volume { source, .. } => Some(source.clone()),
        _ => None,
    }));
    dirs.into_iter().filter(|d| d.exists()).collect()
}

/// Gives every file under `root` (itself included, symlinks not followed) owned by an id of
/// `old` the same offset in `new`. Returns how many entries changed.
pub fn shift_ownership(root: &Path, old: &IdMapping, new: &IdMapping) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let shift = |id: u32, from: &[IdRange], to: &[IdRange]| -> Option<u32> {
        let r = from
            .iter()
            .find(|r| id >= r.outside && id - r.outside < r.count)?;
        let inside = r.inside + (id - r.outside);
        to.iter()
            .find(|t| inside >= t.inside && inside - t.inside < t.count)
            .map(|t| t.outside + (inside - t.inside))
    };
    let mut changed = 0u64;
    walk_tree(root, &mut |p, meta| {
        let uid = shift(meta.uid(), &old.uids, &new.uids);
        let gid = shift(meta.gid(), &old.gids, &new.gids);
        if uid.is_some() || gid.is_some() {
            chown_keeping_setid(p, meta, uid, gid)
                .context(|| format!("cannot change the owner of {}", p.display()))?;
            changed += 1;
        }
        Ok(())
    })?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn root_with(entry: Option<u32>, others: &[(u32, u32)]) -> Invoker {
        let own: Vec<(u32, u32)> = entry.map(|s| (s, 65536)).into_iter().collect();
        Invoker {
            uid: 0,
            gid: 0,
            name: "root".into(),
            subuid: own.clone(),
            subgid: own.clone(),
            have_newidmap: true,
            taken: own.iter().chain(others).copied().collect(),
        }
    }

    fn spec_in(home: &Path) -> ContainerSpec {
        let dir = home.join("envs/web-1");
        fs::create_dir_all(dir.join("upper")).unwrap();
        ContainerSpec::new("web-1", "web", &dir, vec![])
    }

    #[test]
    fn the_first_mapping_of_a_home_is_recorded_and_kept_when_subuid_moves() {
        let d = tempfile::tempdir().unwrap();
        let spec = spec_in(d.path());
        let (m, notice) = stable_mapping(&spec, &root_with(Some(1_000_000), &[]), None).unwrap();
        assert_eq!(m, Some(IdMapping::root_range(1_000_000)));
        assert!(notice.is_none());
        assert!(d.path().join(HOME_IDMAP_FILE).exists());

        // Root's entry moves: the home's record wins, with a notice naming both ranges.
        let moved = root_with(Some(2_000_000), &[]);
        let (m, notice) = stable_mapping(&spec, &moved, None).unwrap();
        assert_eq!(m, Some(IdMapping::root_range(1_000_000)));
        let n = notice.unwrap();
        assert!(
            n.contains("2000000–2065535") && n.contains("1000000–1065535"),
            "{n}"
        );
        // The environment's own record beats the home's.
        let (m, _) =
            stable_mapping(&spec, &moved, Some(&IdMapping::root_range(3_000_000))).unwrap();
        assert_eq!(m, Some(IdMapping::root_range(3_000_000)));
        // Rootless, explicit and privileged choices are not touched.
        let mut single = spec.clone();
        single.user_mapping = UserMappingChoice::SingleId;
        let (m, n) = stable_mapping(&single, &moved, None).unwrap();
        assert_eq!(m.unwrap().uids[0].count, 1);
        assert!(n.is_none());
    }

    #[test]
    fn a_range_now_given_to_another_user_is_left_and_the_files_move() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: changing file owners needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let spec = spec_in(d.path());
        let f = spec.upper_dir.join("file");
        fs::write(&f, "x").unwrap();
        let link = spec.upper_dir.join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        std::os::unix::fs::lchown(&spec.upper_dir, Some(100_000), Some(100_000)).unwrap();
        std::os::unix::fs::lchown(&f, Some(101_000), Some(100_005)).unwrap();
        std::os::unix::fs::lchown(&link, Some(100_000), Some(100_000)).unwrap();
        // Recorded with 100000; then `adduser` gave that block to a user, root has no entry.
        let who = root_with(None, &[(100_000, 65536)]);
        let (m, notice) =
            stable_mapping(&spec, &who, Some(&IdMapping::root_range(100_000))).unwrap();
        let new = idmap::root_fallback_start(&who.taken);
        assert_eq!(new, 196_608);
        assert_eq!(m, Some(IdMapping::root_range(new)));
        assert!(notice.unwrap().contains("moved the owners of 3 files"));
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (new + 1000, new + 5));
        let l = fs::symlink_metadata(&link).unwrap();
        assert_eq!(l.uid(), new, "the link itself, not its target");
        assert_eq!(fs::metadata("/etc/passwd").unwrap().uid(), 0);
        // Recorded: the next start keeps the new range without a word.
        let (m, notice) = stable_mapping(&spec, &who, None).unwrap();
        assert_eq!(m, Some(IdMapping::root_range(new)));
        assert!(notice.is_none());
    }
}
