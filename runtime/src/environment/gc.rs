//! Garbage collection: what a killed process left is removed by the next berth command, at a
//! cost that does not grow with the number of environments (every command runs it).
//!
//! What it must catch, and where each command finds it without reading every record:
//!
//! - A throw-away environment of `berth run` whose process is gone (SIGKILL, crash, reboot),
//!   however far it got (a copied project, a half-started container, a running one): its
//!   `watch/<env-id>.run` marker (`state::WatchList`), written before anything of the
//!   environment exists and removed after its folder is. One small file per live run.
//! - The tap, lease and NAT of a VM whose VMM was killed: `watch/<env-id>.vm`, one per VM.
//! - The cgroups and network of a stopped environment whose `berth down` returned before
//!   they were removed, and whose detached child was killed: `watch/<env-id>.stop`
//!   (`Environments::down`), on an environment nobody holds.
//! - Leases on berth's bridge held by environments of any home that are gone (a deleted home,
//!   a dead namespace): released machine-wide by the bridge's next user, by `berth ls`, and by
//!   any command once at least [`DEPARTED_INTERVAL`] after the last such check (the lease
//!   record holds every networked environment of the machine).
//! - After a reboot, and in a home of an older berth (records without markers): a full sweep
//!   of every record by the home's next command ([`Environments::sweep`]), which also writes
//!   the markers that were missing and narrows environment folders of older versions.
//!
//! `berth ls`, which reads every record anyway, sweeps on every call.

use std::time::Duration;

use envfile_spec::plan::BackendKind;
use serde::Deserialize;

use super::environments::Environments;
use super::error::EnvError;
use super::record::{EnvRecord, Ephemeral, RECORD_FILE};
use crate::host::process::ProcessIdentity;
use crate::net::{Network, NetworkOptions};
use crate::state::{read_json, FileLock, LockMode, WatchList, Watched, ENV_LOCK_FILE};

/// An environment's network record and VM state (see `vm/vm_record.rs`).
const NETWORK_FILE: &str = "network.json";
const VM_FILE: &str = "vm.json";

/// How long a command may rely on the last check of the bridge's leases.
pub const DEPARTED_INTERVAL: Duration = Duration::from_secs(30);

/// The fields of `env.json` garbage collection looks at.
#[derive(Deserialize)]
struct GcFields {
    #[serde(default)]
    ephemeral: Option<Ephemeral>,
    plan: GcPlanFields,
}

#[derive(Deserialize)]
struct GcPlanFields {
    backend: BackendKind,
}

/// An environment as the full sweep sees it.
struct Found {
    env_id: String,
    ephemeral: Option<Ephemeral>,
    backend: BackendKind,
}

impl Environments {
    /// What every berth command runs first: the watched environments (see the module
    /// documentation), the full sweep when one is due, and the bridge's departed leases when
    /// their last check is old. Returns the ids of the environments removed. Environments
    /// locked by a live command are left alone.
    pub fn collect_garbage(&self) -> Vec<String> {
        let due = self.home.gc_due(DEPARTED_INTERVAL);
        if due.sweep {
            return self.sweep();
        }
        let removed = self.collect_watched();
        if due.departed {
            self.collect_departed();
        }
        removed
    }

    /// Reads every environment's record: destroys throw-away environments whose owner is gone
    /// (with or without a marker), releases the networks of VMs whose VMM is gone, marks what
    /// later commands must watch, narrows folders of older versions, checks the bridge's
    /// leases, and records the sweep. Returns the ids removed.
    ///
    /// Also destroyed: folders of an earlier boot that hold no record, or one that was never
    /// written out (see [`never_recorded`]). A throw-away environment's record is written
    /// without fsync (it names an owner a reboot ends anyway), so a power cut may leave its
    /// folder without a readable one; a kept environment's record is durable before anything
    /// of it exists, so such a folder is never one of its.
    pub fn sweep(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut unrecorded = Vec::new();
        let booted = crate::state::booted_at();
        if let Ok(rd) = std::fs::read_dir(self.home.envs_dir()) {
            for e in rd.flatten() {
                let Some(env_id) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                match read_json::<GcFields>(&e.path().join(RECORD_FILE)) {
                    Ok(Some(f)) => found.push(Found {
                        env_id,
                        ephemeral: f.ephemeral,
                        backend: f.plan.backend,
                    }),
                    _ if never_recorded(&e.path(), booted) => unrecorded.push(env_id),
                    _ => {}
                }
            }
        }
        self.sweep_found(found, unrecorded)
    }

    /// [`Environments::sweep`] over the records `berth ls` has read already.
    pub(super) fn sweep_records(&self, records: &[EnvRecord]) -> Vec<String> {
        self.sweep_found(
            records
                .iter()
                .map(|r| Found {
                    env_id: r.env_id.clone(),
                    ephemeral: r.ephemeral,
                    backend: r.plan.backend,
                })
                .collect(),
            Vec::new(),
        )
    }

    /// The sweep of the environments `found` by their records, and of the folders
    /// `unrecorded` of an earlier boot whose record was never written out.
    fn sweep_found(&self, found: Vec<Found>, unrecorded: Vec<String>) -> Vec<String> {
        let mut removed = self.collect_watched();
        let _ = self.home.narrow_env_dirs();
        let watch = WatchList::of(&self.home);
        let mut orphans = Vec::new();
        for f in found {
            if removed.contains(&f.env_id) {
                continue;
            }
            if f.backend == BackendKind::Vm {
                let _ = watch.add_vm(&f.env_id);
            }
            match f.ephemeral {
                Some(e) if !e.owner.alive() => orphans.push(f.env_id),
                // A run of an older berth, which wrote no marker.
                Some(e) => {
                    let _ = watch.add_run(&f.env_id, e.owner);
                }
                None => {}
            }
        }
        orphans.extend(unrecorded.into_iter().filter(|id| !removed.contains(id)));
        orphans.sort();
        removed.extend(orphans.into_iter().filter(|id| self.collect_env(id)));
        self.release_dead_vm_networks();
        self.collect_departed();
        let _ = self.home.mark_swept();
        removed
    }

    /// The environments on the watch list: throw-away environments whose owner is gone are
    /// destroyed, VMs whose VMM is gone lose their network, markers of folders that are gone
    /// are dropped. Returns the ids removed.
    fn collect_watched(&self) -> Vec<String> {
        let watch = WatchList::of(&self.home);
        let mut removed = Vec::new();
        for w in watch.entries() {
            match w {
                Watched::Run { env_id, owner } => {
                    if owner.is_some_and(|o| o.alive()) {
                        continue;
                    }
                    let dir = self.home.env_dir(&env_id);
                    if !dir.exists() {
                        let _ = watch.remove(&env_id);
                        continue;
                    }
                    match read_json::<GcFields>(&dir.join(RECORD_FILE)) {
                        // Kept (`run --keep`) by a command killed before it dropped the marker.
                        Ok(Some(GcFields {
                            ephemeral: None, ..
                        })) => {
                            let _ = watch.remove_run(&env_id);
                        }
                        // Another `berth run` of the same name that lives.
                        Ok(Some(GcFields {
                            ephemeral: Some(e), ..
                        })) if e.owner.alive() => {}
                        // Its owner is gone: however far its `up` got (no record yet, a
                        // half-started environment, a running one).
                        _ => {
                            if self.collect_env(&env_id) {
                                removed.push(env_id);
                            }
                        }
                    }
                }
                Watched::Stop { env_id } => {
                    self.collect_stop(&env_id);
                }
                Watched::Vm { env_id } => {
                    let dir = self.home.env_dir(&env_id);
                    if !dir.exists() {
                        let _ = watch.remove(&env_id);
                    } else {
                        self.release_dead_vm_network(&dir);
                    }
                }
            }
        }
        removed
    }

    /// Destroys the environment `env_id` unless a command holds it (another gc, the owner's
    /// own teardown); whether it is gone.
    fn collect_env(&self, env_id: &str) -> bool {
        let dir = self.home.env_dir(env_id);
        let Ok(Some(lock)) = FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        drop(lock);
        self.destroy(env_id, false, Duration::from_secs(2)).is_ok()
    }

    /// Leases on berth's bridge of environments of any home that are gone (a deleted home, a
    /// killed VMM whose home went with it): released machine-wide.
    fn collect_departed(&self) {
        let _ = Network::new(self.home(), NetworkOptions::default()).collect_departed();
        let _ = self.home.mark_departed_checked();
    }

    /// Marks, before anything of it is created, an environment that garbage collection must
    /// watch from now on: a throw-away environment of `owner` (a `berth run`), a VM.
    pub(super) fn watch(
        &self,
        env_id: &str,
        backend: BackendKind,
        ephemeral: Option<Ephemeral>,
    ) -> Result<(), EnvError> {
        // Crash tests: a `berth run --copy-source` killed here has copied the project into the
        // environment's folder, and only its own marker says whose it is.
        crate::host::fault_injection::checkpoint("up-watch");
        let watch = WatchList::of(&self.home);
        if let Some(e) = ephemeral {
            watch.add_run(env_id, e.owner)?;
        }
        if backend == BackendKind::Vm {
            watch.add_vm(env_id)?;
        }
        Ok(())
    }

    /// [`Environments::watch`] of a throw-away environment this process owns, before it
    /// creates anything in its folder (`berth run --copy-source` copies the project first).
    pub(super) fn watch_own_run(&self, env_id: &str) -> Result<(), EnvError> {
        if let Some(owner) = ProcessIdentity::current() {
            WatchList::of(&self.home).add_run(env_id, owner)?;
        }
        Ok(())
    }

    /// Releases the tap, lease and NAT of VMs whose VMM is gone without releasing them
    /// (killed with SIGKILL; a VMM that ends otherwise releases them itself). `vm.json` stays,
    /// so the environment still shows as dead until `down` or `up`. Environments locked by a
    /// command (a start plumbing its tap) are left alone. Reads every environment folder (the
    /// full sweep); returns the ids released.
    pub fn release_dead_vm_networks(&self) -> Vec<String> {
        let mut released = Vec::new();
        let envs = self.home().envs_dir();
        let (Ok(rd), Ok(dir)) = (std::fs::read_dir(&envs), std::fs::File::open(&envs)) else {
            return released;
        };
        // The cheap check for every folder, relative to the open `envs/` (no walk of the whole
        // path): a container has no `vm.json`.
        let has_vm_file = |name: &std::ffi::OsStr| {
            use std::os::fd::AsRawFd;
            nix::sys::stat::fstatat(
                Some(dir.as_raw_fd()),
                &std::path::Path::new(name).join(VM_FILE),
                nix::fcntl::AtFlags::empty(),
            )
            .is_ok()
        };
        for e in rd.flatten() {
            if has_vm_file(&e.file_name()) && self.release_dead_vm_network(&e.path()) {
                released.extend(e.file_name().to_str().map(str::to_string));
            }
        }
        released
    }

    /// [`Environments::release_dead_vm_networks`] of the environment in `dir`; whether its
    /// network was released.
    fn release_dead_vm_network(&self, dir: &std::path::Path) -> bool {
        // Cheap checks first.
        if !dir.join(NETWORK_FILE).exists() || !dir.join(VM_FILE).exists() {
            return false;
        }
        let Ok(Some(_lock)) = FileLock::try_acquire(&dir.join(ENV_LOCK_FILE), LockMode::Exclusive)
        else {
            return false;
        };
        !self.vms.is_running(dir) && self.vms.release_network(dir).is_ok()
    }

    /// Whether a record's environment belongs to a `berth run` that is gone.
    pub fn is_orphan(record: &EnvRecord) -> bool {
        record.ephemeral.is_some_and(|e| !e.owner.alive())
    }
}

/// Whether the environment folder `dir` is from before the boot that began at `booted` and
/// has no record, or one that was never written out: absent, empty, or only zero bytes and
/// white space (what a power cut leaves of a file renamed into place without fsync). A
/// command of this boot can have made neither (it would not be older than the boot), and no
/// kept environment has one (its record is durable before anything of it is created). A
/// record that is merely corrupt is left alone: `berth` reports it and the user decides.
fn never_recorded(dir: &std::path::Path, booted: Option<std::time::SystemTime>) -> bool {
    let Some(booted) = booted else {
        return false;
    };
    let before_boot = std::fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < booted);
    if !before_boot {
        return false;
    }
    match std::fs::read(dir.join(RECORD_FILE)) {
        Ok(bytes) => bytes.iter().all(|b| *b == 0 || b.is_ascii_whitespace()),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::network::{assert_released, master_of, test_network, DetachOnDrop};
    use crate::state::{write_json, BerthHome};
    use crate::vm::{Provider, VmState};

    /// The identity of a process that has ended.
    fn dead_process() -> ProcessIdentity {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = ProcessIdentity::of(child.id() as i32).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!id.alive());
        id
    }

    /// Saves the record of an environment `env_id` (a throw-away one of `owner`) as `up` does.
    fn record(home: &BerthHome, env_id: &str, toml: &str, owner: Option<ProcessIdentity>) {
        let file = home.root().join(format!("{env_id}.toml"));
        let plan = envfile_spec::parse(toml.as_bytes(), &file).unwrap().plan;
        let dir = home.env_dir(env_id);
        crate::state::create_private_dir(&dir).unwrap();
        EnvRecord {
            env_id: env_id.into(),
            name: plan.name.clone(),
            file,
            plan_hash: plan.hash(),
            plan,
            converged: true,
            image: None,
            layers: Vec::new(),
            privileged: false,
            created_at: 1,
            ephemeral: owner.map(|owner| Ephemeral { owner }),
            build_key: None,
            on_create_done: None,
        }
        .save(&dir)
        .unwrap();
    }

    const CONTAINER: &str = "name = \"web\"\n[image]\nfrom = \"docker.io/library/alpine:3.20\"\n";

    /// An ordinary command reads the watch list, not the records: a run's marker is what gets
    /// its environment collected once its owner is gone; a record alone is left for the sweep.
    #[test]
    fn a_run_is_collected_through_its_marker_without_reading_other_records() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        home.mark_swept().unwrap();
        let dead = dead_process();
        record(&home, "web-run-1", CONTAINER, Some(dead));
        assert!(envs.collect_garbage().is_empty(), "records are not read");
        assert!(home.env_dir("web-run-1").exists());

        envs.watch(
            "web-run-1",
            BackendKind::Container,
            Some(Ephemeral { owner: dead }),
        )
        .unwrap();
        assert_eq!(envs.collect_garbage(), vec!["web-run-1".to_string()]);
        assert!(!home.env_dir("web-run-1").exists());
        assert!(
            WatchList::of(&home).entries().is_empty(),
            "its marker went too"
        );
    }

    /// A run killed before its record was written (its folder holds only a copy of the
    /// project) is collected through its marker; a live run's is left alone, however
    /// incomplete.
    #[test]
    fn a_run_killed_before_its_record_is_collected_and_a_live_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        home.mark_swept().unwrap();
        let watch = WatchList::of(&home);
        for (id, owner) in [
            ("dead-run-1", dead_process()),
            ("live-run-1", ProcessIdentity::current().unwrap()),
        ] {
            watch.add_run(id, owner).unwrap();
            std::fs::create_dir_all(home.env_dir(id).join("source/sub")).unwrap();
        }
        assert_eq!(envs.collect_garbage(), vec!["dead-run-1".to_string()]);
        assert!(!home.env_dir("dead-run-1").exists());
        assert!(home.env_dir("live-run-1").join("source/sub").is_dir());
        // Gone without its marker (a kill between the two): the marker goes next time.
        std::fs::remove_dir_all(home.env_dir("live-run-1")).unwrap();
        watch.add_run("live-run-1", dead_process()).unwrap();
        assert!(envs.collect_garbage().is_empty());
        assert!(watch.entries().is_empty());
    }

    /// `run --keep` killed after it rewrote the record but before it dropped the marker: the
    /// environment is kept, the marker goes.
    #[test]
    fn a_kept_runs_leftover_marker_goes_and_the_environment_stays() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        home.mark_swept().unwrap();
        record(&home, "web-run-2", CONTAINER, None);
        WatchList::of(&home)
            .add_run("web-run-2", dead_process())
            .unwrap();
        assert!(envs.collect_garbage().is_empty());
        assert!(EnvRecord::load(&home.env_dir("web-run-2"))
            .unwrap()
            .is_some());
        assert!(WatchList::of(&home).entries().is_empty());
        // `keep` itself drops it.
        record(&home, "web-run-3", CONTAINER, Some(dead_process()));
        WatchList::of(&home)
            .add_run("web-run-3", dead_process())
            .unwrap();
        envs.keep("web-run-3").unwrap();
        assert!(WatchList::of(&home).entries().is_empty());
        assert!(envs.collect_garbage().is_empty());
        assert!(home.env_dir("web-run-3").exists());
    }

    /// After a reboot (another boot id) or in a home of an older berth (no `gc.json`), the
    /// next command reads every record: orphans without a marker go, live runs and VMs get
    /// the markers later commands rely on, folders of older versions are narrowed.
    #[test]
    fn after_a_reboot_or_in_an_older_home_the_next_command_sweeps_every_record() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        let me = ProcessIdentity::current().unwrap();
        for older_home in [true, false] {
            if older_home {
                let _ = std::fs::remove_file(home.root().join("gc.json"));
            } else {
                home.mark_swept().unwrap();
                let other_boot = serde_json::json!({
                    "boot_id": "00000000-0000-0000-0000-000000000000",
                    "swept_at": 1,
                    "departed_at": 1,
                });
                write_json(&home.root().join("gc.json"), &other_boot).unwrap();
            }
            record(&home, "web-run-1", CONTAINER, Some(dead_process()));
            record(&home, "web-run-2", CONTAINER, Some(me));
            record(
                &home,
                "box-1",
                "name = \"box\"\nbackend = \"vm\"\n[image]\nfrom = \"docker.io/library/debian:bookworm\"\n[vm]\nkernel = \"debian:linux-image-cloud-amd64\"\n",
                None,
            );
            std::fs::set_permissions(
                home.env_dir("box-1"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
            assert_eq!(envs.collect_garbage(), vec!["web-run-1".to_string()]);
            assert!(!home.env_dir("web-run-1").exists());
            assert!(home.env_dir("web-run-2").exists());
            assert_eq!(
                WatchList::of(&home).entries(),
                vec![
                    Watched::Vm {
                        env_id: "box-1".into()
                    },
                    Watched::Run {
                        env_id: "web-run-2".into(),
                        owner: Some(me)
                    },
                ]
            );
            let mode = std::fs::metadata(home.env_dir("box-1"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o777,
                0o710,
                "older folders are narrowed by the sweep"
            );
            assert!(!home.gc_due(DEPARTED_INTERVAL).sweep, "swept in this boot");
        }
    }

    /// A throw-away environment's record is written without fsync, so a power cut may leave
    /// its folder with no record or one never written out: the first sweep after the reboot
    /// destroys such folders of an earlier boot. A folder of this boot (a command may be
    /// making it), a corrupt record that was written, and a kept environment stay.
    #[test]
    fn the_sweep_after_a_reboot_destroys_folders_of_an_earlier_boot_never_recorded() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        let booted = crate::state::booted_at().expect("/proc/stat names the boot time");
        let earlier = booted - Duration::from_secs(60);
        record(&home, "web-1", CONTAINER, None);
        let contents: [(&str, Option<&[u8]>); 5] = [
            ("lost-run-1", Some(b"")),
            ("zeros-run-1", Some(&[0u8; 512])),
            ("bare-run-1", None),
            ("corrupt-1", Some(b"{not json")),
            ("fresh-run-1", Some(b"")),
        ];
        for (id, record) in contents {
            let dir = home.env_dir(id);
            std::fs::create_dir_all(dir.join("upper/home")).unwrap();
            std::fs::write(dir.join("upper/home/file"), "work").unwrap();
            std::fs::write(dir.join(ENV_LOCK_FILE), "").unwrap();
            if let Some(bytes) = record {
                std::fs::write(dir.join(RECORD_FILE), bytes).unwrap();
            }
        }
        for id in [
            "web-1",
            "lost-run-1",
            "zeros-run-1",
            "bare-run-1",
            "corrupt-1",
        ] {
            let dir = std::fs::File::open(home.env_dir(id)).unwrap();
            dir.set_modified(earlier).unwrap();
        }
        let other_boot = serde_json::json!({
            "boot_id": "00000000-0000-0000-0000-000000000000",
            "swept_at": 1,
            "departed_at": 1,
        });
        write_json(&home.root().join("gc.json"), &other_boot).unwrap();
        let mut removed = envs.collect_garbage();
        removed.sort();
        assert_eq!(removed, vec!["bare-run-1", "lost-run-1", "zeros-run-1"]);
        for id in ["bare-run-1", "lost-run-1", "zeros-run-1"] {
            assert!(!home.env_dir(id).exists(), "{id} stayed");
        }
        for id in ["corrupt-1", "fresh-run-1"] {
            assert!(
                home.env_dir(id).join("upper/home/file").exists(),
                "{id} went"
            );
        }
        assert!(EnvRecord::load(&home.env_dir("web-1")).unwrap().is_some());
    }

    /// `berth ls` sweeps whatever the schedule says: an orphan without a marker is neither
    /// kept nor listed.
    #[test]
    fn ls_sweeps_every_record_and_does_not_list_what_it_removed() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let envs = Environments::open(&home);
        home.mark_swept().unwrap();
        record(&home, "web-run-1", CONTAINER, Some(dead_process()));
        record(&home, "web-2", CONTAINER, None);
        let listed: Vec<String> = envs.list().unwrap().into_iter().map(|e| e.env_id).collect();
        assert_eq!(listed, vec!["web-2".to_string()]);
        assert!(!home.env_dir("web-run-1").exists());
    }

    /// kill -9 of a networked VMM in a home already swept in this boot: the VM's marker (as
    /// `up` writes it) gets its network released by the next command; without the marker an
    /// ordinary command does not look.
    #[test]
    fn the_network_of_a_killed_vmm_is_released_through_its_marker() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "e") else {
            return;
        };
        let id = "vmnet-watch";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let envs = Environments::open(&home);
        home.mark_swept().unwrap();
        let env = home.env_dir(id);
        let t = net.plumb_tap(id).unwrap();
        write_json(
            &env.join(VM_FILE),
            &VmState::stand_in(Provider::Kvm, &env, dead_process().pid as u32),
        )
        .unwrap();
        envs.collect_garbage();
        assert_eq!(
            master_of(&t.tap).as_deref(),
            Some(net.options().bridge.name.as_str()),
            "no marker: an ordinary command reads no environment folder"
        );
        envs.watch(id, BackendKind::Vm, None).unwrap();
        envs.collect_garbage();
        assert_released(&net, id, &t.tap);
        assert!(
            env.join(VM_FILE).exists(),
            "still shown as dead until down/up"
        );
    }

    /// kill -9 of a networked VMM: the next command's garbage collection removes the tap,
    /// lease, NAT and bridge; a live VMM's, and a locked environment's, are left alone.
    #[test]
    fn the_network_of_a_killed_vmm_is_released_by_the_next_command() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let Some(net) = test_network(&home, "c") else {
            return;
        };
        let bridge = net.options().bridge.name.clone();
        let id = "vmnet-gc";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let envs = Environments::open(&home);
        let env = home.env_dir(id);
        let t = net.plumb_tap(id).unwrap();

        // The VMM (stand-in) runs: its network stays.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write_json(
            &env.join(VM_FILE),
            &VmState::stand_in(Provider::Kvm, &env, child.id()),
        )
        .unwrap();
        assert!(envs.release_dead_vm_networks().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        // Killed, but a command holds the environment's lock (a start plumbing its tap).
        let lock = FileLock::acquire(&env.join(ENV_LOCK_FILE), LockMode::Exclusive).unwrap();
        assert!(envs.release_dead_vm_networks().is_empty());
        assert_eq!(master_of(&t.tap).as_deref(), Some(bridge.as_str()));
        drop(lock);

        envs.collect_garbage();
        assert_released(&net, id, &t.tap);
        assert!(
            env.join(VM_FILE).exists(),
            "still shown as dead until down/up"
        );
        assert!(envs.release_dead_vm_networks().is_empty(), "nothing left");
    }

    /// A CI job's home is deleted while its VM's tap is still on the shared bridge: the next
    /// user of the bridge from another home releases the lease, the tap and, as the last,
    /// the bridge, NAT table and record.
    #[test]
    fn the_lease_of_a_deleted_home_is_released_from_another_home() {
        let gone = tempfile::tempdir().unwrap();
        let gone_home = BerthHome::at(gone.path()).unwrap();
        let Some(net) = test_network(&gone_home, "d") else {
            return;
        };
        let id = "vmnet-gone";
        let _cleanup = DetachOnDrop {
            net: &net,
            env_id: id,
        };
        let t = net.plumb_tap(id).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_home = BerthHome::at(other.path()).unwrap();
        let from_other = Network::new(&other_home, net.options().clone());
        assert_eq!(
            from_other.collect_departed().unwrap(),
            0,
            "its holder exists"
        );
        assert_eq!(
            master_of(&t.tap).as_deref(),
            Some(net.options().bridge.name.as_str())
        );

        std::fs::remove_dir_all(gone_home.env_dir(id)).unwrap();
        assert_eq!(from_other.collect_departed().unwrap(), 1);
        assert_released(&net, id, &t.tap);
    }
}
