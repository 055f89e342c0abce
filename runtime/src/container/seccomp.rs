//! berth's seccomp allowlist, modeled on Docker's default profile (moby
//! `profiles/seccomp/default.json`) for a process without CAP_SYS_ADMIN: everything not listed
//! is refused. The supervisor installs it on itself (PID 1 inside) once the environment is
//! set up; every service and exec session it forks inherits it.
//!
//! What the compiled classic-BPF program does, in order:
//!
//! 1. Another ABI than the native one (i386 through `int 0x80`, and x32 calls, which share
//!    the x86_64 audit arch but carry bit 30 in the number) kills the process: the table
//!    only knows x86_64 numbers, and letting a second ABI through would bypass it.
//! 2. The calls of [`ALLOWED`] are allowed.
//! 3. Calls with argument filters, as Docker has them: `socket` for the address families of
//!    [`SOCKET_FAMILIES`] only (no AF_VSOCK, AF_ALG, AF_NFC, ...); `personality` for the
//!    personas of [`PERSONAS`] only; `clone` without namespace flags ([`CLONE_NAMESPACES`]);
//!    `clone3` answers ENOSYS (its flags live in memory a filter cannot read), so libcs fall
//!    back to `clone`.
//! 4. Every other call up to the highest number the table knows is refused with EPERM (the
//!    calls of [`REFUSED`] among them: mount, keyctl, bpf, ...); a call above it answers
//!    ENOSYS, as a kernel without the call would, so a newer libc falls back to older calls.
//!
//! Steps 2 to 4 are one binary search over runs of call numbers that get the same answer
//! (about 70 runs, so a call meets 7 comparisons, not a chain of one per listed call): the
//! program is under 200 instructions instead of 682, which the kernel checks, translates,
//! JIT-compiles and walks once per call number (its cache of always-allowed calls) at every
//! start of an environment. It is built once per process.
//!
//! Where nested user namespaces are allowed (berth runs rootless, so the environment's user
//! namespace is the invoking user's own), `clone`, `clone3` and `unshare` are allowed without
//! conditions, as before the allowlist.

use std::os::raw::c_ushort;
use std::sync::OnceLock;

use seccompiler::{sock_filter, BpfProgram};

use super::error::{ContainerError, Result};
pub use super::seccomp_syscalls::{ALLOWED, REFUSED};
use super::seccomp_syscalls::{CLONE, CLONE3, PERSONALITY, SOCKET, UNSHARE};

/// Address families `socket` may create (Docker's list): everything below AF_DECnet (12),
/// then the common ones up to AF_MCTP (45); not AF_DECnet, AF_ECONET (19), AF_ATMSVC (20),
/// AF_IRDA (23), AF_WANPIPE (25), AF_ISDN (34), AF_CAIF (37), AF_ALG (38), AF_VSOCK (40) or
/// anything newer.
pub const SOCKET_FAMILIES: &[u32] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 21, 22, 24, 26, 27, 28, 29, 30,
    31, 32, 33, 35, 36, 39, 41, 42, 43, 44, 45,
];

/// Personas `personality` may set: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
/// and 0xffffffff (query only). Not ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...
pub const PERSONAS: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET: `clone` with any of them is refused.
pub const CLONE_NAMESPACES: u32 = 0x7E02_0000;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const LD_W_ABS: c_ushort = 0x20;
const JEQ_K: c_ushort = 0x15;
const JGE_K: c_ushort = 0x35;
const JSET_K: c_ushort = 0x45;
const RET_K: c_ushort = 0x06;
const JA: c_ushort = 0x05;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (little-endian `u64 args[6]` at offset 16).
fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
fn arg_hi(i: u32) -> u32 {
    arg_lo(i) + 4
}

fn stmt(code: c_ushort, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jump(code: c_ushort, k: u32, jt: usize, jf: usize) -> sock_filter {
    sock_filter {
        code,
        jt: jt as u8,
        jf: jf as u8,
        k,
    }
}
fn ret_errno(errno: i32) -> sock_filter {
    stmt(RET_K, RET_ERRNO | (errno as u32 & 0xffff))
}

/// The highest call number the table knows; calls above it answer ENOSYS.
pub fn highest_known() -> u32 {
    ALLOWED
        .iter()
        .chain(REFUSED)
        .map(|(_, nr)| *nr)
        .chain([SOCKET, CLONE, PERSONALITY, CLONE3, UNSHARE])
        .max()
        .unwrap_or(0)
}

/// The body for one call whose number is already known: allowed when argument `arg` (an
/// int: its high half must be 0) is one of `values`, else EPERM.
fn allow_if_arg_is_one_of(arg: u32, values: &[u32]) -> Vec<sock_filter> {
    // ld hi; jeq 0 (else -> EPERM); ld lo; jeq v... (-> ALLOW); EPERM; ALLOW.
    let n = values.len();
    let mut body = vec![
        stmt(LD_W_ABS, arg_hi(arg)),
        jump(JEQ_K, 0, 0, n + 1),
        stmt(LD_W_ABS, arg_lo(arg)),
    ];
    for (i, v) in values.iter().enumerate() {
        // From value i, ALLOW is after the remaining values and the EPERM return.
        body.push(jump(JEQ_K, *v, n - i, 0));
    }
    body.push(ret_errno(libc::EPERM));
    body.push(stmt(RET_K, RET_ALLOW));
    body
}

/// The body for `clone`: allowed without namespace flags in its first argument (the x86_64
/// argument order).
fn allow_clone_without_namespaces() -> Vec<sock_filter> {
    vec![
        stmt(LD_W_ABS, arg_lo(0)),
        jump(JSET_K, CLONE_NAMESPACES, 0, 1),
        ret_errno(libc::EPERM),
        stmt(RET_K, RET_ALLOW),
    ]
}

/// What the allowlist answers for one call number: a plain return, or a rule that looks at
/// the call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Return(u32),
    SocketFamily,
    Persona,
    CloneWithoutNamespaces,
}

/// The rule for call `nr` (see the module documentation for the order).
fn rule_for(nr: u32, allow_nested_userns: bool) -> Rule {
    let allow = Rule::Return(RET_ALLOW);
    if ALLOWED.iter().any(|(_, n)| *n == nr) {
        return allow;
    }
    match nr {
        SOCKET => Rule::SocketFamily,
        PERSONALITY => Rule::Persona,
        CLONE | CLONE3 | UNSHARE if allow_nested_userns => allow,
        CLONE => Rule::CloneWithoutNamespaces,
        CLONE3 => Rule::Return(RET_ERRNO | libc::ENOSYS as u32),
        _ if nr > highest_known() => Rule::Return(RET_ERRNO | libc::ENOSYS as u32),
        _ => Rule::Return(RET_ERRNO | libc::EPERM as u32),
    }
}

/// The call numbers cut into runs that get the same rule, as `(first number, rule)` sorted by
/// number; the last run (above the table) reaches to the end of the number space.
fn runs(allow_nested_userns: bool) -> Vec<(u32, Rule)> {
    let mut runs: Vec<(u32, Rule)> = Vec::new();
    for nr in 0..=highest_known() + 1 {
        let rule = rule_for(nr, allow_nested_userns);
        match runs.last() {
            Some((_, Rule::Return(k))) if rule == Rule::Return(*k) => {}
            _ => runs.push((nr, rule)),
        }
    }
    runs
}

/// Code for one run, entered with the call number in the accumulator; it always returns.
fn leaf(rule: Rule) -> Vec<sock_filter> {
    match rule {
        Rule::Return(k) => vec![stmt(RET_K, k)],
        Rule::SocketFamily => allow_if_arg_is_one_of(0, SOCKET_FAMILIES),
        Rule::Persona => allow_if_arg_is_one_of(0, PERSONAS),
        Rule::CloneWithoutNamespaces => allow_clone_without_namespaces(),
    }
}

/// A binary search over `runs` (sorted by first number, all returning): one `jge` per level,
/// so a call meets about log2(runs) comparisons instead of a chain of one per listed call,
/// and the program (which the kernel checks, translates, JIT-compiles and walks for every
/// call number when it is installed) stays short.
fn search(runs: &[(u32, Rule)]) -> Vec<sock_filter> {
    if let [(_, rule)] = runs {
        return leaf(*rule);
    }
    let mid = runs.len() / 2;
    let below = search(&runs[..mid]);
    let above = search(&runs[mid..]);
    let first_above = runs[mid].0;
    let mut code = Vec::with_capacity(below.len() + above.len() + 2);
    match u8::try_from(below.len()) {
        Ok(skip) => code.push(jump(JGE_K, first_above, usize::from(skip), 0)),
        Err(_) => {
            // A conditional jump reaches 255 instructions at most: go through `ja`.
            code.push(jump(JGE_K, first_above, 0, 1));
            code.push(stmt(JA, below.len() as u32));
        }
    }
    code.extend(below);
    code.extend(above);
    code
}

/// Compiles the allowlist. `allow_nested_userns`: `clone`, `clone3` and `unshare` without
/// conditions (rootless berth, see the module documentation). Built once per process and
/// copied from then on.
pub fn compile(allow_nested_userns: bool) -> Result<BpfProgram> {
    static PROGRAMS: [OnceLock<std::result::Result<BpfProgram, String>>; 2] =
        [OnceLock::new(), OnceLock::new()];
    PROGRAMS[usize::from(allow_nested_userns)]
        .get_or_init(|| build(allow_nested_userns))
        .clone()
        .map_err(ContainerError::Setup)
}

fn build(allow_nested_userns: bool) -> std::result::Result<BpfProgram, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err(format!(
            "berth's seccomp allowlist knows the system calls of x86_64 only, not of {}; start the environment with `berth up --privileged` (no filter) on this machine",
            std::env::consts::ARCH
        ));
    }
    let mut p = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFFSET_NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(RET_K, RET_KILL_PROCESS),
    ];
    p.extend(search(&runs(allow_nested_userns)));
    if p.len() > 4096 {
        return Err(format!(
            "the seccomp allowlist compiled to {} instructions, more than the kernel's 4096",
            p.len()
        ));
    }
    Ok(p)
}

/// Installs `program` on the calling thread (and so on every process it forks from now on).
/// Needs CAP_SYS_ADMIN in the caller's user namespace or `no_new_privs`; the supervisor, root
/// of its user namespace, has the former, so PID 1 does not need `no_new_privs` for it.
pub fn install(program: &BpfProgram) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: c_ushort,
        filter: *const sock_filter,
    }
    let prog = SockFprog {
        len: program.len() as c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) copies the program from `prog`, which points
    // to `program.len()` valid instructions for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(name: &str) -> u32 {
        ALLOWED
            .iter()
            .chain(REFUSED)
            .find(|(n, _)| *n == name)
            .map(|(_, nr)| *nr)
            .unwrap_or_else(|| panic!("{name} is not in the table"))
    }

    #[test]
    fn table_numbers_match_the_kernel_abi() {
        // Spot checks against libc's x86_64 constants.
        for (name, nr) in [
            ("read", libc::SYS_read),
            ("openat", libc::SYS_openat),
            ("execve", libc::SYS_execve),
            ("ptrace", libc::SYS_ptrace),
            ("keyctl", libc::SYS_keyctl),
            ("mount", libc::SYS_mount),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("faccessat2", libc::SYS_faccessat2),
            ("futex_waitv", libc::SYS_futex_waitv),
        ] {
            assert_eq!(number(name) as i64, nr, "{name}");
        }
        assert_eq!(SOCKET as i64, libc::SYS_socket);
        assert_eq!(CLONE as i64, libc::SYS_clone);
        assert_eq!(CLONE3 as i64, libc::SYS_clone3);
        assert_eq!(UNSHARE as i64, libc::SYS_unshare);
        assert_eq!(PERSONALITY as i64, libc::SYS_personality);
    }

    #[test]
    fn no_call_is_both_allowed_and_refused() {
        let mut seen = std::collections::BTreeMap::new();
        for (name, nr) in ALLOWED.iter().chain(REFUSED) {
            if let Some(other) = seen.insert(*nr, *name) {
                assert_eq!(other, *name, "number {nr} listed twice");
                panic!("{name} listed twice");
            }
        }
        for special in [SOCKET, CLONE, PERSONALITY, CLONE3, UNSHARE] {
            assert!(
                !ALLOWED.iter().any(|(_, nr)| *nr == special),
                "{special} has its own rule"
            );
        }
        for refused in [
            "mount",
            "keyctl",
            "bpf",
            "setns",
            "kexec_load",
            "userfaultfd",
        ] {
            assert!(REFUSED.iter().any(|(n, _)| *n == refused), "{refused}");
        }
    }

    /// Runs `f` in a forked child under the compiled filter; returns its exit status.
    fn in_filtered_child(nested: bool, f: fn() -> i32) -> nix::sys::wait::WaitStatus {
        let p = compile(nested).unwrap();
        // SAFETY: the child only makes raw system calls and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl with constant arguments (lets a non-root test install it).
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = if install(&p).is_err() { 100 } else { f() };
                // SAFETY: plain exit of the forked child.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc >= 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    }

    #[test]
    fn refused_unknown_and_filtered_calls_answer_as_docker_does() {
        let st = in_filtered_child(false, || {
            // SAFETY: raw system calls with harmless arguments (null pointers, bad fds).
            unsafe {
                // Each errno is read right after its call.
                let checks: [(i32, i32); 10] = [
                    (
                        errno_of(libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0)),
                        libc::EPERM,
                    ),
                    (errno_of(libc::syscall(libc::SYS_setns, -1, 0)), libc::EPERM),
                    (
                        errno_of(libc::syscall(libc::SYS_socket, 40, 1, 0)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_socket, 1u64 << 32 | 1, 1, 0)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_personality, 0x0040000)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(
                            libc::SYS_clone,
                            libc::CLONE_NEWUSER,
                            0,
                            0,
                            0,
                            0,
                        )),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER)),
                        libc::EPERM,
                    ),
                    (
                        errno_of(libc::syscall(libc::SYS_clone3, 0, 0)),
                        libc::ENOSYS,
                    ),
                    (errno_of(libc::syscall(1000)), libc::ENOSYS),
                    (
                        errno_of(libc::syscall(libc::SYS_personality, 0xffff_ffffu32)),
                        0,
                    ),
                ];
                for (i, (got, want)) in checks.iter().enumerate() {
                    if got != want {
                        return 1 + i as i32;
                    }
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    return 20;
                }
                0
            }
        });
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
    }

    #[test]
    fn x32_calls_kill_the_process() {
        let st = in_filtered_child(false, || {
            // SAFETY: getpid through the x32 ABI; the filter kills before it runs.
            unsafe { libc::syscall(X32_SYSCALL_BIT as libc::c_long | libc::SYS_getpid) };
            0
        });
        assert!(
            matches!(
                st,
                nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
            ),
            "{st:?}"
        );
    }

    #[test]
    fn rootless_keeps_nested_user_namespaces() {
        let st = in_filtered_child(true, || {
            // SAFETY: a raw clone3 with a null argument: EFAULT from the kernel, not ENOSYS.
            let rc = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            i32::from(errno_of(rc) == libc::ENOSYS)
        });
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(st.pid().unwrap(), 0));
    }

    #[test]
    fn program_fits_and_knows_the_newest_calls() {
        for nested in [false, true] {
            let p = compile(nested).unwrap();
            assert!(p.len() < 4096);
            assert_eq!(
                p,
                compile(nested).unwrap(),
                "built once, the same every time"
            );
        }
        assert!(highest_known() >= 466);
    }

    /// The kernel's classic-BPF machine for the instructions the compiler emits: the verdict
    /// for call `nr` of `arch` with `args`, and how many instructions it walked.
    fn run_filter(p: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let ins = &p[pc];
            steps += 1;
            let k = ins.k;
            let cond = |taken: bool| pc + 1 + usize::from(if taken { ins.jt } else { ins.jf });
            pc = match ins.code {
                LD_W_ABS => {
                    let o = k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                    pc + 1
                }
                JEQ_K => cond(acc == k),
                // jgt (0x25): emitted by no rule today, known to the machine all the same.
                0x25 => cond(acc > k),
                JGE_K => cond(acc >= k),
                JSET_K => cond(acc & k != 0),
                JA => pc + 1 + k as usize,
                RET_K => return (k, steps),
                other => panic!("unexpected instruction {other:#x} at {pc}"),
            };
        }
    }

    /// What the module documentation promises, rule by rule, independent of the layout.
    fn promised(nested: bool, arch: u32, nr: u32, a0: u64) -> u32 {
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let enosys = RET_ERRNO | libc::ENOSYS as u32;
        let int_in = |values: &[u32]| a0 >> 32 == 0 && values.contains(&(a0 as u32));
        if arch != AUDIT_ARCH_X86_64 || nr >= X32_SYSCALL_BIT {
            return RET_KILL_PROCESS;
        }
        if ALLOWED.iter().any(|(_, n)| *n == nr) {
            return RET_ALLOW;
        }
        match nr {
            SOCKET if int_in(SOCKET_FAMILIES) => RET_ALLOW,
            PERSONALITY if int_in(PERSONAS) => RET_ALLOW,
            SOCKET | PERSONALITY => eperm,
            CLONE | CLONE3 | UNSHARE if nested => RET_ALLOW,
            CLONE if a0 as u32 & CLONE_NAMESPACES == 0 => RET_ALLOW,
            CLONE3 => enosys,
            _ if nr > highest_known() => enosys,
            _ => eperm,
        }
    }

    #[test]
    fn every_call_number_gets_the_promised_answer() {
        let firsts: Vec<u64> = SOCKET_FAMILIES
            .iter()
            .chain(PERSONAS)
            .map(|v| u64::from(*v))
            .chain([
                12,
                19,
                38,
                40,
                46,
                0x40000,
                1 << 32,
                (1 << 32) | 1,
                u64::MAX,
            ])
            .chain([0x11, libc::CLONE_NEWUSER as u64, libc::CLONE_NEWNET as u64])
            .chain([(libc::CLONE_VM | libc::CLONE_NEWNS) as u64])
            .collect();
        for nested in [false, true] {
            let p = compile(nested).unwrap();
            for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                for nr in (0..1100).chain([X32_SYSCALL_BIT | 39, u32::MAX]) {
                    for &a0 in &firsts {
                        let args = [a0, 0, 0, 0, 0, 0];
                        assert_eq!(
                            run_filter(&p, arch, nr, args).0,
                            promised(nested, arch, nr, a0),
                            "nested {nested}, arch {arch:#x}, call {nr}, first argument {a0:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_call_meets_a_search_not_a_chain_of_every_listed_call() {
        for nested in [false, true] {
            let p = compile(nested).unwrap();
            assert!(
                p.len() < 300,
                "{} instructions: one comparison per listed call again?",
                p.len()
            );
            // Calls without argument rules: the arch and x32 checks, then a handful of
            // comparisons (the argument rules add their own list on top).
            let walked = (0..=highest_known() + 1)
                .filter(|nr| ![SOCKET, PERSONALITY, CLONE].contains(nr))
                .map(|nr| run_filter(&p, AUDIT_ARCH_X86_64, nr, [0; 6]).1)
                .max()
                .unwrap();
            assert!(walked <= 16, "a call walks {walked} instructions");
        }
    }
}
