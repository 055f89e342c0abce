//! Tests of the local transport: atomic writes, symlinks never followed, lookups, scans,
//! guarded removals, folders and modes.

use std::io::Write;

use super::*;
use crate::tree::TEMP_MARKER;

fn t(dir: &Path) -> LocalTransport {
    LocalTransport::open("test", dir).unwrap()
}

#[test]
fn stage_and_commit_write_atomically_with_mode_and_mtime() {
    let d = tempfile::tempdir().unwrap();
    let tr = t(d.path());
    let s = tr
        .stage_file(
            "a/b/c.sh",
            &mut &b"#!/bin/sh\n"[..],
            0o755,
            1_500_000_000_123_456_789,
        )
        .unwrap();
    assert!(
        !d.path().join("a/b/c.sh").exists(),
        "not visible before commit"
    );
    let e = tr.commit(s, None).unwrap();
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.mode, 0o755);
    assert_eq!(e.mtime_ns, 1_500_000_000_123_456_789);
    assert_eq!(fs::read(d.path().join("a/b/c.sh")).unwrap(), b"#!/bin/sh\n");
    // A commit whose expectation no longer holds leaves the file alone.
    let s = tr.stage_file("a/b/c.sh", &mut &b"x"[..], 0o644, 0).unwrap();
    assert!(matches!(
        tr.commit(s, None),
        Err(TransportError::Changed { .. })
    ));
    assert_eq!(fs::read(d.path().join("a/b/c.sh")).unwrap(), b"#!/bin/sh\n");
    let leftovers: Vec<_> = fs::read_dir(d.path().join("a/b")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp file removed");
}

#[test]
fn symlinks_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"s").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
    let tr = t(d.path());
    assert!(matches!(
        tr.read_file("link/secret").map(|_| ()),
        Err(TransportError::Escapes { .. })
    ));
    assert!(matches!(
        tr.stage_file("link/new", &mut &b"x"[..], 0o644, 0),
        Err(TransportError::Escapes { .. })
    ));
    assert!(!outside.path().join("new").exists());
    assert!(tr.stat("link/secret").is_err() || tr.stat("link/secret").unwrap().is_none());
    let e = tr.stat("link").unwrap().unwrap();
    assert_eq!(e.kind, EntryKind::Symlink);
    assert_eq!(e.target.as_deref(), outside.path().to_str());
    let scan = tr.scan("", &IgnoreRules::new(&[]).unwrap()).unwrap();
    assert_eq!(scan.entries.len(), 1, "the link, not what it points to");
    assert!(matches!(
        tr.stat("../x"),
        Err(TransportError::Escapes { .. })
    ));
}

#[test]
fn stat_many_answers_as_stat_and_never_looks_through_symlinks() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"s").unwrap();
    fs::create_dir_all(d.path().join("a/b")).unwrap();
    fs::write(d.path().join("a/1"), "1").unwrap();
    fs::write(d.path().join("a/b/x"), "x").unwrap();
    fs::write(d.path().join("a/2"), "22").unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path().join("a/link")).unwrap();
    let tr = t(d.path());
    let paths = [
        "a/1",
        "a/b/x",
        "a/2",
        "a/missing",
        "missing/x",
        "link/secret",
        "link",
        "a/link",
        "a/link/secret",
        "a/1/under-a-file",
        "../x",
        "a/../a/1",
    ];
    let many = tr.stat_many(&paths);
    assert_eq!(many.len(), paths.len());
    let shape = |r: &Result<Option<Entry>, TransportError>| match r {
        Ok(e) => format!("{e:?}"),
        Err(TransportError::Escapes { .. }) => "escapes".to_string(),
        Err(e) => format!("error {e}"),
    };
    for (p, r) in paths.iter().zip(&many) {
        assert_eq!(shape(r), shape(&tr.stat(p)), "{p}");
    }
    // Nothing behind a symlink is ever described (the folder outside has `secret`).
    for (i, p) in paths.iter().enumerate() {
        if p.ends_with("secret") {
            assert!(
                matches!(many[i], Ok(None) | Err(TransportError::Escapes { .. })),
                "{p}: {:?}",
                shape(&many[i])
            );
        }
    }
    assert_eq!(many[2].as_ref().unwrap().as_ref().unwrap().size, 2);
    assert_eq!(
        many[6].as_ref().unwrap().as_ref().unwrap().kind,
        EntryKind::Symlink
    );
}

#[test]
fn commit_returns_the_entry_written_and_reads_stop_at_the_size_seen_at_open() {
    let d = tempfile::tempdir().unwrap();
    let tr = t(d.path());
    let s = tr
        .stage_file("f", &mut &b"hello"[..], 0o640, 1_600_000_000_000_000_001)
        .unwrap();
    let written = tr.commit(s, None).unwrap();
    assert_eq!(Some(written), tr.stat("f").unwrap());
    let (entry, mut src) = tr.read_file("f").unwrap();
    assert_eq!(entry.size, 5);
    // Grows after the open: the copy reads what it saw, and the new entry tells it changed.
    fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("f"))
        .unwrap()
        .write_all(b" world")
        .unwrap();
    let mut got = Vec::new();
    src.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    assert!(!src.entry_now().unwrap().same_state(&entry));
}

#[test]
fn scan_reads_gitignores_and_reports_leftovers() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("src/gen")).unwrap();
    fs::write(d.path().join(".gitignore"), "*.o\n").unwrap();
    fs::write(d.path().join("src/a.rs"), "x").unwrap();
    fs::write(d.path().join("src/a.o"), "x").unwrap();
    fs::write(d.path().join("src/gen/z"), "x").unwrap();
    fs::write(d.path().join(format!("src/.a.rs{TEMP_MARKER}1-1")), "x").unwrap();
    let tr = t(d.path());
    let rules = IgnoreRules::new(&["gen/".to_string()]).unwrap();
    let scan = tr.scan("", &rules).unwrap();
    let keys: Vec<&str> = scan.entries.keys().map(|s| s.as_str()).collect();
    assert_eq!(keys, vec![".gitignore", "src", "src/a.rs"]);
    assert_eq!(scan.gitignores.get("").map(|s| s.as_str()), Some("*.o\n"));
    assert_eq!(scan.leftovers.len(), 1);
    let sub = tr.scan("src/a.rs", &rules).unwrap();
    assert_eq!(sub.entries.len(), 1);
    assert!(tr.scan("missing", &rules).unwrap().entries.is_empty());
}

#[test]
fn remove_refuses_changed_entries_and_keeps_nonempty_folders() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("dir")).unwrap();
    fs::write(d.path().join("dir/f"), "1").unwrap();
    let tr = t(d.path());
    let f = tr.stat("dir/f").unwrap().unwrap();
    let dir = tr.stat("dir").unwrap().unwrap();
    assert!(matches!(
        tr.remove("dir", &dir),
        Err(TransportError::NotEmpty { .. })
    ));
    let mut stale = f.clone();
    stale.size += 1;
    assert!(matches!(
        tr.remove("dir/f", &stale),
        Err(TransportError::Changed { .. })
    ));
    tr.remove("dir/f", &f).unwrap();
    tr.remove("dir", &dir).unwrap();
    assert!(!d.path().join("dir").exists());
}

#[test]
fn mkdir_and_set_mode() {
    let d = tempfile::tempdir().unwrap();
    let tr = t(d.path());
    let e = tr.mkdir("x/y", 0o700).unwrap();
    assert_eq!((e.kind, e.mode), (EntryKind::Dir, 0o700));
    fs::write(d.path().join("x/f"), "1").unwrap();
    assert_eq!(tr.set_mode("x/f", 0o751).unwrap().mode, 0o751);
}

/// The transport's own renames into place are not reported by its watcher (the engine's own
/// writes coming back as changes to look at); every other change of those paths still is.
#[test]
fn the_watcher_passes_over_the_transports_own_renames_into_place_only() {
    use crate::transport::WatchEvent;
    use std::sync::mpsc;
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("sub")).unwrap();
    let tr = t(d.path());
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let w = tr
        .watch(
            Box::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }),
            false,
        )
        .unwrap();
    assert!(w.polling.is_none(), "inotify is needed: {:?}", w.polling);
    // Everything reported up to the creation of `mark` (events come in order).
    let reported_until = |mark: &str| -> Vec<String> {
        fs::write(d.path().join(mark), "").unwrap();
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(WatchEvent::Changed { rel, .. }) if rel == mark => return seen,
                Ok(WatchEvent::Changed { rel, .. }) => seen.push(rel),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("{mark} never reported ({e}); got {seen:?}"),
            }
        }
    };
    // A new file and a replaced one, written by the transport.
    let s = tr.stage_file("sub/a", &mut &b"1"[..], 0o644, 1).unwrap();
    let first = tr.commit(s, None).unwrap();
    let s = tr.stage_file("sub/a", &mut &b"22"[..], 0o644, 2).unwrap();
    tr.commit(s, Some(&first)).unwrap();
    let s = tr.stage_symlink("sub/l", "a").unwrap();
    tr.commit(s, None).unwrap();
    // Files replaced in a kept folder: the names are exchanged, the old inode is taken for
    // the next file (`spare_inode`): neither half of an exchange is reported.
    let written: Vec<_> = ["d", "e", "f"]
        .iter()
        .map(|n| {
            let s = tr
                .stage_file(&format!("sub/{n}"), &mut &b"1"[..], 0o644, 1)
                .unwrap();
            tr.commit(s, None).unwrap()
        })
        .collect();
    tr.keep_folder("sub");
    for (n, old) in ["d", "e", "f"].iter().zip(&written) {
        let s = tr
            .stage_file(&format!("sub/{n}"), &mut &b"22"[..], 0o644, 2)
            .unwrap();
        tr.commit(s, Some(old)).unwrap();
    }
    tr.release_folder();
    assert_eq!(reported_until("m1"), Vec::<String>::new());
    // A file the transport put in place by an exchange, renamed away by someone else right
    // after: reported.
    let old = tr.stat("sub/d").unwrap().unwrap();
    tr.keep_folder("sub");
    let s = tr.stage_file("sub/d", &mut &b"333"[..], 0o644, 3).unwrap();
    tr.commit(s, Some(&old)).unwrap();
    tr.release_folder();
    fs::rename(d.path().join("sub/d"), d.path().join("sub/moved")).unwrap();
    let seen = reported_until("m1b");
    assert!(seen.contains(&"sub/d".to_string()), "{seen:?}");
    assert!(seen.contains(&"sub/moved".to_string()), "{seen:?}");
    // Someone else's rename of a name that looks like a temporary file of the transport, a
    // write and a chmod of a file the transport wrote: reported.
    let fake = d
        .path()
        .join(format!("sub/.b{TEMP_MARKER}{}-0", std::process::id()));
    fs::write(&fake, "x").unwrap();
    fs::rename(&fake, d.path().join("sub/b")).unwrap();
    let seen = reported_until("m2");
    assert!(seen.contains(&"sub/b".to_string()), "{seen:?}");
    fs::write(d.path().join("sub/a"), "333").unwrap();
    let seen = reported_until("m3");
    assert!(seen.contains(&"sub/a".to_string()), "{seen:?}");
    fs::set_permissions(d.path().join("sub/a"), fs::Permissions::from_mode(0o600)).unwrap();
    let seen = reported_until("m4");
    assert!(seen.contains(&"sub/a".to_string()), "{seen:?}");
    // A staged file moved by someone else to another name than its own: reported, and the
    // commit then fails (nothing to rename).
    let s = tr.stage_file("sub/c", &mut &b"c"[..], 0o644, 3).unwrap();
    fs::rename(
        d.path().join("sub").join(&s.temp_name),
        d.path().join("sub/elsewhere"),
    )
    .unwrap();
    assert!(tr.commit(s, None).is_err());
    let seen = reported_until("m5");
    assert!(seen.contains(&"sub/elsewhere".to_string()), "{seen:?}");
    assert!(!seen.contains(&"sub/c".to_string()), "{seen:?}");
    drop(w);
}
