//! The agent served over a socketpair on the host (no VM): exec semantics end to end.

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use berth_agent_proto::{Client, Exec, Restart, ServiceSpec, Setup};

struct Agent {
    child: Child,
    client: Client,
    /// The host's end of the channel, for a second client on it.
    channel: UnixStream,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Agent {
    start_agent(false)
}

/// The agent in a mount namespace of its own with a tmpfs over `/var/log`, so what it writes
/// to the services' logs (`/var/log/berth`) stays out of the host's. Needs root.
fn start_agent(private_logs: bool) -> Agent {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.into_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-agent"));
    cmd.arg("--serve-fd").arg(fd.to_string());
    // SAFETY: only system calls between fork and exec (fcntl to let the child inherit the
    // socket; unshare and mount with static strings for the private /var/log).
    unsafe {
        cmd.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            if private_logs {
                let none = std::ptr::null();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        none,
                        c"/".as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        none.cast(),
                    ) != 0
                    || libc::mount(
                        c"tmpfs".as_ptr(),
                        c"/var/log".as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        none.cast(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let child = cmd.spawn().unwrap();
    // The child has its own copy now.
    // SAFETY: fd came from into_raw_fd above and is closed exactly once.
    unsafe { libc::close(fd) };
    let mut agent = Agent {
        child,
        channel: ours.try_clone().unwrap(),
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

/// A client that leaves without the channel telling the agent (berth's VMM's console has no
/// port events: a killed `berth exec`) leaves its session running. The next client on the
/// channel numbers its sessions from 1 again: its hello ends the old sessions, so its first
/// command starts, and nothing of the old one (output, exit) reaches it. Before, the agent
/// answered "session 1 is already running" and later sent the old session's exit to the new
/// client, which took it for its own (a VM's live sync then saw "the sync channel closed").
#[test]
fn a_new_client_on_a_channel_gets_nothing_of_the_sessions_of_the_one_before() {
    let mut a = start();
    let old = a
        .client
        .start(Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), "sleep 1; echo stale".into()],
            ..Exec::default()
        })
        .unwrap();
    let mut next = Client::new(a.channel.try_clone().unwrap()).unwrap();
    next.hello(Duration::from_secs(10)).unwrap();
    let first = next.run(&["/bin/sh", "-c", "sleep 2; echo fresh"]).unwrap();
    assert_eq!(
        (first.status.code, first.stdout.as_slice()),
        (0, b"fresh\n".as_slice()),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        first.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = next.run(&["echo", "again"]).unwrap();
    assert_eq!(second.stdout, b"again\n");
    drop(old);
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

#[test]
fn a_crashing_service_restarts_with_a_growing_back_off() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a private /var/log (mount namespace); CI runs as root");
        return;
    }
    let mut a = start_agent(true);
    let flaky = ServiceSpec {
        name: "flaky".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), "echo run; exit 3".into()],
        env: Vec::new(),
        cwd: None,
        restart: Restart::Always,
    };
    let setup = Setup {
        services: vec![flaky],
        ..Setup::default()
    };
    a.client.setup(setup, Duration::from_secs(10)).unwrap();
    // The same back-off and log notes as a container's supervisor: 100 ms, then doubling.
    let expected: Vec<String> = [100, 200, 400, 800]
        .iter()
        .map(|ms| format!("[berth] service flaky exited with code 3; restarting in {ms} ms"))
        .collect();
    let started = std::time::Instant::now();
    let log = loop {
        let out = a.client.run(&["cat", "/var/log/berth/flaky.log"]).unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        if log.lines().filter(|l| l.starts_with("[berth]")).count() >= expected.len() {
            break log;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the service did not exit and restart four times in 20 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // 100 + 200 + 400 ms of waiting before the fourth run could end.
    assert!(started.elapsed() >= Duration::from_millis(700), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "run",
            &expected[0],
            "run",
            &expected[1],
            "run",
            &expected[2],
            "run",
            &expected[3]
        ],
        "{log}"
    );
}

/// A command started with `Forward` gets a private folder with the sockets asked for, and a
/// real client's connection (`ssh-add -l`) arrives on the host as a stream of that session:
/// the host answers the agent protocol by hand ("no identities"). The folder goes with the
/// command; a command started without `Forward` gets nothing.
#[test]
fn a_forwarded_socket_becomes_a_stream_of_its_session() {
    use berth_agent_proto::{Forward, Message, StreamKind};
    if !std::path::Path::new("/usr/bin/ssh-add").exists() {
        eprintln!("skipped: ssh-add is not installed (apt-get install openssh-client)");
        return;
    }
    let mut a = start();
    let h = a
        .client
        .start_forwarding(
            Exec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo $SSH_AUTH_SOCK; stat -c %a $(dirname $SSH_AUTH_SOCK); ssh-add -l; echo rc=$?"
                        .into(),
                ],
                ..Exec::default()
            },
            Some(Forward {
                agent: true,
                git_credentials: false,
                gitconfig: None,
            }),
        )
        .unwrap();
    h.stdin(&[]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut seen = Vec::new();
    let answer = h.clone();
    // What the stream brought so far: ssh-add writes the request's length and its body with
    // two writes, which may arrive as two frames.
    let mut request = Vec::new();
    let st = a
        .client
        .wait_routing(&h, &mut out, &mut err, &mut |m| {
            match &m {
                Message::StreamOpen { stream, kind } => {
                    assert_eq!(*kind, StreamKind::SshAgent);
                    let _ = stream;
                }
                Message::StreamData { stream, data } => {
                    request.extend_from_slice(data);
                    // SSH2_AGENTC_REQUEST_IDENTITIES → SSH2_AGENT_IDENTITIES_ANSWER, none.
                    if request == [0, 0, 0, 1, 11] {
                        answer
                            .stream_data(*stream, &[0, 0, 0, 5, 12, 0, 0, 0, 0])
                            .unwrap();
                    }
                }
                _ => {}
            }
            seen.push(m);
        })
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(st.code, 0, "{out}{}", String::from_utf8_lossy(&err));
    let sock = out.lines().next().unwrap().to_string();
    let dir = sock
        .strip_suffix("/agent.sock")
        .expect("a socket in the folder");
    assert!(dir.starts_with("/tmp/berth-"), "{out}");
    assert!(
        out.contains("\n700\n")
            && out.contains("The agent has no identities.")
            && out.contains("rc=1"),
        "{out}"
    );
    assert!(
        matches!(seen.first(), Some(Message::StreamOpen { .. })),
        "{seen:?}"
    );
    assert!(
        !std::path::Path::new(dir).exists(),
        "the folder outlived its command"
    );
    let plain = a
        .client
        .run(&["/bin/sh", "-c", "echo ${SSH_AUTH_SOCK:-none}"])
        .unwrap();
    assert_eq!(plain.stdout, b"none\n");
}

/// Kills a process by its pid when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill with a pid and a signal; no memory involved.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// An agent killed while a session's forwarded folder exists (as a harness that gives up on
/// a test kills it) cannot remove the folder; the next forwarding does, since nobody holds
/// the folder's lock any more. A live session's folder is left alone meanwhile.
#[test]
fn a_folder_left_by_a_killed_agent_goes_with_the_next_forwarding() {
    use berth_agent_proto::Forward;
    let forward = || {
        Some(Forward {
            agent: true,
            git_credentials: false,
            gitconfig: None,
        })
    };
    let marks = tempfile::tempdir().unwrap();
    let mark = marks.path().join("folder");
    let mut killed = start();
    let _h = killed
        .client
        .start_forwarding(
            Exec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!(
                        "echo $$ $(dirname $SSH_AUTH_SOCK) > {0}.new && mv {0}.new {0} && exec sleep 60",
                        mark.display()
                    ),
                ],
                ..Exec::default()
            },
            forward(),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !mark.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&mark).unwrap();
    let (pid, dir) = text.trim().split_once(' ').unwrap();
    let _sleep = KillOnDrop(pid.parse().unwrap());
    let dir = std::path::PathBuf::from(dir);
    assert!(
        dir.starts_with("/tmp") && dir.join("agent.sock").exists(),
        "{text}"
    );
    drop(killed);
    assert!(
        dir.exists(),
        "a killed agent cleaned up: this test tests nothing"
    );
    // The next agent's forwarding: its own folder is made, the dead one's goes.
    let mut next = start();
    let h = next
        .client
        .start_forwarding(
            Exec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "test -S $SSH_AUTH_SOCK".into(),
                ],
                ..Exec::default()
            },
            forward(),
        )
        .unwrap();
    h.stdin(&[]).unwrap();
    let st = next
        .client
        .wait(&h, &mut Vec::new(), &mut Vec::new())
        .unwrap();
    assert_eq!(st.code, 0);
    assert!(
        !dir.exists(),
        "the folder of a killed agent's session stayed: {}",
        dir.display()
    );
}
