//! Times the container backend over a busybox root filesystem: start (cold, image already
//! unpacked), `exec true`, stop, and the supervisor's memory. Used by `bench/container.sh`,
//! which runs crun and bwrap on the same rootfs in the same run for ratios.
//!
//! `cargo run --release -p berth-runtime --example container_bench -- ROOTFS [N]`

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::backend::ExecRequest;
use berth_runtime::container::{ContainerBackend, ContainerSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(berth_runtime::container::launch::SUPERVISOR_ARG) {
        std::process::exit(berth_runtime::container::launch::main(Path::new(&args[2])));
    }
    let rootfs = PathBuf::from(
        args.get(1)
            .expect("usage: container_bench ROOTFS [N | density N]"),
    );
    if args.get(2).map(String::as_str) == Some("density") {
        density(
            &rootfs,
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200),
        );
        return;
    }
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let home = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir()
        .unwrap();
    let dir = home.path().join("envs/bench");
    let spec = ContainerSpec::new("bench", "bench", &dir, vec![rootfs]);
    let null = fs::File::open("/dev/null").unwrap();
    let stdio = || [null.as_fd(), null.as_fd(), null.as_fd()];
    let req = ExecRequest {
        argv: vec!["/bin/true".into()],
        ..Default::default()
    };

    let (mut start, mut exec, mut stop, mut run) = (vec![], vec![], vec![], vec![]);
    let mut rss_kib = 0;
    for i in 0..n {
        let t = Instant::now();
        let started = ContainerBackend.start(&spec).unwrap();
        start.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(ContainerBackend.exec(&dir, &req, stdio()).unwrap(), 0);
        let first = t.elapsed();
        run.push(start[i] + first);
        for _ in 0..5 {
            let t = Instant::now();
            ContainerBackend.exec(&dir, &req, stdio()).unwrap();
            exec.push(t.elapsed());
        }
        if i == 0 {
            rss_kib = fs::read_to_string(format!("/proc/{}/status", started.pid))
                .unwrap()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
        }
        let t = Instant::now();
        ContainerBackend.stop(&dir, Duration::from_secs(5)).unwrap();
        stop.push(t.elapsed());
    }
    if std::env::var_os("BERTH_TRACE_START").is_some() {
        eprint!(
            "{}",
            fs::read_to_string(dir.join("logs/supervisor.log")).unwrap_or_default()
        );
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1000.0
    };
    let min = |v: &[Duration]| v.iter().min().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    println!("start_min_ms {:.2}", min(&start));
    println!("start_ms {:.2}", med(&mut start));
    println!("start_plus_exec_true_ms {:.2}", med(&mut run));
    println!("exec_true_ms {:.2}", med(&mut exec));
    println!("stop_ms {:.2}", med(&mut stop));
    println!("supervisor_rss_kib {rss_kib}");
}

/// Starts `n` idle environments of one image; prints memory (PSS of the supervisors, which
/// is all an idle environment runs) and disk (writable layers) per environment, then stops
/// them all.
fn density(rootfs: &Path, n: usize) {
    let home = tempfile::Builder::new()
        .prefix("berth-density-")
        .tempdir()
        .unwrap();
    let t = Instant::now();
    let mut started = Vec::new();
    for i in 0..n {
        let dir = home.path().join(format!("envs/d{i}"));
        let spec = ContainerSpec::new(
            &format!("d{i}"),
            &format!("d{i}"),
            &dir,
            vec![rootfs.to_path_buf()],
        );
        match ContainerBackend.start(&spec) {
            Ok(s) => started.push((dir, s.pid)),
            Err(e) => {
                eprintln!("environment {i} failed to start: {e}");
                break;
            }
        }
    }
    let elapsed = t.elapsed();
    let pss_kib: u64 = started
        .iter()
        .map(|(_, pid)| {
            fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        })
        .sum();
    let disk_kib: u64 = started
        .iter()
        .map(|(dir, _)| du_kib(&dir.join("upper")))
        .sum();
    let k = started.len().max(1) as u64;
    println!("environments {}", started.len());
    println!("start_all_s {:.2}", elapsed.as_secs_f64());
    println!("memory_per_env_kib {}", pss_kib / k);
    println!("disk_per_env_kib {}", disk_kib / k);
    for (dir, _) in &started {
        let _ = ContainerBackend.stop(dir, Duration::from_secs(5));
    }
}

fn du_kib(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    use std::os::unix::fs::MetadataExt;
    let own = m.blocks() / 2;
    if m.is_dir() {
        own + fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| du_kib(&e.path()))
            .sum::<u64>()
    } else {
        own
    }
}
