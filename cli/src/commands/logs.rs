//! `berth logs [SERVICE] [-F] [-n N]`: the services' output, kept in size-bounded files (for
//! a VM, inside the guest, read there through the agent).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use berth_runtime::container::control::ExecRequest;
use berth_runtime::container::logs::{open_service_logs, services_with_logs, LogFollower};
use berth_runtime::vm::guest_logs;
use clap::Args;
use envfile_spec::plan::BackendKind;

use crate::environment::{env_error, Current};
use crate::exit::{CliError, EXIT_ERROR};
use crate::global_args::GlobalArgs;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this service.
    pub service: Option<String>,
    /// Keep printing new output (`-f` is the global --file option).
    #[arg(short = 'F', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long)]
    pub tail: Option<usize>,
}

pub fn run(g: &GlobalArgs, args: &LogsArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    let dir = cur.envs.home().env_dir(&record.env_id);
    let is_vm = record.plan.backend == BackendKind::Vm;
    let services = match &args.service {
        Some(s) => {
            if !record.plan.services.contains_key(s) {
                let known: Vec<&str> = record.plan.services.keys().map(String::as_str).collect();
                return Err(CliError::new(
                    EXIT_ERROR,
                    format!(
                        "no service {s:?} in {}; services: {}",
                        record.name,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            vec![s.clone()]
        }
        None if is_vm => record.plan.services.keys().cloned().collect(),
        None => services_with_logs(&dir),
    };
    if is_vm {
        // The services' logs live in the guest: read there.
        let req = ExecRequest {
            argv: guest_logs::logs_argv(&services, args.tail, args.follow),
            env: Vec::new(),
            cwd: None,
            user: None,
            tty: false,
            winsize: None,
        };
        let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
        return cur
            .envs
            .exec(record, &req, [i.as_fd(), o.as_fd(), e.as_fd()])
            .map_err(env_error);
    }
    let prefix = services.len() > 1;
    let mut out = std::io::stdout().lock();
    for s in &services {
        let files = open_service_logs(&dir, s)
            .map_err(|e| CliError::new(EXIT_ERROR, format!("cannot read the logs of {s}: {e}")))?;
        for l in last_lines(files, args.tail) {
            write_line(&mut out, prefix.then_some(s.as_str()), &l);
        }
    }
    let _ = out.flush();
    drop(out);
    if args.follow {
        follow(&dir, &services, prefix);
    }
    Ok(0)
}

fn write_line(out: &mut impl Write, service: Option<&str>, line: &str) {
    let _ = match service {
        Some(s) => writeln!(out, "{s} | {line}"),
        None => writeln!(out, "{line}"),
    };
}

/// The last `n` lines of the concatenation of `files` (all when `n` is `None`).
fn last_lines(files: Vec<File>, n: Option<usize>) -> Vec<String> {
    let mut keep: VecDeque<String> = VecDeque::new();
    for file in files {
        for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
            keep.push_back(String::from_utf8_lossy(&line).into_owned());
            if n.is_some_and(|n| keep.len() > n) {
                keep.pop_front();
            }
        }
    }
    keep.into()
}

/// Prints what is appended to each service's log until interrupted (rotation included).
fn follow(dir: &Path, services: &[String], prefix: bool) {
    let mut followers: Vec<(LogFollower, Vec<u8>)> = services
        .iter()
        .map(|s| (LogFollower::new(dir, s, false), Vec::new()))
        .collect();
    loop {
        for ((f, partial), name) in followers.iter_mut().zip(services) {
            let Ok(bytes) = f.poll() else { continue };
            if bytes.is_empty() {
                continue;
            }
            partial.extend_from_slice(&bytes);
            let mut out = std::io::stdout().lock();
            while let Some(nl) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                write_line(&mut out, prefix.then_some(name.as_str()), &text);
            }
            let _ = out.flush();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
