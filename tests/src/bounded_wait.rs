//! Waiting for a child process with a time limit: a command of a test that hangs is killed,
//! and the failure names it, with what every process on the machine was doing then (its state
//! and kernel wait channel), instead of the test sitting until a harness's own limit.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` like [`Command::output`] (stdin empty), but for `limit` at most; see
/// [`wait_within`]. `context` is added to the failure (e.g. the VMs' logs).
pub fn output_within(cmd: &mut Command, limit: Duration, context: &dyn Fn() -> String) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_within(child, limit, &|| format!("{cmd:?}"), context)
}

/// Waits for `child` like [`Child::wait_with_output`] (its piped stdout and stderr are read
/// meanwhile), for `limit` at most: a child still running then is killed, and the panic says
/// which (`what`), with the machine's processes at that moment and `context`.
pub fn wait_within(
    mut child: Child,
    limit: Duration,
    what: &dyn Fn() -> String,
    context: &dyn Fn() -> String,
) -> Output {
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let ps = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,wchan:32,etime,args"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(ps: {e})"));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} still ran after {limit:?}; killed. Processes then:\n{ps}\n{}",
                what(),
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
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
