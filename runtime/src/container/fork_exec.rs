//! Starting one process in the environment, for an exec request or a service: the user it
//! runs as, its environment, program and working directory, then fork, and in the child
//! stdio (descriptors, a terminal or the service's pipe), a new session, no descriptor but
//! stdio (`close_fds_from`), capabilities, user switch, the working directory check and the
//! security profile, then execve. The supervisor's loop ([`supervisor`](super::supervisor))
//! decides when; this module does the starting.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::SigSet;

use super::security::{close_fds_from, ProcessSecurity};
use super::spec::ContainerSpec;
use crate::backend::ExecRequest;
use berth_agent_proto::users;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a started process's standard streams go.
pub(super) enum Stdio {
    /// stdin, stdout, stderr passed by the client.
    Fds([OwnedFd; 3]),
    /// The slave side of a PTY, by path inside the environment.
    Pty(CString),
    /// /dev/null in, a pipe out (services).
    Pipe(OwnedFd),
}

/// Starts processes with the environment's spec (image user, workdir and variables) and
/// security profile.
pub(super) struct ProcessStarter {
    pub(super) spec: ContainerSpec,
    pub(super) security: ProcessSecurity,
}

impl ProcessStarter {
    /// Starts what an exec request asks for: on a new terminal (the master is returned, for
    /// the client) or on the three descriptors `passed` with the request.
    pub(super) fn exec(
        &self,
        req: &ExecRequest,
        passed: Vec<OwnedFd>,
    ) -> std::result::Result<(i32, Option<OwnedFd>), String> {
        if req.argv.is_empty() {
            return Err("exec needs a command".into());
        }
        if req.tty {
            let (master, slave) = open_pty(req.winsize)?;
            let pid = self.spawn(
                &req.argv,
                &req.env,
                req.cwd.as_deref(),
                req.user.as_deref(),
                Stdio::Pty(slave),
                true,
            )?;
            Ok((pid, Some(master)))
        } else {
            let fds: [OwnedFd; 3] = passed.try_into().map_err(|_| {
                "exec without a terminal needs exactly stdin, stdout and stderr passed as file descriptors".to_string()
            })?;
            let pid = self.spawn(
                &req.argv,
                &req.env,
                req.cwd.as_deref(),
                req.user.as_deref(),
                Stdio::Fds(fds),
                false,
            )?;
            Ok((pid, None))
        }
    }

    /// Forks and execs one process with the environment's security profile.
    pub(super) fn spawn(
        &self,
        argv: &[String],
        extra_env: &[String],
        cwd: Option<&str>,
        user: Option<&str>,
        stdio: Stdio,
        tty: bool,
    ) -> std::result::Result<i32, String> {
        if argv.is_empty() {
            return Err("empty command".into());
        }
        let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = fs::read_to_string("/etc/group").unwrap_or_default();
        let who = users::resolve(user.or(self.spec.image.user.as_deref()), &passwd, &group)?;
        let env = compose_env(&self.spec, &who.home, tty, extra_env);
        let path_var = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        // The SSH endpoint's builtins run in the child itself instead of an `execve`.
        let builtin = crate::ssh_inside::builtin(argv);
        let program = if builtin.is_some() {
            argv[0].clone()
        } else {
            find_program(&argv[0], &path_var)
        };
        let cwd = cwd.map_or_else(
            || default_cwd(self.spec.image.workdir.as_deref()),
            str::to_string,
        );
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"));
        let c_prog = c(&program)?;
        let c_argv: Vec<CString> = argv
            .iter()
            .map(|a| c(a))
            .collect::<std::result::Result<_, _>>()?;
        let c_env: Vec<CString> = env
            .iter()
            .map(|a| c(a))
            .collect::<std::result::Result<_, _>>()?;
        let c_cwd = c(&cwd)?;
        let devnull = match &stdio {
            Stdio::Pipe(_) => Some(
                fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?,
            ),
            _ => None,
        };
        // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code.
        match unsafe { nix::unistd::fork() } {
            Err(e) => Err(format!("cannot fork: {e}")),
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child.as_raw()),
            Ok(nix::unistd::ForkResult::Child) => {
                let err = child_exec(
                    &self.security,
                    &who,
                    &stdio,
                    devnull.as_ref(),
                    &c_prog,
                    &c_argv,
                    &c_env,
                    &c_cwd,
                    builtin,
                );
                let msg = exec_failure_message(&argv[0], &cwd, err);
                // SAFETY: writing to our stderr and exiting without unwinding.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::_exit(if err == ("exec", libc::ENOENT) {
                        127
                    } else {
                        126
                    })
                }
            }
        }
    }
}

/// The working directory of a command that asked for none: the image's, or `/` when the image
/// names none or the folder does not exist (as Docker does), the same as the VM agent. An
/// asked-for folder that does not exist fails the command instead.
fn default_cwd(image_workdir: Option<&str>) -> String {
    match image_workdir {
        Some(dir) if Path::new(dir).is_dir() => dir.to_string(),
        _ => "/".to_string(),
    }
}

const STEP_CHDIR: &str = "change to the working directory";
const STEP_CWD_OUTSIDE: &str = "working directory outside the environment";

/// What the forked child prints when it cannot run `program` (the failing step and errno
/// returned by [`child_exec`]); names the working directory when that was the problem.
fn exec_failure_message(program: &str, cwd: &str, (step, errno): (&str, i32)) -> String {
    match step {
        STEP_CWD_OUTSIDE => format!(
            "berth: cannot run {program}: the working directory {cwd} is outside the environment \
             (it leads to a folder of the host); choose a folder inside the environment\n"
        ),
        STEP_CHDIR => format!(
            "berth: cannot run {program}: cannot change to the working directory {cwd}: {}\n",
            io::Error::from_raw_os_error(errno)
        ),
        _ => format!(
            "berth: cannot run {program}: {step}: {}\n",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// Whether the current working directory is reachable from this process's root (runc's check
/// since 1.1.12): the kernel's getcwd prefixes "(unreachable)" to a folder outside the root,
/// e.g. one entered through a descriptor opened before pivot_root. A raw system call: the C
/// library's wrapper hides the prefix behind ENOENT only in newer versions.
pub fn cwd_is_inside_root() -> bool {
    let mut buf = [0u8; libc::PATH_MAX as usize];
    // SAFETY: getcwd writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    rc > 0 && buf[0] == b'/'
}

/// Runs in the forked child; returns only on failure (step name, errno).
#[allow(clippy::too_many_arguments)]
fn child_exec(
    security: &ProcessSecurity,
    who: &users::ResolvedUser,
    stdio: &Stdio,
    devnull: Option<&fs::File>,
    prog: &CString,
    argv: &[CString],
    env: &[CString],
    cwd: &CString,
    builtin: Option<Box<dyn FnOnce() -> i32>>,
) -> (&'static str, i32) {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let _ = SigSet::all().thread_unblock();
    // SAFETY: resetting signal dispositions to their defaults in the child before exec.
    unsafe {
        for s in [
            libc::SIGPIPE,
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
        ] {
            libc::signal(s, libc::SIG_DFL);
        }
    }
    let _ = nix::unistd::setsid();
    // SAFETY: dup2/open/ioctl on descriptors this child owns.
    unsafe {
        match stdio {
            Stdio::Fds(fds) => {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(fd.as_raw_fd(), i as i32) < 0 {
                        return ("redirect stdio", errno());
                    }
                }
            }
            Stdio::Pty(slave) => {
                let fd = libc::open(slave.as_ptr(), libc::O_RDWR);
                if fd < 0 {
                    return ("open the terminal", errno());
                }
                if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                    return ("make the terminal the controlling one", errno());
                }
                for i in 0..3 {
                    libc::dup2(fd, i);
                }
            }
            Stdio::Pipe(w) => {
                if let Some(n) = devnull {
                    libc::dup2(n.as_raw_fd(), 0);
                }
                libc::dup2(w.as_raw_fd(), 1);
                libc::dup2(w.as_raw_fd(), 2);
            }
        }
    }
    // Nothing but the three standard streams may be open from here on: a descriptor of a host
    // folder the supervisor holds (its log folder, the control socket's) would otherwise be
    // reachable as /proc/self/fd/N by the chdir below (CVE-2024-21626), and close-on-exec
    // only takes effect at execve, after the chdir.
    close_fds_from(3);
    if security.drop_bounding().is_err() {
        return ("drop capabilities", errno());
    }
    let gids: Vec<nix::unistd::Gid> = who
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // Fails in a single-id user namespace (setgroups denied); the gid below still applies.
    let _ = nix::unistd::setgroups(&gids);
    let g = nix::unistd::Gid::from_raw(who.gid);
    let u = nix::unistd::Uid::from_raw(who.uid);
    if let Err(e) = nix::unistd::setresgid(g, g, g) {
        return ("switch group", e as i32);
    }
    if let Err(e) = nix::unistd::setresuid(u, u, u) {
        return ("switch user", e as i32);
    }
    // SAFETY: chdir with a NUL-terminated path.
    if unsafe { libc::chdir(cwd.as_ptr()) } != 0 {
        return (STEP_CHDIR, errno());
    }
    if !cwd_is_inside_root() {
        return (STEP_CWD_OUTSIDE, libc::EXDEV);
    }
    if let Err(step) = security.apply_before_exec() {
        return (step, errno());
    }
    if let Some(run) = builtin {
        let code = run();
        // SAFETY: ending the child without running the supervisor's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of pointers to live CStrings.
    unsafe { libc::execve(prog.as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    ("exec", errno())
}

/// PATH, HOME, HOSTNAME (and TERM for a tty), then the image's, the spec's and the request's
/// variables, later ones overriding earlier ones.
pub fn compose_env(spec: &ContainerSpec, home: &str, tty: bool, extra: &[String]) -> Vec<String> {
    let mut vars: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.into()),
        ("HOSTNAME".into(), spec.hostname.clone()),
    ];
    if tty {
        vars.push(("TERM".into(), "xterm".into()));
    }
    let mut set = |k: &str, v: &str| match vars.iter_mut().find(|(kk, _)| kk == k) {
        Some(e) => e.1 = v.to_string(),
        None => vars.push((k.to_string(), v.to_string())),
    };
    // The environment's gitconfig written at `up` (the host's git identity); the image's and `[env]`'s variables win.
    if Path::new(crate::ssh_inside::GITCONFIG_PATH).exists() {
        set("GIT_CONFIG_SYSTEM", crate::ssh_inside::GITCONFIG_PATH);
    }
    for e in &spec.image.env {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    // `[secrets]` with `as_env`, from their tmpfs (not there yet: left out).
    for name in &spec.secret_env {
        let path = format!("{}/{name}", crate::ssh_inside::SECRETS_DIR);
        if let Ok(v) = fs::read(&path) {
            if let Ok(v) = String::from_utf8(v) {
                if !v.contains('\0') {
                    set(name, &v);
                }
            }
        }
    }
    for e in extra {
        if let Some((k, v)) = e.split_once('=') {
            set(k, v);
        }
    }
    vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `name` searched in `path` when it has no slash; returned unchanged when not found (exec
/// then reports it missing).
pub fn find_program(name: &str, path: &str) -> String {
    if name.contains('/') {
        return name.to_string();
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = std::path::Path::new(dir).join(name);
        if let Ok(m) = fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return p.to_string_lossy().into_owned();
            }
        }
    }
    name.to_string()
}

/// A new PTY in the environment's devpts: (master, slave path).
fn open_pty(winsize: Option<(u16, u16)>) -> std::result::Result<(OwnedFd, CString), String> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )
    .map_err(|e| format!("cannot open a terminal (/dev/ptmx): {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    if let Some((rows, cols)) = winsize {
        berth_inside_files::window_size::set(master.as_raw_fd(), rows, cols);
    }
    use std::os::fd::IntoRawFd;
    // SAFETY: PtyMaster gives up its fd; the OwnedFd is its only owner.
    let fd = unsafe { OwnedFd::from_raw_fd(master.into_raw_fd()) };
    Ok((
        fd,
        CString::new(name).map_err(|_| "bad pty name".to_string())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::path::Path;

    #[test]
    fn env_layers_override_in_order() {
        let mut s = ContainerSpec::new("e", "host", Path::new("/s"), vec!["/l".into()]);
        s.image.env = vec!["PATH=/img".into(), "A=img".into()];
        s.env.insert("A".into(), "spec".into());
        let e = compose_env(&s, "/root", true, &["B=req".into(), "A=req".into()]);
        assert!(e.contains(&"PATH=/img".to_string()));
        assert!(e.contains(&"A=req".to_string()));
        assert!(e.contains(&"TERM=xterm".to_string()));
        assert!(e.contains(&"HOSTNAME=host".to_string()));
        assert_eq!(e.iter().filter(|v| v.starts_with("A=")).count(), 1);
    }

    #[test]
    fn the_default_working_directory_falls_back_to_the_root() {
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().unwrap();
        assert_eq!(default_cwd(Some(tmp)), tmp);
        assert_eq!(default_cwd(Some("/nonexistent/berth-default-cwd")), "/");
        assert_eq!(default_cwd(None), "/");
    }

    #[test]
    fn failures_name_the_working_directory() {
        let m = exec_failure_message("sh", "/proc/self/fd/0", (STEP_CWD_OUTSIDE, libc::EXDEV));
        assert!(
            m.contains("/proc/self/fd/0 is outside the environment"),
            "{m}"
        );
        let m = exec_failure_message("sh", "/nope", (STEP_CHDIR, libc::ENOENT));
        assert!(m.contains("working directory /nope: No such file"), "{m}");
        let m = exec_failure_message("sh", "/", ("exec", libc::ENOENT));
        assert!(m.starts_with("berth: cannot run sh: exec: "), "{m}");
    }

    #[test]
    fn a_cwd_outside_the_root_is_detected() {
        // Needs chroot (root); the check itself runs in a forked child.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root for chroot; CI runs as root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("root")).unwrap();
        let outside = fs::File::open(t.path()).unwrap();
        let root = CString::new(t.path().join("root").to_str().unwrap()).unwrap();
        // SAFETY: the child makes system calls only and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut code = 0;
                // SAFETY: chroot/chdir/fchdir with valid arguments, in the child only.
                unsafe {
                    if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                        libc::_exit(10);
                    }
                    if !cwd_is_inside_root() {
                        code |= 1;
                    }
                    // What /proc/self/fd/N of a folder opened before the chroot gives.
                    if libc::fchdir(outside.as_raw_fd()) != 0 {
                        libc::_exit(11);
                    }
                    if cwd_is_inside_root() {
                        code |= 2;
                    }
                    libc::_exit(code);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = waitpid(child, None).unwrap();
                assert_eq!(st, WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn programs_are_found_on_path() {
        assert_eq!(find_program("/x/y", "/bin"), "/x/y");
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("tool");
        fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", t.path().display());
        assert_eq!(find_program("tool", &path), p.to_string_lossy());
        assert_eq!(find_program("missing", &path), "missing");
    }
}
