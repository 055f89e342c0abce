//! The host's credentials forwarded into an environment (`[credentials]`): a real
//! `ssh-agent` holding a test key reached from `berth exec`, `berth shell` and SSH sessions
//! (`ssh -A` through the client's agent channel, and berth's own forwarding), privately
//! (another user inside, another environment, a hostile root inside redirecting the socket);
//! the host's git identity and credentials with real `git push` over HTTP with basic auth.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};

use berth_e2e::forwarded::{wait_for, GitServer, Reaped, SshAgent, KEY_COMMENT};
use berth_e2e::host::{copy_program_with_libs, files_containing, have};
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

macro_rules! require_tools {
    ($($tool:literal),*) => {
        $(
            if !have($tool, "--version") && !have($tool, "-V") && !have($tool, "-h") {
                eprintln!("skipped: {} is not installed (scripts/install-deps installs it)", $tool);
                return;
            }
        )*
    };
}

/// A project over busybox with `ssh-add` copied in and two users, `dev` (1000, the shell's
/// user) and `eve` (1001).
fn project(toml: &str) -> Project {
    let p = Project::new("berth-proj-", "creds-", toml);
    let rootfs = p.path().join("rootfs");
    copy_program_with_libs(Path::new("/usr/bin/ssh-add"), &rootfs);
    let mut passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    passwd.push_str("dev:x:1000:1000::/home/dev:/bin/sh\neve:x:1001:1001::/home/eve:/bin/sh\n");
    std::fs::write(rootfs.join("etc/passwd"), passwd).unwrap();
    let mut group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    group.push_str("dev:x:1000:\neve:x:1001:\n");
    std::fs::write(rootfs.join("etc/group"), group).unwrap();
    for (home, id) in [("home/dev", 1000), ("home/eve", 1001)] {
        std::fs::create_dir_all(rootfs.join(home)).unwrap();
        std::os::unix::fs::chown(rootfs.join(home), Some(id), Some(id)).unwrap();
    }
    p
}

const DEV_TOML: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[shell]
user = "dev"
workdir = "/home/dev"
"#;

/// `berth ARGS` in `p` with the host's `SSH_AUTH_SOCK` = `agent` (or none).
fn berth(b: &Berth, p: &Project, agent: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut c = b.cmd();
    c.current_dir(p.path()).args(args).stdin(Stdio::null());
    match agent {
        Some(a) => c.env("SSH_AUTH_SOCK", a),
        None => c.env_remove("SSH_AUTH_SOCK"),
    };
    c.output().unwrap()
}

fn berth_ok(b: &Berth, p: &Project, agent: Option<&Path>, args: &[&str]) -> String {
    let o = berth(b, p, agent, args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "berth {args:?}: {out}\n{err}");
    out
}

#[test]
fn the_host_agent_reaches_exec_shell_and_ssh_sessions_and_nobody_else() {
    require_root!();
    require_tools!("ssh-agent", "ssh-add", "ssh-keygen", "ssh");
    let agent = SshAgent::start();
    let p = project(DEV_TOML);
    let b = Berth::new();
    let before = p.snapshot(&b);
    berth_ok(&b, &p, None, &["up"]);
    let sock = agent.socket();

    // exec: the key is listed; the socket's folder is the session user's alone.
    let out = berth_ok(
        &b,
        &p,
        Some(&sock),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "ssh-add -l; d=$(dirname $SSH_AUTH_SOCK); stat -c 'dir=%a:%u' $d",
        ],
    );
    assert!(out.contains(KEY_COMMENT), "{out}");
    assert!(out.contains("dir=700:1000"), "{out}");
    // `berth run`'s command, in its throw-away environment.
    let out = berth_ok(&b, &p, Some(&sock), &["-q", "run", "--", "ssh-add", "-l"]);
    assert!(out.contains(KEY_COMMENT), "{out}");
    // shell (stdin not a terminal: the shell reads its commands from it).
    let mut c = b.cmd();
    let mut shell = c
        .current_dir(p.path())
        .arg("shell")
        .env("SSH_AUTH_SOCK", &sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"ssh-add -l\nid -un\n")
        .unwrap();
    let o = shell.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(
        out.contains(KEY_COMMENT) && out.contains("dev"),
        "{out}\n{err}"
    );
    // Without SSH_AUTH_SOCK on the host there is no agent inside.
    let out = berth_ok(
        &b,
        &p,
        None,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo agent=${SSH_AUTH_SOCK:-none}",
        ],
    );
    assert_eq!(out, "agent=none\n");

    // Another user inside cannot reach a session's agent; another environment does not
    // even see it; the folder goes with the session.
    let _session = Reaped(
        b.cmd()
            .current_dir(p.path())
            .args([
                "exec",
                "--",
                "sh",
                "-c",
                "echo $SSH_AUTH_SOCK > /tmp/where; chmod 644 /tmp/where; sleep 30",
            ])
            .env("SSH_AUTH_SOCK", &sock)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the session's socket", || {
        berth(
            &b,
            &p,
            None,
            &["exec", "--", "sh", "-c", "test -S \"$(cat /tmp/where)\""],
        )
        .status
        .success()
    });
    let out = berth_ok(
        &b,
        &p,
        None,
        &[
            "exec",
            "--user",
            "eve",
            "--",
            "sh",
            "-c",
            "SSH_AUTH_SOCK=$(cat /tmp/where) ssh-add -l 2>&1; echo rc=$?",
        ],
    );
    assert!(
        !out.contains(KEY_COMMENT) && out.contains("Permission denied") && out.contains("rc=2"),
        "another user reached the agent: {out}"
    );
    let where_ = berth_ok(&b, &p, None, &["exec", "--", "cat", "/tmp/where"]);
    let other = project(DEV_TOML);
    berth_ok(&b, &other, None, &["up"]);
    let out = berth_ok(
        &b,
        &other,
        None,
        &[
            "exec",
            "--user",
            "root",
            "--",
            "sh",
            "-c",
            &format!(
                "SSH_AUTH_SOCK={} ssh-add -l 2>&1; echo rc=$?",
                where_.trim()
            ),
        ],
    );
    assert!(!out.contains(KEY_COMMENT) && out.contains("rc=2"), "{out}");
    berth_ok(&b, &other, None, &["destroy"]);
    drop(_session);
    wait_for("the session's folder to go", || {
        let dir = Path::new(where_.trim())
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        berth(&b, &p, None, &["exec", "--", "test", "-e", &dir])
            .status
            .code()
            == Some(1)
    });

    // SSH: through the client's agent channel (`ssh -A`, the ProxyCommand's berth without
    // SSH_AUTH_SOCK), and berth's own forwarding of its SSH_AUTH_SOCK without -A.
    let config = berth_ok(&b, &p, None, &["ssh-config"]);
    assert!(config.contains("ProxyCommand env "), "{config}");
    let cfg = p.path().join("ssh_config");
    std::fs::write(&cfg, &config).unwrap();
    let cfg_no_agent = p.path().join("ssh_config_no_agent");
    std::fs::write(
        &cfg_no_agent,
        config.replace("ProxyCommand env ", "ProxyCommand env -u SSH_AUTH_SOCK "),
    )
    .unwrap();
    let host = format!("berth-{}", p.name);
    let ssh = |cfg: &Path, forward: &str| {
        let o = Command::new("timeout")
            .args(["60", "ssh", "-F"])
            .arg(cfg)
            .args(["-o", &format!("ForwardAgent={forward}"), &host])
            .arg("ssh-add -l; echo agent=${SSH_AUTH_SOCK:-none}")
            .env("SSH_AUTH_SOCK", &sock)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!("{}{}", text(&o).0, text(&o).1)
    };
    let out = ssh(&cfg_no_agent, "yes");
    assert!(out.contains(KEY_COMMENT), "ssh -A: {out}");
    let out = ssh(&cfg_no_agent, "no");
    assert!(out.contains("agent=none"), "no agent anywhere: {out}");
    let out = ssh(&cfg, "no");
    assert!(out.contains(KEY_COMMENT), "berth's own forwarding: {out}");

    // `[credentials] ssh_agent = false` turns it off.
    let pid = b.status_json(p.path())["pid"].as_i64();
    assert!(pid.is_some());
    p.write(&format!("{DEV_TOML}[credentials]\nssh_agent = false\n"));
    let out = text(&berth(&b, &p, None, &["up"])).1;
    assert!(out.contains("[credentials] changed"), "{out}");
    // No restart for that.
    assert_eq!(b.status_json(p.path())["pid"].as_i64(), pid);
    let out = berth_ok(
        &b,
        &p,
        Some(&sock),
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "echo agent=${SSH_AUTH_SOCK:-none}",
        ],
    );
    assert_eq!(out, "agent=none\n");

    berth_ok(&b, &p, None, &["destroy"]);
    p.snapshot(&b).assert_nothing_leaked(&before);
}

#[test]
fn a_hostile_environment_cannot_point_the_forwarded_agent_elsewhere() {
    require_root!();
    require_tools!("ssh-agent", "ssh-add", "ssh-keygen");
    let agent = SshAgent::start();
    let p = project(DEV_TOML);
    let b = Berth::new();
    berth_ok(&b, &p, None, &["up"]);
    // A listener on the host at a path the environment names.
    let bait_dir = tempfile::Builder::new()
        .prefix("berth-bait-")
        .tempdir()
        .unwrap();
    let bait = bait_dir.path().join("bait.sock");
    let listener = UnixListener::bind(&bait).unwrap();
    listener.set_nonblocking(true).unwrap();

    // Root inside swaps the session's socket for a link to the host's path (and plants the
    // same path inside); the session's user then uses its agent.
    let script = format!(
        "d=$(dirname $SSH_AUTH_SOCK); echo $d > /tmp/where; chmod 644 /tmp/where; \
         while [ ! -e /tmp/swapped ]; do sleep 0.1; done; ssh-add -l 2>&1; echo rc=$?; \
         SSH_AUTH_SOCK={bait} ssh-add -l 2>&1; echo rc=$?",
        bait = bait.display()
    );
    let session = b
        .cmd()
        .current_dir(p.path())
        .args(["exec", "--", "sh", "-c", &script])
        .env("SSH_AUTH_SOCK", agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut session = Reaped(session);
    wait_for("the session", || {
        berth(&b, &p, None, &["exec", "--", "test", "-s", "/tmp/where"])
            .status
            .success()
    });
    let swap = format!(
        "d=$(cat /tmp/where); rm -f $d/agent.sock && ln -s {bait} $d/agent.sock && \
         mkdir -p {dir} && ln -s /nonexistent {bait} && touch /tmp/swapped",
        bait = bait.display(),
        dir = bait_dir.path().display()
    );
    berth_ok(
        &b,
        &p,
        None,
        &["exec", "--user", "root", "--", "sh", "-c", &swap],
    );
    let mut out = String::new();
    session
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains(KEY_COMMENT), "{out}");
    assert!(
        listener.accept().is_err(),
        "berth connected to the host path the environment named"
    );
    berth_ok(&b, &p, None, &["destroy"]);
}

#[test]
fn git_push_inside_uses_the_hosts_identity_and_credentials_without_copying_them() {
    require_root!();
    require_tools!("git", "busybox");
    let password = format!("pw-marker-{}", std::process::id());
    let server = GitServer::start("127.0.0.1", "ada", &password);
    // The host user's git: identity and a credential store holding the password.
    let host_home = tempfile::Builder::new()
        .prefix("berth-git-home-")
        .tempdir()
        .unwrap();
    let store = host_home.path().join("credentials");
    std::fs::write(
        &store,
        format!("http://ada:{password}@127.0.0.1%3a{}\n", server.port),
    )
    .unwrap();
    std::fs::write(
        host_home.path().join(".gitconfig"),
        format!(
            "[user]\n\tname = Ada Host\n\temail = ada@host.example\n[credential]\n\thelper = store --file {}\n",
            store.display()
        ),
    )
    .unwrap();

    let p = project(
        r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[network]
mode = "host"
[[mounts]]
source = "."
target = "/work"
[shell]
user = "dev"
workdir = "/home/dev"
[services.who]
command = ["sh", "-c", "git config user.name; exec sleep 1000"]
"#,
    );
    let rootfs = p.path().join("rootfs");
    copy_program_with_libs(Path::new("/usr/bin/git"), &rootfs);
    copy_program_with_libs(Path::new("/usr/lib/git-core/git-remote-http"), &rootfs);
    // The project folder is a repository of the host user's, writable from inside: its
    // config must not configure what berth runs on the host.
    let host_marker = host_home.path().join("hostile-helper-ran");
    let st = Command::new("git")
        .args(["init", "-q"])
        .arg(p.path())
        .status()
        .unwrap();
    assert!(st.success());
    let b = Berth::new();
    let berth_git = |args: &[&str]| {
        let mut c = b.cmd();
        c.current_dir(p.path())
            .args(args)
            .env("HOME", host_home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("GIT_CONFIG_GLOBAL")
            .stdin(Stdio::null());
        let o = c.output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "berth {args:?}: {out}\n{err}");
        format!("{out}{err}")
    };
    berth_git(&["up"]);
    // Hostile: a credential helper in the project's .git/config (consulted for a host the
    // store has nothing for: `localhost` below), written here on the host;
    // an environment can where its project folder is writable from inside: rootless, a
    // checkout owned by the shell's user).
    let mut git_config = std::fs::OpenOptions::new()
        .append(true)
        .open(p.path().join(".git/config"))
        .unwrap();
    write!(
        git_config,
        "[credential]\n\thelper = \"!touch {}\"\n",
        host_marker.display()
    )
    .unwrap();
    let script = format!(
        "set -e; cd /home/dev; git clone -q {url} r 2>&1; cd r; \
         git config --show-origin user.name; \
         echo one > f; git add f; git commit -q -m from-inside; \
         git push -q origin HEAD:main 2>&1; echo pushed; \
         GIT_TERMINAL_PROMPT=0 git ls-remote http://localhost:{port}/cgi-bin/git/r.git >/dev/null 2>&1 || true; \
         env | grep -c '{password}' || true; \
         if grep -rqs '{password}' /home/dev /tmp; then echo LEAKED-INSIDE; fi",
        url = server.url_via("127.0.0.1"),
        port = server.port,
    );
    // A service gets the identity too (written before the services start). Its line
    // reaches the log when the service has run, which `up` does not wait for.
    let mut logs = String::new();
    wait_for("the service's first line", || {
        logs = berth_git(&["logs", "who"]);
        !logs.trim().is_empty()
    });
    assert!(logs.contains("Ada Host"), "{logs}");
    let out = berth_git(&["exec", "--", "sh", "-c", &script]);
    assert!(out.contains("pushed"), "{out}");
    assert!(
        out.contains("file:/run/berth/gitconfig") && out.contains("Ada Host"),
        "identity from the environment's gitconfig, written at `up`: {out}"
    );
    assert!(!out.contains("LEAKED-INSIDE"), "{out}");
    assert_eq!(server.log().trim(), "from-inside|Ada Host|ada@host.example");
    assert!(
        !host_marker.exists(),
        "berth ran a credential helper the environment configured"
    );
    // An SSH session pushes the same way.
    let config = berth_git(&["ssh-config"]);
    let cfg = p.path().join("ssh_config");
    std::fs::write(
        &cfg,
        config
            .lines()
            .filter(|l| !l.starts_with("berth"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let o = Command::new("timeout")
        .args(["60", "ssh", "-F"])
        .arg(&cfg)
        .arg(format!("berth-{}", p.name))
        .arg("cd /home/dev/r && echo two >> f && git commit -qam over-ssh && git push -q origin HEAD:main 2>&1 && echo pushed")
        .env("HOME", host_home.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(text(&o).0.contains("pushed"), "{:?}", text(&o));
    assert!(
        server.log().starts_with("over-ssh|Ada Host|"),
        "{}",
        server.log()
    );

    // The host user renamed: a warm `up` (which runs the host's git only when a file git
    // read changed) writes the new identity into the environment's gitconfig.
    berth_git(&["up"]);
    let gitconfig = host_home.path().join(".gitconfig");
    let renamed = std::fs::read_to_string(&gitconfig)
        .unwrap()
        .replace("Ada Host", "Ada Renamed");
    std::fs::write(&gitconfig, renamed).unwrap();
    berth_git(&["up"]);
    let out = berth_git(&["exec", "--", "git", "config", "user.name"]);
    assert_eq!(out, "Ada Renamed\n");
    // `[credentials] git_credentials = false`: `exec` forwards nothing per session (no
    // private folder made inside, no host git run).
    let toml = std::fs::read_to_string(p.path().join("berth.toml")).unwrap();
    std::fs::write(
        p.path().join("berth.toml"),
        format!("{toml}[credentials]\ngit_credentials = false\n"),
    )
    .unwrap();
    berth_git(&["up"]);
    // A host git that fails: `exec` must not run it.
    let no_git = host_home.path().join("no-git");
    std::fs::create_dir(&no_git).unwrap();
    std::fs::write(no_git.join("git"), "#!/bin/sh\ntouch \"$0.ran\"\nexit 1\n").unwrap();
    std::fs::set_permissions(
        no_git.join("git"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = b
        .cmd()
        .current_dir(p.path())
        .args([
            "exec",
            "--",
            "sh",
            "-c",
            "echo $GIT_CONFIG_SYSTEM; git config user.name; ls /tmp",
        ])
        .env("HOME", host_home.path())
        .env("PATH", format!("{}:/usr/bin:/bin", no_git.display()))
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.starts_with("/run/berth/gitconfig\nAda Renamed\n") && !out.contains("berth-"),
        "{out}{err}"
    );
    assert!(!no_git.join("git.ran").exists(), "exec ran the host's git");

    // `[credentials] git_credentials = false` and `git = false`: the same push is refused,
    // and the environment's gitconfig is gone.
    let toml = std::fs::read_to_string(p.path().join("berth.toml")).unwrap();
    std::fs::write(p.path().join("berth.toml"), format!("{toml}git = false\n")).unwrap();
    berth_git(&["up"]);
    let out = berth_git(&[
        "exec",
        "--",
        "sh",
        "-c",
        "cd /home/dev/r; echo ${GIT_CONFIG_SYSTEM:-no-gitconfig}; GIT_TERMINAL_PROMPT=0 git push origin HEAD:main 2>&1; echo rc=$?",
    ]);
    assert!(
        out.contains("no-gitconfig") && !out.contains("rc=0"),
        "{out}"
    );

    // The password is nowhere under the berth home (state, logs, the writable layer) nor
    // in status.
    let status = berth_git(&["status", "--json"]);
    assert!(!status.contains(&password));
    let found = files_containing(b.home.path(), &password);
    assert!(found.is_empty(), "the password was written to {found:?}");
    berth_git(&["destroy"]);
}
