//! Host resources a berth command can leave behind, snapshotted before and after a test:
//! mounts, cgroup folders under every controller, processes, network devices, session
//! folders of forwarded credentials whose maker is gone. A test asserts
//! the two snapshots are equal once it has torn down what it made.

use std::collections::BTreeSet;
use std::path::Path;

/// Where berth keeps the machine-wide record of each bridge (leases of every home):
/// `berth_runtime::net::lease_store::MACHINE_NET_DIR`.
pub const BRIDGE_RECORDS: &str = "/run/berth/net";

/// What exists on the host at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSnapshot {
    pub mounts: BTreeSet<String>,
    pub cgroups: BTreeSet<String>,
    pub berth_processes: BTreeSet<String>,
    pub net_devices: BTreeSet<String>,
    /// nftables tables (`inet berth…`).
    pub nft_tables: BTreeSet<String>,
    /// Machine-wide bridge records (`/run/berth/net/<bridge>`).
    pub bridge_records: BTreeSet<String>,
    /// Session folders of forwarded credentials on the host (`/tmp/berth-<16 hex>`) whose
    /// maker is gone: nobody holds their lock, nobody removes them but the next session.
    /// A live session's folder is locked and not listed.
    pub stale_session_folders: BTreeSet<String>,
}

impl HostSnapshot {
    /// Takes a snapshot of the resources whose description contains one of `tags` (a test's
    /// berth home, project folder or environment name), so that tests running in parallel
    /// and unrelated activity on the machine do not make each other fail.
    pub fn take(tags: &[&str]) -> HostSnapshot {
        let mut s = Self::take_all();
        let keep = |set: &mut BTreeSet<String>| set.retain(|e| tags.iter().any(|t| e.contains(t)));
        keep(&mut s.mounts);
        keep(&mut s.cgroups);
        keep(&mut s.berth_processes);
        keep(&mut s.net_devices);
        keep(&mut s.nft_tables);
        keep(&mut s.bridge_records);
        // Kept whatever the tags: a folder's name says nothing of who made it, and a stale
        // one is a leak whoever made it.
        s
    }

    /// Everything berth-related on the host.
    pub fn take_all() -> HostSnapshot {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("berth"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let mut cgroups = BTreeSet::new();
        for line in std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
        {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (
                parts.next(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("/"),
            );
            let ctrl = ctrls
                .split(',')
                .next()
                .unwrap_or("")
                .trim_start_matches("name=");
            let base = if ctrl.is_empty() {
                "/sys/fs/cgroup/unified".to_string()
            } else {
                format!("/sys/fs/cgroup/{ctrl}")
            };
            let root = format!("{base}{path}");
            walk_dirs(Path::new(&root), 3, &mut |p| {
                let s = p.to_string_lossy();
                if s.contains("berth") {
                    cgroups.insert(s.into_owned());
                }
            });
        }
        let mut berth_processes = BTreeSet::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                // Container supervisors and VMMs (berth's own, or qemu for a VM environment,
                // with the virtiofsd serving its shared folders).
                if cmd.contains("__supervisor")
                    || cmd.contains("internal-vmm")
                    || cmd.starts_with("qemu-system")
                    || cmd.contains("virtiofsd")
                {
                    berth_processes.insert(format!("{pid} {cmd}"));
                } else if std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "berth-init")
                {
                    // A throw-away run's supervisor, forked from `berth run` (its command
                    // line is berth run's): named by the home it inherited.
                    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                    let home = environ
                        .split(|b| *b == 0)
                        .find_map(|v| v.strip_prefix(b"BERTH_HOME="))
                        .map(|h| String::from_utf8_lossy(h).into_owned())
                        .unwrap_or_default();
                    berth_processes.insert(format!("{pid} {cmd} BERTH_HOME={home}"));
                }
            }
        }
        let net_devices = std::fs::read_dir("/sys/class/net")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("berth") || n.starts_with("bv"))
                    .collect()
            })
            .unwrap_or_default();
        let nft_tables = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("berth"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let bridge_records = std::fs::read_dir(BRIDGE_RECORDS)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let stale_session_folders = berth_inside_files::session_folder::stale_in(
            berth_inside_files::session_folder::PARENT,
        )
        .into_iter()
        .collect();
        HostSnapshot {
            mounts,
            cgroups,
            berth_processes,
            net_devices,
            nft_tables,
            bridge_records,
            stale_session_folders,
        }
    }

    /// Panics with a readable diff when `after` has resources `self` did not.
    pub fn assert_nothing_leaked(&self, after: &HostSnapshot) {
        let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
            b.difference(a).cloned().collect()
        };
        let leaks = [
            ("mounts", diff(&self.mounts, &after.mounts)),
            ("cgroups", diff(&self.cgroups, &after.cgroups)),
            (
                "processes",
                diff(&self.berth_processes, &after.berth_processes),
            ),
            (
                "network devices",
                diff(&self.net_devices, &after.net_devices),
            ),
            ("nftables tables", diff(&self.nft_tables, &after.nft_tables)),
            (
                "bridge records",
                diff(&self.bridge_records, &after.bridge_records),
            ),
            (
                "session folders in /tmp whose maker is gone",
                diff(&self.stale_session_folders, &after.stale_session_folders),
            ),
        ];
        let found: Vec<String> = leaks
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        assert!(
            found.is_empty(),
            "leaked host resources:\n{}",
            found.join("\n")
        );
    }
}

fn walk_dirs(dir: &Path, depth: usize, f: &mut dyn FnMut(&Path)) {
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            f(&p);
            walk_dirs(&p, depth - 1, f);
        }
    }
}

/// The host-side veth name of an environment: the formula of
/// `berth_runtime::net::bridge::veth_name` (the network tests check that a running
/// environment's veth has exactly this name, so a change there fails them).
pub fn veth_name(env_id: &str) -> String {
    use sha2::Digest;
    format!(
        "bv{}",
        &hex::encode(sha2::Sha256::digest(env_id.as_bytes()))[..10]
    )
}

/// Copies a host program and the shared libraries `ldd` lists into `rootfs`, at the same
/// paths (for tools busybox lacks, e.g. `socat` as a UDP echo server).
pub fn copy_program_with_libs(program: &Path, rootfs: &Path) {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .expect("ldd (libc-bin) is needed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let files = std::iter::once(program.to_path_buf()).chain(
        text.split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(std::path::PathBuf::from),
    );
    for f in files {
        let to = rootfs.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to)
            .unwrap_or_else(|e| panic!("cannot copy {} into the rootfs: {e}", f.display()));
    }
}

/// Why a root-only test cannot run here, or `None` when it can.
/// Whether `tool arg` runs here (a tool the test needs is installed).
pub fn have(tool: &str, arg: &str) -> bool {
    std::process::Command::new(tool)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

pub fn root_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    (euid != 0).then(|| format!("needs root (euid is {euid}); CI runs the suite as root"))
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Builds a busybox root filesystem in `dir` from Debian's busybox-static.
pub fn busybox_rootfs(dir: &Path) {
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.exists(),
        "/bin/busybox is missing: apt-get install busybox-static (scripts/install-deps does)"
    );
    for d in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "work", "usr/bin", "var",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(bb)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Whether the file at `path` contains `marker`. Only the file's data extents are read
/// (`SEEK_DATA`/`SEEK_HOLE`: a VM's sparse disk image is gigabytes, mostly holes, which read
/// as zeros and cannot hold a marker), in 8 MiB chunks that overlap by the marker's length
/// less one, searched with `memmem`.
fn file_contains(path: &Path, marker: &[u8]) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let finder = memchr::memmem::Finder::new(marker);
    let mut buf = vec![0u8; 8 << 20];
    data_extents(&f)
        .into_iter()
        .any(|(start, end)| extent_contains(&f, start, end, &finder, &mut buf))
}

/// The `[start, end)` byte ranges of `f` that hold data: adjacent extents come back as one
/// (`SEEK_HOLE` stops at the next hole), so a marker cannot straddle two ranges. A filesystem
/// without `SEEK_DATA` reports the whole file as data.
fn data_extents(f: &std::fs::File) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return Vec::new();
    };
    let seek = |at: u64, whence: libc::c_int| -> Option<u64> {
        // SAFETY: lseek on a descriptor this function borrows; it changes only its offset,
        // which every read below sets itself (pread).
        let r = unsafe { libc::lseek(f.as_raw_fd(), at as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    let mut extents = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(start) = seek(at, libc::SEEK_DATA) else {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole from `at` to the end
            }
            return vec![(0, len)];
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        at = end;
    }
    extents
}

fn extent_contains(
    f: &std::fs::File,
    start: u64,
    end: u64,
    finder: &memchr::memmem::Finder,
    buf: &mut [u8],
) -> bool {
    use std::os::unix::fs::FileExt;
    let keep = finder.needle().len().saturating_sub(1);
    let mut at = start;
    let mut filled = 0;
    while at < end {
        let want = (buf.len() - filled).min((end - at) as usize);
        let n = match f.read_at(&mut buf[filled..filled + want], at) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        at += n as u64;
        filled += n;
        if finder.find(&buf[..filled]).is_some() {
            return true;
        }
        // The last bytes may start the marker: they stay for the next chunk.
        let tail = filled.min(keep);
        buf.copy_within(filled - tail..filled, 0);
        filled = tail;
    }
    false
}

/// Every regular file under `dir` whose content contains `marker` (symlinks not followed),
/// for the scans that prove a secret was written nowhere.
pub fn files_containing(dir: &Path, marker: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && file_contains(&e.path(), marker.as_bytes()) {
                found.push(e.path());
            }
        }
    }
    found
}

#[cfg(test)]
mod file_scan_tests {
    use super::*;

    #[test]
    fn a_marker_across_a_chunk_boundary_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let marker = "secret-marker-123";
        for at in [
            0usize,
            (8 << 20) - 5,
            (8 << 20) + 3,
            (16 << 20) - marker.len(),
        ] {
            let mut bytes = vec![0u8; 16 << 20];
            bytes[at..at + marker.len()].copy_from_slice(marker.as_bytes());
            std::fs::write(dir.path().join("f"), &bytes).unwrap();
            assert_eq!(
                files_containing(dir.path(), marker),
                [dir.path().join("f")],
                "{at}"
            );
        }
        std::fs::write(dir.path().join("f"), vec![0u8; 9 << 20]).unwrap();
        assert!(files_containing(dir.path(), marker).is_empty());
    }

    /// A sparse file: markers after a hole, at the end of a data extent and in the file's
    /// last bytes are found, and the holes are not read (a 64 GiB file scans at once).
    #[test]
    fn markers_between_holes_are_found_and_holes_skipped() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let marker = b"secret-marker-456";
        let len: u64 = 64 << 30;
        for at in [
            0u64,
            1 << 30,
            (2 << 30) + 4096 - marker.len() as u64,
            len - marker.len() as u64,
        ] {
            let f = std::fs::File::create(&path).unwrap();
            f.set_len(len).unwrap();
            f.write_all_at(b"some data", 5 << 30).unwrap();
            f.write_all_at(marker, at).unwrap();
            drop(f);
            assert_eq!(
                files_containing(dir.path(), "secret-marker-456"),
                std::slice::from_ref(&path),
                "{at}"
            );
            let f = std::fs::File::open(&path).unwrap();
            let data: u64 = data_extents(&f).iter().map(|(s, e)| e - s).sum();
            assert!(
                data < 64 << 20,
                "{data} bytes of data extents: the holes were read"
            );
        }
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(b"secret-marker-45", 3 << 30).unwrap();
        drop(f);
        assert!(files_containing(dir.path(), "secret-marker-456").is_empty());
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    /// Removes a folder when dropped.
    struct RemoveDir(std::path::PathBuf);

    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A session folder left in /tmp (nobody holds its lock) is a leak the snapshots see,
    /// whatever the tags; a live one (its maker holds the lock) is not.
    #[test]
    fn a_session_folder_whose_maker_is_gone_is_a_leak() {
        let before = HostSnapshot::take(&["no-such-tag"]);
        let hex: String = std::process::id()
            .to_be_bytes()
            .iter()
            .chain(b"leak")
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("berth-{hex}");
        let left = RemoveDir(Path::new(berth_inside_files::session_folder::PARENT).join(&name));
        std::fs::create_dir(&left.0).unwrap();
        let after = HostSnapshot::take(&["no-such-tag"]);
        assert!(
            after.stale_session_folders.contains(&name),
            "{:?}",
            after.stale_session_folders
        );
        let seen = std::panic::catch_unwind(|| before.assert_nothing_leaked(&after));
        assert!(seen.is_err(), "the leak was not reported");
        drop(left);
        let live = berth_inside_files::session_folder::SessionFolder::make().unwrap();
        let live_name = live.path().rsplit('/').next().unwrap().to_string();
        assert!(!HostSnapshot::take_all()
            .stale_session_folders
            .contains(&live_name));
    }
}
