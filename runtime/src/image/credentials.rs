//! Where registry credentials come from, for pulls and pushes alike, read as docker and
//! podman read them:
//!
//! 1. docker's client config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
//!    `credHelpers.<registry>` (a `docker-credential-<name>` program), else an `auths` entry
//!    (`auth`: base64 of `user:password`, or `username`/`password`), else `credsStore` (a
//!    helper for every registry);
//! 2. podman's auth file: `$REGISTRY_AUTH_FILE` when set, else
//!    `$XDG_RUNTIME_DIR/containers/auth.json`, then `~/.config/containers/auth.json`
//!    (`auths` as in docker's file).
//!
//! Credentials are never printed ([`Credentials`]'s `Debug` hides the password) and never
//! written anywhere but those files (see [`super::login`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::auth::Credentials;
use super::error::ImageError;

/// Docker Hub's key in docker's files (its legacy v1 address).
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Where docker keeps its client config: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// podman's auth files, in the order podman reads them.
pub fn podman_auth_paths() -> Vec<PathBuf> {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(f)];
    }
    let mut out = Vec::new();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(d).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(h).join(".config/containers/auth.json"));
    }
    out
}

/// The key docker's files use for `registry` (and the server URL given to helpers).
pub fn server_key(registry: &str) -> String {
    if registry == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// The host a key of an `auths`/`credHelpers` map names (keys may be URLs).
fn key_host(key: &str) -> &str {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

/// The key of `map` naming `registry`, if any.
pub fn find_key<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    registry: &str,
) -> Option<&'a String> {
    map.keys().find(|k| key_host(k) == registry)
}

/// Credentials for `registry`, from the first source that has them (see the module docs).
pub fn lookup(registry: &str) -> Result<Option<Credentials>, ImageError> {
    if let Some(path) = docker_config_path() {
        if let Some(cfg) = read_config(&path)? {
            if let Some(c) = from_docker_config(&cfg, registry, &path)? {
                return Ok(Some(c));
            }
        }
    }
    for path in podman_auth_paths() {
        if let Some(cfg) = read_config(&path)? {
            if let Some(c) = from_auths(&cfg, registry, &path.display().to_string())? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// A config file as JSON, `None` when it does not exist.
pub fn read_config(path: &Path) -> Result<Option<serde_json::Value>, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(path)(e)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(serde_json::json!({})));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ImageError::CredentialFile {
            path: path.to_path_buf(),
            detail: format!("it is not valid JSON ({e})"),
        })
}

/// docker's order: the registry's own helper, its `auths` entry, the default store.
pub fn from_docker_config(
    cfg: &serde_json::Value,
    registry: &str,
    path: &Path,
) -> Result<Option<Credentials>, ImageError> {
    if let Some(helpers) = cfg.get("credHelpers").and_then(|h| h.as_object()) {
        if let Some(name) = find_key(helpers, registry).and_then(|k| helpers[k].as_str()) {
            return helper_get(name, registry);
        }
    }
    if let Some(c) = from_auths(cfg, registry, &path.display().to_string())? {
        return Ok(Some(c));
    }
    if let Some(store) = cfg.get("credsStore").and_then(|s| s.as_str()) {
        if !store.is_empty() {
            return helper_get(store, registry);
        }
    }
    Ok(None)
}

/// The `auths` entry for `registry`: `auth` (base64 `user:password`) or `username` and
/// `password`. An entry without either (docker leaves `{}` when a store holds the secret)
/// is no credentials.
pub fn from_auths(
    cfg: &serde_json::Value,
    registry: &str,
    origin: &str,
) -> Result<Option<Credentials>, ImageError> {
    let Some(auths) = cfg.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let Some(entry) = find_key(auths, registry).map(|k| &auths[k]) else {
        return Ok(None);
    };
    let bad = |detail: &str| ImageError::CredentialFile {
        path: PathBuf::from(origin),
        detail: format!(
            "the entry for {registry} {detail}; log in again with `berth login {registry}`"
        ),
    };
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("has an `auth` that is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("has an `auth` that is not text"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad("has an `auth` without `user:password`"))?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
            origin: origin.to_string(),
        }));
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
            origin: origin.to_string(),
        })),
        _ => Ok(None),
    }
}

/// A credential helper's program name, refusing names that would run another program
/// (a path).
fn helper_program(name: &str) -> Result<String, ImageError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(format!("docker-credential-{name}"))
    } else {
        Err(ImageError::CredentialHelper {
            helper: name.to_string(),
            detail: "is not a valid helper name (letters, digits, `.`, `_`, `-`); fix credsStore/credHelpers in the docker config".into(),
        })
    }
}

/// Runs `docker-credential-<name> <action>` with `input` on stdin; returns its exit status
/// success and stdout.
fn run_helper(name: &str, action: &str, input: &[u8]) -> Result<(bool, String), ImageError> {
    let program = helper_program(name)?;
    let err = |detail: String| ImageError::CredentialHelper {
        helper: program.clone(),
        detail,
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                err("is not installed (not on PATH); install it, or remove it from credsStore/credHelpers in the docker config".into())
            } else {
                err(format!("cannot be started: {e}"))
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its input is judged by its answer below.
        let _ = stdin.write_all(input);
    }
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.by_ref().take(1 << 20).read_to_string(&mut out);
    }
    let mut errout = String::new();
    if let Some(mut se) = child.stderr.take() {
        let _ = se.by_ref().take(4096).read_to_string(&mut errout);
    }
    let status = child
        .wait()
        .map_err(|e| err(format!("did not finish: {e}")))?;
    if !status.success() && out.trim().is_empty() {
        out = errout;
    }
    Ok((status.success(), out))
}

/// `docker-credential-<name> get`: the credentials it holds for `registry`, `None` when it
/// has none.
pub fn helper_get(name: &str, registry: &str) -> Result<Option<Credentials>, ImageError> {
    let server = server_key(registry);
    let (ok, out) = run_helper(name, "get", format!("{server}\n").as_bytes())?;
    if !ok {
        if out.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(ImageError::CredentialHelper {
            helper: format!("docker-credential-{name}"),
            detail: format!(
                "failed to give the credentials for {registry}: {}",
                first_line(&out)
            ),
        });
    }
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|_| ImageError::CredentialHelper {
            helper: format!("docker-credential-{name}"),
            detail: format!("answered something that is not JSON for {registry}"),
        })?;
    let username = v.get("Username").and_then(|u| u.as_str()).unwrap_or("");
    let secret = v.get("Secret").and_then(|s| s.as_str()).unwrap_or("");
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: username.to_string(),
        password: secret.to_string(),
        origin: format!("docker-credential-{name}"),
    }))
}

/// `docker-credential-<name> store`.
pub fn helper_store(name: &str, registry: &str, c: &Credentials) -> Result<(), ImageError> {
    let input = serde_json::json!({
        "ServerURL": server_key(registry),
        "Username": c.username,
        "Secret": c.password,
    });
    let (ok, out) = run_helper(name, "store", input.to_string().as_bytes())?;
    if ok {
        Ok(())
    } else {
        Err(ImageError::CredentialHelper {
            helper: format!("docker-credential-{name}"),
            detail: format!("failed to store the credentials: {}", first_line(&out)),
        })
    }
}

/// `docker-credential-<name> erase`; false when it held nothing for `registry`.
pub fn helper_erase(name: &str, registry: &str) -> Result<bool, ImageError> {
    let (ok, out) = run_helper(
        name,
        "erase",
        format!("{}\n", server_key(registry)).as_bytes(),
    )?;
    if ok {
        Ok(true)
    } else if out.to_ascii_lowercase().contains("not found") {
        Ok(false)
    } else {
        Err(ImageError::CredentialHelper {
            helper: format!("docker-credential-{name}"),
            detail: format!("failed to erase the credentials: {}", first_line(&out)),
        })
    }
}

fn first_line(s: &str) -> &str {
    let l = s.trim().lines().next().unwrap_or("(no message)");
    &l[..l.len().min(300)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_auths() {
        let cfg: serde_json::Value = serde_json::from_slice(br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"ghcr.io":{"username":"a","password":"b"},"quay.io":{}}}"#).unwrap();
        let p = Path::new("/cfg.json");
        let c = from_docker_config(&cfg, "docker.io", p).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pass"));
        assert_eq!(c.origin, "/cfg.json");
        assert_eq!(
            from_docker_config(&cfg, "ghcr.io", p)
                .unwrap()
                .unwrap()
                .username,
            "a"
        );
        assert!(from_docker_config(&cfg, "quay.io", p).unwrap().is_none());
        assert!(from_docker_config(&cfg, "example.com", p)
            .unwrap()
            .is_none());
        assert!(!format!("{c:?}").contains("pass"));
    }

    #[test]
    fn a_broken_auth_entry_names_the_file_and_registry_but_not_its_content() {
        let cfg: serde_json::Value =
            serde_json::from_slice(br#"{"auths":{"r.example":{"auth":"%%secret%%"}}}"#).unwrap();
        let e = from_auths(&cfg, "r.example", "/x.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x.json") && e.contains("r.example") && e.contains("berth login"),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn helper_names_cannot_be_paths() {
        for bad in ["../../bin/sh", "a/b", "", ".hidden", "x y"] {
            assert!(helper_program(bad).is_err(), "{bad}");
        }
        assert_eq!(helper_program("pass").unwrap(), "docker-credential-pass");
        assert_eq!(
            helper_program("ecr-login").unwrap(),
            "docker-credential-ecr-login"
        );
    }

    #[test]
    fn docker_hub_keys_match_docker_io() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(server_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_key("ghcr.io"), "ghcr.io");
    }
}
