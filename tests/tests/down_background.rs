//! `berth down` returns once the environment's processes are gone and its forwarded host
//! ports are free; the supervisor's exit (its mount namespace's teardown), the cgroups and
//! the network are finished by a detached child holding the environment's lock
//! (`Environments::down`). Its crash safety: a killed child's leftovers go with the next
//! command.

use std::net::TcpListener;

use berth_e2e::host::HostSnapshot;
use berth_e2e::ports::free_port;
use berth_e2e::project::Project;
use berth_e2e::{require_root, text, Berth};

/// A service that runs until it is killed, and a forwarded port.
fn project(port: u16) -> Project {
    Project::new(
        "berth-down-",
        "down-",
        &format!(
            "name = \"{{name}}\"\n[image]\nfrom = \"rootfs:./rootfs\"\n\
             [[ports]]\nhost = {port}\nguest = 80\naddress = \"127.0.0.1\"\n\
             [services]\nticker = {{ command = [\"sh\", \"-c\", \"echo tick; sleep 1000\"] }}\n"
        ),
    )
}

/// The pids in the environment's cgroups (`cgroups`: their folders).
fn pids_in(cgroups: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut pids: Vec<String> = cgroups
        .iter()
        .filter_map(|d| std::fs::read_to_string(format!("{d}/cgroup.procs")).ok())
        .flat_map(|s| s.lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

/// The child that finishes `down`'s stop killed before it did anything (the fault injected
/// at `down-finish` aborts it, as a `kill -9` would): `down` has returned with the
/// service's processes gone and the port free, the environment stopped, and its cgroups
/// still there; the next berth command's garbage collection removes them (and the network),
/// and `up` starts the environment again. Fails on a `down` that removes the cgroups itself
/// before it returns (nothing is left for the next command then).
#[test]
fn a_down_whose_background_child_was_killed_is_finished_by_the_next_command() {
    require_root!();
    let port = free_port();
    let p = project(port);
    let b = Berth::new();
    let before = p.snapshot(&b);
    b.ok(p.path(), &["-q", "up"]);
    let tags = [p.name.as_str(), &b.home.path().to_string_lossy(), &b.bridge];
    let running = HostSnapshot::take(&tags);
    assert!(
        pids_in(&running.cgroups).len() >= 2,
        "the supervisor and its service: {:?}",
        pids_in(&running.cgroups)
    );

    let supervisor = b.status_json(p.path())["pid"].as_i64().unwrap().to_string();
    let o = b
        .cmd()
        .current_dir(p.path())
        .env("BERTH_ABORT_AT", "down-finish")
        .args(["-q", "down"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    // When `down` returns: the port is free, nothing but the exiting supervisor is left.
    TcpListener::bind(("127.0.0.1", port)).expect("the forwarded port is still taken");
    let left: Vec<String> = pids_in(&running.cgroups)
        .into_iter()
        .filter(|pid| *pid != supervisor)
        .collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");

    // The aborted child let the lock go; what it was to remove is still there (no berth
    // command ran since: each collects garbage first).
    b.wait_for_background_teardowns();
    let aborted = HostSnapshot::take(&tags);
    assert!(
        !aborted.cgroups.is_empty(),
        "down removed the cgroups itself: nothing was left for its child"
    );
    let markers = || -> Vec<String> {
        std::fs::read_dir(b.home.path().join("watch"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".stop"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(markers().len(), 1, "no marker for garbage collection");

    b.ok(p.path(), &["ls"]);
    let collected = HostSnapshot::take(&tags);
    assert!(
        collected.cgroups.is_empty() && collected.net_devices.is_empty(),
        "not collected by the next command: {collected:?}"
    );
    assert!(markers().is_empty(), "the marker outlived the collection");
    let o = b.run_in(p.path(), &["status"]);
    assert_eq!(o.status.code(), Some(3), "not stopped: {:?}", text(&o));

    // Nothing of the old start is in the way of the next one.
    b.ok(p.path(), &["-q", "up"]);
    b.ok(p.path(), &["exec", "--", "true"]);
    b.ok(p.path(), &["-q", "down"]);
    b.ok(p.path(), &["-q", "destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}

/// `down` then `up` right away: the `up` waits for `down`'s child (it holds the
/// environment's lock) instead of tripping over its cgroups or network, ten times in a row;
/// and `destroy` right after `down` leaves nothing.
#[test]
fn up_and_destroy_right_after_down_find_the_stop_finished() {
    require_root!();
    let port = free_port();
    let p = project(port);
    let b = Berth::new();
    let before = p.snapshot(&b);
    for _ in 0..10 {
        b.ok(p.path(), &["-q", "up"]);
        b.ok(p.path(), &["-q", "down"]);
    }
    b.ok(p.path(), &["-q", "up"]);
    b.ok(p.path(), &["-q", "down"]);
    b.ok(p.path(), &["-q", "destroy"]);
    before.assert_nothing_leaked(&p.snapshot(&b));
}
