//! `berth login` / `berth logout`: credentials checked against the registry, then saved where
//! docker saves them (a credential helper named by `credHelpers`/`credsStore`, else the
//! `auths` of docker's config file, written atomically with mode 0600, other keys kept).
//! Reading them back is [`super::credentials`].

use std::path::{Path, PathBuf};

use base64::Engine as _;
use envfile_spec::reference::ImageReference;
use reqwest::header::HeaderMap;
use reqwest::Method;

use super::auth::Credentials;
use super::credentials::{
    docker_config_path, find_key, helper_erase, helper_store, read_config, server_key,
};
use super::error::ImageError;
use super::registry::{RegistryClient, RegistryOptions};

/// Where credentials were saved (or removed from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialStore {
    /// `docker-credential-<name>`.
    Helper(String),
    /// The `auths` of docker's config file.
    File(PathBuf),
}

impl std::fmt::Display for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialStore::Helper(n) => write!(f, "docker-credential-{n}"),
            CredentialStore::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The registry host `input` names (`https://host/`, `host:port`, `docker.io`), checked.
pub fn registry_host(input: &str) -> Result<String, ImageError> {
    let trimmed = input
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix("/v2").unwrap_or(trimmed);
    let host = match trimmed {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io",
        h => h,
    };
    let r = ImageReference::parse(&format!("{host}/berth-login"))?;
    if host.is_empty() || host.contains('/') || r.registry != host {
        return Err(ImageError::Base(format!(
            "`{input}` is not a registry address; give its host name, e.g. ghcr.io or 127.0.0.1:5000"
        )));
    }
    Ok(host.to_string())
}

/// Checks `credentials` against `registry` (as `docker login` does: `GET /v2/`, answering
/// its challenge with them).
pub fn verify(
    registry: &str,
    credentials: &Credentials,
    opts: &RegistryOptions,
) -> Result<(), ImageError> {
    let mut reference = ImageReference::parse(&format!("{registry}/berth-login"))?;
    reference.repository = String::new();
    let client = RegistryClient::with_credentials(&reference, opts, credentials.clone())?;
    let url = format!("{}/v2/", client.base);
    let resp = client
        .request(Method::GET, &url, HeaderMap::new(), None)
        .map_err(|e| match e {
            ImageError::Unauthorized { detail, .. } => ImageError::LoginRefused {
                registry: registry.to_string(),
                detail,
            },
            e => e,
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(client.status_error(&url, resp))
    }
}

fn config_file() -> Result<PathBuf, ImageError> {
    docker_config_path().ok_or_else(|| {
        ImageError::Base(
            "neither DOCKER_CONFIG nor HOME is set: berth cannot tell where docker's config file is; set one of them".into(),
        )
    })
}

/// The helper docker's config names for `registry`, if any.
fn helper_for(cfg: &serde_json::Value, registry: &str) -> Option<String> {
    if let Some(h) = cfg.get("credHelpers").and_then(|h| h.as_object()) {
        if let Some(n) = find_key(h, registry).and_then(|k| h[k].as_str()) {
            return Some(n.to_string());
        }
    }
    cfg.get("credsStore")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn write_config(path: &Path, cfg: &serde_json::Value) -> Result<(), ImageError> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(ImageError::io(dir))?;
        }
    }
    let mut bytes = serde_json::to_vec_pretty(cfg)
        .map_err(|e| ImageError::malformed(path.display().to_string(), e))?;
    bytes.push(b'\n');
    Ok(crate::state::atomic_write(path, &bytes)?)
}

/// Saves `credentials` for `registry` where docker would.
pub fn save(registry: &str, credentials: &Credentials) -> Result<CredentialStore, ImageError> {
    let path = config_file()?;
    let mut cfg = read_config(&path)?.unwrap_or_else(|| serde_json::json!({}));
    if let Some(helper) = helper_for(&cfg, registry) {
        helper_store(&helper, registry, credentials)?;
        return Ok(CredentialStore::Helper(helper));
    }
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| ImageError::CredentialFile {
            path: path.clone(),
            detail: "it is not a JSON object; fix or move it away".into(),
        })?;
    let auths = obj.entry("auths").or_insert_with(|| serde_json::json!({}));
    let auths = auths
        .as_object_mut()
        .ok_or_else(|| ImageError::CredentialFile {
            path: path.clone(),
            detail: "`auths` is not an object; fix or move it away".into(),
        })?;
    let key = find_key(auths, registry)
        .cloned()
        .unwrap_or_else(|| server_key(registry));
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", credentials.username, credentials.password));
    auths.insert(key, serde_json::json!({ "auth": auth }));
    write_config(&path, &cfg)?;
    Ok(CredentialStore::File(path))
}

/// Removes the saved credentials of `registry`; `None` when there were none.
pub fn remove(registry: &str) -> Result<Option<CredentialStore>, ImageError> {
    let path = config_file()?;
    let Some(mut cfg) = read_config(&path)? else {
        return Ok(None);
    };
    let mut removed = None;
    if let Some(helper) = helper_for(&cfg, registry) {
        if helper_erase(&helper, registry)? {
            removed = Some(CredentialStore::Helper(helper));
        }
    }
    let entry = cfg
        .get_mut("auths")
        .and_then(|a| a.as_object_mut())
        .and_then(|auths| {
            let key = find_key(auths, registry)?.clone();
            auths.remove(&key)
        });
    if entry.is_some() {
        write_config(&path, &cfg)?;
        removed.get_or_insert(CredentialStore::File(path));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_addresses_are_hosts() {
        assert_eq!(registry_host("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(registry_host("https://ghcr.io/").unwrap(), "ghcr.io");
        assert_eq!(
            registry_host("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(registry_host("localhost:5000").unwrap(), "localhost:5000");
        for bad in ["", "ghcr.io/team", "not a host", "myhost"] {
            assert!(registry_host(bad).is_err(), "{bad}");
        }
    }
}
