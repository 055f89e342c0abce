//! A client for the OCI distribution API v2 (pull side): manifests, indexes, blobs with
//! resume, anonymous, basic and bearer-token access with the user's registry credentials
//! ([`super::credentials`]). The push side is in [`super::upload`].

use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use envfile_spec::reference::ImageReference;
use reqwest::blocking::{Client, Response};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE, WWW_AUTHENTICATE};
use reqwest::Method;
use reqwest::StatusCode;

use super::auth::{Challenge, Credentials};
use super::blob_store::PartialBlob;
use super::credentials;
use super::digest::Digest;
use super::error::ImageError;
use super::manifest::{Descriptor, MANIFEST_ACCEPT};
use super::progress::TransferProgress;
use crate::host::fault_injection;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Speak plain HTTP even to a registry that is not on loopback.
    pub insecure: bool,
}

/// A manifest or index as fetched, with the digest of its exact bytes.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// One repository of one registry.
pub struct RegistryClient {
    pub(super) http: Client,
    timeouts: RegistryTimeouts,
    pub(super) base: String,
    pub(super) registry: String,
    pub(super) repository: String,
    /// Looked up on the first challenge (a credential helper runs only when needed); set
    /// from the start by [`RegistryClient::with_credentials`].
    credentials: Mutex<Option<Option<Credentials>>>,
    /// Scopes asked of a token service besides the challenge's own (push, mount sources).
    pub(super) scopes: Vec<String>,
    /// The `Authorization` value that last worked (a bearer token or basic credentials).
    authorization: Mutex<Option<String>>,
}

const ATTEMPTS: u32 = 3;

impl RegistryClient {
    /// A client for `reference`'s repository. Loopback registries are spoken to over plain
    /// HTTP. With `insecure`, another registry is tried over HTTPS without certificate checks
    /// first and over plain HTTP when that fails (as Docker's insecure registries are).
    pub fn new(reference: &ImageReference, opts: &RegistryOptions) -> Result<Self, ImageError> {
        Self::with_timeouts(reference, opts, RegistryTimeouts::from_env()?)
    }

    /// [`RegistryClient::new`] with other timeouts than the environment's (a build cache
    /// gives up on a stalled registry sooner than a pull does).
    pub fn with_timeouts(
        reference: &ImageReference,
        opts: &RegistryOptions,
        timeouts: RegistryTimeouts,
    ) -> Result<Self, ImageError> {
        // The blocking client's `timeout` bounds the wait for an answer and then each read
        // of the body on its own (an idle timeout, not a total one: a large layer may take
        // hours, but a registry that goes quiet for `read` fails the pull).
        let http = Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.read)
            .danger_accept_invalid_certs(opts.insecure)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ImageError::Http {
                registry: reference.registry.clone(),
                url: String::new(),
                source,
            })?;
        let host = reference.api_host();
        let base = if reference.is_loopback() {
            format!("http://{host}")
        } else if opts.insecure {
            let https = format!("https://{host}");
            let reachable = http
                .get(format!("{https}/v2/"))
                .timeout(Duration::from_secs(10))
                .send()
                .is_ok();
            if reachable {
                https
            } else {
                format!("http://{host}")
            }
        } else {
            format!("https://{host}")
        };
        Ok(RegistryClient {
            http,
            timeouts,
            base,
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credentials: Mutex::new(None),
            scopes: Vec::new(),
            authorization: Mutex::new(None),
        })
    }

    /// A client that authenticates with `credentials` instead of looking them up (for
    /// `berth login`, which checks them before saving).
    pub fn with_credentials(
        reference: &ImageReference,
        opts: &RegistryOptions,
        credentials: Credentials,
    ) -> Result<Self, ImageError> {
        let c = Self::new(reference, opts)?;
        if let Ok(mut g) = c.credentials.lock() {
            *g = Some(Some(credentials));
        }
        Ok(c)
    }

    /// The user's credentials for this registry, looked up once.
    fn credentials(&self) -> Result<Option<Credentials>, ImageError> {
        let mut g = self
            .credentials
            .lock()
            .map_err(|_| ImageError::Base("credential lookup panicked".into()))?;
        if let Some(c) = &*g {
            return Ok(c.clone());
        }
        let found = credentials::lookup(&self.registry)?;
        *g = Some(found.clone());
        Ok(found)
    }

    /// Where the credentials in use come from, for messages (`None`: anonymous).
    fn credentials_origin(&self) -> Option<String> {
        self.credentials
            .lock()
            .ok()
            .and_then(|g| g.clone().flatten())
            .map(|c| c.origin)
    }

    /// `registry/repository`, for messages.
    pub fn origin(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    pub(super) fn http_err(&self, url: &str, source: reqwest::Error) -> ImageError {
        if source.is_timeout() {
            return self.timeout_err(url, source.is_connect());
        }
        ImageError::Http {
            registry: self.registry.clone(),
            url: url.to_string(),
            source,
        }
    }

    fn timeout_err(&self, url: &str, connecting: bool) -> ImageError {
        let (what, after, var) = if connecting {
            (
                "accept a connection",
                self.timeouts.connect,
                CONNECT_TIMEOUT_VAR,
            )
        } else {
            ("send anything", self.timeouts.read, READ_TIMEOUT_VAR)
        };
        ImageError::RegistryTimeout {
            registry: self.registry.clone(),
            url: url.to_string(),
            what,
            seconds: after.as_secs_f64(),
            var,
        }
    }

    /// GET with the current authorization; on 401 answers the challenge once and retries.
    fn get(&self, url: &str, headers: HeaderMap) -> Result<Response, ImageError> {
        self.request(Method::GET, url, headers, None)
    }

    /// A request with the current authorization; on 401 answers the challenge once and
    /// sends it again (with the same body).
    pub(super) fn request(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<&[u8]>,
    ) -> Result<Response, ImageError> {
        let send = |auth: Option<&String>| {
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            // Credentials go to the registry only (an upload URL may point elsewhere).
            if let Some(a) = auth.filter(|_| self.same_origin(url)) {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(b) = body {
                req = req.body(b.to_vec());
            }
            req.send().map_err(|e| self.http_err(url, e))
        };
        let current = self.authorization.lock().map(|g| g.clone()).unwrap_or(None);
        let resp = send(current.as_ref())?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse);
        let Some(challenge) = challenge else {
            return Err(self.unauthorized("the registry asked for credentials without saying how"));
        };
        let auth = match challenge.scheme.as_str() {
            "bearer" => format!("Bearer {}", self.fetch_token(&challenge)?),
            "basic" => match self.credentials()? {
                Some(c) => c.basic_header(),
                None => {
                    return Err(self.unauthorized("the registry needs a user name and password"))
                }
            },
            other => {
                return Err(
                    self.unauthorized(&format!("unsupported authentication scheme `{other}`"))
                )
            }
        };
        if let Ok(mut g) = self.authorization.lock() {
            *g = Some(auth.clone());
        }
        let resp = send(Some(&auth))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            let detail = match (resp.status(), self.credentials_origin()) {
                (StatusCode::UNAUTHORIZED, Some(origin)) => format!(
                    "the user name and password from {origin} were refused: wrong password, or expired"
                ),
                (StatusCode::FORBIDDEN, Some(origin)) => format!(
                    "the user of {origin} is not allowed to {} it",
                    if method == Method::GET || method == Method::HEAD { "read" } else { "write" }
                ),
                (status, None) => format!("still {} without credentials", status.as_u16()),
                (status, Some(_)) => format!("still {} after authenticating", status.as_u16()),
            };
            return Err(self.unauthorized(&detail));
        }
        Ok(resp)
    }

    pub(super) fn unauthorized(&self, detail: &str) -> ImageError {
        ImageError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            detail: detail.to_string(),
        }
    }

    /// The token flow: GET realm?service=…&scope=…, with basic credentials when known.
    fn fetch_token(&self, c: &Challenge) -> Result<String, ImageError> {
        let realm = c
            .params
            .get("realm")
            .ok_or_else(|| self.unauthorized("the bearer challenge names no realm"))?;
        let mut scopes: Vec<String> = Vec::new();
        match c.params.get("scope") {
            Some(s) => scopes.extend(s.split(' ').map(str::to_string)),
            None if !self.repository.is_empty() => {
                scopes.push(format!("repository:{}:pull", self.repository))
            }
            None => {}
        }
        for s in &self.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(s) = c.params.get("service") {
            query.push(("service", s.as_str()));
        }
        let mut req = self.http.get(realm).query(&query);
        let credentials = self.credentials()?;
        if let Some(cred) = &credentials {
            req = req.header(AUTHORIZATION, cred.basic_header());
        }
        let resp = req.send().map_err(|e| self.http_err(realm, e))?;
        if !resp.status().is_success() {
            let why = match (&credentials, resp.status().as_u16()) {
                (Some(c), 401 | 403) => format!(
                    "the token service {realm} refused the user name and password from {}: wrong password, or expired",
                    c.origin
                ),
                (_, status) => format!("the token service {realm} answered {status}"),
            };
            return Err(self.unauthorized(&why));
        }
        let v: serde_json::Value = resp.json().map_err(|e| self.http_err(realm, e))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                self.unauthorized(&format!("the token service {realm} returned no token"))
            })
    }

    pub(super) fn status_error(&self, url: &str, resp: Response) -> ImageError {
        let status = resp.status().as_u16();
        let mut body = String::new();
        let _ = resp.take(2048).read_to_string(&mut body);
        ImageError::RegistryStatus {
            registry: self.registry.clone(),
            url: url.to_string(),
            status,
            body: body.trim().to_string(),
        }
    }

    /// Fetches a manifest or index by tag or digest. When `reference` is a digest, the bytes
    /// are verified against it.
    pub fn manifest(&self, reference: &str) -> Result<FetchedManifest, ImageError> {
        let url = format!(
            "{}/v2/{}/manifests/{}",
            self.base, self.repository, reference
        );
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self.get(&url, h)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ImageError::ManifestNotFound {
                registry: self.registry.clone(),
                reference: format!("{}:{}", self.repository, reference),
            });
        }
        if !resp.status().is_success() {
            return Err(self.status_error(&url, resp));
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        resp.take(16 << 20)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io(&url)(e))?;
        let digest = Digest::of(&bytes);
        if reference.starts_with("sha256:") && digest.as_str() != reference {
            return Err(ImageError::DigestMismatch {
                digest: reference.to_string(),
                origin: self.origin(),
                actual: digest.to_string(),
            });
        }
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetches a small blob (a config) into memory, verified.
    pub fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        const LIMIT: u64 = 16 << 20;
        if desc.size > LIMIT {
            return Err(ImageError::malformed(
                format!("config {} of {}", desc.digest, self.origin()),
                format!(
                    "it claims {} bytes; berth reads configs up to {LIMIT}",
                    desc.size
                ),
            ));
        }
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
        let resp = self.get(&url, HeaderMap::new())?;
        if !resp.status().is_success() {
            return Err(self.status_error(&url, resp));
        }
        let mut bytes = Vec::new();
        resp.take(desc.size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io(&url)(e))?;
        if bytes.len() as u64 != desc.size {
            return Err(ImageError::SizeMismatch {
                digest: desc.digest.to_string(),
                origin: self.origin(),
                expected: desc.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                digest: desc.digest.to_string(),
                origin: self.origin(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Downloads a blob into `partial`, resuming from what it already holds with a `Range`
    /// request, retrying a broken transfer a few times. The caller commits (verifies) it.
    pub fn blob_into(
        &self,
        desc: &Descriptor,
        partial: &mut PartialBlob,
        progress: &mut dyn TransferProgress,
    ) -> Result<(), ImageError> {
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
        progress.advance(partial.len());
        let mut attempt = 0;
        loop {
            attempt += 1;
            if partial.len() == desc.size {
                return Ok(());
            }
            let mut h = HeaderMap::new();
            if !partial.is_empty() {
                let v = format!("bytes={}-", partial.len());
                h.insert(RANGE, HeaderValue::from_str(&v).expect("ascii"));
            }
            let resp = self.get(&url, h)?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let start = resp
                        .headers()
                        .get(reqwest::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(partial.len()) {
                        // Not the range asked for: start over.
                        partial.restart()?;
                        continue;
                    }
                }
                StatusCode::OK => {
                    if !partial.is_empty() {
                        partial.restart()?;
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    partial.restart()?;
                    continue;
                }
                _ => return Err(self.status_error(&url, resp)),
            }
            match self.copy_body(resp, partial, progress) {
                Ok(()) => return Ok(()),
                Err(e @ ImageError::Io { .. }) if attempt < ATTEMPTS => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn copy_body(
        &self,
        mut resp: Response,
        partial: &mut PartialBlob,
        progress: &mut dyn TransferProgress,
    ) -> Result<(), ImageError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match resp.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A registry that went quiet: not retried (it is not a hiccup).
                Err(e) if is_timeout(&e) => {
                    let url = format!(
                        "{}/v2/{}/blobs/{}",
                        self.base,
                        self.repository,
                        partial.digest()
                    );
                    return Err(self.timeout_err(&url, false));
                }
                Err(e) => {
                    return Err(ImageError::Io {
                        path: format!("{} (blob {})", self.origin(), partial.digest()).into(),
                        source: e,
                    })
                }
            };
            partial.append(&buf[..n])?;
            progress.advance(n as u64);
            if fault_injection::armed() {
                partial.flush()?;
                fault_injection::checkpoint("blob-midway");
            }
        }
    }
}

/// Environment variable: seconds to wait for a registry to accept a connection.
pub const CONNECT_TIMEOUT_VAR: &str = "BERTH_REGISTRY_CONNECT_TIMEOUT";
/// Environment variable: seconds a registry may stay silent (before answering a request, or
/// in the middle of a download) before berth gives up.
pub const READ_TIMEOUT_VAR: &str = "BERTH_REGISTRY_READ_TIMEOUT";

/// How long berth waits for a registry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RegistryTimeouts {
    pub connect: Duration,
    /// Idle time allowed between two reads (and before the answer's headers).
    pub read: Duration,
}

impl Default for RegistryTimeouts {
    fn default() -> Self {
        RegistryTimeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(60),
        }
    }
}

impl RegistryTimeouts {
    /// The defaults, overridden by [`CONNECT_TIMEOUT_VAR`] / [`READ_TIMEOUT_VAR`].
    pub fn from_env() -> Result<Self, ImageError> {
        let d = RegistryTimeouts::default();
        Ok(RegistryTimeouts {
            connect: seconds_var(CONNECT_TIMEOUT_VAR, std::env::var(CONNECT_TIMEOUT_VAR).ok())?
                .unwrap_or(d.connect),
            read: seconds_var(READ_TIMEOUT_VAR, std::env::var(READ_TIMEOUT_VAR).ok())?
                .unwrap_or(d.read),
        })
    }
}

/// A positive number of seconds (fractions allowed), or `None` when unset or empty.
fn seconds_var(var: &'static str, value: Option<String>) -> Result<Option<Duration>, ImageError> {
    let Some(v) = value.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(ImageError::InvalidSetting {
            var,
            value: v,
            expected: "a number of seconds above 0 and at most 86400, e.g. 30 or 2.5",
        }),
    }
}

/// Whether a read error of a response body is reqwest's idle-read timeout.
fn is_timeout(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|r| r as _);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            if r.is_timeout() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_variables_take_positive_seconds_and_name_a_bad_value() {
        assert_eq!(seconds_var("V", None).unwrap(), None);
        assert_eq!(seconds_var("V", Some(" ".into())).unwrap(), None);
        assert_eq!(
            seconds_var("V", Some("2".into())).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            seconds_var("V", Some("0.5".into())).unwrap(),
            Some(Duration::from_millis(500))
        );
        for bad in ["0", "-1", "ten", "inf", "1e9"] {
            let e = seconds_var("BERTH_X", Some(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("BERTH_X") && e.contains(bad), "{e}");
        }
    }
}
