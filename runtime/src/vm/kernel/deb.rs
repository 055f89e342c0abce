//! Unpacks a kernel .deb in Rust: the `ar` container, then `data.tar.{xz,zst,gz}`, keeping
//! `boot/vmlinuz-*` and `lib/modules/<version>/`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::KernelError;

/// Members `(name, bytes)` of an `ar` archive.
pub fn ar_members(data: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut rest = data
        .strip_prefix(b"!<arch>\n")
        .ok_or("not an ar archive (bad magic)")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 {
            return Err("truncated ar member header".into());
        }
        let (hdr, body) = rest.split_at(60);
        if &hdr[58..60] != b"`\n" {
            return Err("corrupt ar member header".into());
        }
        let name = String::from_utf8_lossy(&hdr[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(&hdr[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("bad ar member size")?;
        if body.len() < size {
            return Err(format!("ar member {name} is truncated"));
        }
        out.push((name, &body[..size]));
        let next = (size + 1) & !1;
        rest = &body[next.min(body.len())..];
    }
    Ok(out)
}

/// What a kernel package held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedKernel {
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The `lib/modules/<version>` folder.
    pub modules: PathBuf,
}

fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Unpacks `deb` into `dest`: `dest/vmlinuz` and `dest/modules/`.
pub fn unpack_kernel_deb(deb: &[u8], dest: &Path) -> Result<UnpackedKernel, KernelError> {
    let bad = |reason: String| KernelError::Package { reason };
    let members = ar_members(deb).map_err(bad)?;
    let (name, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("data.tar"))
        .ok_or_else(|| bad("no data.tar member".into()))?;
    let reader: Box<dyn Read> = if name.ends_with(".xz") {
        Box::new(xz2::read::XzDecoder::new(*data))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(*data).map_err(|e| bad(e.to_string()))?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(*data))
    } else {
        Box::new(*data)
    };
    let mut archive = tar::Archive::new(reader);
    let mut version = None;
    let modules_root = dest.join("modules");
    std::fs::create_dir_all(&modules_root).map_err(|e| bad(e.to_string()))?;
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let Some(rel) = safe_relative(&path) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let rel_s = rel.to_string_lossy().to_string();
        if let Some(v) = rel_s.strip_prefix("boot/vmlinuz-") {
            if kind.is_file() {
                version = Some(v.to_string());
                entry
                    .unpack(dest.join("vmlinuz"))
                    .map_err(|e| bad(e.to_string()))?;
            }
            continue;
        }
        let under = rel_s
            .strip_prefix("lib/modules/")
            .or_else(|| rel_s.strip_prefix("usr/lib/modules/"));
        let Some(under) = under else { continue };
        // Drop the version folder itself: modules/<file> mirrors lib/modules/<version>/<file>.
        let Some((_, inner)) = under.split_once('/') else {
            continue;
        };
        if inner.is_empty() {
            continue;
        }
        let target = modules_root.join(inner);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| bad(e.to_string()))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
            }
            entry.unpack(&target).map_err(|e| bad(e.to_string()))?;
        }
        // Symlinks (build/source → headers) are not needed in a VM.
    }
    let version = version.ok_or_else(|| {
        bad("no boot/vmlinuz-* in the package: is it a kernel image package?".into())
    })?;
    Ok(UnpackedKernel {
        version,
        vmlinuz: dest.join("vmlinuz"),
        modules: modules_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            out.extend(
                format!(
                    "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                    name,
                    0,
                    0,
                    0,
                    100644,
                    data.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn ar_parsing_and_errors() {
        let a = ar(&[("debian-binary", b"2.0\n"), ("odd", b"abc")]);
        let m = ar_members(&a).unwrap();
        assert_eq!(m[0], ("debian-binary".to_string(), &b"2.0\n"[..]));
        assert_eq!(m[1].1, b"abc");
        assert!(ar_members(b"garbage").is_err());
        assert!(ar_members(&a[..a.len() - 2]).is_err());
        assert!(ar_members(&a[..20]).is_err());
    }

    #[test]
    fn unpacks_kernel_and_modules_from_a_deb() {
        let mut tar_bytes = Vec::new();
        {
            let mut b = tar::Builder::new(&mut tar_bytes);
            let mut add = |path: &str, data: &[u8]| {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, path, data).unwrap();
            };
            add("./boot/vmlinuz-6.1.0-9-cloud-amd64", b"KERNEL");
            add("./boot/config-6.1.0-9-cloud-amd64", b"CONFIG");
            add(
                "./lib/modules/6.1.0-9-cloud-amd64/modules.dep",
                b"kernel/a.ko:\n",
            );
            add("./lib/modules/6.1.0-9-cloud-amd64/kernel/a.ko", b"MOD");
            add("./usr/share/doc/x", b"doc");
            b.finish().unwrap();
        }
        let mut xz = Vec::new();
        std::io::Write::write_all(&mut xz2::write::XzEncoder::new(&mut xz, 1), &tar_bytes).unwrap();
        let deb = ar(&[
            ("debian-binary", b"2.0\n"),
            ("control.tar.xz", b""),
            ("data.tar.xz", &xz),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let k = unpack_kernel_deb(&deb, dir.path()).unwrap();
        assert_eq!(k.version, "6.1.0-9-cloud-amd64");
        assert_eq!(std::fs::read(&k.vmlinuz).unwrap(), b"KERNEL");
        assert_eq!(
            std::fs::read(k.modules.join("kernel/a.ko")).unwrap(),
            b"MOD"
        );
        assert!(k.modules.join("modules.dep").exists());
        assert!(!dir.path().join("usr").exists());

        let not_kernel = ar(&[("data.tar", &[0u8; 1024][..])]);
        let e = unpack_kernel_deb(&not_kernel, tempfile::tempdir().unwrap().path()).unwrap_err();
        assert!(e.to_string().contains("no boot/vmlinuz"), "{e}");
    }
}
