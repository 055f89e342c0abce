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
