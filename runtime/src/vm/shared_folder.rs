//! Host folders shared live with a qemu VM through virtio-fs: one `virtiofsd` per folder
//! (qemu's, shipped by Debian's qemu-system-common, or the standalone Rust one), serving a
//! vhost-user socket that qemu's `vhost-user-fs-pci` device connects to. The guest mounts the
//! device's tag with `-t virtiofs`. `virtiofsd` ends by itself once qemu disconnects.
//!
//! The Debian cloud kernel has no 9p, but it has `fuse` and `virtiofs` as modules: that is why
//! berth uses virtio-fs rather than qemu's simpler `-virtfs`.
//!
//! A `readonly` share is enforced on the host: its virtiofsd starts in a mount namespace of its
//! own where the folder is a recursively read-only bind mount (qemu's C virtiofsd has no
//! read-only option), so a guest that remounts the share `rw` still gets `EROFS`.
//!
//! berth run as root never lets a `bind` share act as host root: its virtiofsd runs in a user
//! namespace whose root is the folder's owner ([`IdMapping::for_share_owner`]; the owner's
//! group as for containers, [`owner_group`]), or, for a folder owned by root, the environment's
//! unprivileged id range, and in a mount namespace of its own where the folder is attached at
//! [`STAGED_SOURCE`] (no search permission on its parents needed). What the guest's root creates
//! belongs to the owner on the host, a setuid bit it sets gives the owner's rights at most, and
//! files of host root (or any user the namespace does not map) are not writable from the
//! guest. berth creates the vhost-user socket itself and hands it over (`--fd`), since the
//! owner may not write berth's state folder. Rootless, virtiofsd runs as the user already.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envfile_spec::plan::{MountKind, MountPlan};

use crate::container::idmap::{
    choose, owner_group, user_namespace_with, IdMapping, Invoker, MountAttr, AT_RECURSIVE,
    MOUNT_ATTR_RDONLY, MOVE_MOUNT_F_EMPTY_PATH, OPEN_TREE_CLOEXEC, OPEN_TREE_CLONE,
};
use crate::container::spec::UserMappingChoice;

use super::VmError;
use crate::host::process::ProcessIdentity;

/// Where Debian (and others) install virtiofsd: the Rust one first, then qemu's C one.
pub const VIRTIOFSD_PATHS: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// One host folder shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFolder {
    /// The virtio-fs tag the guest mounts (`berth0`, `berth1`, …).
    pub tag: String,
    pub source: PathBuf,
    /// Absolute path in the guest.
    pub target: String,
    pub readonly: bool,
    /// `bind` or `volume`: a bind share is served as its folder's owner, never as host root.
    pub kind: MountKind,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
}

/// Whether a VM mount of `kind` is served by berth's live sync over the agent channel
/// (`environment::live_sync`) instead of a virtio-fs share: `sync` mounts always (so their
/// `ignore` patterns apply), `bind` and `volume` mounts when the VM cannot share folders
/// (`shares` false: berth's own VMM, or qemu without virtiofsd; a volume's folder under
/// `volumes/` is then synced like a bind mount's).
pub fn served_by_sync(kind: MountKind, shares: bool) -> bool {
    match kind {
        MountKind::Sync => true,
        MountKind::Bind | MountKind::Volume => !shares,
        MountKind::Tmpfs => false,
    }
}

/// The host folder of a mount that has one: a `volume`'s folder under `volumes_dir` (created
/// when missing), else the mount's `source` itself.
pub fn host_folder(m: &MountPlan, volumes_dir: &Path) -> Result<PathBuf, VmError> {
    let source = m.source.as_deref().ok_or_else(|| {
        VmError::Config(format!(
            "the mount at {} has no source; give `source` in berth.toml",
            m.target
        ))
    })?;
    Ok(match m.kind {
        MountKind::Volume => {
            let dir = volumes_dir.join(source);
            crate::state::create_dir_all(&dir)?;
            dir
        }
        _ => PathBuf::from(source),
    })
}

/// The `bind` and `volume` mounts of `mounts` as shared folders (`sync` mounts, and `bind`
/// mounts when `virtiofsd` is false, are served by live sync instead: [`served_by_sync`]);
/// volumes live under `volumes_dir` (created when missing).
pub fn shared_folders(
    mounts: &[MountPlan],
    volumes_dir: &Path,
    state_dir: &Path,
    virtiofsd: bool,
) -> Result<Vec<SharedFolder>, VmError> {
    let mut out = Vec::new();
    for m in mounts {
        if m.kind == MountKind::Tmpfs || served_by_sync(m.kind, virtiofsd) {
            continue;
        }
        let source = host_folder(m, volumes_dir)?;
        if !source.is_dir() {
            return Err(VmError::Config(format!(
                "the {} mount at {} shares {}, which is not a folder on this host; create it or fix `source` in berth.toml",
                kind_name(m.kind),
                m.target,
                source.display()
            )));
        }
        let i = out.len();
        out.push(SharedFolder {
            tag: format!("berth{i}"),
            source,
            target: m.target.clone(),
            readonly: m.readonly,
            kind: m.kind,
            socket: state_dir.join(format!("fs-{i}.sock")),
        });
    }
    Ok(out)
}

pub fn kind_name(k: MountKind) -> &'static str {
    match k {
        MountKind::Bind => "bind",
        MountKind::Sync => "sync",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    }
}

/// Set in each virtiofsd's environment: the vhost-user socket it serves.
pub const SHARE_ENV: &str = "BERTH_SHARE_SOCKET";

/// Overrides where virtiofsd is: a path, or `none` to serve every folder by live sync.
pub const VIRTIOFSD_ENV: &str = "BERTH_VIRTIOFSD";

/// The virtiofsd to use, if any: `BERTH_VIRTIOFSD` (a path, or `none`), else the first of
/// [`VIRTIOFSD_PATHS`] installed.
pub fn locate_virtiofsd() -> Option<PathBuf> {
    match std::env::var_os(VIRTIOFSD_ENV) {
        Some(v) if v == "none" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)).filter(|p| p.is_file()),
        _ => VIRTIOFSD_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    }
}

/// virtiofsd's arguments: the Rust one takes `--shared-dir`, qemu's C one `-o source=`. With
/// `listen_fd`, virtiofsd serves that listening socket (berth made it) instead of creating
/// `f.socket` itself.
fn virtiofsd_args(exe: &Path, f: &SharedFolder, listen_fd: Option<i32>) -> Vec<String> {
    let socket = match listen_fd {
        Some(fd) => format!("--fd={fd}"),
        None => format!("--socket-path={}", f.socket.display()),
    };
    if exe.starts_with("/usr/lib/qemu") {
        vec![
            socket,
            format!("-o source={}", f.source.display()),
            "-o cache=none".into(),
            // One process (no pid namespace with a child): ending it ends the server.
            "-o sandbox=chroot".into(),
        ]
    } else {
        vec![
            socket,
            format!("--shared-dir={}", f.source.display()),
            "--cache=never".into(),
            "--sandbox=chroot".into(),
        ]
    }
}

/// Starts virtiofsd for `f`, returns once it serves its socket (the socket listens, or, when
/// berth made the socket, virtiofsd waits in `accept`). Its messages go to `log`. As root, a
/// `bind` share's virtiofsd acts as the folder's owner ([`ShareIdentity`]).
pub fn start(exe: &Path, f: &SharedFolder, log: &Path) -> Result<ProcessIdentity, VmError> {
    let _ = std::fs::remove_file(&f.socket);
    let io = |source| VmError::Io {
        path: log.to_path_buf(),
        source,
    };
    let out = crate::detach::create_log_file(log).map_err(io)?;
    let identity = if nix::unistd::geteuid().is_root() && f.kind == MountKind::Bind {
        Some(ShareIdentity::prepare(f)?)
    } else {
        None
    };
    let listen_fd = identity.as_ref().map(|i| i.listener.as_raw_fd());
    let mut cmd = Command::new(exe);
    let mut args = Vec::new();
    let served = match identity {
        Some(_) => SharedFolder {
            source: STAGED_SOURCE.into(),
            ..f.clone()
        },
        None => f.clone(),
    };
    for a in virtiofsd_args(exe, &served, listen_fd) {
        // `-o x=y` as two arguments.
        match a.strip_prefix("-o ") {
            Some(rest) => args.extend(["-o".to_string(), rest.to_string()]),
            None => args.push(a),
        }
    }
    cmd.args(&args)
        // Which share this process serves, for `ps e` and the tests: with `--fd` its
        // arguments no longer name the socket.
        .env(SHARE_ENV, &f.socket)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(io)?)
        .stderr(out);
    // Its own process group: a Ctrl-C meant for `berth up` does not end the share.
    cmd.process_group(0);
    let source = CString::new(f.source.as_os_str().as_bytes())
        .map_err(|_| VmError::Config(format!("{} contains a NUL byte", f.source.display())))?;
    let readonly = f.readonly;
    let enter = identity
        .as_ref()
        .map(|i| (i.listener.as_raw_fd(), i.userns.as_raw_fd()));
    if readonly || enter.is_some() {
        // SAFETY: the closure only makes raw syscalls (unshare, mount, mount_setattr, fcntl,
        // setns, set*id) on memory and descriptors prepared before the fork; it allocates
        // nothing.
        unsafe {
            cmd.pre_exec(move || match enter {
                Some((listener, userns)) => {
                    staged_view(&source, readonly)?;
                    become_share_owner(listener, userns)
                }
                None => read_only_view(&source),
            });
        }
    }
    let mut child = cmd.spawn().map_err(|e| {
        if identity.is_some() {
            let _ = std::fs::remove_file(&f.socket);
            VmError::Config(format!(
                "cannot start virtiofsd for the share of {} as the folder's owner (a user and a mount namespace of its own): {e}; check that this kernel allows user namespaces (sysctl user.max_user_namespaces)",
                f.source.display()
            ))
        } else if f.readonly {
            VmError::Config(format!(
                "cannot start virtiofsd for the read-only share of {} in a mount namespace where the folder is read-only: {e}; berth needs root (CAP_SYS_ADMIN) for read-only VM shares",
                f.source.display()
            ))
        } else {
            VmError::Io {
                path: exe.to_path_buf(),
                source: e,
            }
        }
    })?;
    // virtiofsd has its copy of the listening socket now.
    drop(identity);
    let rec = ProcessIdentity::of(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = match listen_fd {
            // It serves berth's socket once it waits for qemu's connection.
            Some(_) => waits_in_accept(child.id()),
            // virtiofsd binds its socket, then listens: qemu's connection is refused in
            // between (and a probe connection would be virtiofsd's one client).
            None => crate::host::unix_socket::is_listening(&f.socket).unwrap_or(false),
        };
        if ready {
            if let Some(rec) = rec {
                return Ok(rec);
            }
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            if listen_fd.is_some() {
                let _ = std::fs::remove_file(&f.socket);
            }
            return Err(VmError::Config(format!(
                "virtiofsd could not share {} ({}): {}",
                f.source.display(),
                exited.map_or("not waiting for qemu after 10 s".to_string(), |s| s
                    .to_string()),
                std::fs::read_to_string(log).unwrap_or_default().trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What a bind share's virtiofsd needs to act as the folder's owner (berth run as root): its
/// user namespace, and the vhost-user socket berth listens on for it.
struct ShareIdentity {
    userns: std::os::fd::OwnedFd,
    listener: std::os::unix::net::UnixListener,
}

impl ShareIdentity {
    fn prepare(f: &SharedFolder) -> Result<ShareIdentity, VmError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let io = |source| VmError::Io {
            path: f.source.clone(),
            source,
        };
        let folder = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&f.source)
            .map_err(io)?;
        let meta = folder.metadata().map_err(io)?;
        let mapping = share_mapping(meta.uid(), meta.gid(), &Invoker::current())?;
        let userns = user_namespace_with(&mapping).map_err(|e| {
            VmError::Config(format!(
                "cannot create the user namespace that serves {} as its owner: {e}",
                f.source.display()
            ))
        })?;
        let _ = std::fs::remove_file(&f.socket);
        let listener =
            std::os::unix::net::UnixListener::bind(&f.socket).map_err(|source| VmError::Io {
                path: f.socket.clone(),
                source,
            })?;
        Ok(ShareIdentity { userns, listener })
    }
}

/// The user namespace of the virtiofsd serving a folder owned by `uid`:`gid` when berth runs
/// as root: the environment's automatic id range (as a container's), with the owner as root
/// ([`IdMapping::for_share_owner`]); a folder of root's keeps the range's own root, an
/// unprivileged host id, so the guest's root can neither write root's files nor create any.
fn share_mapping(uid: u32, gid: u32, who: &Invoker) -> Result<IdMapping, VmError> {
    let env = choose(UserMappingChoice::Auto, false, who)
        .map_err(|e| VmError::Config(format!("cannot choose the share's ids: {e}")))?
        .ok_or_else(|| VmError::Config("no id range for the share's virtiofsd".into()))?;
    Ok(if uid == 0 {
        env
    } else {
        env.for_share_owner(uid, owner_group(uid, gid))
    })
}

/// Whether process `pid` is blocked in accept(2) (`/proc/<pid>/syscall`).
fn waits_in_accept(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<libc::c_long>().ok())
        .is_some_and(|n| n == libc::SYS_accept || n == libc::SYS_accept4)
}

/// In the calling process (a child between fork and exec): a private mount namespace.
fn own_mount_namespace() -> std::io::Result<()> {
    // SAFETY: plain syscalls on static NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )
    }
}

/// In the calling process (a child between fork and exec, host root): keeps `listener` open
/// across exec, joins the user namespace `userns` and becomes its root (and group root,
/// with no supplementary groups), so every file operation after exec is the folder's owner's.
fn become_share_owner(listener: i32, userns: i32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on descriptors the parent keeps open until the child has exec'd.
    unsafe {
        check(libc::fcntl(listener, libc::F_SETFD, 0).into())?;
        check(libc::setns(userns, libc::CLONE_NEWUSER).into())?;
        check(libc::setresgid(0, 0, 0).into())?;
        check(libc::setgroups(0, std::ptr::null()).into())?;
        check(libc::setresuid(0, 0, 0).into())
    }
}

/// In the calling process (a child between fork and exec): a private mount namespace in
/// which `source`, with everything mounted below it, is read-only. Only raw syscalls.
fn read_only_view(source: &std::ffi::CStr) -> std::io::Result<()> {
    own_mount_namespace()?;
    view_at(source, source, true)
}

/// Where a share's folder appears to a virtiofsd that acts as the folder's owner: on a tmpfs
/// over `/tmp` in its own mount namespace, so it needs no search permission on the folder's
/// parents (e.g. root's private checkout).
const STAGED_SOURCE: &str = "/tmp/berth-share";

/// In the calling process (a child between fork and exec, host root): a private mount
/// namespace with a tmpfs (mode 0755) on `/tmp` and a clone of the folder `source`'s mount
/// (taken before `/tmp` is covered, the folder may be below it) attached at
/// [`STAGED_SOURCE`], read-only with everything below it when `readonly`.
fn staged_view(source: &std::ffi::CStr, readonly: bool) -> std::io::Result<()> {
    own_mount_namespace()?;
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them, a correctly sized
    // mount_attr, and a tree descriptor this process owns and closes.
    unsafe {
        let tree = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        );
        check(tree)?;
        let tree = tree as libc::c_int;
        if readonly {
            let attr = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            check(libc::syscall(
                libc::SYS_mount_setattr,
                tree,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
        }
        check(
            libc::mount(
                c"berth-share".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=64k".as_ptr().cast(),
            )
            .into(),
        )?;
        check(libc::mkdir(c"/tmp/berth-share".as_ptr(), 0o755).into())?;
        check(libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            c"/tmp/berth-share".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ))?;
        libc::close(tree);
    }
    Ok(())
}

/// Binds `source` (recursively) at `target`, read-only with everything below it when
/// `readonly`. Only raw syscalls.
fn view_at(
    source: &std::ffi::CStr,
    target: &std::ffi::CStr,
    readonly: bool,
) -> std::io::Result<()> {
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them; a failure is
    // returned as the spawn error.
    unsafe {
        check(
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
            .into(),
        )?;
        if !readonly {
            return Ok(());
        }
        let source = target;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let rc = libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            source.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            // Before Linux 5.12: the share's own mount read-only (not its submounts).
            return check(
                libc::mount(
                    std::ptr::null(),
                    source.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                )
                .into(),
            );
        }
        check(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: MountKind, source: Option<&str>, target: &str) -> MountPlan {
        MountPlan {
            source: source.map(String::from),
            target: target.into(),
            kind,
            readonly: kind == MountKind::Bind,
            ignore: vec![],
            size: None,
            unsafe_host_path: false,
        }
    }

    #[test]
    fn bind_and_volume_mounts_become_shares_sync_mounts_do_not() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let src_s = src.to_str().unwrap();
        let mounts = vec![
            mount(MountKind::Tmpfs, None, "/t"),
            mount(MountKind::Bind, Some(src_s), "/b"),
            mount(MountKind::Sync, Some(src_s), "/s"),
            mount(MountKind::Volume, Some("data"), "/v"),
        ];
        let volumes = d.path().join("volumes");
        let shares = shared_folders(&mounts, &volumes, Path::new("/e"), true).unwrap();
        assert_eq!(shares.len(), 2);
        assert_eq!(shares[0].tag, "berth0");
        assert_eq!(shares[0].target, "/b");
        assert!(shares[0].readonly);
        assert_eq!(shares[1].socket, Path::new("/e/fs-1.sock"));
        assert_eq!(shares[1].source, d.path().join("volumes/data"));
        assert!(d.path().join("volumes/data").is_dir(), "volume created");
        // Without virtiofsd the bind and volume mounts are left to live sync too; a volume's
        // host folder is its folder under volumes/.
        let shares = shared_folders(&mounts, &volumes, Path::new("/e"), false).unwrap();
        assert!(shares.is_empty(), "{shares:?}");
        assert!(served_by_sync(MountKind::Sync, true));
        assert!(!served_by_sync(MountKind::Bind, true));
        assert!(served_by_sync(MountKind::Bind, false));
        assert!(!served_by_sync(MountKind::Volume, true));
        assert!(served_by_sync(MountKind::Volume, false));
        assert!(!served_by_sync(MountKind::Tmpfs, false));
        assert_eq!(
            host_folder(&mounts[3], &volumes).unwrap(),
            d.path().join("volumes/data")
        );
        assert_eq!(host_folder(&mounts[1], &volumes).unwrap(), src);

        let missing = vec![mount(MountKind::Bind, Some("/nonexistent/x"), "/b")];
        let e = shared_folders(&missing, d.path(), Path::new("/e"), true).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn a_bind_shares_virtiofsd_is_the_owner_or_an_unprivileged_id_never_host_root() {
        let root = Invoker {
            uid: 0,
            gid: 0,
            name: "root".into(),
            subuid: vec![],
            subgid: vec![],
            have_newidmap: false,
            taken: vec![],
        };
        let m = share_mapping(1000, 1001, &root).unwrap();
        assert_eq!((m.host_uid(0), m.host_gid(0)), (Some(1000), Some(1001)));
        assert_eq!(
            m.host_uid(5),
            Some(100005),
            "other guest ids: the environment's range"
        );
        assert_eq!((m.inside_uid(0), m.inside_gid(0)), (None, None));
        // A folder of root's: the guest's root is the range's own root, host root unmapped.
        let m = share_mapping(0, 0, &root).unwrap();
        assert_eq!((m.host_uid(0), m.host_gid(0)), (Some(100000), Some(100000)));
        assert_eq!((m.inside_uid(0), m.inside_gid(0)), (None, None));
    }

    #[test]
    fn virtiofsd_flavours() {
        let f = SharedFolder {
            tag: "berth0".into(),
            source: "/src".into(),
            target: "/w".into(),
            readonly: false,
            kind: MountKind::Bind,
            socket: "/e/fs-0.sock".into(),
        };
        let c = virtiofsd_args(Path::new("/usr/lib/qemu/virtiofsd"), &f, None);
        assert!(c.contains(&"-o source=/src".to_string()), "{c:?}");
        assert!(
            c.contains(&"--socket-path=/e/fs-0.sock".to_string()),
            "{c:?}"
        );
        let r = virtiofsd_args(Path::new("/usr/libexec/virtiofsd"), &f, Some(7));
        assert!(r.contains(&"--shared-dir=/src".to_string()), "{r:?}");
        assert!(r.contains(&"--fd=7".to_string()), "{r:?}");
    }

    #[test]
    fn a_read_only_view_refuses_writes_even_to_root_and_leaves_the_host_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: read-only views need root (a mount namespace)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let c = CString::new(src.as_os_str().as_bytes()).unwrap();
        let mut cmd = Command::new("/bin/sh");
        // Even root (as virtiofsd runs) cannot write through the view.
        cmd.args(["-c", "touch \"$1/in-view\"; echo $?", "sh"])
            .arg(&src)
            .stderr(Stdio::null());
        // SAFETY: see `start`.
        unsafe {
            cmd.pre_exec(move || read_only_view(&c));
        }
        let out = cmd.output().unwrap();
        assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), "0");
        assert!(!src.join("in-view").exists());
        std::fs::write(src.join("on-host"), "x").unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(src.to_str().unwrap()),
            "the read-only bind mount leaked into the host's namespace"
        );
    }
}
