//! [`RemoteTransport`] against [`serve`] on a [`LocalTransport`], through a socketpair.

use super::*;
use crate::transport::WatchEvent;
use crate::tree::EntryKind;
use crate::wire::{read_frame, write_frame};
use crate::LocalTransport;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;

/// A RemoteTransport talking to a LocalTransport on `root` through a socketpair.
fn remote(root: &Path) -> (RemoteTransport, std::thread::JoinHandle<Result<(), String>>) {
    let (a, b) = UnixStream::pair().unwrap();
    let root = root.to_path_buf();
    let server = std::thread::spawn(move || {
        let t = LocalTransport::open("env", &root).map_err(|e| e.to_string())?;
        let mut r = a.try_clone().unwrap();
        serve(&mut r, Box::new(a), &t).map_err(|e| e.to_string())
    });
    let client = RemoteTransport::connect(
        "env",
        Box::new(b.try_clone().unwrap()),
        Box::new(ShutdownOnDrop(b)),
    )
    .unwrap();
    (client, server)
}

/// The writing half of a socket: dropping it tells the peer the stream ended (the
/// reader thread keeps its own descriptor of the same socket open).
struct ShutdownOnDrop(UnixStream);

impl Write for ShutdownOnDrop {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

use crate::serve::serve;

use crate::delta::test_data as data;

#[test]
fn every_operation_works_across_the_wire() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("src/target")).unwrap();
    fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    fs::write(root.join("src/target/x.o"), "o").unwrap();
    fs::write(root.join(".gitignore"), "*.log\n").unwrap();
    fs::write(root.join("a.log"), "log").unwrap();
    let (t, server) = remote(root);
    assert!(t.describe().starts_with("env ("), "{}", t.describe());

    // scan with the mount's patterns and .gitignore
    let rules = IgnoreRules::new(&["target/".into()]).unwrap();
    let scan = t.scan("", &rules).unwrap();
    let names: Vec<_> = scan.entries.keys().cloned().collect();
    assert_eq!(names, [".gitignore", "src", "src/main.rs"]);
    assert_eq!(scan.gitignores.get("").map(|s| s.as_str()), Some("*.log\n"));

    // stat, hash, read
    let e = t.stat("src/main.rs").unwrap().unwrap();
    assert_eq!((e.kind, e.size), (EntryKind::File, 13));
    assert!(t.stat("missing").unwrap().is_none());
    assert_eq!(
        t.hash("src/main.rs").unwrap().unwrap(),
        hex::encode(Sha256::digest(b"fn main() {}\n"))
    );
    let (opened, mut f) = t.read_file("src/main.rs").unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "fn main() {}\n");
    assert!(f.entry_now().unwrap().same_state(&opened));

    // stage + commit a new file, with mode and mtime
    let staged = t
        .stage_file(
            "new/dir/f.txt",
            &mut &b"hello"[..],
            0o751,
            1_000_000_000_123,
        )
        .unwrap();
    assert!(!root.join("new/dir/f.txt").exists());
    let written = t.commit(staged, None).unwrap();
    assert_eq!(fs::read(root.join("new/dir/f.txt")).unwrap(), b"hello");
    assert_eq!(written.mode, 0o751);
    assert_eq!(written.mtime_ns, 1_000_000_000_123);
    // commit refuses when the target is not what was expected: Changed, transient
    let staged = t
        .stage_file("new/dir/f.txt", &mut &b"x"[..], 0o644, 0)
        .unwrap();
    let err = t.commit(staged, None).unwrap_err();
    assert!(matches!(err, TransportError::Changed { .. }), "{err}");
    assert!(err.is_transient());
    // discard leaves nothing behind
    let staged = t.stage_file("d.txt", &mut &b"x"[..], 0o644, 0).unwrap();
    t.discard(staged);

    // symlinks: staged as links, never followed
    let staged = t.stage_symlink("link", "/etc").unwrap();
    t.commit(staged, None).unwrap();
    assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("/etc"));
    let err = t.stat("link/passwd").unwrap_err();
    assert!(matches!(err, TransportError::Escapes { .. }), "{err}");
    let err = t
        .stage_file("link/evil", &mut &b"x"[..], 0o644, 0)
        .unwrap_err();
    assert!(matches!(err, TransportError::Escapes { .. }), "{err}");
    // a missing file reads as NotFound: transient
    let err = t.read_file("nope").map(|_| ()).unwrap_err();
    assert!(err.is_transient(), "{err}");

    // mkdir, set_mode, rename, remove
    let d = t.mkdir("made", 0o700).unwrap();
    assert_eq!(d.kind, EntryKind::Dir);
    t.set_mode("made", 0o755).unwrap();
    assert_eq!(
        fs::metadata(root.join("made"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    t.rename("new/dir/f.txt", "made/g.txt").unwrap();
    assert!(root.join("made/g.txt").exists());
    let e = t.stat("made/g.txt").unwrap().unwrap();
    let err = t
        .remove("made", &t.stat("made").unwrap().unwrap())
        .unwrap_err();
    assert!(matches!(err, TransportError::NotEmpty { .. }), "{err}");
    t.remove("made/g.txt", &e).unwrap();
    assert!(!root.join("made/g.txt").exists());

    let leftovers: Vec<_> = walk(root)
        .into_iter()
        .filter(|p| crate::tree::is_temp_name(p))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(t);
    server.join().unwrap().unwrap();
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn watch_events_arrive_and_stop_with_the_guard() {
    let tmp = tempfile::tempdir().unwrap();
    let (t, server) = remote(tmp.path());
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let w = t
        .watch(
            Box::new(move |ev| {
                let _ = lock(&tx).send(ev);
            }),
            false,
        )
        .unwrap();
    fs::write(tmp.path().join("touched"), "1").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left).expect("a watch event") {
            WatchEvent::Changed { rel, .. } if rel == "touched" => break,
            _ => {}
        }
    }
    drop(w);
    drop(t);
    server.join().unwrap().unwrap();
}

#[test]
fn a_large_file_changed_by_one_byte_travels_as_a_small_delta_both_ways() {
    const SIZE: usize = 8 << 20;
    let env = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let old = data(SIZE, 1);
    fs::write(env.path().join("big.bin"), &old).unwrap();
    let host_t: Arc<dyn Transport> = Arc::new(LocalTransport::open("host", host.path()).unwrap());
    let (t, server) = remote(env.path());
    let t = t.with_basis(host_t.clone());

    // host → env: the env keeps its old version; only the changed block is sent.
    let mut new = old.clone();
    new[SIZE / 2] ^= 0xff;
    let before = t.bytes_sent();
    let expect = t.stat("big.bin").unwrap();
    let staged = t.stage_file("big.bin", &mut &new[..], 0o644, 0).unwrap();
    t.commit(staged, expect.as_ref()).unwrap();
    let sent = t.bytes_sent() - before;
    assert_eq!(fs::read(env.path().join("big.bin")).unwrap(), new);
    assert!(sent < 512 << 10, "sent {sent} bytes for a 1-byte change");

    // env → host: the host has `new`; the env's file gets an insertion in the middle.
    fs::write(host.path().join("big.bin"), &new).unwrap();
    let mut newer = new.clone();
    newer.splice(SIZE / 3..SIZE / 3, b"inserted".iter().copied());
    fs::write(env.path().join("big.bin"), &newer).unwrap();
    let before = t.bytes_received();
    let (_, mut f) = t.read_file("big.bin").unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    f.entry_now().unwrap();
    let received = t.bytes_received() - before;
    assert!(got == newer, "rebuilt content differs");
    assert!(received < 512 << 10, "received {received} bytes");

    // Without a local version, the whole file comes (and still matches).
    fs::remove_file(host.path().join("big.bin")).unwrap();
    let before = t.bytes_received();
    let (_, mut f) = t.read_file("big.bin").unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(got == newer);
    assert!(t.bytes_received() - before > SIZE as u64);
    drop(f);
    drop(t);
    server.join().unwrap().unwrap();
}

#[test]
fn a_small_new_content_is_sent_whole_without_asking_for_signatures() {
    let env = tempfile::tempdir().unwrap();
    // A large old file would answer a signature request with thousands of block sums.
    fs::write(env.path().join("f.bin"), data(2 << 20, 5)).unwrap();
    let (t, server) = remote(env.path());
    let expect = t.stat("f.bin").unwrap();
    let before = t.bytes_received();
    let staged = t.stage_file("f.bin", &mut &b"small"[..], 0o644, 0).unwrap();
    let received = t.bytes_received() - before;
    t.commit(staged, expect.as_ref()).unwrap();
    assert_eq!(fs::read(env.path().join("f.bin")).unwrap(), b"small");
    assert!(
        received < 4096,
        "received {received} bytes: the old file's signatures were asked for"
    );
    drop(t);
    server.join().unwrap().unwrap();
}

#[test]
fn a_delta_against_an_old_file_that_changed_falls_back_to_the_whole_file() {
    let env = tempfile::tempdir().unwrap();
    let old = data(2 << 20, 3);
    fs::write(env.path().join("f"), &old).unwrap();
    let (t, server) = remote(env.path());
    // Replaced under the transfer by something else of another size: the server's
    // rebuilt file fails its sha256 check, and the client sends the content whole.
    struct Swap<'a> {
        data: &'a [u8],
        path: std::path::PathBuf,
        swapped: bool,
    }
    impl Read for Swap<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.swapped {
                self.swapped = true;
                fs::write(&self.path, data(3 << 20, 9)).unwrap();
            }
            self.data.read(buf)
        }
    }
    let mut new = old.clone();
    new[10] ^= 1;
    let mut src = Swap {
        data: &new,
        path: env.path().join("f"),
        swapped: false,
    };
    let staged = t.stage_file("f", &mut src, 0o644, 0).unwrap();
    t.commit(staged, t.stat("f").unwrap().as_ref()).unwrap();
    assert!(fs::read(env.path().join("f")).unwrap() == new);
    drop(t);
    server.join().unwrap().unwrap();
}

#[test]
fn a_server_that_goes_away_fails_calls_instead_of_hanging() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = std::thread::spawn(move || {
        // Answer the hello, then vanish.
        let mut r = a.try_clone().unwrap();
        let (f, _) = read_frame(&mut r).unwrap().unwrap();
        let Frame::Msg { id, .. } = f else { panic!() };
        let mut w = a;
        write_frame(
            &mut w,
            &Frame::Msg {
                id,
                msg: Msg::HelloAck {
                    version: VERSION,
                    describe: "x".into(),
                },
            },
        )
        .unwrap();
    });
    let t = RemoteTransport::connect("env", Box::new(b.try_clone().unwrap()), Box::new(b)).unwrap();
    server.join().unwrap();
    let err = t.stat("a").unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(t.closed().is_some());
}

#[test]
fn corrupt_requests_end_the_server_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = LocalTransport::open("env", tmp.path()).unwrap();
    for bytes in [
        vec![0u8, 0, 0, 9, KIND_DATA_TEST, 0, 0, 0, 1, 1, 2, 3, 4],
        vec![0, 0, 0, 3, 1],
        vec![0, 0, 1],
    ] {
        let r = serve(&mut &bytes[..], Box::new(io::sink()), &t);
        assert!(r.is_err(), "{bytes:?}");
    }
}

const KIND_DATA_TEST: u8 = crate::wire::KIND_DATA;
