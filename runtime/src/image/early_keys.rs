//! The keys of a build's steps known before its base is unpacked: from the base's id and
//! config alone, which a pull has before its first layer (the registry build cache looks
//! them up while the layers download: `BuildCache::while_pulling`). The layers decide only
//! the package manager (which gives the `packages` step's command, so its key and those
//! after it): with packages there is one chain of keys per package manager.

use super::build::{plan_steps_with, BuildSpec, PackageManager};
use super::digest::Digest;
use super::image_store::ImageConfig;
use super::manifest::ConfigFile;
use super::store::ResolvedImage;

/// The step keys of `spec` over the image with the id `id` and `config`, known before its
/// layers are: one chain per package manager when there are packages (the keys from the
/// `packages` step on depend on it), else one. None when the plan is refused (the build
/// says why).
pub fn early_chains(id: &Digest, config: &ConfigFile, spec: &BuildSpec) -> Vec<Vec<String>> {
    let base = ResolvedImage {
        name: String::new(),
        id: id.clone(),
        manifest_digest: id.clone(),
        layers: Vec::new(),
        diff_ids: config.rootfs.diff_ids.clone(),
        config: ImageConfig::from(config.config.as_ref()),
    };
    let keys = |pm: Option<PackageManager>| -> Option<Vec<String>> {
        let steps = plan_steps_with(&base, spec, || pm).ok()?;
        Some(steps.into_iter().map(|s| s.key).collect())
    };
    let chains: Option<Vec<Vec<String>>> = if spec.packages.is_empty() {
        keys(None).map(|c| vec![c])
    } else {
        PackageManager::ALL
            .into_iter()
            .map(|pm| keys(Some(pm)))
            .collect()
    };
    chains.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::plan_steps;
    use crate::image::manifest::{RootFs, RunConfig};

    fn keys_of(base: &ResolvedImage, spec: &BuildSpec) -> Vec<String> {
        plan_steps(base, spec)
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect()
    }

    #[test]
    fn the_keys_known_from_the_config_alone_hold_the_keys_of_the_unpacked_image() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sbin")).unwrap();
        std::fs::write(root.path().join("sbin/apk"), b"#!/bin/sh").unwrap();
        let diff_id = Digest::of(b"layer");
        let config = ConfigFile {
            architecture: "amd64".into(),
            os: "linux".into(),
            created: None,
            config: Some(RunConfig {
                env: Some(vec!["PATH=/bin".into(), "LANG=C".into()]),
                ..RunConfig::default()
            }),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![diff_id.clone()],
            },
        };
        let id = Digest::of(b"config");
        let unpacked = ResolvedImage {
            name: "reg/base:1".into(),
            id: id.clone(),
            manifest_digest: Digest::of(b"manifest"),
            layers: vec![root.path().to_path_buf()],
            diff_ids: vec![diff_id],
            config: ImageConfig::from(config.config.as_ref()),
        };
        let spec = BuildSpec {
            packages: vec!["curl".into()],
            setup: vec!["echo one".into(), "echo two".into()],
            env: vec![("A".into(), "1".into())],
            workdir: "/work".into(),
            ..BuildSpec::default()
        };
        // With packages: one chain per package manager, the image's (apk) among them,
        // sharing nothing from the packages step on.
        let chains = early_chains(&id, &config, &spec);
        assert_eq!(chains.len(), PackageManager::ALL.len());
        let real = keys_of(&unpacked, &spec);
        assert_eq!(chains[1], real, "apk is the second package manager");
        assert!(chains
            .iter()
            .enumerate()
            .all(|(i, c)| i == 1 || c[0] != real[0]));
        // Without packages: one chain, the image's.
        let plain = BuildSpec {
            packages: Vec::new(),
            ..spec.clone()
        };
        assert_eq!(
            early_chains(&id, &config, &plain),
            vec![keys_of(&unpacked, &plain)]
        );
        // A plan refused (a bad package name): nothing to look up early.
        let bad = BuildSpec {
            packages: vec!["x; rm -rf /".into()],
            ..spec
        };
        assert!(early_chains(&id, &config, &bad).is_empty());
    }
}
