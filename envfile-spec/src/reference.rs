//! OCI image references, parsed the way Docker does it.
//!
//! `debian` → `docker.io/library/debian:latest`; `ghcr.io/o/r:1`; `127.0.0.1:5000/bb@sha256:…`.
//! The first path component is a registry host when it contains a `.` or a `:`, or is
//! `localhost`; otherwise the reference is on Docker Hub.

use std::fmt;

/// The registry used when a reference names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The host that actually serves Docker Hub's API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag used when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageReference {
    /// Registry host, with port when given (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/debian`).
    pub repository: String,
    /// Tag; `None` only when a digest is given without a tag.
    pub tag: Option<String>,
    /// Content digest (`sha256:<64 hex>`), when pinned.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("the image reference is empty")]
    Empty,
    #[error("`{0}` is not a valid repository name: use lowercase letters, digits and separators (`.`, `_`, `__`, `-`, `/`)")]
    InvalidRepository(String),
    #[error(
        "`{0}` is not a valid tag: use up to 128 of [A-Za-z0-9_.-], not starting with `.` or `-`"
    )]
    InvalidTag(String),
    #[error("`{0}` is not a valid digest: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error("`{0}` is not a valid registry host")]
    InvalidRegistry(String),
}

impl ImageReference {
    /// Parses a reference as Docker does, filling in the default registry, `library/` and tag.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace()) {
            return Err(ReferenceError::InvalidRepository(s.to_string()));
        }
        let (name_and_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d)?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = name_and_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (
                    &name_and_tag[..at],
                    Some(name_and_tag[at + 1..].to_string()),
                )
            }
            None => (name_and_tag, None),
        };
        if let Some(t) = &tag {
            validate_tag(t)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                validate_registry(first)?;
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository)?;
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// A repository without tag or digest (`registry.example.com/team/cache`), as a build
    /// cache names one (berth picks a tag per build step): the reference with `tag: None`.
    pub fn parse_repository(input: &str) -> Result<Self, String> {
        let s = input.trim();
        let after_slash = &s[s.rfind('/').map_or(0, |i| i + 1)..];
        if s.contains('@') || after_slash.contains(':') {
            return Err(format!(
                "{s:?} names a tag or digest; a cache is a repository (berth tags one entry per build step), e.g. \"registry.example.com/team/project-cache\""
            ));
        }
        let mut r = Self::parse(s).map_err(|e| e.to_string())?;
        r.tag = None;
        Ok(r)
    }

    /// The host to talk to for this registry's API (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// True for registries on this machine, which are spoken to over plain HTTP by default.
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h);
        host == "localhost" || host.starts_with("127.") || host == "[::1]"
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn validate_digest(d: &str) -> Result<(), ReferenceError> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidDigest(d.to_string()))
    }
}

fn validate_tag(t: &str) -> Result<(), ReferenceError> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag(t.to_string()))
    }
}

fn validate_registry(r: &str) -> Result<(), ReferenceError> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || r.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidRegistry(r.to_string()))
    }
}

fn validate_repository(repo: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidRepository(repo.to_string());
    if repo.is_empty() || repo.len() > 255 {
        return Err(bad());
    }
    for component in repo.split('/') {
        if component.is_empty()
            || !component.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            || !component.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            || !component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap()
    }

    #[test]
    fn short_names_go_to_docker_hub_library() {
        assert_eq!(p("debian").to_string(), "docker.io/library/debian:latest");
        assert_eq!(
            p("debian:bookworm").to_string(),
            "docker.io/library/debian:bookworm"
        );
        assert_eq!(p("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(p("index.docker.io/library/debian").registry, "docker.io");
        assert_eq!(p("debian").api_host(), DOCKER_HUB_API_HOST);
    }

    #[test]
    fn hosts_with_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("127.0.0.1:5000/bb@{d}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "bb");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.manifest_reference(), d);
        assert!(r.is_loopback());
        let r = p(&format!("localhost/x/y:1.0@{d}"));
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("localhost", Some("1.0"))
        );
        assert!(!p("ghcr.io/o/r:1").is_loopback());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(ImageReference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(
            ImageReference::parse("Debian"),
            Err(ReferenceError::InvalidRepository(_))
        ));
        assert!(matches!(
            ImageReference::parse("debian:"),
            Err(ReferenceError::InvalidTag(_))
        ));
        assert!(matches!(
            ImageReference::parse("debian@sha256:abc"),
            Err(ReferenceError::InvalidDigest(_))
        ));
        assert!(matches!(
            ImageReference::parse("a b"),
            Err(ReferenceError::InvalidRepository(_))
        ));
        assert!(matches!(
            ImageReference::parse("host:0/x"),
            Err(ReferenceError::InvalidRegistry(_))
        ));
        assert!(matches!(
            ImageReference::parse("x//y"),
            Err(ReferenceError::InvalidRepository(_))
        ));
    }
}
