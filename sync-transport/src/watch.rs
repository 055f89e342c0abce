//! Change notification: [`watch_tree`] watches a folder recursively with berth's own inotify
//! watcher ([`crate::inotify`]), or with `notify`'s polling watcher when inotify is unavailable
//! or its watch limit is reached. Events are reduced to "look at this relative path again (and
//! its subtree if `deep`)"; reads are never watched, so the engine's own reads do not echo back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use crate::inotify::{self, StartError};
use crate::own_renames::OwnRenames;

use crate::transport::{EventSink, TransportError, WatchEvent, Watching};
use crate::tree::is_temp_name;

/// Watches `root` recursively; see the module documentation. `label` names the side. `own`:
/// the renames of the transport writing the tree, whose events the inotify watcher drops
/// ([`crate::own_renames`]).
pub fn watch_tree(
    label: &str,
    root: &Path,
    sink: EventSink,
    force_poll: bool,
    poll_interval: Duration,
    own: Option<&Arc<OwnRenames>>,
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
        match inotify::start(root, sink.clone(), own.map(|o| o.watcher_started())) {
            Ok(w) => {
                return Ok(Watching {
                    barrier: Some(w.barrier()),
                    guard: Box::new(w),
                    polling: None,
                })
            }
            Err(StartError::Limit(e)) => {
                polling = Some(
                    TransportError::WatchLimit {
                        side: label.to_string(),
                        detail: e.to_string(),
                    }
                    .to_string(),
                );
            }
            Err(StartError::Other(e)) => {
                return Err(TransportError::Watch {
                    side: label.to_string(),
                    detail: e.to_string(),
                })
            }
            Err(StartError::Init(e)) => {
                let hint = if e.raw_os_error() == Some(libc::EMFILE) {
                    "the inotify instance limit is reached; raise it with `sysctl fs.inotify.max_user_instances=1024`; "
                } else {
                    ""
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
        barrier: None,
    })
}

/// Turns a notify event (of the polling watcher) into the paths to look at again.
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
    fn reads_and_temp_files_are_dropped_folder_events_are_deep() {
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
