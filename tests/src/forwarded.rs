//! Host-side fixtures for forwarded credentials: a real `ssh-agent` holding a fresh test key,
//! and a bare git repository served over HTTP with basic auth (`git http-backend` behind
//! busybox httpd). Both stop on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::text;

/// A child process killed and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 30 s for `cond`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The comment of the key [`SshAgent`] holds (what `ssh-add -l` lists).
pub const KEY_COMMENT: &str = "berth-forwarded-test-key";

/// A real `ssh-agent` on a socket in a temporary folder, holding one fresh ed25519 key
/// whose comment is [`KEY_COMMENT`].
pub struct SshAgent {
    dir: tempfile::TempDir,
    _process: Reaped,
}

impl SshAgent {
    pub fn start() -> SshAgent {
        let dir = tempfile::Builder::new()
            .prefix("berth-agent-test-")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("agent.sock");
        let process = Reaped(
            Command::new("ssh-agent")
                .args(["-D", "-a"])
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let key = dir.path().join("id_ed25519");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", KEY_COMMENT, "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(st.success());
        // ssh-agent binds its socket, then listens.
        wait_for("ssh-agent's socket", || {
            berth_runtime::host::unix_socket::is_listening(&sock).unwrap()
        });
        let o = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        assert!(o.status.success(), "ssh-add: {}", text(&o).1);
        SshAgent {
            dir,
            _process: process,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
}

/// A bare repository `r.git` served by `git http-backend` behind busybox httpd with basic
/// auth on `listen` (an address of the host). Stopped on drop.
pub struct GitServer {
    dir: tempfile::TempDir,
    pub port: u16,
    _httpd: Reaped,
}

impl GitServer {
    pub fn start(listen: &str, user: &str, password: &str) -> GitServer {
        let dir = tempfile::Builder::new()
            .prefix("berth-git-http-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("www/cgi-bin")).unwrap();
        let st = Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(d.join("repos/r.git"))
            .status()
            .unwrap();
        assert!(st.success());
        let cgi = d.join("www/cgi-bin/git");
        std::fs::write(
            &cgi,
            format!(
                "#!/bin/sh\nGIT_PROJECT_ROOT={} GIT_HTTP_EXPORT_ALL=1 exec /usr/bin/git http-backend\n",
                d.join("repos").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("httpd.conf"),
            format!("/cgi-bin:{user}:{password}\n"),
        )
        .unwrap();
        let port = crate::ports::free_port();
        let httpd = Reaped(
            Command::new("busybox")
                .args(["httpd", "-f", "-p", &format!("{listen}:{port}"), "-h"])
                .arg(d.join("www"))
                .arg("-c")
                .arg(d.join("httpd.conf"))
                .spawn()
                .unwrap(),
        );
        let probe = if listen == "0.0.0.0" {
            "127.0.0.1"
        } else {
            listen
        };
        wait_for("busybox httpd", || {
            std::net::TcpStream::connect((probe, port)).is_ok()
        });
        GitServer {
            dir,
            port,
            _httpd: httpd,
        }
    }

    /// The repository's URL through `host` (the address the client reaches the host by).
    pub fn url_via(&self, host: &str) -> String {
        format!("http://{host}:{}/cgi-bin/git/r.git", self.port)
    }

    /// The commit subjects and authors on `main`.
    pub fn log(&self) -> String {
        let o = Command::new("git")
            .arg("--git-dir")
            .arg(self.dir.path().join("repos/r.git"))
            .args(["log", "--format=%s|%an|%ae", "main"])
            .output()
            .unwrap();
        text(&o).0
    }
}
