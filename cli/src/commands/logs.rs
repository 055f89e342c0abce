//! `berth logs [SERVICE] [-F] [-n N]`: the services' output, kept in size-bounded files.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_runtime::container::logs::{service_log_files, services_with_logs};

use crate::args::{GlobalArgs, LogsArgs};
use crate::environment::Current;
use crate::exit::{CliError, EXIT_ERROR};

pub fn run(g: &GlobalArgs, args: &LogsArgs) -> Result<i32, CliError> {
    let cur = Current::load(g)?;
    let record = cur.require()?;
    let dir = cur.envs.home().env_dir(&record.env_id);
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
        None => services_with_logs(&dir),
    };
    let prefix = services.len() > 1;
    let mut out = std::io::stdout().lock();
    let mut followed = Vec::new();
    for s in &services {
        let files = service_log_files(&dir, s);
        let lines = last_lines(&files, args.tail);
        for l in lines {
            write_line(&mut out, prefix.then_some(s.as_str()), &l);
        }
        if let Some(current) = files.last() {
            let len = std::fs::metadata(current).map(|m| m.len()).unwrap_or(0);
            followed.push((s.clone(), current.clone(), len));
        } else {
            followed.push((s.clone(), dir.join("logs").join(format!("{s}.log")), 0));
        }
    }
    let _ = out.flush();
    if args.follow {
        follow(&mut followed, prefix);
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
fn last_lines(files: &[PathBuf], n: Option<usize>) -> Vec<String> {
    let mut keep: VecDeque<String> = VecDeque::new();
    for f in files {
        let Ok(file) = File::open(f) else { continue };
        for line in BufReader::new(file).split(b'\n').map_while(Result::ok) {
            keep.push_back(String::from_utf8_lossy(&line).into_owned());
            if n.is_some_and(|n| keep.len() > n) {
                keep.pop_front();
            }
        }
    }
    keep.into()
}

/// Prints what is appended to each file until interrupted; notices rotation (file shrank).
fn follow(files: &mut [(String, PathBuf, u64)], prefix: bool) {
    let mut partial: Vec<Vec<u8>> = vec![Vec::new(); files.len()];
    loop {
        for (i, (name, path, pos)) in files.iter_mut().enumerate() {
            let len = std::fs::metadata(path.as_path())
                .map(|m| m.len())
                .unwrap_or(0);
            if len < *pos {
                *pos = 0;
            }
            if len > *pos {
                if let Some(bytes) = read_from(path, *pos) {
                    *pos += bytes.len() as u64;
                    partial[i].extend_from_slice(&bytes);
                    let mut out = std::io::stdout().lock();
                    while let Some(nl) = partial[i].iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = partial[i].drain(..=nl).collect();
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                        write_line(&mut out, prefix.then_some(name.as_str()), &text);
                    }
                    let _ = out.flush();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_from(path: &Path, pos: u64) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(pos)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(buf)
}
