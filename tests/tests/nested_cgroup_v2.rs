//! cgroup v2, live: the container limit tests and the rootless test run in the nested guest L1
//! (see `berth_e2e::nested`) on a pure cgroup v2 hierarchy (`cgroup2` on /sys/fs/cgroup, every
//! controller), which this hybrid host cannot give them; and the layer-copy fallback runs there
//! with the berth home on L1's overlay root, whose id-mapped mounts kernel 6.1 refuses. One L1
//! boot runs them all. Needs what L1 needs; skips saying why otherwise.

use std::path::Path;
use std::time::Duration;

use berth_e2e::nested::{package_test_binary, test_binary, Cgroups, Options, L1};

/// Runs the tests `names` of `binary` in L1 after `setup` (shell), asserting each ran and passed.
fn run_in_l1(l1: &mut L1, setup: &str, binary: &Path, names: &[&str], env: &[(&str, &str)]) {
    let mut script = String::from(setup);
    for (k, v) in env {
        script.push_str(&format!("export {k}='{v}'\n"));
    }
    script.push_str(&format!(
        "exec '{}' --exact --test-threads=1 --nocapture {}",
        binary.display(),
        names.join(" ")
    ));
    let what = format!("{} {names:?}", binary.display());
    let o = l1.sh(&script, Duration::from_secs(300));
    assert!(o.success(), "{}", l1.failure(&what, &o));
    // `--exact` names and a zero exit: each test that started passed (libtest and the
    // runtime's own harness both print `test NAME ...`; a test's own output may follow).
    for name in names {
        assert!(
            o.output.contains(&format!("test {name} ...")),
            "{name} did not run:\n{}",
            o.output
        );
    }
    assert!(!o.output.contains("FAILED"), "{}", o.output);
    assert!(
        !o.output.contains("skipped:"),
        "a test skipped in L1:\n{}",
        o.output
    );
}

#[test]
fn limits_rootless_and_layer_copies_live_on_cgroup_v2_in_l1() {
    if let Some(why) = L1::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // Built on the host before boot (L1 has no network).
    let container_env = package_test_binary("berth-runtime", "container_env");
    let rootless = test_binary("rootless");
    let no_idmap = test_binary("no_idmap_home");
    let started = std::time::Instant::now();
    let mut l1 = L1::boot(&Options {
        cgroups: Cgroups::V2,
        ..Options::default()
    });
    let out = l1.sh_ok(
        "awk '$2 == \"/sys/fs/cgroup\" {print $3}' /proc/mounts; cat /sys/fs/cgroup/cgroup.controllers; cat /proc/self/cgroup",
        Duration::from_secs(30),
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("cgroup2"), "{out}");
    let controllers = lines.next().unwrap_or_default();
    for c in ["cpu", "memory", "pids"] {
        assert!(controllers.split(' ').any(|x| x == c), "{out}");
    }
    assert_eq!(lines.next(), Some("0::/"), "{out}");

    // Memory (OOM kill reported by status), cpu quota, pids, berth nesting its cgroups under
    // its own and enabling the controllers. (The CLI's `memory_and_pids_limits_are_enforced`
    // covers the same through the binary but allocates 200 MB: two minutes under TCG.)
    run_in_l1(
        &mut l1,
        "",
        &container_env,
        &[
            "memory_limit_oom_kills_and_is_reported",
            "pids_and_cpu_limits",
        ],
        &[],
    );
    let left = l1.sh_ok(
        "find /sys/fs/cgroup -mindepth 1 -type d -path '*berth*' | head -5",
        Duration::from_secs(30),
    );
    assert_eq!(left, "", "cgroups left behind: {left}");

    // Rootless in a delegated subtree: the tests run from a cgroup of their own that ordinary
    // users may write (as systemd's Delegate=yes gives a user session), so the unprivileged
    // user's berth nests its environments' cgroups there.
    // The test user's home (its berth home) goes on ext4: L1's overlay root cannot hold an
    // overlay upper directory (see below).
    let delegate = "mkdir -p /nested-disk/home && mount --bind /nested-disk/home /home && \
                    d=/sys/fs/cgroup/delegated; mkdir -p $d/session && \
                    chmod 0777 $d/session $d/session/cgroup.procs $d/session/cgroup.subtree_control \
                    $d/session/cgroup.threads && echo $$ > $d/session/cgroup.procs\n";
    run_in_l1(
        &mut l1,
        delegate,
        &rootless,
        &["an_unprivileged_user_runs_the_daily_loop"],
        &[],
    );
    let left = l1.sh_ok(
        "ls /sys/fs/cgroup/delegated/session | grep -c '^berth' || true",
        Duration::from_secs(30),
    );
    assert_eq!(
        left.trim(),
        "0",
        "the rootless environment's cgroups stayed"
    );

    // The layer-copy fallback on a filesystem kernel 6.1 has no id-mapped mounts for: the home
    // on L1's /tmp (tmpfs). The test must take the copying branch there.
    run_in_l1(
        &mut l1,
        "mkdir -p /tmp/nested-home\n",
        &no_idmap,
        &["a_home_in_the_temp_folder_runs_containers_with_or_without_id_mapped_mounts"],
        &[("TMPDIR", "/tmp/nested-home")],
    );
    let berth = berth_e2e::berth_bin();
    let berth = berth.display();
    let probe = l1.sh_ok(
        &format!("BERTH_HOME=/tmp/nested-home/probe {berth} doctor | grep 'id-mapped layers'"),
        Duration::from_secs(60),
    );
    assert!(probe.contains("not available on tmpfs"), "{probe}");
    // With the home on L1's overlay root (over virtiofs), overlayfs refuses the writable layer
    // itself: `up` says so and what to do, and keeps nothing.
    let setup = "p=/var/tmp/nested-proj; mkdir -p $p/rootfs/bin && cp /bin/busybox $p/rootfs/bin/ && ln -sf busybox $p/rootfs/bin/sh && cd $p && printf 'name = \"ovl\"\\n[image]\\nfrom = \"rootfs:./rootfs\"\\n[network]\\nmode = \"none\"\\n' > berth.toml";
    let o = l1.sh(
        &format!(
            "{setup} && BERTH_HOME=/var/tmp/nested-berth {berth} up; echo rc=$?; ls /var/tmp/nested-berth/envs | wc -l"
        ),
        Duration::from_secs(120),
    );
    assert!(
        o.output
            .contains("overlayfs cannot keep the environment's writable layer on overlay")
            && o.output.contains("put BERTH_HOME on a local filesystem")
            && o.output.contains("rc=1\n0\n"),
        "{}",
        l1.failure("up with the home on the overlay root", &o)
    );
    eprintln!(
        "nested cgroup v2 run: {:.0} s (boot and tests)",
        started.elapsed().as_secs_f64()
    );
}
