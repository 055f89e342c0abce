//! What garbage collection looks at on every command without reading every environment's
//! record, so that its cost does not grow with the number of environments:
//!
//! - `watch/<env-id>.run`: a throw-away environment of `berth run`, with its owner process
//!   (`{"owner": {"pid": …, "start_time": …}}`), written before anything of the environment is
//!   created and removed after its folder is; when the owner is gone, the environment is
//!   garbage, however far its `up` got.
//! - `watch/<env-id>.vm`: a VM environment, whose killed VMM leaves its tap and lease behind.
//! - `watch/<env-id>.stop`: an environment whose `berth down` returned once its processes
//!   were gone, and whose detached child finishes the stop (cgroups, network) under the
//!   environment's lock, removing the marker before it lets the lock go. A marker whose
//!   environment is not locked is that of a killed child: the stop is finished by the next
//!   command.
//! - `gc.json`: the boot (`/proc/sys/kernel/random/boot_id`) in which the home was last swept
//!   whole. A home not yet swept in this boot (after a reboot; a home of an older berth, which
//!   wrote no markers) gets a full sweep from its next command. It also says when the
//!   bridge's leases were last checked (a machine-wide list, checked at most every so often).
//!
//! Markers are written without fsync: a power loss that loses one also changes the boot id,
//! and the next command's full sweep then reads every record.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic_file::{read_json, write_json_volatile};
use super::home::BerthHome;
use super::private_dir::create_private_dir;
use super::StateError;
use crate::host::clock::now_secs;
use crate::host::process::ProcessIdentity;

/// Folder of the markers, in the home.
const WATCH_DIR: &str = "watch";
/// The home's record of its last full sweep.
const SWEEP_FILE: &str = "gc.json";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const RUN_SUFFIX: &str = ".run";
const VM_SUFFIX: &str = ".vm";
const STOP_SUFFIX: &str = ".stop";

/// One marker of the watch list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// A `berth run` environment; `owner` is `None` when the marker cannot be read (then the
    /// environment's record decides).
    Run {
        env_id: String,
        owner: Option<ProcessIdentity>,
    },
    /// A VM environment.
    Vm { env_id: String },
    /// An environment whose stop a detached child finishes.
    Stop { env_id: String },
}

#[derive(Serialize, Deserialize)]
struct RunMarker {
    owner: ProcessIdentity,
}

#[derive(Serialize, Deserialize)]
struct SweepRecord {
    boot_id: String,
    /// Seconds since the epoch.
    swept_at: u64,
    /// When the bridge's leases were last checked, seconds since the epoch.
    #[serde(default)]
    departed_at: u64,
}

/// The environments of one home that garbage collection watches (see the module doc).
pub struct WatchList {
    dir: PathBuf,
}

impl WatchList {
    pub fn of(home: &BerthHome) -> WatchList {
        WatchList {
            dir: home.root().join(WATCH_DIR),
        }
    }

    /// The watch list of the home holding the environment folder `env_dir`
    /// (`<home>/envs/<env-id>`).
    pub fn of_env_dir(env_dir: &Path) -> Option<(WatchList, String)> {
        let env_id = env_dir.file_name()?.to_str()?.to_string();
        let home = env_dir.parent()?.parent()?;
        Some((
            WatchList {
                dir: home.join(WATCH_DIR),
            },
            env_id,
        ))
    }

    fn path(&self, env_id: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{env_id}{suffix}"))
    }

    /// Marks `env_id` as a throw-away environment owned by `owner`.
    pub fn add_run(&self, env_id: &str, owner: ProcessIdentity) -> Result<(), StateError> {
        create_private_dir(&self.dir)?;
        write_json_volatile(&self.path(env_id, RUN_SUFFIX), &RunMarker { owner })
    }

    /// Gives `env_id`'s run marker a second name, `lock`: the lock file of its environment
    /// folder, made by the caller next unless it exists. A throw-away run then makes one
    /// inode for both instead of two, and frees one (each inode a run makes and frees costs
    /// every later allocation in its block group a longer search on ext4 without a journal).
    /// The lock's content means nothing; the marker keeps its own name and content, and a
    /// run kept afterwards (`--keep`) loses the marker's name only. Nothing is done, and
    /// `false` returned, when there is no marker (not a run), `lock` exists, or the link is
    /// refused (another filesystem): the caller then creates the lock file as ever.
    pub fn link_run_marker(&self, env_id: &str, lock: &Path) -> bool {
        fs::hard_link(self.path(env_id, RUN_SUFFIX), lock).is_ok()
    }

    /// Marks `env_id` as a VM environment (nothing to do when it is marked already).
    pub fn add_vm(&self, env_id: &str) -> Result<(), StateError> {
        let path = self.path(env_id, VM_SUFFIX);
        if path.exists() {
            return Ok(());
        }
        self.add_empty(path)
    }

    /// Marks `env_id` as an environment whose stop a detached child finishes.
    pub fn add_stop(&self, env_id: &str) -> Result<(), StateError> {
        self.add_empty(self.path(env_id, STOP_SUFFIX))
    }

    /// Creates the empty marker `path` (kept as it is when it exists).
    fn add_empty(&self, path: PathBuf) -> Result<(), StateError> {
        create_private_dir(&self.dir)?;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(drop)
            .map_err(|source| StateError::Write { path, source })
    }

    /// Forgets that `env_id`'s stop is to be finished (it is).
    pub fn remove_stop(&self, env_id: &str) -> Result<(), StateError> {
        remove_if_present(&self.path(env_id, STOP_SUFFIX))
    }

    /// Forgets that `env_id` is a throw-away environment (`run --keep`).
    pub fn remove_run(&self, env_id: &str) -> Result<(), StateError> {
        remove_if_present(&self.path(env_id, RUN_SUFFIX))
    }

    /// Forgets `env_id` entirely (its folder is gone).
    pub fn remove(&self, env_id: &str) -> Result<(), StateError> {
        remove_if_present(&self.path(env_id, RUN_SUFFIX))?;
        remove_if_present(&self.path(env_id, VM_SUFFIX))?;
        remove_if_present(&self.path(env_id, STOP_SUFFIX))
    }

    /// Every marker, in name order. One read of the folder, and one small file per `berth
    /// run` environment.
    pub fn entries(&self) -> Vec<Watched> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|name| {
                if let Some(env_id) = name.strip_suffix(RUN_SUFFIX) {
                    let owner = read_json::<RunMarker>(&self.dir.join(&name))
                        .ok()
                        .flatten()
                        .map(|m| m.owner);
                    Some(Watched::Run {
                        env_id: env_id.to_string(),
                        owner,
                    })
                } else if let Some(env_id) = name.strip_suffix(STOP_SUFFIX) {
                    Some(Watched::Stop {
                        env_id: env_id.to_string(),
                    })
                } else {
                    name.strip_suffix(VM_SUFFIX).map(|env_id| Watched::Vm {
                        env_id: env_id.to_string(),
                    })
                }
            })
            .filter(|w| match w {
                Watched::Run { env_id, .. } | Watched::Vm { env_id } | Watched::Stop { env_id } => {
                    plausible_env_id(env_id)
                }
            })
            .collect()
    }
}

/// An environment id as berth makes them: never empty, never a path.
fn plausible_env_id(id: &str) -> bool {
    !id.is_empty() && !id.starts_with('.') && !id.contains('/')
}

fn remove_if_present(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StateError::Write {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The id of the current boot; `None` where the kernel does not say (then a sweep is due only
/// until one is recorded).
fn boot_id() -> Option<String> {
    fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// When the current boot began (`btime` of `/proc/stat`, wall-clock seconds); `None` where
/// the kernel does not say.
pub fn booted_at() -> Option<std::time::SystemTime> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let secs = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// What [`BerthHome::gc_due`] found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcDue {
    /// A full sweep of every environment.
    pub sweep: bool,
    /// A check of the bridge's leases.
    pub departed: bool,
}

impl BerthHome {
    fn sweep_record(&self) -> Option<SweepRecord> {
        read_json::<SweepRecord>(&self.root().join(SWEEP_FILE))
            .ok()
            .flatten()
    }

    /// What garbage collection must do beyond the watch list: a full sweep when the home was
    /// not swept whole in this boot (a reboot killed every owner and VMM and may have lost
    /// markers not yet on disk; a home of an older berth has records but no markers), a check
    /// of the bridge's leases when the last one is older than `departed_interval`. One read
    /// of a small file.
    pub fn gc_due(&self, departed_interval: std::time::Duration) -> GcDue {
        let Some(rec) = self.sweep_record() else {
            return GcDue {
                sweep: true,
                departed: true,
            };
        };
        let now = now_secs();
        GcDue {
            sweep: boot_id().is_some_and(|b| b != rec.boot_id),
            departed: now < rec.departed_at || now - rec.departed_at >= departed_interval.as_secs(),
        }
    }

    /// Records that the home was swept whole in this boot (the sweep checks the leases too).
    pub fn mark_swept(&self) -> Result<(), StateError> {
        let now = now_secs();
        write_json_volatile(
            &self.root().join(SWEEP_FILE),
            &SweepRecord {
                boot_id: boot_id().unwrap_or_default(),
                swept_at: now,
                departed_at: now,
            },
        )
    }

    /// Records a check of the bridge's leases (nothing before the home's first sweep).
    pub fn mark_departed_checked(&self) -> Result<(), StateError> {
        let Some(rec) = self.sweep_record() else {
            return Ok(());
        };
        write_json_volatile(
            &self.root().join(SWEEP_FILE),
            &SweepRecord {
                departed_at: now_secs(),
                ..rec
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessIdentity {
        ProcessIdentity::current().unwrap()
    }

    #[test]
    fn markers_are_listed_by_kind_and_removed_with_their_environment() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let w = WatchList::of(&home);
        assert!(w.entries().is_empty(), "no folder yet: nothing watched");
        w.add_run("web-run-1", me()).unwrap();
        w.add_vm("vm-1").unwrap();
        w.add_vm("vm-1").unwrap();
        w.add_stop("kept-1").unwrap();
        assert_eq!(
            w.entries(),
            vec![
                Watched::Stop {
                    env_id: "kept-1".into()
                },
                Watched::Vm {
                    env_id: "vm-1".into()
                },
                Watched::Run {
                    env_id: "web-run-1".into(),
                    owner: Some(me())
                },
            ]
        );
        w.remove_stop("kept-1").unwrap();
        w.remove_stop("kept-1").unwrap();
        w.add_stop("kept-2").unwrap();
        WatchList::of_env_dir(&home.env_dir("kept-2"))
            .unwrap()
            .0
            .remove("kept-2")
            .unwrap();
        let (of_dir, id) = WatchList::of_env_dir(&home.env_dir("web-run-1")).unwrap();
        assert_eq!(id, "web-run-1");
        of_dir.remove(&id).unwrap();
        of_dir.remove(&id).unwrap();
        w.remove_run("vm-1").unwrap();
        assert_eq!(
            w.entries(),
            vec![Watched::Vm {
                env_id: "vm-1".into()
            }]
        );
        // A torn or foreign marker is still listed, for the record to decide.
        fs::write(d.path().join(WATCH_DIR).join("x-1.run"), b"{").unwrap();
        fs::write(d.path().join(WATCH_DIR).join(".hidden.run"), b"{}").unwrap();
        assert!(w.entries().contains(&Watched::Run {
            env_id: "x-1".into(),
            owner: None
        }));
        assert_eq!(w.entries().len(), 2);
    }

    #[test]
    fn a_sweep_is_due_until_recorded_and_again_after_a_reboot() {
        let d = tempfile::tempdir().unwrap();
        let home = BerthHome::at(d.path()).unwrap();
        let interval = std::time::Duration::from_secs(30);
        let all = GcDue {
            sweep: true,
            departed: true,
        };
        assert_eq!(
            home.gc_due(interval),
            all,
            "never swept (or an older berth's)"
        );
        home.mark_departed_checked().unwrap();
        assert_eq!(home.gc_due(interval), all, "only a sweep records itself");
        home.mark_swept().unwrap();
        let nothing = GcDue {
            sweep: false,
            departed: false,
        };
        assert_eq!(home.gc_due(interval), nothing);
        assert!(home.gc_due(std::time::Duration::ZERO).departed);
        // Swept in this boot, the leases checked long ago, then again.
        let rec = |boot: String, departed_at| SweepRecord {
            boot_id: boot,
            swept_at: 1,
            departed_at,
        };
        let path = d.path().join(SWEEP_FILE);
        write_json_volatile(&path, &rec(boot_id().unwrap_or_default(), 1)).unwrap();
        assert_eq!(
            home.gc_due(interval),
            GcDue {
                sweep: false,
                departed: true
            }
        );
        home.mark_departed_checked().unwrap();
        assert_eq!(home.gc_due(interval), nothing);
        // Swept in another boot.
        let other = "00000000-0000-0000-0000-000000000000".to_string();
        write_json_volatile(&path, &rec(other, now_secs())).unwrap();
        assert_eq!(home.gc_due(interval).sweep, boot_id().is_some());
        fs::write(&path, b"{").unwrap();
        assert_eq!(home.gc_due(interval), all, "a torn record means a sweep");
    }
}
