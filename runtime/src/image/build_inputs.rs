//! `[image].inputs`: the project files a build copies under `[image].workdir` before its
//! `setup` steps, and their content hash (part of those steps' cache keys, so a changed
//! `package.json` reruns them and an edit elsewhere reruns nothing).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::error::ImageError;

/// The expanded inputs of one build.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    /// The project folder the relative paths start at.
    root: PathBuf,
    /// Relative paths, sorted.
    files: Vec<PathBuf>,
    key: String,
}

impl BuildInputs {
    /// Expands `patterns` under `project_dir` and hashes what they name. A pattern matching
    /// no file is an error (the checker reports it with its line; this catches a file removed
    /// since).
    pub fn collect(project_dir: &Path, patterns: &[String]) -> Result<BuildInputs, ImageError> {
        let bad = |detail: String| ImageError::Build {
            step: "inputs".into(),
            detail,
        };
        let (files, matched) = envfile_spec::inputs::expand(project_dir, patterns)
            .map_err(|e| bad(format!("cannot list {}: {e}", project_dir.display())))?;
        if let Some((p, _)) = patterns.iter().zip(&matched).find(|(_, m)| !**m) {
            return Err(bad(format!(
                "the pattern {p:?} of `image.inputs` matches no file in {}; fix or remove it",
                project_dir.display()
            )));
        }
        let mut h = Sha256::new();
        h.update(b"berth-inputs-v1\n");
        for rel in &files {
            let path = project_dir.join(rel);
            let meta = fs::symlink_metadata(&path).map_err(ImageError::io(&path))?;
            h.update(rel.to_string_lossy().as_bytes());
            h.update(b"\0");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(ImageError::io(&path))?;
                h.update(b"link\0");
                h.update(target.to_string_lossy().as_bytes());
            } else {
                h.update(format!("file {:o}\0", meta.permissions().mode() & 0o777).as_bytes());
                let bytes = read_no_follow(&path).map_err(ImageError::io(&path))?;
                h.update(Sha256::digest(&bytes));
            }
            h.update(b"\n");
        }
        Ok(BuildInputs {
            root: project_dir.to_path_buf(),
            files,
            key: hex::encode(h.finalize()),
        })
    }

    /// Content hash of the inputs (paths, modes, contents).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Copies the inputs into `dir` under `workdir` (absolute, inside), creating `workdir`
    /// even when there is no input. Symlinks are copied as links.
    pub fn write_tree(&self, dir: &Path, workdir: &str) -> io::Result<()> {
        let base = dir.join(workdir.trim_start_matches('/'));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&base)?;
        for rel in &self.files {
            let src = self.root.join(rel);
            let dst = base.join(rel);
            if let Some(parent) = dst.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)?;
            }
            let meta = fs::symlink_metadata(&src)?;
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            } else {
                let bytes = read_no_follow(&src)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(meta.permissions().mode() & 0o777)
                    .open(&dst)?;
                io::Write::write_all(&mut f, &bytes)?;
            }
        }
        Ok(())
    }
}

fn read_no_follow(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_matched_files_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("package.json"), "{}").unwrap();
        fs::create_dir(p.join("src")).unwrap();
        fs::write(p.join("src/index.js"), "1").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", p.join("package-link.json")).unwrap();
        let pats = vec!["package*.json".to_string()];
        let a = BuildInputs::collect(p, &pats).unwrap();
        fs::write(p.join("src/index.js"), "2").unwrap();
        assert_eq!(BuildInputs::collect(p, &pats).unwrap().key(), a.key());
        fs::write(p.join("package.json"), "{\"a\":1}").unwrap();
        let b = BuildInputs::collect(p, &pats).unwrap();
        assert_ne!(b.key(), a.key());

        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        b.write_tree(&out, "/work/app").unwrap();
        assert_eq!(
            fs::read_to_string(out.join("work/app/package.json")).unwrap(),
            "{\"a\":1}"
        );
        // The link is copied as a link, never followed.
        assert_eq!(
            fs::read_link(out.join("work/app/package-link.json")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert!(!out.join("work/app/src").exists());

        let err = BuildInputs::collect(p, &["Cargo.lock".to_string()]).unwrap_err();
        assert!(err.to_string().contains("matches no file"), "{err}");
    }
}
