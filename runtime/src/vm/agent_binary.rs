//! Finding the static `berth-agent` that goes into every VM's initramfs.
//!
//! Where berth looks, first match wins:
//! 1. the path a caller passes (`VmSpec::agent`, tests),
//! 2. `BERTH_AGENT`,
//! 3. `berth-agent` beside the running berth executable (`scripts/build-agent` puts it there,
//!    and a package installs both into one folder),
//! 4. `../lib/berth/berth-agent` relative to the berth executable (FHS-style installs),
//! 5. in a development checkout, `target/agent-static/…/berth-agent` where
//!    `scripts/build-agent` builds it.
//!
//! An explicit path (1 or 2) is the only candidate. A dynamically linked agent is never used:
//! the guest's root filesystem need not have the host's C library (a busybox image has none).
//! Among 3–5 such a file is passed over, because cargo's own (non-static) build of the crate
//! lands at `target/<profile>/berth-agent`, beside a development berth, on every workspace
//! build.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::VmError;

/// The static agent to use, or why there is none.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, VmError> {
    let explicit = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BERTH_AGENT").map(PathBuf::from));
    let candidates = match explicit {
        Some(p) => vec![p],
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(beside))
            .unwrap_or_default(),
    };
    // A dynamically linked file is passed over (cargo's own build of the crate sits beside
    // target/*/berth); it is named in the error only when nothing better is found.
    let mut dynamic = None;
    for c in &candidates {
        if !c.is_file() {
            continue;
        }
        match is_static_elf(c) {
            Ok(true) => return Ok(c.clone()),
            Ok(false) => {
                dynamic.get_or_insert_with(|| c.clone());
            }
            Err(e) => {
                return Err(VmError::Io {
                    path: c.clone(),
                    source: e,
                })
            }
        }
    }
    Err(match dynamic {
        Some(d) => VmError::DynamicAgent(d),
        None => VmError::NoAgent(candidates),
    })
}

/// Candidates relative to the folder of the berth executable.
fn beside(exe_dir: &Path) -> Vec<PathBuf> {
    vec![
        exe_dir.join("berth-agent"),
        exe_dir.join("../lib/berth/berth-agent"),
        exe_dir.join(DEV_BUILD),
    ]
}

/// Where `scripts/build-agent` builds the agent, relative to `target/<profile>/`: found in a
/// development checkout even after a workspace build put cargo's dynamic agent beside berth.
const DEV_BUILD: &str = "../agent-static/x86_64-unknown-linux-gnu/release/berth-agent";

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
/// A file that is not a 64-bit little-endian ELF counts as not static.
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut head)?;
    Ok(elf_has_no_interpreter(&head))
}

const PT_INTERP: u32 = 3;

fn elf_has_no_interpreter(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // Magic, ELFCLASS64, little-endian.
    if b.get(0..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let Some(off) = usize::try_from(phoff)
            .ok()
            .and_then(|p| p.checked_add(i * usize::from(phentsize)))
        else {
            return false;
        };
        match u32_at(off) {
            Some(PT_INTERP) => return false,
            Some(_) => {}
            // Program headers beyond what was read: cannot tell, so not static.
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with the given program header types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * types.len()];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            b[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        b
    }

    #[test]
    fn static_and_dynamic_elf() {
        assert!(elf_has_no_interpreter(&elf(&[1, 1, 4])));
        assert!(!elf_has_no_interpreter(&elf(&[6, PT_INTERP, 1])));
        assert!(!elf_has_no_interpreter(b"#!/bin/sh\n"));
        // Truncated program headers: unknown, so refused.
        let mut t = elf(&[1, 1]);
        t.truncate(100);
        assert!(!elf_has_no_interpreter(&t));
        assert!(!elf_has_no_interpreter(&[]));
    }

    #[test]
    fn the_host_shell_is_dynamic() {
        // Debian's /bin/sh (dash) is dynamically linked; busybox-static is not.
        if Path::new("/bin/dash").exists() {
            assert!(!is_static_elf(Path::new("/bin/dash")).unwrap());
        }
        if Path::new("/bin/busybox").exists() {
            let out = std::process::Command::new("ldd")
                .arg("/bin/busybox")
                .output();
            if let Ok(o) = out {
                let text = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                let static_by_ldd = text.contains("not a dynamic executable");
                assert_eq!(
                    is_static_elf(Path::new("/bin/busybox")).unwrap(),
                    static_by_ldd
                );
            }
        }
    }

    #[test]
    fn candidates_beside_the_executable() {
        let c = beside(Path::new("/opt/berth/bin"));
        assert_eq!(c[0], Path::new("/opt/berth/bin/berth-agent"));
        assert!(c[1].ends_with("../lib/berth/berth-agent"));
        assert_eq!(
            Path::new("/w/target/debug").join(DEV_BUILD),
            Path::new(
                "/w/target/debug/../agent-static/x86_64-unknown-linux-gnu/release/berth-agent"
            )
        );
    }

    #[test]
    fn explicit_path_is_the_only_candidate() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        assert!(
            matches!(locate(Some(&missing)), Err(VmError::NoAgent(v)) if v == [missing.clone()])
        );
        let dynamic = d.path().join("dyn");
        std::fs::write(&dynamic, elf(&[PT_INTERP])).unwrap();
        assert!(matches!(
            locate(Some(&dynamic)),
            Err(VmError::DynamicAgent(_))
        ));
        let good = d.path().join("agent");
        std::fs::write(&good, elf(&[1])).unwrap();
        assert_eq!(locate(Some(&good)).unwrap(), good);
    }
}
