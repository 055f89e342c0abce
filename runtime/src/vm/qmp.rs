//! A minimal client of qemu's machine protocol (QMP, JSON lines on the `qmp.sock` monitor
//! socket berth gives every qemu VM): enough to pause the guest (`stop`, which also drains
//! and flushes qemu's block layer, so the disk file is complete), to resume it (`cont`), and to
//! ask whether it runs (`query-status`: a save killed mid-copy leaves it paused).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qemu's monitor socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qemu's monitor ({path}) refused `{command}`: {message}")]
    Refused {
        path: PathBuf,
        command: String,
        message: String,
    },
}

pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and leaves capabilities negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut q = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream.try_clone().map_err(io)?),
            writer: stream,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(q.refused("connect", format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn refused(&self, command: &str, message: String) -> QmpError {
        QmpError::Refused {
            path: self.path.clone(),
            command: command.to_string(),
            message,
        }
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Runs `command` (no arguments) and returns its `return` value; events that arrive
    /// meanwhile are skipped.
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let msg = serde_json::json!({ "execute": command }).to_string() + "\n";
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(self.refused(command, e.to_string()));
            }
        }
    }
}

impl Qmp {
    /// qemu's run state (`query-status`): `running`, `paused` (after `stop`), `prelaunch`
    /// (started with `-S`), `shutdown`, ...
    pub fn run_state(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status")?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.refused("query-status", format!("no status in {r}")))
    }

    /// Resumes a VM that `stop` paused; returns whether it was paused. A VM in any other
    /// state is left as it is.
    pub fn resume_if_paused(&mut self) -> Result<bool, QmpError> {
        if self.run_state()? != "paused" {
            return Ok(false);
        }
        self.execute("cont")?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_skip_events_and_report_errors() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut seen = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                line.clear();
                let reply = match cmd.as_str() {
                    "stop" => "{\"event\": \"STOP\"}\n{\"return\": {}}\n",
                    "nope" => "{\"error\": {\"class\": \"CommandNotFound\"}}\n",
                    _ => "{\"return\": {}}\n",
                };
                seen.push(cmd);
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.execute("stop").unwrap(), serde_json::json!({}));
        let e = q.execute("nope").unwrap_err().to_string();
        assert!(
            e.contains("refused `nope`") && e.contains("CommandNotFound"),
            "{e}"
        );
        drop(q);
        assert_eq!(server.join().unwrap(), ["qmp_capabilities", "stop", "nope"]);
    }
}

/// A real qemu for tests, started paused (`-S`) without a kernel or disk, so nothing boots:
/// only its monitor is used. Killed when dropped.
#[cfg(test)]
pub(crate) struct TestQemu {
    pub child: std::process::Child,
    pub qmp: PathBuf,
}

#[cfg(test)]
impl TestQemu {
    /// `None` (with the reason printed) when qemu-system-x86_64 is not installed.
    pub fn start(dir: &Path) -> Option<TestQemu> {
        let qmp = dir.join("qmp.sock");
        let spawned = std::process::Command::new(super::qemu::QEMU_BINARY)
            .args([
                "-accel",
                "tcg",
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-m",
                "32",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping: cannot run {}: {e}", super::qemu::QEMU_BINARY);
                return None;
            }
        };
        // qemu binds the socket, then listens: wait for the second.
        while !crate::host::unix_socket::is_listening(&qmp).unwrap() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("qemu exited before its monitor listened: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(TestQemu { child, qmp })
    }
}

#[cfg(test)]
impl Drop for TestQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod qemu_tests {
    use super::*;

    #[test]
    fn a_paused_qemu_is_resumed_and_a_running_one_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let Some(qemu) = TestQemu::start(d.path()) else {
            return;
        };
        let mut q = Qmp::connect(&qemu.qmp, Duration::from_secs(10)).unwrap();
        // Started with -S: not paused by `stop`, so not ours to resume.
        assert_eq!(q.run_state().unwrap(), "prelaunch");
        assert!(!q.resume_if_paused().unwrap());
        assert_eq!(q.run_state().unwrap(), "prelaunch");
        q.execute("cont").unwrap();
        assert_eq!(q.run_state().unwrap(), "running");
        assert!(!q.resume_if_paused().unwrap());
        // What a killed `snapshot save` leaves: paused by `stop`.
        q.execute("stop").unwrap();
        assert_eq!(q.run_state().unwrap(), "paused");
        assert!(q.resume_if_paused().unwrap());
        assert_eq!(q.run_state().unwrap(), "running");
    }
}
