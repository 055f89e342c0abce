//! The agent served over a socketpair on the host (no VM): exec semantics end to end.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use berth_agent_proto::{Client, Exec};

struct Agent {
    child: Child,
    client: Client,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Agent {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-agent"));
    cmd.arg("--serve-fd").arg(fd.to_string());
    // SAFETY: only fcntl between fork and exec, to let the child inherit the socket.
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        })
    };
    let child = cmd.spawn().unwrap();
    // The child has its own copy now.
    // SAFETY: fd came from into_raw_fd above and is closed exactly once.
    unsafe { libc::close(fd) };
    let mut agent = Agent {
        child,
        client: Client::new(ours).unwrap(),
    };
    let info = agent.client.hello(Duration::from_secs(10)).unwrap();
    assert!(info.ready);
    agent
}

#[test]
fn exit_codes_and_separate_streams() {
    let mut a = start();
    let out = a
        .client
        .run(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
        .unwrap();
    assert_eq!(out.status.code, 3);
    assert_eq!(out.status.signal, 0);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let missing = a.client.run(&["definitely-not-a-command-berth"]).unwrap();
    assert_eq!(missing.status.code, 127);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot run"));
}

#[test]
fn stdin_env_cwd_and_signal() {
    let mut a = start();
    let h = a
        .client
        .start(Exec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat; echo \"$GREETING\"; pwd".into(),
            ],
            env: vec![("GREETING".into(), "hi".into())],
            cwd: Some("/tmp".into()),
            ..Exec::default()
        })
        .unwrap();
    h.stdin(b"piped\n").unwrap();
    h.stdin(&[]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = a.client.wait(&h, &mut out, &mut err).unwrap();
    assert_eq!(st.code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(String::from_utf8_lossy(&out), "piped\nhi\n/tmp\n");

    let h = a
        .client
        .start(Exec {
            argv: vec!["sleep".into(), "30".into()],
            ..Exec::default()
        })
        .unwrap();
    h.signal(libc::SIGTERM).unwrap();
    let st = a.client.wait(&h, &mut Vec::new(), &mut Vec::new()).unwrap();
    assert_eq!((st.code, st.signal), (128 + libc::SIGTERM, libc::SIGTERM));
}

#[test]
fn tty_session_reports_terminal_and_size() {
    let mut a = start();
    let h = a
        .client
        .start(Exec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "test -t 0 && stty size".into(),
            ],
            tty: true,
            rows: 33,
            cols: 101,
            ..Exec::default()
        })
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let st = a.client.wait(&h, &mut out, &mut err).unwrap();
    assert_eq!(st.code, 0, "{}", String::from_utf8_lossy(&out));
    assert!(
        String::from_utf8_lossy(&out).contains("33 101"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}
