//! Starting berth's own long-lived helper processes (the VMM, the live-sync process)
//! detached from the calling command: their own session (no controlling terminal, so the
//! caller's Ctrl-C does not reach them), stdin from /dev/null, stdout and stderr appended to
//! a log file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Spawns `cmd` detached, its output going to `log` (created or truncated).
pub fn spawn_detached(mut cmd: Command, log: &Path) -> io::Result<Child> {
    let out: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(log)?;
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
