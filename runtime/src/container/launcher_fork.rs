//! The launcher of a throw-away run (`berth run` without `--keep`) as a fork of berth itself
//! instead of an exec of `berth __supervisor`: the exec, its dynamic loader and start-up are a
//! tenth of such a run's CPU (about 1 ms and 110 page faults of a 23 MB binary) for a
//! supervisor whose idle memory does not matter (a run does not idle; `up`'s supervisor stays
//! an exec, its memory goal is < 1 MiB).
//!
//! The forked child is made to look to [`launch::main`](super::launch::main) exactly as the
//! exec'd launcher does, so the rest of the start is the same code:
//! - **Descriptors**: stdin `/dev/null`, stdout and stderr the supervisor log, the report
//!   pipe at [`REPORT_FD`], the go pipe at [`GO_FD`], and every other descriptor closed
//!   (`close_range`): nothing of the caller's (its environment lock, image store files, a
//!   terminal) reaches the launcher, where an exec closed only the close-on-exec ones.
//! - **Signals**: handlers installed by the caller (`berth run`'s SIGINT/SIGTERM/SIGHUP) are
//!   reset to the default, ignored signals stay ignored and the mask is emptied, as an exec
//!   from `std::process::Command` leaves them.
//! - **Shared state**: only a single-threaded caller forks this way ([`may_fork`]): no other
//!   thread can hold a lock the child would need. The child shares nothing writable with the
//!   caller (copy-on-write memory); stdout is flushed before the fork so nothing buffered is
//!   written twice.
//! - **Boundaries**: only with a user namespace, where the environment runs from berth's
//!   binary anyway (without one, the launcher must run from the sealed view of the binary:
//!   [`selfexe`](super::selfexe)). The supervisor's memory then holds a copy of the caller's;
//!   it is not dumpable and its memory belongs to the host's user namespace, as an exec'd
//!   supervisor's, so nothing inside can read it. Not for sidecars and not with `[[ports]]`,
//!   whose holder is named from a supervisor's command line (`net::port_owner`).
//! - **Command line**: such a supervisor keeps `berth run`'s (its name, `berth-init`, is
//!   set as for every supervisor). Rewriting it needs `PR_SET_MM`, that is
//!   `CAP_SYS_RESOURCE`, which root lacks on some hosts (this project's CI among them).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::unistd::{fork, ForkResult, Pid};

use super::error::{Context, Result};
use super::idmap::IdMapping;
use super::launch::{GO_FD, REPORT_FD};
use super::spec::ContainerSpec;

/// Whether the launcher of `spec` may be a fork of this process (see the module
/// documentation): a throw-away environment with a user namespace, neither a sidecar nor with
/// forwarded ports, started by a single-threaded process.
pub fn may_fork(spec: &ContainerSpec, mapping: Option<&IdMapping>) -> bool {
    spec.volatile_upper
        && mapping.is_some()
        && spec.join.is_none()
        && spec.ports.is_empty()
        && threads_of_this_process() == Some(1)
}

/// The number of threads of this process (`Threads:` of `/proc/self/status`).
fn threads_of_this_process() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Forks the launcher for `state_dir`: the child joins the cgroups through `procs`, sets its
/// descriptors up as an exec'd launcher finds them and runs
/// [`launch::main`](super::launch::main). Returns the child's pid.
pub fn spawn(
    state_dir: &Path,
    log: &File,
    procs: &[File],
    report_w: RawFd,
    go_r: RawFd,
) -> Result<Pid> {
    let null = File::open("/dev/null").context(|| "cannot open /dev/null".to_string())?;
    let _ = std::io::stdout().flush();
    // SAFETY: the caller is single-threaded (`may_fork`); the child only makes syscalls,
    // then runs the launcher, which an exec would have started in a fresh process.
    match unsafe { fork() }.context(|| "cannot fork berth's launcher".to_string())? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = match into_launcher(log, procs, &null, report_w, go_r) {
                Ok(()) => super::launch::main(state_dir),
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "berth: cannot start the launcher: {e}");
                    1
                }
            };
            // SAFETY: leave without running the caller's exit handlers or flushing its
            // buffers a second time.
            unsafe { libc::_exit(code) }
        }
    }
}

/// In the forked child: cgroups first (as the exec'd launcher, before any work of its own),
/// then descriptors and signals as an exec leaves them.
fn into_launcher(
    log: &File,
    procs: &[File],
    null: &File,
    report_w: RawFd,
    go_r: RawFd,
) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let procs: Vec<RawFd> = procs.iter().map(|f| f.as_raw_fd()).collect();
    join_cgroups(&procs)?;
    // SAFETY: fcntl/dup2 on descriptors this process holds; duplicates above 10 first, so
    // placing one at 3 or 4 cannot close the other before it is copied.
    unsafe {
        let report = check(libc::fcntl(report_w, libc::F_DUPFD_CLOEXEC, 10))?;
        let go = check(libc::fcntl(go_r, libc::F_DUPFD_CLOEXEC, 10))?;
        let log = check(libc::fcntl(log.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10))?;
        let null = check(libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10))?;
        check(libc::dup2(null, 0))?;
        check(libc::dup2(log, 1))?;
        check(libc::dup2(log, 2))?;
        check(libc::dup2(report, REPORT_FD))?;
        check(libc::dup2(go, GO_FD))?;
    }
    super::security::close_fds_from(GO_FD as u32 + 1);
    reset_signals()
}

/// Moves the calling process into the cgroups whose `cgroup.procs` (or per-thread join
/// file) descriptors are `procs`, before it runs any work of its own: the launcher's first
/// step, whether forked here or exec'd (`ContainerBackend`'s `pre_exec`). Only `write`: safe
/// between fork and exec.
pub(super) fn join_cgroups(procs: &[RawFd]) -> std::io::Result<()> {
    for fd in procs {
        // "0" moves the writing process itself.
        // SAFETY: write of a 1-byte static buffer to a descriptor the caller holds open.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Caught signals back to their default action and an empty mask; ignored ones stay ignored
/// (an exec keeps those too).
fn reset_signals() -> std::io::Result<()> {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero sigaction is a valid value of this C struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: sigaction with a null new action only reads the current one into `old`.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            // SAFETY: installs the default action for a valid signal number.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let empty = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&empty),
        None,
    )
    .map_err(std::io::Error::from)
}
