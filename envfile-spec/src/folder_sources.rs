//! [`Sources`] reading a project folder: the files a devcontainer.json or compose file names
//! (only inside the project folder, symbolic links included: a converted berth.toml is
//! committed, and what it copies of a file must be the project's own), the variables of the
//! process, and Dev Container Features from a local folder or through a fetcher the caller
//! gives (the runtime's registry client).

use std::path::{Path, PathBuf};

use crate::draft::{FeatureFiles, Sources};

/// Fetches a feature published in a registry (its id) into a folder of the project (the path):
/// `Ok` once the folder holds it, else why not.
pub type FeatureFetcher<'a> = dyn Fn(&str, &Path) -> Result<(), String> + 'a;

pub struct FolderSources<'a> {
    project_dir: PathBuf,
    /// The devcontainer.json's folder relative to the project (`.devcontainer`): local
    /// features are named relative to it, fetched ones are stored in `berth-features/` there.
    json_dir: String,
    fetch: Option<&'a FeatureFetcher<'a>>,
}

/// Where fetched features are kept, inside the devcontainer.json's folder.
pub const FETCHED_FEATURES: &str = "berth-features";

impl<'a> FolderSources<'a> {
    pub fn new(project_dir: &Path, json_dir: &str, fetch: Option<&'a FeatureFetcher<'a>>) -> Self {
        FolderSources {
            project_dir: project_dir.to_path_buf(),
            json_dir: json_dir.to_string(),
            fetch,
        }
    }

    /// `rel` inside the project folder, or why not.
    fn inside(&self, rel: &str) -> Result<PathBuf, String> {
        if rel.starts_with('/') || rel.split('/').next() == Some("..") {
            return Err(format!("{rel} is outside the project folder; berth init reads only files inside it (copy the file into the project)"));
        }
        let path = self.project_dir.join(rel);
        if let (Ok(real), Ok(root)) = (path.canonicalize(), self.project_dir.canonicalize()) {
            if !real.starts_with(&root) {
                return Err(format!("{rel} leads outside the project folder (through a symbolic link); berth init reads only files inside it"));
            }
        }
        Ok(path)
    }
}

impl Sources for FolderSources<'_> {
    fn read(&self, rel: &str) -> Result<Option<String>, String> {
        let path = self.inside(rel)?;
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn local_env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn feature(&self, id: &str) -> Result<FeatureFiles, String> {
        let folder = if id.starts_with("./") || id.starts_with("../") {
            crate::compose::join(&self.json_dir, id)
        } else {
            let Some(fetch) = self.fetch else {
                return Err(format!(
                    "{id} is in a registry and this command fetches nothing"
                ));
            };
            // `ghcr.io/devcontainers/features/node:1` → `berth-features/node`.
            let last = id.rsplit('/').next().unwrap_or(id);
            let name = crate::draft::service_name(last.split([':', '@']).next().unwrap_or(last));
            let folder =
                crate::compose::join(&self.json_dir, &format!("{FETCHED_FEATURES}/{name}"));
            let path = self.inside(&folder)?;
            fetch(id, &path)?;
            folder
        };
        let path = self.inside(&folder)?;
        if !path.join("install.sh").is_file() {
            return Err(format!("{folder} has no install.sh"));
        }
        let metadata = std::fs::read_to_string(path.join("devcontainer-feature.json"))
            .map_err(|e| format!("{folder}/devcontainer-feature.json: {e}"))?;
        Ok(FeatureFiles { folder, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_inside_the_project() {
        let outer = tempfile::tempdir().unwrap();
        let project = outer.path().join("p");
        std::fs::create_dir_all(project.join(".devcontainer/f")).unwrap();
        std::fs::write(outer.path().join("secret.env"), "TOKEN=x").unwrap();
        std::fs::write(project.join("a.env"), "A=1").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.env"), project.join("link.env"))
            .unwrap();
        let s = FolderSources::new(&project, ".devcontainer", None);
        assert_eq!(s.read("a.env").unwrap().as_deref(), Some("A=1"));
        assert_eq!(s.read("none.env").unwrap(), None);
        assert!(s
            .read("../secret.env")
            .unwrap_err()
            .contains("outside the project"));
        assert!(s
            .read("/etc/passwd")
            .unwrap_err()
            .contains("outside the project"));
        assert!(s.read("link.env").unwrap_err().contains("symbolic link"));
        // A local feature needs its install.sh; a registry one needs a fetcher.
        assert!(s.feature("./f").unwrap_err().contains("install.sh"));
        std::fs::write(project.join(".devcontainer/f/install.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(
            project.join(".devcontainer/f/devcontainer-feature.json"),
            "{\"id\": \"f\"}",
        )
        .unwrap();
        assert_eq!(s.feature("./f").unwrap().folder, ".devcontainer/f");
        assert!(s.feature("../../x").unwrap_err().contains("outside"));
        assert!(s
            .feature("ghcr.io/x/y:1")
            .unwrap_err()
            .contains("fetches nothing"));
    }
}
