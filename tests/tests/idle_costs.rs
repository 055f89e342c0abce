//! What an idle environment costs: in memory, its supervisor (berth's own binary, resident for
//! the environment's whole life) shares the binary's pages with every other berth process
//! instead of holding a private, relocated copy of them; in work, a warm `berth up` (nothing
//! changed), which runs before every command of a developer's loop, stays a few system calls.

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

/// The read-only-after-relocation part (GNU_RELRO: `.data.rel.ro`, the GOT) of `pid`'s
/// executable as mapped: its size and how much of it is private (anonymous) pages, in KiB,
/// from `/proc/<pid>/smaps`, with the lines read. It is the binary's read-only mapping that
/// does not start the file (the first one holds the ELF headers and `.rodata`).
fn relro_of_own_binary(pid: u32) -> (u64, u64, String) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut in_relro, mut size, mut private, mut lines) = (false, 0, 0, String::new());
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') && !f[0].ends_with(':') {
            // A mapping's header: "start-end perms offset dev inode [path]".
            in_relro = f.get(5) == Some(&exe.as_str())
                && f[1] == "r--p"
                && u64::from_str_radix(f[2], 16).unwrap() != 0;
            if in_relro {
                let (a, b) = f[0].split_once('-').unwrap();
                size += (u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap())
                    / 1024;
                lines.push_str(line);
                lines.push('\n');
            }
        } else if in_relro && f.first() == Some(&"Anonymous:") {
            private += f[1].parse::<u64>().unwrap();
            lines.push_str(line);
            lines.push('\n');
        }
    }
    (size, private, lines)
}

#[test]
fn an_idle_supervisor_shares_berths_binary_instead_of_a_relocated_copy() {
    require_root!();
    let p = Project::new("berth-proj-", "idle-", IDLE);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["up"]);
    let pid = b.status_json(p.path())["pid"].as_u64().unwrap() as u32;
    let (size, private, maps) = relro_of_own_binary(pid);
    // A position-independent berth has the dynamic loader rewrite the ~22,000 pointers of
    // its read-only data at every start: every page of that part is copied into each
    // supervisor (372 of 372 KiB in a release build). Linked at a fixed address, only the
    // pages holding the addresses of C library symbols (in the GOT) are: 40 of 372 KiB in a
    // release build, 176 of 1,724 in a debug one. A quarter leaves room for other layouts
    // without letting the copy come back.
    assert!(
        size > 0 && private * 4 <= size,
        "the supervisor holds {private} of the {size} KiB of berth's relocated read-only \
         data as private pages (was berth linked as a position-independent executable? see \
         cli/build.rs):\n{maps}"
    );
    b.ok(p.path(), &["destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

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
