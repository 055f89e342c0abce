//! Starting processes for `exec`, `shell` and services: fork, new session, pipes or a PTY,
//! user switch, working directory, PATH search, execve.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sys;
use crate::users::User;

pub struct SpawnRequest<'a> {
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: Option<&'a str>,
    pub user: &'a User,
    /// `Some((rows, cols))`: run on a new PTY.
    pub tty: Option<(u16, u16)>,
    /// Send stdout and stderr here instead of pipes (service logs); stdin is /dev/null then.
    pub log: Option<&'a OwnedFd>,
}

pub struct Spawned {
    pub pid: i32,
    /// Write end of stdin (pipe) or the PTY master.
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Candidate paths for `argv[0]`: itself when it has a slash, else each PATH entry.
fn candidates(arg0: &str, env: &[(String, String)]) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    value(env, "PATH")
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{arg0}"))
        .collect()
}

/// The start of the message a child prints when it cannot enter its working directory (the
/// error follows); worded as the container supervisor's.
fn chdir_failure_prefix(program: &str, cwd: &str) -> String {
    format!("berth-agent: cannot run {program}: cannot change to the working directory {cwd}: ")
}

pub fn spawn(req: &SpawnRequest) -> io::Result<Spawned> {
    let Some(arg0) = req.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| sys::cstr(a))
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = req
        .env
        .iter()
        .map(|(k, v)| sys::cstr(&format!("{k}={v}")))
        .collect::<io::Result<_>>()?;
    let paths: Vec<CString> = candidates(arg0, req.env)
        .iter()
        .map(|p| sys::cstr(p))
        .collect::<io::Result<_>>()?;
    // An asked-for working directory must exist; the default one (the user's home) falls back
    // to `/` when the image has no such folder, as Docker does.
    let cwd_text = req.cwd.unwrap_or(&req.user.home);
    let cwd = sys::cstr(cwd_text)?;
    let fallback_cwd = if req.cwd.is_none() {
        Some(sys::cstr("/")?)
    } else {
        None
    };
    let msg_chdir = chdir_failure_prefix(arg0, cwd_text);
    let msg_exec = format!("berth-agent: cannot run {arg0}: ");
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());

    // Parent ends and child ends.
    let mut parent: [Option<OwnedFd>; 3] = [None, None, None];
    let child: [Option<RawFd>; 3];
    let mut keep: Vec<OwnedFd> = Vec::new();
    let devnull;
    if let Some((rows, cols)) = req.tty {
        let (master, slave) = sys::openpty(rows, cols)?;
        let m2 = master.try_clone()?;
        child = [Some(slave.as_raw_fd()); 3];
        parent = [Some(master), Some(m2), None];
        keep.push(slave);
    } else if let Some(log) = req.log {
        devnull = std::fs::File::open("/dev/null")?;
        child = [
            Some(devnull.as_raw_fd()),
            Some(log.as_raw_fd()),
            Some(log.as_raw_fd()),
        ];
    } else {
        let (in_r, in_w) = sys::pipe()?;
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        child = [
            Some(in_r.as_raw_fd()),
            Some(out_w.as_raw_fd()),
            Some(err_w.as_raw_fd()),
        ];
        parent = [Some(in_w), Some(out_r), Some(err_r)];
        keep.extend([in_r, out_w, err_w]);
    }
    let tty = req.tty.is_some();
    let (uid, gid) = (req.user.uid, req.user.gid);
    let groups: Vec<libc::gid_t> = req.user.groups.clone();

    // SAFETY: the agent is single-threaded, so the child may run any code until exec; it only
    // uses memory prepared above and async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child, raw syscalls on descriptors and strings prepared above.
        unsafe {
            sys::unblock_all_signals();
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::setsid();
            for (target, fd) in child.iter().enumerate() {
                if let Some(fd) = fd {
                    libc::dup2(*fd, target as i32);
                }
            }
            berth_inside_files::descriptors::close_from(3);
            if tty {
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            if uid != 0 || gid != 0 {
                libc::setgroups(groups.len(), groups.as_ptr());
                libc::setgid(gid);
                libc::setuid(uid);
            }
            let entered = libc::chdir(cwd.as_ptr()) == 0
                || fallback_cwd
                    .as_ref()
                    .is_some_and(|root| libc::chdir(root.as_ptr()) == 0);
            if !entered {
                let e = io::Error::last_os_error().to_string();
                let _ = sys::write_all(2, format!("{msg_chdir}{e}\n").as_bytes());
                libc::_exit(126);
            }
            let mut last = libc::ENOENT;
            for p in &paths {
                libc::execve(p.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
                let errno = *libc::__errno_location();
                if errno != libc::ENOENT || last == libc::ENOENT {
                    last = errno;
                }
            }
            let e = io::Error::from_raw_os_error(last).to_string();
            let _ = sys::write_all(2, format!("{msg_exec}{e}\n").as_bytes());
            libc::_exit(if last == libc::ENOENT { 127 } else { 126 });
        }
    }
    drop(keep);
    let [stdin, stdout, stderr] = parent;
    for fd in [&stdin, &stdout, &stderr].into_iter().flatten() {
        sys::set_nonblocking(fd.as_raw_fd())?;
    }
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// Runs `argv` as root with `home` and `cwd`; returns (exit code, stdout, stderr).
    fn run(argv: &[&str], home: &str, cwd: Option<&str>) -> (i32, String, String) {
        let user = User {
            home: home.into(),
            ..crate::users::root()
        };
        let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
        let p = spawn(&SpawnRequest {
            argv: &argv,
            env: &[],
            cwd,
            user: &user,
            tty: None,
            log: None,
        })
        .unwrap();
        drop(p.stdin);
        let read_all = |fd: Option<OwnedFd>| {
            let fd = fd.unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match sys::read(fd.as_raw_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(5))
                    }
                    Err(e) => panic!("read: {e}"),
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        let (out, err) = (read_all(p.stdout), read_all(p.stderr));
        let mut status = 0;
        // SAFETY: waiting for the child this test started.
        assert_eq!(unsafe { libc::waitpid(p.pid, &mut status, 0) }, p.pid);
        (libc::WEXITSTATUS(status), out, err)
    }

    #[test]
    fn a_missing_home_falls_back_to_the_root_folder() {
        let gone = "/nonexistent/berth-agent-test-home";
        let (code, out, err) = run(&["/bin/sh", "-c", "pwd"], gone, None);
        assert_eq!((code, out.as_str()), (0, "/\n"), "stderr: {err}");
        let home = std::env::temp_dir();
        let (code, out, _) = run(&["/bin/sh", "-c", "pwd"], home.to_str().unwrap(), None);
        assert_eq!((code, out.trim_end()), (0, home.to_str().unwrap()));
    }

    #[test]
    fn an_asked_for_working_directory_must_exist() {
        let gone = "/nonexistent/berth-agent-test-cwd";
        let (code, out, err) = run(&["/bin/sh", "-c", "pwd"], "/", Some(gone));
        assert_eq!((code, out.as_str()), (126, ""));
        assert_eq!(
            err,
            format!(
                "berth-agent: cannot run /bin/sh: cannot change to the working directory {gone}: \
                 No such file or directory (os error 2)\n"
            )
        );
    }

    /// A descriptor the agent holds without close-on-exec (its channel in `--serve-fd` mode,
    /// anything a future change forgets to mark) never reaches a command: with it, a guest
    /// command could speak the agent protocol to the host as the agent.
    #[test]
    fn a_command_inherits_only_its_three_standard_descriptors() {
        let mut fds = [0; 2];
        // SAFETY: pipe() fills two descriptors, deliberately without O_CLOEXEC.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe() returned these; the test owns them from here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let script = format!(
            "for n in {} {}; do [ -e /proc/$$/fd/$n ] && echo leaked $n; done; echo done",
            r.as_raw_fd(),
            w.as_raw_fd()
        );
        let (code, out, err) = run(&["/bin/sh", "-c", &script], "/", None);
        assert_eq!((code, out.as_str()), (0, "done\n"), "stderr: {err}");
    }

    #[test]
    fn path_search() {
        let env = vec![("PATH".to_string(), "/a::/b".to_string())];
        assert_eq!(candidates("ls", &env), vec!["/a/ls", "/b/ls"]);
        assert_eq!(candidates("./x", &env), vec!["./x"]);
        assert!(candidates("sh", &[]).contains(&"/bin/sh".to_string()));
    }
}
