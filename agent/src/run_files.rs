//! berth's files in the guest's tmpfs folders (`PutFile`, `KeepFiles`): `[secrets]` under
//! `/run/secrets` (0400, the `[shell]` user's) and the environment's gitconfig under
//! `/run/berth`, the guest side of what the container's `write-secrets`/`write-gitconfig`
//! builtins do. Only those two folders, each opened without following a link from `/run`
//! and written only when it is a tmpfs (the one the agent mounted from `Setup`), so what
//! the host sends never lands on the VM's disk. A file is written under a temporary name,
//! given to its owner, then renamed into place ([`run_tmpfs`], the same code as the
//! container's builtins).

use std::os::fd::AsRawFd;

use berth_agent_proto::PutFile;
use berth_inside_files::run_tmpfs;

use crate::users;

/// Whether `name` may be a file's name in one of the folders.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Writes `p` into its folder; see the module's documentation.
pub fn put(p: &PutFile) -> Result<(), String> {
    if !valid_name(&p.name) {
        return Err(format!("{:?} is not a valid file name", p.name));
    }
    let dir = run_tmpfs::open(&p.dir)?;
    let owner = match p.owner.as_deref() {
        None | Some("") => users::root(),
        Some(spec) => users::resolve(spec)?,
    };
    let path = format!("{}/{}", p.dir, p.name);
    run_tmpfs::write_replacing(
        &dir,
        &p.name,
        &p.content,
        p.mode,
        Some((owner.uid, owner.gid)),
        &path,
    )
}

/// Removes every file of `dir` not named in `keep`.
pub fn keep(dir_path: &str, keep: &[String]) -> Result<(), String> {
    let dir = run_tmpfs::open(dir_path)?;
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|e| format!("cannot list {dir_path}: {e}"))?;
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            run_tmpfs::remove(&dir, &name)
                .map_err(|e| format!("cannot remove {dir_path}/{name}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_taken() {
        assert!(valid_name("TOKEN") && valid_name("gitconfig") && valid_name("a-b.c_1"));
        for bad in ["", ".hidden", "../x", "a/b", "a\nb", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
