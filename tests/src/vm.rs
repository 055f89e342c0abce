//! What the VM tests (runtime's `vm_qemu` and the e2e `vm`) share: the workspace, the static
//! guest agent, and one kernel cache per checkout so the Debian kernel is downloaded once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where the VM tests keep downloaded kernels (shared by every VM test of this checkout).
pub fn kernel_cache() -> PathBuf {
    workspace().join("target/berth-test-cache/kernels")
}

/// The static agent, built the way `scripts/build-agent` builds it (into
/// `target/agent-static`; a no-op when it is up to date). In the nested guest (no network,
/// TCG) the harness hands over the one it built on the host: `BERTH_TEST_STATIC_AGENT`.
pub fn static_agent() -> PathBuf {
    if let Some(built) = std::env::var_os("BERTH_TEST_STATIC_AGENT") {
        return PathBuf::from(built);
    }
    let target_dir = workspace().join("target/agent-static");
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "berth-agent",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(workspace())
        .status()
        .unwrap();
    assert!(st.success(), "building the static agent failed");
    target_dir.join("x86_64-unknown-linux-gnu/release/berth-agent")
}

/// `GET /index.html` through a VM's forwarded host `port`, retried while the guest's service
/// may still be starting (100 tries, 100 ms apart; each read waits up to `read_timeout`);
/// the whole answer once it says 200.
pub fn http_get_forwarded(port: u16, read_timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut last = String::new();
    for _ in 0..100 {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(read_timeout))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.contains("200") => return body,
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the forwarded port {port} never answered: {last}");
}

/// Runs `cmd` like [`Command::output`], but for `limit` at most: a command still running
/// then is killed, and the panic says which one hung, with the host's processes at that
/// moment (state and kernel wait channel: a hung VM test in the nested guest otherwise shows
/// only that the guest stopped answering). `context` is added (e.g. the VMs' logs).
pub fn output_within(
    cmd: &mut Command,
    limit: Duration,
    context: &dyn Fn() -> String,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,wchan:32,etime,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(ps: {e})"));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still ran after {limit:?}; killed. Processes then:\n{ps}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_limit_is_killed_and_named() {
        let ok = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(30),
            &String::new,
        );
        assert_eq!(
            (ok.stdout.as_slice(), ok.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let hung = std::panic::catch_unwind(|| {
            output_within(
                Command::new("sleep").arg("30"),
                Duration::from_millis(300),
                &|| "the logs".into(),
            )
        });
        let why = *hung.unwrap_err().downcast::<String>().unwrap();
        assert!(why.contains("\"sleep\" \"30\" still ran after"), "{why}");
        assert!(why.contains("the logs") && why.contains("WCHAN"), "{why}");
    }
}
