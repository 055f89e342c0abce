//! A minimal client of qemu's machine protocol (QMP, JSON lines on the `qmp.sock` monitor
//! socket berth gives every qemu VM): enough to pause the guest (`stop`, which also drains
//! and flushes qemu's block layer, so the disk file is complete) and to resume it (`cont`).

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
