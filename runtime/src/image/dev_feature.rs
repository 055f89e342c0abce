//! Dev Container Features from their registry: a feature is an OCI artifact whose one layer
//! (`application/vnd.devcontainers.layer.v1+tar`) is a tar of its folder (`install.sh`,
//! `devcontainer-feature.json`, …). [`fetch_feature`] pulls it with berth's registry client
//! (credentials, loopback over HTTP, digest checks) and unpacks it into a folder of the
//! project, taking only plain files and folders below that folder.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use envfile_spec::reference::ImageReference;

use super::error::ImageError;
use super::manifest::{Manifest, ManifestKind};
use super::registry::{RegistryClient, RegistryOptions};

/// The media type of a feature's layer.
pub const FEATURE_LAYER: &str = "application/vnd.devcontainers.layer.v1+tar";

/// Largest feature berth unpacks (features are scripts: the biggest published is well under
/// a megabyte).
const MAX_FEATURE_BYTES: u64 = 16 << 20;

/// Fetches the feature `id` (`ghcr.io/devcontainers/features/node:1`) into `dest`, replacing
/// what was there. The folder is written beside `dest` first and renamed into place, so a
/// failure leaves the old folder (or none).
pub fn fetch_feature(id: &str, dest: &Path, opts: &RegistryOptions) -> Result<(), ImageError> {
    let reference = ImageReference::parse(id)?;
    let client = RegistryClient::new(&reference, opts)?;
    let fetched = client.manifest(reference.manifest_reference())?;
    let what = format!("feature {id}");
    let manifest: Manifest = match ManifestKind::parse(&fetched.bytes, &fetched.media_type, &what)?
    {
        ManifestKind::Image(m) => m,
        ManifestKind::Index(_) => return Err(ImageError::malformed(
            what,
            "it is an image index, not a feature (a feature is one manifest with one tar layer)",
        )),
    };
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == FEATURE_LAYER || l.media_type.ends_with(".tar"))
        .ok_or_else(|| {
            ImageError::malformed(
                &what,
                format!("it has no {FEATURE_LAYER} layer; is it a feature?"),
            )
        })?;
    if layer.size > MAX_FEATURE_BYTES {
        return Err(ImageError::malformed(
            &what,
            format!(
                "its layer claims {} bytes; berth unpacks features up to {MAX_FEATURE_BYTES}",
                layer.size
            ),
        ));
    }
    let bytes = client.blob_bytes(layer)?;
    let parent = dest
        .parent()
        .ok_or_else(|| ImageError::Base(format!("{} has no parent folder", dest.display())))?;
    std::fs::create_dir_all(parent).map_err(ImageError::io(parent))?;
    let staging = parent.join(format!(
        ".{}.fetching-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        super::unique_suffix()
    ));
    let result = unpack_feature(&bytes, &staging, &what).and_then(|()| {
        if !staging.join("install.sh").is_file() {
            return Err(ImageError::malformed(&what, "its layer has no install.sh"));
        }
        if dest.exists() {
            std::fs::remove_dir_all(dest).map_err(ImageError::io(dest))?;
        }
        std::fs::rename(&staging, dest).map_err(ImageError::io(dest))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Unpacks a feature tar into `dir` (created): regular files (mode 0644, or 0755 when
/// executable) and folders only, every path relative and without `..`; links, devices and
/// anything else refuse the whole feature.
fn unpack_feature(tar_bytes: &[u8], dir: &Path, what: &str) -> Result<(), ImageError> {
    std::fs::create_dir(dir).map_err(ImageError::io(dir))?;
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(|source| ImageError::BadArchive {
        layer: what.to_string(),
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| ImageError::BadArchive {
            layer: what.to_string(),
            source,
        })?;
        let raw = entry
            .path()
            .map_err(|source| ImageError::BadArchive {
                layer: what.to_string(),
                source,
            })?
            .into_owned();
        let unsafe_entry = |reason: &str| ImageError::UnsafeEntry {
            layer: what.to_string(),
            entry: raw.display().to_string(),
            reason: reason.to_string(),
        };
        let mut rel = PathBuf::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => rel.push(n),
                Component::CurDir => {}
                _ => {
                    return Err(unsafe_entry(
                        "leaves the feature's folder (absolute or `..`)",
                    ))
                }
            }
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dir.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&path).map_err(ImageError::io(&path))?;
        } else if kind.is_file() {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).map_err(ImageError::io(p))?;
            }
            let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            let mut data = Vec::new();
            (&mut entry)
                .take(MAX_FEATURE_BYTES)
                .read_to_end(&mut data)
                .map_err(ImageError::io(&path))?;
            // create_new: a name twice in the archive, or a folder left by a symlink, refuses.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(if executable { 0o755 } else { 0o644 })
                .open(&path)
                .map_err(ImageError::io(&path))?;
            f.write_all(&data).map_err(ImageError::io(&path))?;
        } else {
            return Err(unsafe_entry(
                "is not a plain file or folder (features hold scripts and data)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // set_path refuses `..`; write the raw name as a hostile archive would.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn unpacks_plain_files_and_refuses_anything_leaving_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let ok = tar_of(&[
            ("./", tar::EntryType::Directory, b"", ""),
            (
                "./install.sh",
                tar::EntryType::Regular,
                b"#!/bin/sh\necho hi\n",
                "",
            ),
            ("./lib/x.txt", tar::EntryType::Regular, b"x", ""),
        ]);
        let dir = t.path().join("ok");
        unpack_feature(&ok, &dir, "feature t").unwrap();
        assert_eq!(
            std::fs::read(dir.join("install.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert!(dir.join("lib/x.txt").is_file());
        // The exploit: a marker outside the folder, through `..` or a link.
        let marker = t.path().join("marker");
        for (n, bad) in [
            tar_of(&[("../marker", tar::EntryType::Regular, b"pwned", "")]),
            tar_of(&[("link", tar::EntryType::Symlink, b"", "../marker")]),
            tar_of(&[("hard", tar::EntryType::Link, b"", "/etc/passwd")]),
        ]
        .into_iter()
        .enumerate()
        {
            let d = t.path().join(format!("bad{n}"));
            let err = unpack_feature(&bad, &d, "feature t").unwrap_err();
            assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
            assert!(!marker.exists());
        }
    }
}
