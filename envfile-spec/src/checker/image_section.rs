//! `[image]`: where the root filesystem comes from (`from`: registry reference, `rootfs:`,
//! `tar:`, debootstrap), packages, inputs, setup commands, the working folder.

use super::toml_readers::Tbl;
use super::{Checker, Span};
use crate::diagnostic::ErrorKind;
use crate::inputs;
use crate::plan::*;
use crate::reference::ImageReference;

impl Checker<'_> {
    pub(super) fn image(&mut self, root: &Tbl<'_>) -> ImagePlan {
        let fallback = ImagePlan {
            from: ImageSource::Debootstrap {
                suite: String::new(),
                mirror: None,
            },
            packages: Vec::new(),
            setup: Vec::new(),
            inputs: Vec::new(),
            workdir: String::new(),
            host_ca: true,
            dockerfile: None,
            cache: None,
            cache_push: false,
        };
        if root.get("image").is_none() {
            self.error(
                ErrorKind::MissingKey,
                0..0,
                "missing `[image]`: berth needs to know what to start from",
                Some("add a table `[image]` with `from = \"docker.io/library/debian:bookworm\"` (or \"debootstrap:bookworm\")".into()),
            );
            return fallback;
        }
        if let Some((item, _)) = root.get("image") {
            if let Some(s) = item.as_str() {
                let span = item.span().unwrap_or(0..0);
                self.error(
                    ErrorKind::WrongType,
                    span,
                    "`image` must be a table, found a string",
                    Some(format!("write it as a table:\n[image]\nfrom = {s:?}").replace('\n', " ")),
                );
                return fallback;
            }
        }
        let Some(img) = self.sub_table(root, "image", "write `[image]` with `from = \"…\"`")
        else {
            return fallback;
        };
        let dockerfile = self.dockerfile(&img);
        let from = match img.get("from") {
            None if img.get("dockerfile").is_some() => None,
            None => {
                self.error(
                    ErrorKind::MissingKey,
                    img.span.clone(),
                    "`[image]` has no `from`",
                    Some("add from = \"docker.io/library/debian:bookworm\" (or \"debootstrap:SUITE\", \"rootfs:./dir\", \"tar:./rootfs.tar\"), or dockerfile = \"Dockerfile\" to build the base from a Dockerfile".into()),
                );
                None
            }
            Some(_) if img.get("dockerfile").is_some() => {
                self.error(
                    ErrorKind::MisplacedKey,
                    img.key_span("from"),
                    "`[image]` has both `from` and `dockerfile`",
                    Some(
                        "the Dockerfile's FROM is the base: remove `from` (or `dockerfile`)".into(),
                    ),
                );
                None
            }
            Some((item, span)) => self
                .string(item, span.clone(), "image.from")
                .and_then(|s| self.image_source(&s, span, "image.from")),
        };
        let packages = match img.get("packages") {
            Some((item, span)) => self
                .string_array(item, span, "image.packages", false)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(p, pspan)| {
                    if let Err(why) = check_package(&p) {
                        self.error(
                            ErrorKind::BadPackage,
                            pspan,
                            format!("`{p}` is not a valid package name: {why}"),
                            Some(
                                "write one package per string, e.g. packages = [\"git\", \"curl\"]"
                                    .into(),
                            ),
                        );
                        None
                    } else {
                        Some(p)
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let setup = self.string_list(&img, "setup", true);
        let mirror = img.get("mirror").and_then(|(item, span)| {
            let m = self.non_empty_string(item, span.clone(), "image.mirror")?;
            if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/")) {
                self.error(
                    ErrorKind::BadUrl,
                    span,
                    format!("`image.mirror` is not an http(s):// or file:/ URL: {m:?}"),
                    Some("e.g. mirror = \"http://deb.debian.org/debian\"".into()),
                );
                return None;
            }
            Some(m)
        });
        let from = match from {
            Some(ImageSource::Debootstrap { suite, .. }) => {
                ImageSource::Debootstrap { suite, mirror }
            }
            Some(other) => {
                if img.get("mirror").is_some() {
                    self.error(
                        ErrorKind::MisplacedKey,
                        img.key_span("mirror"),
                        "`image.mirror` applies only to `from = \"debootstrap:SUITE\"`",
                        Some("remove `mirror`, or use a debootstrap image".into()),
                    );
                }
                other
            }
            None => fallback.from,
        };
        let inputs = self.inputs(&img);
        // Empty until the mounts are known (`check` fills in the default).
        let workdir = img
            .get("workdir")
            .and_then(|(item, span)| {
                let w = self.string(item, span.clone(), "image.workdir")?;
                self.guest_path(&w, span, "image.workdir", false)
            })
            .unwrap_or_default();
        let host_ca = img
            .get("host_ca")
            .and_then(|(item, span)| self.boolean(item, span, "image.host_ca"))
            .unwrap_or(true);
        let (cache, cache_push) = self.image_cache(&img);
        ImagePlan {
            from,
            packages,
            setup,
            inputs,
            workdir,
            host_ca,
            dockerfile,
            cache,
            cache_push,
        }
    }

    /// `image.inputs`: every pattern well-formed and matching at least one project file.
    fn inputs(&mut self, img: &Tbl<'_>) -> Vec<String> {
        let Some((item, span)) = img.get("inputs") else {
            return Vec::new();
        };
        let Some(list) = self.string_array(item, span.clone(), "image.inputs", true) else {
            return Vec::new();
        };
        let mut good = Vec::new();
        for (pattern, pspan) in &list {
            match inputs::check_pattern(pattern) {
                Ok(()) => good.push((pattern.clone(), pspan.clone())),
                Err(why) => self.error(
                    ErrorKind::InvalidValue,
                    pspan.clone(),
                    format!("`image.inputs` pattern {pattern:?}: {why}"),
                    Some("write a pattern relative to the project folder, e.g. \"package*.json\" or \"src/**/*.py\"".into()),
                ),
            }
        }
        let patterns: Vec<String> = good.iter().map(|(p, _)| p.clone()).collect();
        match inputs::expand(&self.project_dir, &patterns) {
            Ok((_, matched)) => {
                for ((pattern, pspan), hit) in good.iter().zip(matched) {
                    if !hit {
                        self.error(
                            ErrorKind::PathNotFound,
                            pspan.clone(),
                            format!(
                                "`image.inputs` pattern {pattern:?} matches no file in {}",
                                self.project_dir.display()
                            ),
                            Some("fix the pattern (it is relative to the project folder), or remove it".into()),
                        );
                    }
                }
            }
            Err(e) => self.error(
                ErrorKind::PathNotFound,
                span,
                format!(
                    "`image.inputs`: cannot list {}: {e}",
                    self.project_dir.display()
                ),
                Some("make the project folder readable".into()),
            ),
        }
        patterns
    }

    /// One `from` form (`what` names the key in messages: `image.from`, `services.db.image`).
    pub(super) fn image_source(&mut self, s: &str, span: Span, what: &str) -> Option<ImageSource> {
        let help = "use an OCI reference such as \"docker.io/library/debian:bookworm\", or \"debootstrap:bookworm\", \"rootfs:./dir\", \"tar:./rootfs.tar\"";
        if let Some(suite) = s.strip_prefix("debootstrap:") {
            let ok = !suite.is_empty()
                && suite.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && suite
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                self.error(
                    ErrorKind::BadImage,
                    span,
                    format!("{suite:?} is not a Debian suite name"),
                    Some(
                        "name a suite such as \"debootstrap:bookworm\" or \"debootstrap:stable\""
                            .into(),
                    ),
                );
                return None;
            }
            return Some(ImageSource::Debootstrap {
                suite: suite.to_string(),
                mirror: None,
            });
        }
        if let Some(path) = s.strip_prefix("rootfs:") {
            return self
                .existing_path(path, span, &format!("{what} (rootfs:)"), Some(true))
                .map(|path| ImageSource::Rootfs { path });
        }
        if let Some(path) = s.strip_prefix("tar:") {
            return self
                .existing_path(path, span, &format!("{what} (tar:)"), Some(false))
                .map(|path| ImageSource::Tar { path });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            self.error(
                ErrorKind::BadImage,
                span,
                format!("image references have no `{scheme}://` prefix: {s:?}"),
                Some(format!(
                    "write {:?}",
                    s.split_once("://").map_or(s, |(_, r)| r)
                )),
            );
            return None;
        }
        match ImageReference::parse(s) {
            Ok(reference) => Some(ImageSource::Oci { reference }),
            Err(e) => {
                self.error(
                    ErrorKind::BadImage,
                    span,
                    format!("`{what}` is not a valid image: {e}"),
                    Some(help.into()),
                );
                None
            }
        }
    }
}

/// A package name (optionally with a version) as apt, apk and dnf accept it; never starting
/// with `-`, so it cannot be read as an option.
fn check_package(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("it is empty".into());
    }
    if p.starts_with('-') {
        return Err("it starts with `-` and would be read as an option".into());
    }
    if let Some(c) = p
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+._:=~<>-".contains(c)))
    {
        return Err(format!("it contains {c:?}"));
    }
    Ok(())
}
