//! `berth-agent sync-serve --root DIR [--owner UID:GID]`: serves one synced folder of the
//! guest over stdin/stdout with the sync wire protocol (`berth_sync_transport::serve`). The
//! host starts it as an ordinary exec session (`/proc/1/exe sync-serve …`), one per sync
//! mount, and keeps the session for the sync's lifetime; the process ends with its stdin.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;

use berth_sync_transport::{serve, LocalTransport};

struct Args {
    root: String,
    owner: Option<(u32, u32)>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut root = None;
    let mut owner = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().cloned(),
            "--owner" => {
                let v = it.next().ok_or("--owner needs UID:GID")?;
                let (u, g) = v
                    .split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .ok_or_else(|| format!("--owner {v}: give numeric UID:GID"))?;
                owner = Some((u, g));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let root = root.ok_or("--root DIR is required")?;
    if !root.starts_with('/') {
        return Err(format!("--root {root}: give an absolute path"));
    }
    Ok(Args { root, owner })
}

/// Runs the server; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth-agent sync-serve: {e}");
            1
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let a = parse(args)?;
    if !std::path::Path::new(&a.root).is_dir() {
        std::fs::create_dir_all(&a.root).map_err(|e| format!("create {}: {e}", a.root))?;
        if let Some((u, g)) = a.owner {
            std::os::unix::fs::chown(&a.root, Some(u), Some(g))
                .map_err(|e| format!("chown {}: {e}", a.root))?;
        }
    }
    let mut t = LocalTransport::open("env", &a.root).map_err(|e| e.to_string())?;
    if let Some((u, g)) = a.owner {
        t = t.with_owner(u, g);
    }
    let dup = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|e| format!("stdio: {e}"))
    };
    let stdin = dup(std::io::stdin().as_fd())?;
    let stdout = dup(std::io::stdout().as_fd())?;
    let mut reader = BufReader::with_capacity(256 * 1024, stdin);
    let writer = BufWriter::with_capacity(256 * 1024, stdout);
    serve(&mut reader, Box::new(writer), &t).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = parse(&v(&["--root", "/work", "--owner", "1000:100"])).unwrap();
        assert_eq!((a.root.as_str(), a.owner), ("/work", Some((1000, 100))));
        assert!(parse(&v(&["--root", "work"])).is_err());
        assert!(parse(&v(&["--owner", "1000:100"])).is_err());
        assert!(parse(&v(&["--root", "/w", "--owner", "x"])).is_err());
        assert!(parse(&v(&["--root", "/w", "--bogus"])).is_err());
    }
}
