//! berth's SSH endpoint (`berth ssh`, `berth ssh --stdio`, `berth ssh-config`) with
//! OpenSSH's real clients (`ssh`, `scp`, `sftp`, driven through `expect` for a terminal)
//! against a running container, and the hostile-input side of `--stdio`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::bounded_wait::wait_within;
use berth_e2e::host::have;
use berth_e2e::ports::free_port;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

const TOML: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[env]
GREETING = "hi there"
[shell]
workdir = "/work"
"#;

/// Returns from the test unless OpenSSH's clients and expect are installed (scripts/install-deps
/// installs them; CI has them).
macro_rules! require_ssh_clients {
    () => {
        for tool in ["ssh", "scp", "sftp", "expect"] {
            if !have(tool, "-V") && !have(tool, "-v") {
                eprintln!(
                    "skipped: {tool} is not installed (apt-get install openssh-client expect)"
                );
                return;
            }
        }
    };
}

/// The `berth ssh-config` output of this test's home, written to a file for `ssh -F`.
fn ssh_config(b: &Berth, p: &Project) -> PathBuf {
    let out = b.ok(p.path(), &["ssh-config"]);
    let file = p.path().join("ssh_config");
    std::fs::write(&file, out).unwrap();
    file
}

/// Runs `tool -F cfg args…` (tool: ssh, scp, sftp) with a deadline.
fn client(tool: &str, cfg: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new("timeout");
    c.arg("60").arg(tool).arg("-F").arg(cfg).args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn client_ok(tool: &str, cfg: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = client(tool, cfg, args, stdin);
    let (out, err) = text(&o);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed ({:?}):\n{out}\n{err}",
        o.status
    );
    out
}

#[test]
fn ssh_exec_terminal_scp_sftp_and_port_forwarding_in_a_container() {
    require_root!();
    require_ssh_clients!();
    let p = Project::new("berth-proj-", "ssh-", TOML);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let cfg = ssh_config(&b, &p);
    let host = format!("berth-{}", p.name);
    let config_text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        config_text.contains(&format!("Host {host}\n"))
            && config_text.contains(&format!("ssh --stdio '{}'", p.name))
            && config_text.contains(&format!("HostKeyAlias {host}")),
        "{config_text}"
    );

    // exec: hostname, [env], the shell's workdir, separate streams, exit status.
    let out = client_ok("ssh", &cfg, &[&host, "uname -n"], None);
    assert_eq!(out, format!("{}\n", p.name));
    let o = client(
        "ssh",
        &cfg,
        &[&host, "echo $GREETING; pwd; echo oops >&2; exit 3"],
        None,
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}\n{err}");
    assert_eq!(out, "hi there\n/work\n");
    assert!(err.contains("oops"), "{err}");
    // stdin reaches the command and its end is the command's EOF.
    let out = client_ok("ssh", &cfg, &[&host, "tr a-z A-Z"], Some("piped in\n"));
    assert_eq!(out, "PIPED IN\n");
    // LANG is accepted like sshd's AcceptEnv default; other variables are not.
    let o = Command::new("timeout")
        .args(["60", "ssh", "-F"])
        .arg(&cfg)
        .args([
            "-o",
            "SendEnv=LANG BERTH_NOT_ACCEPTED",
            &host,
            "echo \"$LANG/$BERTH_NOT_ACCEPTED\"",
        ])
        .env("LANG", "C.UTF-8")
        .env("BERTH_NOT_ACCEPTED", "leak")
        .output()
        .unwrap();
    assert_eq!(text(&o).0, "C.UTF-8/\n", "{}", text(&o).1);

    // `berth ssh NAME -- CMD` runs the system ssh with itself as the ProxyCommand.
    let o = b
        .cmd()
        .current_dir(p.path())
        .args(["ssh", &p.name, "--", "echo", "via", "berth", "ssh"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&o).0, "via berth ssh\n", "{}", text(&o).1);

    // A terminal: size from pty-req, a window change seen by `stty size`, Ctrl-C reaching the
    // foreground command, the shell's exit status.
    // OpenSSH's client may send keys typed right after a SIGWINCH before the window-change
    // (it reads stdin when ppoll returns with the signal still pending and checks the window
    // on the next turn), so the first `stty size` after the resize may rightly show the old
    // size: it is asked again (at most 5 times) until the new one shows. CI saw this once
    // (stop 25: "24 80" then NO-WINDOW-CHANGE).
    let script = format!(
        r##"
set timeout 20
spawn ssh -F {cfg} {host}
stty rows 24 columns 80 < $spawn_out(slave,name)
expect "# "
send "stty size\r"
expect "24 80" {{}} timeout {{ puts "NO-INITIAL-SIZE"; exit 1 }}
stty rows 33 columns 111 < $spawn_out(slave,name)
set seen 0
for {{set i 0}} {{$i < 5 && !$seen}} {{incr i}} {{
  send "stty size\r"
  expect "33 111" {{ set seen 1 }} "24 80" {{}} timeout {{}}
}}
if {{!$seen}} {{ puts "NO-WINDOW-CHANGE"; exit 1 }}
send "sleep 1000; echo after-\$((40+2))\r"
sleep 0.5
send "\003"
expect "# " {{}} timeout {{ puts "CTRL-C-IGNORED"; exit 1 }}
send "exit 7\r"
expect eof
catch wait result
puts "EXIT=[lindex $result 3]"
"##,
        cfg = cfg.display()
    );
    let o = Command::new("timeout")
        .args(["60", "expect", "-c", &script])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(
        o.status.success() && out.contains("EXIT=7") && !out.contains("after-42"),
        "terminal session:\n{out}\n{err}"
    );

    // scp both ways (OpenSSH 9's scp speaks SFTP) and sftp -b.
    let up = p.path().join("up.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&up, &payload).unwrap();
    client_ok(
        "scp",
        &cfg,
        &[up.to_str().unwrap(), &format!("{host}:/tmp/up.bin")],
        None,
    );
    let down = p.path().join("down.bin");
    client_ok(
        "scp",
        &cfg,
        &[&format!("{host}:/tmp/up.bin"), down.to_str().unwrap()],
        None,
    );
    assert!(
        std::fs::read(&down).unwrap() == payload,
        "scp round trip changed the file"
    );
    let out = client_ok(
        "sftp",
        &cfg,
        &["-b", "-", &host],
        Some(&format!(
            "pwd\nmkdir /tmp/d\nput {} /tmp/d/a.bin\nrename /tmp/d/a.bin /tmp/d/b.bin\nls -l /tmp/d\nget /tmp/d/b.bin {}\nrm /tmp/d/b.bin\nrmdir /tmp/d\n",
            up.display(),
            p.path().join("sftp.bin").display()
        )),
    );
    assert!(out.contains("Remote working directory: /work"), "{out}");
    assert!(out.contains("b.bin") && out.contains("300000"), "{out}");
    assert!(std::fs::read(p.path().join("sftp.bin")).unwrap() == payload);
    let gone = b.ok(
        p.path(),
        &["exec", "--", "sh", "-c", "ls /tmp/d 2>&1 || true"],
    );
    assert!(gone.contains("No such file"), "{gone}");

    // ssh -L to a listener inside the environment (its own loopback, not the host's).
    let mut listener = Reaped(
        b.cmd()
            .current_dir(p.path())
            .args(["exec", "--", "sh", "-c", "echo from-inside | nc -l -p 9000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(|| {
        b.ok(p.path(), &["exec", "--", "netstat", "-ltn"])
            .contains(":9000 ")
    });
    let port = free_port();
    let fwd = Reaped(
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("127.0.0.1:{port}:127.0.0.1:9000"),
                &host,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let got = read_forwarded(port, b"to-inside\n");
    let _ = listener.0.wait();
    let mut sent = String::new();
    std::io::Read::read_to_string(&mut listener.0.stdout.take().unwrap(), &mut sent).unwrap();
    assert_eq!(got, "from-inside\n");
    assert_eq!(sent, "to-inside\n");
    // Nothing listens on 9001 inside: the channel is refused with the reason.
    let refused = read_forwarded_refused(port, &host, &cfg);
    assert!(refused.contains("Connection refused"), "{refused}");
    drop(fwd);

    // ssh -R: a port inside the environment (its loopback) reaches a server on the host.
    let host_server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_server.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = host_server.accept().unwrap();
        c.write_all(b"from-host\n").unwrap();
    });
    let _reverse = Reaped(
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("127.0.0.1:9100:127.0.0.1:{host_port}"),
                &host,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for(|| {
        b.ok(p.path(), &["exec", "--", "netstat", "-ltn"])
            .contains("127.0.0.1:9100 ")
    });
    let got = b.ok(
        p.path(),
        &["exec", "--", "sh", "-c", "nc 127.0.0.1 9100 </dev/null"],
    );
    assert_eq!(got, "from-host\n");
    server.join().unwrap();
    // A port the environment's user may not bind is refused with the reason.
    let o = client(
        "ssh",
        &cfg,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:9100:127.0.0.1:1",
            &host,
            "true",
        ],
        None,
    );
    assert!(!o.status.success(), "a taken port was forwarded");
    let err = text(&o).1;
    assert!(
        err.contains("forwarding failed") && err.contains("in use"),
        "{err}"
    );
    drop(_reverse);

    // Refused cleanly: an unknown subsystem.
    let o = client("ssh", &cfg, &["-s", &host, "netconf"], None);
    assert!(!o.status.success());
    // (The reason sent on stderr just before may or may not be printed by ssh, which exits
    // at the refusal.)
    assert!(
        text(&o).1.contains("subsystem request failed"),
        "{}",
        text(&o).1
    );

    // A client that goes away hangs up on its command: nothing is left running inside.
    let mut gone_client = Reaped(
        Command::new("ssh")
            .arg("-F")
            .arg(&cfg)
            .args([&host, "sleep 4321"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(|| b.ok(p.path(), &["exec", "--", "ps"]).contains("sleep 4321"));
    gone_client.0.kill().unwrap();
    gone_client.0.wait().unwrap();
    wait_for(|| !b.ok(p.path(), &["exec", "--", "ps"]).contains("sleep 4321"));

    // The host key: private to berth's home, not in env.json, the same after down/up.
    let env_dir = b.home.path().join("envs").join(env_id(&b, &p));
    let key = env_dir.join("ssh_host_ed25519_key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let record = std::fs::read_to_string(env_dir.join("env.json")).unwrap();
    assert!(!record.contains("OPENSSH PRIVATE KEY"));
    let known = std::fs::read_to_string(b.home.path().join("ssh/known_hosts")).unwrap();
    b.ok(p.path(), &["down"]);
    b.ok(p.path(), &["up"]);
    let cfg = ssh_config(&b, &p);
    assert_eq!(
        std::fs::read_to_string(b.home.path().join("ssh/known_hosts")).unwrap(),
        known
    );
    // StrictHostKeyChecking: the same key is still accepted.
    client_ok("ssh", &cfg, &[&host, "true"], None);

    b.ok(p.path(), &["destroy"]);
    p.snapshot(&b).assert_nothing_leaked(&before);
}

/// A child process killed and reaped when dropped (also when an assertion fails first).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_id(b: &Berth, p: &Project) -> String {
    let out = b.ok(p.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["env_id"].as_str().unwrap().to_string()
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Connects to the forwarded port (retrying while ssh sets it up), sends `send`, returns
/// what comes back until the far end closes.
fn read_forwarded(port: u16, send: &[u8]) -> String {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the forwarded port never opened: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(send).unwrap();
    // Half-closed, as a client that sent everything does: the listener inside sees EOF.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got
}

/// `ssh -L` to a port nothing listens on inside: what ssh says about the refused channel.
fn read_forwarded_refused(_: u16, host: &str, cfg: &Path) -> String {
    use std::io::Read;
    let port = free_port();
    let mut fwd = Reaped(
        Command::new("ssh")
            .arg("-F")
            .arg(cfg)
            .args([
                "-N",
                "-L",
                &format!("127.0.0.1:{port}:127.0.0.1:9001"),
                host,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let got = read_forwarded(port, b"x");
    assert_eq!(got, "", "a refused channel carried data");
    std::thread::sleep(Duration::from_millis(300));
    let _ = fwd.0.kill();
    let _ = fwd.0.wait();
    let mut err = String::new();
    fwd.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    err
}

#[test]
fn stdio_refuses_bad_input_clearly_and_leaves_nothing_running() {
    require_root!();
    require_ssh_clients!();
    let p = Project::new("berth-proj-", "sshbad-", TOML);
    let b = Berth::new();
    let before = p.snapshot(&b);

    // A name that does not exist.
    let o = b.run_in(p.path(), &["ssh", "--stdio", "no-such-env"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o).1.contains("no environment no-such-env"),
        "{}",
        text(&o).1
    );

    b.ok(p.path(), &["up"]);
    let cfg = ssh_config(&b, &p);
    let host = format!("berth-{}", p.name);

    // Garbage of several kinds on --stdio: a clear error, an exit, no process left.
    let mut junk: Vec<u8> = Vec::new();
    let mut x: u32 = 12345;
    for _ in 0..100_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        junk.push((x >> 16) as u8);
    }
    let mut framed = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
    framed.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let mut framed_junk = b"SSH-2.0-OpenSSH_9.2\r\n".to_vec();
    framed_junk.extend_from_slice(&junk);
    for (what, input) in [
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("random bytes", junk.clone()),
        ("a huge packet length", framed),
        ("random packets", framed_junk),
        ("nothing", Vec::new()),
    ] {
        let t0 = Instant::now();
        let mut child = b
            .cmd()
            .current_dir(p.path())
            .args(["ssh", "--stdio", &p.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&input);
        drop(stdin);
        let o = wait_within(
            child,
            Duration::from_secs(20),
            &|| format!("berth ssh --stdio (did not exit on {what})"),
            &String::new,
        );
        let err = text(&o).1;
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("SSH connection failed"), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(t0.elapsed() < Duration::from_secs(20));
    }

    // An environment that is not running: berth says so (ssh shows the ProxyCommand's stderr).
    b.ok(p.path(), &["down"]);
    let o = client("ssh", &cfg, &[&host, "true"], None);
    assert_eq!(o.status.code(), Some(255));
    assert!(
        text(&o)
            .1
            .contains("is not running; start it with `berth up`"),
        "{}",
        text(&o).1
    );
    let o = b.run_in(p.path(), &["ssh", "--", "true"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).1.contains("is not running"), "{}", text(&o).1);

    b.ok(p.path(), &["destroy"]);
    p.snapshot(&b).assert_nothing_leaked(&before);
}

#[test]
fn ssh_config_install_adds_one_include_and_keeps_the_users_config() {
    require_root!();
    let p = Project::new("berth-proj-", "sshcfg-", TOML);
    let b = Berth::new();
    b.ok(p.path(), &["up"]);
    let home = tempfile::tempdir().unwrap();
    let ssh_dir = home.path().join(".ssh");
    std::fs::create_dir(&ssh_dir).unwrap();
    let mine = "Host *\n  ServerAliveInterval 30\n";
    std::fs::write(ssh_dir.join("config"), mine).unwrap();
    for round in 0..2 {
        let o = b
            .cmd()
            .current_dir(p.path())
            .env("HOME", home.path())
            .args(["ssh-config", "--install"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o).1);
        let config = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
        assert!(config.ends_with(mine), "round {round}: {config}");
        assert_eq!(
            config.matches("Include").count(),
            1,
            "round {round}: {config}"
        );
        let ours = std::fs::read_to_string(ssh_dir.join("berth_config")).unwrap();
        assert!(ours.contains(&format!("Host berth-{}\n", p.name)), "{ours}");
    }
    assert_eq!(
        std::fs::read_to_string(ssh_dir.join("config.berth-backup")).unwrap(),
        mine
    );
    b.ok(p.path(), &["destroy"]);
}
