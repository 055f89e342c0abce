//! What a VMM process's memory is made of: its resident set split into the guest's RAM (the
//! guest pages it touched) and the VMM's own overhead. A process's RSS counts both, so the
//! guest RAM mapping is found in `/proc/PID/smaps` by its size (the guest memory size; berth's
//! VMM splits RAM above the 32-bit MMIO gap into two mappings, see
//! [`ram_ranges`](berth_vmm::layout::ram_ranges)) and its resident pages are subtracted.
//! Used by the VM benchmark (`bench/vm.sh`).

use std::path::PathBuf;

use super::Provider;

/// A VMM process's resident memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmMemory {
    /// Everything resident (the sum of the mappings' `Rss`).
    pub rss_kib: u64,
    /// Resident pages of the guest RAM mapping(s).
    pub guest_rss_kib: u64,
}

impl VmmMemory {
    /// The VMM's own memory: RSS minus the guest's resident RAM.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib - self.guest_rss_kib
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read {path}: {source} (is the VMM still running?)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no mapping of {size_kib} KiB (the guest memory) in {path}: the guest RAM could not be told apart from the VMM's own memory; pass the guest memory size the VMM was started with")]
    NoGuestMapping { path: PathBuf, size_kib: u64 },
}

/// The sizes (bytes) of the host mappings holding the guest RAM of a VM with `memory` bytes:
/// qemu allocates one block (of whole MiB, at least 64, as the backend asks it); berth's VMM
/// one per RAM range.
pub fn guest_mappings(provider: Provider, memory: u64) -> Vec<u64> {
    match provider {
        Provider::Qemu => vec![(memory >> 20).max(64) << 20],
        Provider::Kvm => berth_vmm::layout::ram_ranges(memory)
            .into_iter()
            .map(|(_, size)| size)
            .collect(),
    }
}

/// Reads `/proc/<pid>/smaps` and splits the RSS (see [`split`]).
pub fn of_process(pid: i32, mappings: &[u64]) -> Result<VmmMemory, MemoryError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps"));
    let text = std::fs::read_to_string(&path).map_err(|source| MemoryError::Read {
        path: path.clone(),
        source,
    })?;
    split(&text, mappings).map_err(|size| MemoryError::NoGuestMapping {
        path,
        size_kib: size >> 10,
    })
}

/// One mapping of smaps: its size and resident KiB.
struct Mapping {
    size_kib: u64,
    rss_kib: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        let mut kib = || {
            words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => {
                if let Some(m) = out.last_mut() {
                    m.size_kib = kib();
                }
            }
            "Rss:" => {
                if let Some(m) = out.last_mut() {
                    m.rss_kib = kib();
                }
            }
            // A mapping's header: `start-end perms offset dev inode [path]`.
            _ if first.contains('-')
                && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
            {
                out.push(Mapping {
                    size_kib: 0,
                    rss_kib: 0,
                });
            }
            _ => {}
        }
    }
    out
}

/// Splits the RSS of the process whose smaps is `smaps`: each size of `mappings` (bytes) is
/// matched to a mapping of exactly that size (of several, the most resident one: the guest
/// RAM is what the guest touched). Fails with the size that has no mapping.
pub fn split(smaps: &str, mappings_sizes: &[u64]) -> Result<VmmMemory, u64> {
    let maps = mappings(smaps);
    let rss_kib = maps.iter().map(|m| m.rss_kib).sum();
    let mut used = vec![false; maps.len()];
    let mut guest_rss_kib = 0;
    for &size in mappings_sizes {
        let best = maps
            .iter()
            .enumerate()
            .filter(|(i, m)| !used[*i] && m.size_kib == size >> 10)
            .max_by_key(|(_, m)| m.rss_kib)
            .map(|(i, _)| i)
            .ok_or(size)?;
        used[best] = true;
        guest_rss_kib += maps[best].rss_kib;
    }
    Ok(VmmMemory {
        rss_kib,
        guest_rss_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234   /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 900 kB
Pss:                 900 kB
7fa303e00000-7fa313e00000 rw-p 00000000 00:00 0
Size:             262144 kB
KernelPageSize:        4 kB
Rss:               61440 kB
Anonymous:         61440 kB
7fa31c000000-7fa35bfff000 rwxp 00000000 00:00 0
Size:            1048572 kB
Rss:                2048 kB
7ffd1e000000-7ffd1e021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  16 kB
VmFlags: rd wr mr mw me gd ac
";

    #[test]
    fn the_guest_ram_mapping_is_taken_out_of_the_rss() {
        let m = split(SMAPS, &[256 << 20]).unwrap();
        assert_eq!(m.rss_kib, 900 + 61440 + 2048 + 16);
        assert_eq!(m.guest_rss_kib, 61440);
        assert_eq!(m.overhead_kib(), 900 + 2048 + 16);
        assert_eq!(split(SMAPS, &[512 << 20]), Err(512 << 20));
    }

    #[test]
    fn berth_vmm_ram_above_the_mmio_gap_is_two_mappings() {
        let big = 4u64 << 30;
        let sizes = guest_mappings(Provider::Kvm, big);
        assert_eq!(sizes.len(), 2);
        assert_eq!(sizes.iter().sum::<u64>(), big);
        assert_eq!(guest_mappings(Provider::Qemu, big), vec![big]);
        assert_eq!(guest_mappings(Provider::Kvm, 256 << 20), vec![256 << 20]);
    }

    /// This process maps 8 MiB ("guest memory") and touches 2 MiB of it: exactly those
    /// pages are the guest's, and the overhead is the rest of the RSS.
    #[test]
    fn a_live_mapping_is_found_and_measured() {
        const SIZE: usize = 8 << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped below; no other code uses it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // Without transparent huge pages the touched part is exactly 2 MiB.
        // SAFETY: madvise on the mapping made above.
        unsafe { libc::madvise(p, SIZE, libc::MADV_NOHUGEPAGE) };
        // SAFETY: the first 2 MiB of the mapping just made, writable.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, 2 << 20) };
        let m = of_process(std::process::id() as i32, &[SIZE as u64]);
        // SAFETY: unmaps the mapping made above, which nothing refers to any more.
        unsafe { libc::munmap(p, SIZE) };
        let m = m.unwrap();
        assert!(
            (2048..=4096).contains(&m.guest_rss_kib),
            "touched 2 MiB: {m:?}"
        );
        assert!(m.overhead_kib() > 0 && m.rss_kib > m.guest_rss_kib, "{m:?}");
    }
}
