//! A tiny static program for the security tests, compiled from C with the host's `gcc -static`
//! (the same compiler cargo links with): it reports the effective uid, or opens a path and,
//! for `/dev/kvm`-like nodes, asks `KVM_GET_API_VERSION` — the one harmless KVM ioctl (it never
//! creates a VM). Static, so it runs in any root filesystem without the host's libraries.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case ENXIO: return "ENXIO";
    case ENODEV: return "ENODEV";
    default: return strerror(e);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "euid") == 0) {
        printf("euid=%u\n", (unsigned)geteuid());
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: probe euid | probe open PATH | probe kvm PATH\n");
        return 2;
    }
    int fd = open(argv[2], O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        printf("open=%s\n", name(errno));
        return 1;
    }
    if (strcmp(argv[1], "kvm") == 0) {
        /* KVM_GET_API_VERSION = _IO(0xAE, 0x00): reads a constant, creates nothing. */
        int v = ioctl(fd, 0xAE00, 0);
        if (v < 0) {
            printf("ioctl=%s\n", name(errno));
            return 1;
        }
        printf("api=%d\n", v);
        return 0;
    }
    printf("open=ok\n");
    return 0;
}
"#;

/// The compiled probe in a folder every local user may read and traverse (removed on drop).
pub struct DeviceProbe {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl DeviceProbe {
    pub fn build() -> DeviceProbe {
        let dir = tempfile::Builder::new()
            .prefix("berth-probe-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let src = dir.path().join("probe.c");
        std::fs::write(&src, SOURCE).unwrap();
        let path = dir.path().join("probe");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&path)
            .arg(&src)
            .output()
            .expect("gcc (package gcc, with libc6-dev) builds the static device probe");
        assert!(
            out.status.success(),
            "gcc -static failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        DeviceProbe { _dir: dir, path }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    /// Runs the probe on the host with `args`; stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run_probe(&self.path, args)
    }
}

fn run_probe(path: &Path, args: &[&str]) -> String {
    let o = Command::new(path).args(args).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}
