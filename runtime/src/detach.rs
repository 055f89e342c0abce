//! Starting berth's own long-lived helper processes (the VMM, the live-sync process)
//! detached from the calling command: their own session (no controlling terminal, so the
//! caller's Ctrl-C does not reach them), stdin from /dev/null, stdout and stderr appended to
//! a log file.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Creates (mode 0600) or truncates the log file `log` for writing, refusing, not following,
/// a symlink in its place or in its folder's: logs live in state folders an environment's
/// processes may have reached, and berth often runs as root.
pub fn create_log_file(log: &Path) -> io::Result<File> {
    use std::os::fd::AsFd;
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", log.display()),
        ));
    };
    let folder =
        crate::state::open_dir_nofollow(dir).map_err(|e| crate::state::refuse_link(dir, e))?;
    crate::state::open_beneath(
        folder.as_fd(),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOCTTY,
        0o600,
    )
    .map_err(|e| crate::state::refuse_link(log, e))
}

/// Spawns `cmd` detached, its output going to `log` (see [`create_log_file`]).
pub fn spawn_detached(mut cmd: Command, log: &Path) -> io::Result<Child> {
    let out = create_log_file(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid between fork and exec is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_path_through_a_link_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("out.log")).unwrap();
        let e = spawn_detached(Command::new("/bin/true"), &d.path().join("out.log")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        std::os::unix::fs::symlink(d.path(), d.path().join("dir")).unwrap();
        assert!(create_log_file(&d.path().join("dir/x.log")).is_err());
    }

    #[test]
    fn detached_child_has_its_own_session_and_logs() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("out.log");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo out; echo err >&2; ps -o sid= -p $$"]);
        let mut child = spawn_detached(cmd, &log).unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
        let sid: u32 = text.lines().last().unwrap().trim().parse().unwrap();
        assert_eq!(sid, pid, "the child leads its own session");
    }
}
