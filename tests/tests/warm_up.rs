//! What a warm `berth up` (nothing changed) does, counted in the files it opens: it runs
//! before every command of a developer's loop and must stay a few system calls.

use std::process::Command;

use berth_e2e::project::Project;
use berth_e2e::{require_root, Berth};

const IDLE: &str = r#"
name = "{name}"
[image]
from = "rootfs:./rootfs"
[network]
mode = "none"
"#;

fn strace_available() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_warm_up_reads_no_cgroup_usage_and_makes_no_folder() {
    require_root!();
    if !strace_available() {
        eprintln!("skipped: needs strace to see the files a warm `up` opens");
        return;
    }
    let p = Project::new("berth-proj-", "warm-", IDLE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let trace = p.path().join("up.strace");
    let berth = b.cmd();
    let mut traced = Command::new("strace");
    traced
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2,mkdir,mkdirat",
            "-o",
        ])
        .arg(&trace)
        .arg(berth.get_program())
        .args(["-q", "up"])
        .current_dir(p.path());
    for (k, v) in berth.get_envs() {
        if let Some(v) = v {
            traced.env(k, v);
        }
    }
    let out = traced.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let opened = std::fs::read_to_string(&trace).unwrap();
    // `up` decides with the environment's state, pid and services; its memory, CPU and
    // pids counters (five cgroup files in cgroup v1, read by `status`) are not asked for.
    let cgroup_reads: Vec<&str> = opened
        .lines()
        .filter(|l| l.contains("/sys/fs/cgroup/"))
        .collect();
    assert!(
        cgroup_reads.is_empty(),
        "a warm `up` read the cgroup's usage:\n{}",
        cgroup_reads.join("\n")
    );
    // Nor is any folder made again: the home's layout, the environment's folder and the
    // folders of its locks are each seen with one `stat` (a failed `mkdir` and a `stat` each
    // before: 11 `mkdir`s per warm `up`).
    let mkdirs: Vec<&str> = opened.lines().filter(|l| l.contains(" mkdir")).collect();
    assert!(
        mkdirs.is_empty(),
        "a warm `up` made folders again:\n{}",
        mkdirs.join("\n")
    );
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}
