//! `ADD --checksum=sha256:… https://…`: a remote file, downloaded only with the checksum it
//! must have (its content is known before the download, so the step's key is the checksum
//! and a cached step downloads nothing). Without `--checksum` a URL is refused.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// The hex of a `sha256:<64 hex>` checksum, or why it is not one.
pub fn parse_checksum(c: &str) -> Result<String, String> {
    match c.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(format!("--checksum={c} is not sha256:<64 hex digits>")),
    }
}

/// The file name a URL's path ends in (`download` when it has none).
pub fn file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.split_once("://").map_or(path, |(_, r)| r);
    match after_host.split_once('/') {
        Some((_, p)) => p
            .rsplit('/')
            .find(|s| !s.is_empty() && *s != "." && *s != "..")
            .unwrap_or("download")
            .to_string(),
        None => "download".into(),
    }
}

/// Downloads `url` (http or https) to `out`, checking that its content hashes to `sha256`
/// (hex). On any failure `out` is removed.
pub fn fetch(url: &str, sha256: &str, out: &Path) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "`{url}`: only http:// and https:// URLs can be added"
        ));
    }
    let result = (|| {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(url)
            .send()
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let mut f = fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = resp
                .read(&mut buf)
                .map_err(|e| format!("cannot download {url}: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        let got = hex::encode(h.finalize());
        if got != sha256 {
            return Err(format!(
                "{url} has checksum sha256:{got}, not the sha256:{sha256} of --checksum; nothing was added"
            ));
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(out);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_names() {
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("md5:{}", "a".repeat(64))).is_err());
        assert_eq!(
            parse_checksum(&format!("sha256:{}", "A".repeat(64))).unwrap(),
            "a".repeat(64)
        );
        assert_eq!(
            file_name("https://x.org/a/b/tool.tar.gz?v=1"),
            "tool.tar.gz"
        );
        assert_eq!(file_name("https://x.org/"), "download");
        assert_eq!(file_name("https://x.org/../.."), "download");
    }
}
