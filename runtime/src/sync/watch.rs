//! Change notification and debouncing.
//!
//! [`watch_tree`] watches a folder recursively with inotify (through `notify`), or with a
//! polling watcher when inotify is unavailable or its watch limit is reached. Events are reduced
//! to "look at this relative path again (and its subtree if `deep`)"; reads are dropped so the
//! engine's own reads do not echo back.
//!
//! [`Dirty`] collects those paths and says when to act: `quiet` after the last event (so a
//! single save is picked up within a few milliseconds), but at most `max_delay` after the first
//! one (so a long burst such as `git checkout` is synchronized in slices while it runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use super::base::Side;
use super::transport::{EventSink, TransportError, WatchEvent, Watching};
use super::tree::is_temp_name;

/// Watches `root` recursively; see the module documentation. `label` names the side.
pub fn watch_tree(
    label: &str,
    root: &Path,
    sink: EventSink,
    force_poll: bool,
    poll_interval: Duration,
) -> Result<Watching, TransportError> {
    let sink: Arc<EventSink> = Arc::new(sink);
    let make_handler = || {
        let sink = sink.clone();
        let root = root.to_path_buf();
        move |res: notify::Result<notify::Event>| match res {
            Ok(ev) => {
                for e in map_event(&root, &ev) {
                    sink(e);
                }
            }
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                sink(WatchEvent::Failed {
                    message: e.to_string(),
                    limit: true,
                })
            }
            // Paths vanishing while watches are added are normal; a rescan covers them.
            Err(_) => sink(WatchEvent::Rescan),
        }
    };
    let watch_err = |e: notify::Error| TransportError::Watch {
        side: label.to_string(),
        detail: e.to_string(),
    };
    let mut polling = force_poll.then(|| "polling requested".to_string());
    if !force_poll {
        match notify::RecommendedWatcher::new(make_handler(), notify::Config::default()) {
            Ok(mut w) => match w.watch(root, RecursiveMode::Recursive) {
                Ok(()) => {
                    return Ok(Watching {
                        guard: Box::new(w),
                        polling: None,
                    })
                }
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    polling = Some(
                        TransportError::WatchLimit {
                            side: label.to_string(),
                            detail: e.to_string(),
                        }
                        .to_string(),
                    );
                }
                Err(e) => return Err(watch_err(e)),
            },
            Err(e) => {
                let hint = match &e.kind {
                    notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
                        "the inotify instance limit is reached; raise it with `sysctl fs.inotify.max_user_instances=1024`; "
                    }
                    _ => "",
                };
                polling = Some(format!(
                    "{label}: inotify unavailable ({e}); {hint}berth falls back to polling meanwhile"
                ))
            }
        }
    }
    let mut w = notify::PollWatcher::new(
        make_handler(),
        notify::Config::default().with_poll_interval(poll_interval),
    )
    .map_err(watch_err)?;
    w.watch(root, RecursiveMode::Recursive).map_err(watch_err)?;
    Ok(Watching {
        guard: Box::new(w),
        polling,
    })
}

/// Turns a notify event into the paths to look at again.
pub fn map_event(root: &Path, ev: &notify::Event) -> Vec<WatchEvent> {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    if ev.need_rescan() {
        return vec![WatchEvent::Rescan];
    }
    let deep = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => return Vec::new(),
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Metadata(_)) => {
            false
        }
        // Creations, removals and renames may concern whole folders.
        _ => true,
    };
    ev.paths
        .iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(root).ok()?.to_str()?;
            if rel.is_empty() || rel.split('/').any(is_temp_name) {
                return None;
            }
            Some(WatchEvent::Changed {
                rel: rel.to_string(),
                deep,
            })
        })
        .collect()
}

/// Debounce timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Act this long after the last event.
    pub quiet: Duration,
    /// ... but no later than this after the first event of a batch.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Why a path is waiting: which sides reported it, and whether its subtree may have changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyPath {
    pub deep: bool,
    pub host: bool,
    pub env: bool,
}

impl DirtyPath {
    /// The one side that reported the path, if only one did.
    pub fn only_side(&self) -> Option<Side> {
        match (self.host, self.env) {
            (true, false) => Some(Side::Host),
            (false, true) => Some(Side::Env),
            _ => None,
        }
    }
}

/// Paths waiting to be reconciled.
#[derive(Debug, Default)]
pub struct Dirty {
    paths: BTreeMap<String, DirtyPath>,
    rescan: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A batch taken from [`Dirty`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Relative path → what is known about its change.
    pub paths: BTreeMap<String, DirtyPath>,
    /// Everything must be rescanned.
    pub rescan: bool,
}

impl Dirty {
    /// Adds an event reported by `side` (`None`: not from a watcher; look at both sides).
    pub fn add(&mut self, side: Option<Side>, ev: WatchEvent, now: Instant) {
        match ev {
            WatchEvent::Changed { rel, deep } => {
                let d = self.paths.entry(rel).or_default();
                d.deep |= deep;
                d.host |= side != Some(Side::Env);
                d.env |= side != Some(Side::Host);
            }
            WatchEvent::Rescan => self.rescan = true,
            WatchEvent::Failed { .. } => return,
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// Marks a path for another look (after a transfer was interrupted by a change).
    pub fn retry(&mut self, rel: String, now: Instant) {
        self.add(None, WatchEvent::Changed { rel, deep: true }, now);
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && !self.rescan
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// How long until the batch is due; `None` when there is nothing to do.
    pub fn due_in(&self, now: Instant, d: Debounce) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        let at = (last + d.quiet).min(first + d.max_delay);
        Some(at.saturating_duration_since(now))
    }

    /// Takes the pending batch.
    pub fn take(&mut self) -> Batch {
        self.first = None;
        self.last = None;
        Batch {
            paths: std::mem::take(&mut self.paths),
            rescan: std::mem::take(&mut self.rescan),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(rel: &str, deep: bool) -> WatchEvent {
        WatchEvent::Changed {
            rel: rel.into(),
            deep,
        }
    }

    #[test]
    fn quiet_period_then_cap_under_a_burst() {
        let d = Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
        };
        let t0 = Instant::now();
        let mut dirty = Dirty::default();
        assert_eq!(dirty.due_in(t0, d), None);
        dirty.add(Some(Side::Host), ch("a", false), t0);
        assert_eq!(dirty.due_in(t0, d), Some(Duration::from_millis(5)));
        // Events every 3 ms keep pushing the quiet deadline, up to the cap.
        for i in 1..30 {
            dirty.add(
                Some(Side::Env),
                ch("b", false),
                t0 + Duration::from_millis(3 * i),
            );
        }
        let now = t0 + Duration::from_millis(40);
        assert_eq!(dirty.due_in(now, d), Some(Duration::from_millis(10)));
        let b = dirty.take();
        assert_eq!(b.paths.len(), 2);
        assert!(dirty.is_empty());
    }

    #[test]
    fn deep_flag_is_sticky_and_reads_are_dropped() {
        let mut dirty = Dirty::default();
        let now = Instant::now();
        dirty.add(Some(Side::Host), ch("a", true), now);
        dirty.add(Some(Side::Host), ch("a", false), now);
        let a = dirty.take().paths["a"];
        assert!(a.deep);
        assert_eq!(a.only_side(), Some(Side::Host));
        dirty.add(Some(Side::Host), ch("a", false), now);
        dirty.add(Some(Side::Env), ch("a", false), now);
        assert_eq!(dirty.take().paths["a"].only_side(), None);

        use notify::event::{AccessKind, AccessMode, CreateKind};
        let root = Path::new("/r");
        let read = notify::Event::new(EventKind::Access(AccessKind::Close(AccessMode::Read)))
            .add_path("/r/x".into());
        assert!(map_event(root, &read).is_empty());
        let create =
            notify::Event::new(EventKind::Create(CreateKind::Folder)).add_path("/r/d".into());
        assert_eq!(map_event(root, &create), vec![ch("d", true)]);
        let temp = notify::Event::new(EventKind::Create(CreateKind::File))
            .add_path("/r/.x.berth-sync-tmp-1-2".into());
        assert!(map_event(root, &temp).is_empty());
    }
}
