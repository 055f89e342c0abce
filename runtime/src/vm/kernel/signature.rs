//! Authenticates a mirror's `Release` index before any sha256 in it is trusted: `InRelease`
//! (clearsigned) or `Release` + `Release.gpg` (detached), checked by `gpgv` against the
//! Debian archive keyring (`/usr/share/keyrings/debian-archive-keyring.gpg`, package
//! `debian-archive-keyring`) or the keyrings named in `BERTH_DEBIAN_KEYRING`.
//!
//! Like apt, an index is accepted when at least one of its signatures is good and made by a
//! key of the keyrings (`VALIDSIG`); signatures by keys the keyrings lack are ignored, and a
//! bad signature (`BADSIG`) refuses the file. For a clearsigned file the text used is the
//! one gpgv prints as signed, never the raw download, so nothing outside the signature can
//! slip in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::KernelError;

/// The keyring apt uses for Debian's archive.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The keyrings trusted for mirror indexes: `BERTH_DEBIAN_KEYRING` (`:`-separated files),
/// else the Debian archive keyring.
pub fn keyrings_from_env() -> Vec<PathBuf> {
    match std::env::var_os("BERTH_DEBIAN_KEYRING") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![PathBuf::from(DEBIAN_KEYRING)],
    }
}

/// What gpgv reported about the signatures of one file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    /// Fingerprints of good signatures by trusted keys.
    valid: Vec<String>,
    /// Key ids of bad signatures.
    bad: Vec<String>,
    /// Key ids of signatures by keys the keyrings do not have.
    unknown: Vec<String>,
    /// Good signatures by expired or revoked keys.
    unusable: Vec<String>,
}

fn parse_status(status: &str) -> Verdict {
    let mut v = Verdict::default();
    let mut valid = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(kw), Some(id)) = (words.next(), words.next()) else {
            continue;
        };
        let id = id.to_string();
        match kw {
            "VALIDSIG" => valid.push(id),
            "BADSIG" => v.bad.push(id),
            "NO_PUBKEY" => v.unknown.push(id),
            "EXPKEYSIG" | "REVKEYSIG" | "EXPSIG" => v.unusable.push(id),
            _ => {}
        }
    }
    // gpgv reports a good signature by an expired or revoked key as VALIDSIG too; apt does
    // not count it, nor does berth (VALIDSIG names the fingerprint, the others the key id).
    v.valid = valid
        .into_iter()
        .filter(|fpr: &String| !v.unusable.iter().any(|k| fpr.ends_with(k.as_str())))
        .collect();
    v
}

fn describe(keyrings: &[PathBuf]) -> String {
    keyrings
        .iter()
        .map(|k| k.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unsigned(url: &str, keyrings: &[PathBuf], reason: String) -> KernelError {
    KernelError::Signature {
        url: url.to_string(),
        keyrings: describe(keyrings),
        reason,
    }
}

/// Runs gpgv on `files` (in a private temporary folder) and judges its status output.
/// Returns what gpgv wrote with `--output` (the signed text of a clearsigned file).
fn gpgv(
    url: &str,
    keyrings: &[PathBuf],
    files: &[(&str, &[u8])],
    clearsigned: bool,
) -> Result<Vec<u8>, KernelError> {
    if keyrings.is_empty() {
        return Err(unsigned(url, keyrings, "no keyring is configured".into()));
    }
    if let Some(missing) = keyrings.iter().find(|k| !k.is_file()) {
        return Err(KernelError::Keyring {
            path: missing.clone(),
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-gpgv-")
        .tempdir()
        .map_err(|e| KernelError::Io {
            path: std::env::temp_dir(),
            source: e,
        })?;
    let mut paths = Vec::new();
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| KernelError::Io {
                path: p.clone(),
                source: e,
            })?;
        paths.push(p);
    }
    let out = dir.path().join("signed");
    let mut cmd = Command::new("gpgv");
    // gpgv wants a home for its trustdb lookups even when it has nothing to say there.
    cmd.env("GNUPGHOME", dir.path()).arg("--status-fd").arg("1");
    for k in keyrings {
        cmd.arg("--keyring").arg(absolute(k));
    }
    if clearsigned {
        cmd.arg("--output").arg(&out);
    }
    cmd.args(&paths).stdin(Stdio::null());
    let o = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KernelError::NoGpgv {
                url: url.to_string(),
            }
        } else {
            KernelError::Io {
                path: "gpgv".into(),
                source: e,
            }
        }
    })?;
    let v = parse_status(&String::from_utf8_lossy(&o.stdout));
    if !v.bad.is_empty() {
        return Err(unsigned(
            url,
            keyrings,
            format!(
                "its signature by key {} does not match its content (the file was altered or damaged in transit)",
                v.bad.join(", ")
            ),
        ));
    }
    if v.valid.is_empty() {
        let reason = if !v.unusable.is_empty() {
            format!(
                "it is signed only by expired or revoked keys ({})",
                v.unusable.join(", ")
            )
        } else if !v.unknown.is_empty() {
            format!(
                "it is signed only by keys the keyrings do not have ({})",
                v.unknown.join(", ")
            )
        } else {
            format!(
                "gpgv found no valid signature: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )
        };
        return Err(unsigned(url, keyrings, reason));
    }
    if !clearsigned {
        return Ok(Vec::new());
    }
    std::fs::read(&out).map_err(|e| KernelError::Io {
        path: out.clone(),
        source: e,
    })
}

/// gpgv takes a keyring without a `/` as a name under its home: make it a path.
fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The signed text of a clearsigned `InRelease` fetched from `url`.
pub fn verify_clearsigned(
    url: &str,
    data: &[u8],
    keyrings: &[PathBuf],
) -> Result<String, KernelError> {
    let signed = gpgv(url, keyrings, &[("InRelease", data)], true)?;
    String::from_utf8(signed).map_err(|_| KernelError::Index {
        url: url.to_string(),
        reason: "the signed text is not UTF-8".into(),
    })
}

/// Checks `Release` (fetched from `url`) against its detached signature `Release.gpg`.
pub fn verify_detached(
    url: &str,
    release: &[u8],
    signature: &[u8],
    keyrings: &[PathBuf],
) -> Result<(), KernelError> {
    gpgv(
        url,
        keyrings,
        &[("Release.gpg", signature), ("Release", release)],
        false,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    //! Fixtures in `testdata/` were made once by `testdata/make-fixtures.sh` (a throw-away
    //! test key, committed public half only).
    use super::*;

    fn testdata(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/vm/kernel/testdata")
                .join(name),
        )
        .unwrap()
    }

    fn trusted() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vm/kernel/testdata/trusted.gpg")]
    }

    fn have_gpgv() -> bool {
        Command::new("gpgv").arg("--version").output().is_ok()
    }

    #[test]
    fn a_good_signature_is_accepted_and_yields_the_signed_text() {
        if !have_gpgv() {
            eprintln!("skipping: gpgv is missing (apt-get install gpgv)");
            return;
        }
        let text =
            verify_clearsigned("http://m/InRelease", &testdata("InRelease"), &trusted()).unwrap();
        assert_eq!(text.as_bytes(), testdata("Release"));
        assert!(super::super::archive::release_checksums(&text)
            .contains_key("main/binary-amd64/Packages.xz"));
        verify_detached(
            "http://m/Release",
            &testdata("Release"),
            &testdata("Release.gpg"),
            &trusted(),
        )
        .unwrap();
    }

    #[test]
    fn tampered_indexes_are_refused() {
        if !have_gpgv() {
            eprintln!("skipping: gpgv is missing (apt-get install gpgv)");
            return;
        }
        let changed = |data: Vec<u8>| {
            String::from_utf8(data)
                .unwrap()
                .replacen(" 1234 ", " 1235 ", 1)
                .into_bytes()
        };
        let e = verify_clearsigned(
            "http://m/InRelease",
            &changed(testdata("InRelease")),
            &trusted(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("http://m/InRelease is not signed by a trusted key"),
            "{msg}"
        );
        assert!(msg.contains("does not match its content"), "{msg}");
        assert!(msg.contains("trusted.gpg"), "{msg}");
        let e = verify_detached(
            "http://m/Release",
            &changed(testdata("Release")),
            &testdata("Release.gpg"),
            &trusted(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not match its content"), "{e}");
        // Text added around the signed part is not part of what is returned.
        let mut padded = b"SHA256:\n ffff 1 main/binary-amd64/Packages.xz\n\n".to_vec();
        padded.extend(testdata("InRelease"));
        padded.extend(b"\nSHA256:\n ffff 1 main/binary-amd64/Packages.xz\n");
        if let Ok(text) = verify_clearsigned("http://m/InRelease", &padded, &trusted()) {
            assert_eq!(text.as_bytes(), testdata("Release"));
        }
    }

    #[test]
    fn unknown_keys_and_missing_keyrings_are_refused() {
        if !have_gpgv() {
            eprintln!("skipping: gpgv is missing (apt-get install gpgv)");
            return;
        }
        let e = verify_clearsigned(
            "http://m/InRelease",
            &testdata("InRelease.unknown"),
            &trusted(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("signed only by keys the keyrings do not have"),
            "{e}"
        );
        let e =
            verify_clearsigned("http://m/InRelease", &testdata("Release"), &trusted()).unwrap_err();
        assert!(e.to_string().contains("not signed by a trusted key"), "{e}");
        let e = verify_clearsigned(
            "http://m/InRelease",
            &testdata("InRelease"),
            &[PathBuf::from("/nonexistent/keyring.gpg")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/keyring.gpg"), "{e}");
        assert!(e.to_string().contains("BERTH_DEBIAN_KEYRING"), "{e}");
    }

    #[test]
    fn status_lines_are_judged_like_apt() {
        let v = parse_status(
            "[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 6ED0E7B82643E131 1 8 01 1 9 4CB5\n[GNUPG:] NO_PUBKEY 6ED0E7B82643E131\n[GNUPG:] GOODSIG F8D2585B8783D481 Debian\n[GNUPG:] VALIDSIG 4D64FEC119C2029067D6E791F8D2585B8783D481 2026-07-11\n",
        );
        assert_eq!(v.valid, vec!["4D64FEC119C2029067D6E791F8D2585B8783D481"]);
        assert_eq!(v.unknown, vec!["6ED0E7B82643E131"]);
        assert!(v.bad.is_empty());
        let expired = parse_status(
            "[GNUPG:] EXPKEYSIG F8D2585B8783D481 Debian\n[GNUPG:] VALIDSIG 4D64FEC119C2029067D6E791F8D2585B8783D481 2026-07-11\n",
        );
        assert!(expired.valid.is_empty(), "{expired:?}");
        assert_eq!(expired.unusable, vec!["F8D2585B8783D481"]);
    }
}
