//! A project folder for end-to-end tests: a temporary folder holding a busybox root
//! filesystem (`rootfs/`, unless left out) and a berth.toml, with an environment name unique to the test so
//! parallel tests never share an environment. Removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::host::{busybox_rootfs, HostSnapshot};
use crate::Berth;

/// A project folder over a busybox rootfs; `{name}` in its berth.toml stands for [`name`].
///
/// [`name`]: Project::name
pub struct Project {
    dir: tempfile::TempDir,
    /// The environment's name: the builder's name prefix followed by the folder's random
    /// part in lowercase (unique per test).
    pub name: String,
}

/// How a [`Project`] is made: where its folder is, with which mode and owner.
pub struct ProjectBuilder {
    dir_prefix: String,
    name_prefix: String,
    parent: Option<PathBuf>,
    mode: Option<u32>,
    owner: Option<u32>,
    rootfs: bool,
}

impl Project {
    /// A project in a fresh temporary folder named `dir_prefix` + random characters; its
    /// environment name is `name_prefix` + those characters in lowercase.
    pub fn builder(dir_prefix: &str, name_prefix: &str) -> ProjectBuilder {
        ProjectBuilder {
            dir_prefix: dir_prefix.to_string(),
            name_prefix: name_prefix.to_string(),
            parent: None,
            mode: None,
            owner: None,
            rootfs: true,
        }
    }

    /// [`Project::builder`] with the defaults (in the temp folder, mode 0700, owned by the
    /// caller), its berth.toml `toml`.
    pub fn new(dir_prefix: &str, name_prefix: &str, toml: &str) -> Project {
        Project::builder(dir_prefix, name_prefix).create(toml)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the berth.toml (`{name}` filled in as at creation).
    pub fn write(&self, toml: &str) {
        std::fs::write(
            self.path().join("berth.toml"),
            toml.replace("{name}", &self.name),
        )
        .unwrap();
    }

    /// Host resources that belong to this test: its environment, berth home and bridge;
    /// taken once the background removals of finished runs are done (see
    /// [`Berth::wait_for_background_teardowns`]).
    pub fn snapshot(&self, b: &Berth) -> HostSnapshot {
        b.wait_for_background_teardowns();
        HostSnapshot::take(&[&self.name, &b.home.path().to_string_lossy(), &b.bridge])
    }
}

impl ProjectBuilder {
    /// Makes the folder inside `parent` instead of the system's temp folder (a checkout in a
    /// private workspace, for instance).
    pub fn in_folder(mut self, parent: &Path) -> Self {
        self.parent = Some(parent.to_path_buf());
        self
    }

    /// Sets the folder's mode (a temporary folder is 0700: other users cannot reach it).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Gives the folder (only the folder itself) to `uid` (and the group of the same id),
    /// as a developer's checkout belongs to an ordinary user.
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Leaves out the busybox `rootfs/`, for a project whose image comes from elsewhere
    /// (`debootstrap:`, a registry).
    pub fn without_rootfs(mut self) -> Self {
        self.rootfs = false;
        self
    }

    /// Makes the folder with `rootfs/` (unless [left out](Self::without_rootfs)) and the berth.toml `toml` (`{name}` filled in).
    pub fn create(self, toml: &str) -> Project {
        let mut builder = tempfile::Builder::new();
        builder.prefix(&self.dir_prefix);
        let dir = match &self.parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .unwrap();
        if let Some(mode) = self.mode {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        if self.rootfs {
            busybox_rootfs(&dir.path().join("rootfs"));
        }
        let name = format!("{}{}", self.name_prefix, random_part(dir.path()));
        let p = Project { dir, name };
        p.write(toml);
        if let Some(uid) = self.owner {
            std::os::unix::fs::chown(p.path(), Some(uid), Some(uid)).unwrap();
        }
        p
    }
}

/// The random characters tempfile appended to a folder's name (its last six alphanumeric
/// characters), in lowercase.
fn random_part(dir: &Path) -> String {
    let alnum: String = dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    alnum[alnum.len() - 6..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_name_is_the_prefix_and_the_folders_random_part_in_lowercase() {
        let parent = tempfile::tempdir().unwrap();
        let p = Project::builder("Berth-T-", "t-")
            .in_folder(parent.path())
            .mode(0o755)
            .without_rootfs()
            .create("name = \"{name}\"\n");
        assert_eq!(p.path().parent(), Some(parent.path()));
        let folder = p.path().file_name().unwrap().to_string_lossy().into_owned();
        let random = folder.strip_prefix("Berth-T-").unwrap();
        assert_eq!(p.name, format!("t-{}", random.to_lowercase()));
        assert_eq!(
            std::fs::read_to_string(p.path().join("berth.toml")).unwrap(),
            format!("name = \"{}\"\n", p.name)
        );
        assert_eq!(std::fs::metadata(p.path()).unwrap().mode() & 0o7777, 0o755);
        assert!(!p.path().join("rootfs").exists());
    }

    #[test]
    fn the_owner_gets_the_folder_and_the_rootfs_is_there() {
        if let Some(why) = crate::host::root_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let p = Project::builder("berth-t-", "t").owner(4242).create("");
        let m = std::fs::metadata(p.path()).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4242));
        assert!(p.path().join("rootfs/bin/sh").exists());
        let path = p.path().to_path_buf();
        drop(p);
        assert!(!path.exists(), "the project folder outlived its Project");
    }
}
