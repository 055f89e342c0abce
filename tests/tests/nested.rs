//! What this host cannot run directly, run in the nested guest L1 (qemu TCG with emulated
//! `kvm_amd`; see `berth_e2e::nested`). One L1 boot runs several checks one after the other.
//! Needs root, qemu, virtiofsd, mkfs.ext4, busybox-static and a reachable Debian mirror (or the
//! cached kernel); skips saying why otherwise.

use std::time::Duration;

use berth_e2e::nested::{Options, L1};

/// L1 boots, runs commands (exit codes and output come back), has the hardware-style KVM of
/// an AMD machine with nested paging, the modules berth needs, the host's root read-only
/// under a writable overlay entered with switch_root (so user namespaces work), and its
/// TMPDIR on ext4.
#[test]
fn l1_boots_and_runs_commands() {
    if let Some(why) = L1::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut l1 = L1::boot(&Options::default());
    let o = l1.sh(
        "echo to-out; echo to-err >&2; exit 7",
        Duration::from_secs(30),
    );
    assert_eq!((o.code, o.output.as_str()), (7, "to-out\nto-err\n"));
    let out = l1.sh_ok(
        "uname -r; test -c /dev/kvm && echo kvm; cat /sys/module/kvm_amd/parameters/nested; \
         cat /sys/module/kvm_amd/parameters/npt; test -c /dev/net/tun && echo tun; \
         stat -f -c %T \"$TMPDIR\"; touch /usr/nested-overlay-write && echo overlay-writable; \
         /bin/busybox unshare -U -r id -u",
        Duration::from_secs(30),
    );
    let release = l1.kernel_release().to_string();
    assert_eq!(
        out,
        format!("{release}\nkvm\n1\nY\ntun\next2/ext3\noverlay-writable\n0\n"),
        "{out}"
    );
    assert!(
        !std::path::Path::new("/usr/nested-overlay-write").exists(),
        "a write in L1 reached the host"
    );
    let o = l1.sh("sleep 30", Duration::from_secs(2));
    assert!(o.timed_out, "{o:?}");
    assert_eq!(
        l1.sh_ok("echo still-there", Duration::from_secs(10)),
        "still-there\n"
    );
}
