//! The seccomp allowlist through the real binary: a small static probe program, built here
//! from C, makes harmless system calls inside an environment and prints what each returned.
//! Calls Docker's default profile refuses fail with EPERM (unknown numbers with ENOSYS, so
//! libcs fall back), everyday work keeps working, and every process inside (the supervisor,
//! PID 1, included) carries the filter.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use berth_e2e::project::Project;
use berth_e2e::{require_root, Berth};

/// Each probe is one line `name=ok` or `name=ERRNONAME`. All arguments are harmless: null
/// pointers, invalid descriptors, or calls whose success changes nothing outside the probe.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

static void show(const char *name, long rc) {
    if (rc >= 0) { printf("%s=ok\n", name); return; }
    int e = errno;
    const char *n = e == EPERM ? "EPERM" : e == ENOSYS ? "ENOSYS" : e == EINVAL ? "EINVAL"
        : e == EFAULT ? "EFAULT" : e == EBADF ? "EBADF" : e == EAFNOSUPPORT ? "EAFNOSUPPORT"
        : e == EACCES ? "EACCES" : e == ENOENT ? "ENOENT" : "OTHER";
    if (n[0] == 'O') printf("%s=errno%d\n", name, e); else printf("%s=%s\n", name, n);
}

static long traced_child(void) {
    pid_t p = fork();
    if (p == 0) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) _exit(3);
        raise(SIGSTOP);
        _exit(0);
    }
    int st;
    if (waitpid(p, &st, 0) != p || !WIFSTOPPED(st)) return -1;
    if (ptrace(PTRACE_CONT, p, 0, 0) != 0) return -1;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { errno = EPROTO; return -1; }
    return 0;
}

static long tcp_loopback(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (void *)&a, sizeof a) || listen(l, 1) || getsockname(l, (void *)&a, &len)) return -1;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (void *)&a, sizeof a)) return -1;
    int s = accept(l, 0, 0);
    if (s < 0 || write(c, "x", 1) != 1) return -1;
    char b;
    return read(s, &b, 1) == 1 && b == 'x' ? 0 : -1;
}

int main(void) {
    setvbuf(stdout, 0, _IONBF, 0);
    /* Refused by the allowlist. */
    show("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    show("add_key", syscall(SYS_add_key, 0, 0, 0, 0, 0));
    show("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    show("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, 0, 0));
    show("bpf", syscall(SYS_bpf, 0, 0, 0));
    show("userfaultfd", syscall(SYS_userfaultfd, 0));
    show("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    show("io_uring_setup", syscall(SYS_io_uring_setup, 0, 0));
    show("fanotify_init", syscall(SYS_fanotify_init, 0, 0));
    show("set_mempolicy", syscall(SYS_set_mempolicy, 0, 0, 0));
    show("pidfd_getfd", syscall(SYS_pidfd_getfd, -1, -1, 0));
    show("socket_af_alg", syscall(SYS_socket, 38, SOCK_SEQPACKET, 0));
    show("socket_af_vsock", syscall(SYS_socket, 40, SOCK_STREAM, 0));
    show("personality_no_randomize", syscall(SYS_personality, 0x0040000));
    show("unshare_newuser", syscall(SYS_unshare, CLONE_NEWUSER));
    show("unshare_newns", syscall(SYS_unshare, CLONE_NEWNS));
    show("clone_newuser", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    show("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    show("setns", syscall(SYS_setns, -1, 0));
    /* Unknown to the table: ENOSYS, as a kernel without the call would answer. */
    show("clone3", syscall(SYS_clone3, 0, 0));
    show("nr_1000", syscall(1000, 0));
    /* Everyday calls still allowed. */
    show("personality_query", syscall(SYS_personality, 0xffffffff));
    show("getpid", syscall(SYS_getpid));
    show("socket_inet", syscall(SYS_socket, AF_INET, SOCK_DGRAM, 0));
    show("socket_unix", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0));
    show("socket_netlink", syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 0));
    show("tcp_loopback", tcp_loopback());
    show("ptrace_own_child", traced_child());
    return 0;
}
"#;

/// Builds the probe statically (the busybox rootfs has no libc) into `to`.
fn build_probe(to: &Path) {
    let src = to.with_extension("c");
    fs::write(&src, PROBE_C).unwrap();
    let o = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(to)
        .arg(&src)
        .output()
        .expect("cc is needed to build the seccomp probe: apt-get install gcc libc6-dev");
    assert!(
        o.status.success(),
        "cannot build the probe:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::remove_file(src).unwrap();
}

fn probe_results(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_process_inside_runs_under_the_allowlist() {
    require_root!();
    let dir = Project::new(
        "berth-seccomp-",
        "berthseccomp",
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[services]
sleeper = { command = ["sleep", "600"] }
"#,
    );
    build_probe(&dir.path().join("rootfs/bin/probe"));
    let b = Berth::new();
    b.ok(dir.path(), &["up"]);

    let got = probe_results(&b.ok(dir.path(), &["exec", "--", "probe"]));
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for refused in [
        "keyctl",
        "add_key",
        "kexec_load",
        "open_by_handle_at",
        "bpf",
        "userfaultfd",
        "perf_event_open",
        "io_uring_setup",
        "fanotify_init",
        "set_mempolicy",
        "pidfd_getfd",
        "socket_af_alg",
        "socket_af_vsock",
        "personality_no_randomize",
        "unshare_newuser",
        "unshare_newns",
        "clone_newuser",
        "mount",
        "setns",
    ] {
        want.insert(refused.into(), "EPERM".into());
    }
    for unknown in ["clone3", "nr_1000"] {
        want.insert(unknown.into(), "ENOSYS".into());
    }
    for allowed in [
        "personality_query",
        "getpid",
        "socket_inet",
        "socket_unix",
        "socket_netlink",
        "tcp_loopback",
        "ptrace_own_child",
    ] {
        want.insert(allowed.into(), "ok".into());
    }
    assert_eq!(got, want, "probe results (left: got, right: wanted)");

    // A shell and package-manager-like file work.
    let files = b.ok(dir.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "mkdir -p /tmp/p/d && echo x > /tmp/p/d/f && chown 1:1 /tmp/p/d/f && chmod 4755 /tmp/p/d/f \
             && ln -s f /tmp/p/d/l && mv /tmp/p/d /tmp/p/e && tar -C /tmp/p -cf /tmp/p.tar e \
             && rm -r /tmp/p && tar -C /tmp -xf /tmp/p.tar && stat -c '%a %u' /tmp/e/f",
        ],
    );
    assert_eq!(files.trim(), "4755 1");

    // Every process inside carries the filter: the supervisor (PID 1), the service and this
    // exec session.
    let modes = b.ok(dir.path(),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "for p in /proc/[0-9]*; do echo \"$(cat $p/comm) $(grep ^Seccomp: $p/status | tr -dc 0-9)\"; done",
        ],
    );
    let modes: Vec<(&str, &str)> = modes
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    assert!(
        modes.iter().any(|(c, _)| *c == "sleep"),
        "the service should be running: {modes:?}"
    );
    assert!(
        modes.iter().all(|(_, m)| *m == "2"),
        "every process inside should be in seccomp filter mode (2): {modes:?}"
    );
    let pid1 = b.ok(dir.path(), &["exec", "--", "cat", "/proc/1/status"]);
    assert!(
        pid1.lines().any(|l| l == "Seccomp:\t2"),
        "the supervisor (PID 1) must run under the filter:\n{pid1}"
    );
    b.ok(dir.path(), &["destroy"]);
}

#[test]
fn privileged_environments_run_without_the_filter() {
    require_root!();
    let dir = Project::new(
        "berth-seccomp-priv-",
        "berthseccomppriv",
        "name = \"{name}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n",
    );
    build_probe(&dir.path().join("rootfs/bin/probe"));
    let b = Berth::new();
    b.ok(dir.path(), &["up", "--privileged"]);
    let pid1 = b.ok(dir.path(), &["exec", "--", "cat", "/proc/1/status"]);
    assert!(pid1.lines().any(|l| l == "Seccomp:\t0"), "{pid1}");
    let got = probe_results(&b.ok(dir.path(), &["exec", "--", "probe"]));
    // Not refused by a filter: the kernel answers (MPOL_DEFAULT with no node mask succeeds).
    assert_eq!(got["set_mempolicy"], "ok", "{got:?}");
    assert_eq!(got["tcp_loopback"], "ok", "{got:?}");
    b.ok(dir.path(), &["destroy"]);
}
