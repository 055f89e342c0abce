//! Writing what a `COPY`/`ADD` copies into a step's upper folder: Docker's destination
//! rules (a folder's content, `dest/` for files, several sources only into a folder),
//! `--chown` (names looked up in the stage's `/etc/passwd` and `/etc/group`), `--chmod`,
//! parents that exist below keeping their owner and mode, and local tar archives unpacked
//! by `ADD`. Nothing is written outside the upper folder: every path is built from checked
//! segments, sources are never followed through symlinks, archives refuse escaping entries.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One thing to copy: where it is on the host and where it lands, relative to `/`.
#[derive(Debug, Clone)]
pub struct Item {
    pub from: PathBuf,
    pub to: String,
}

/// Owner and mode overrides of a copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Attrs {
    /// `--chown`; `None`: root for context files, the source's owner for `--from`.
    pub owner: Option<(u32, u32)>,
    /// Keep the source's owner when there is no `--chown` (copies from a stage or image).
    pub keep_owner: bool,
    pub chmod: Option<u32>,
}

/// Where the parents of a path come from when they exist below: the stage's layers, top
/// first, for their owner and mode.
pub struct Below<'a> {
    pub layers: &'a [PathBuf],
}

impl Below<'_> {
    fn meta(&self, rel: &str) -> Option<fs::Metadata> {
        self.layers
            .iter()
            .rev()
            .find_map(|l| fs::symlink_metadata(l.join(rel)).ok())
            .filter(|m| !(m.file_type_is_whiteout()))
    }
}

trait WhiteoutCheck {
    fn file_type_is_whiteout(&self) -> bool;
}

impl WhiteoutCheck for fs::Metadata {
    fn file_type_is_whiteout(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.file_type().is_char_device() && self.rdev() == 0
    }
}

/// `to` split into checked segments (no `..`).
fn segments(to: &str) -> Vec<&str> {
    to.split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect()
}

/// Makes the parent folders of `to` in `upper`: those that exist below keep their owner
/// and mode, new ones get `owner` (root without `--chown`) and 0755.
pub fn make_parents(
    upper: &Path,
    to: &str,
    below: &Below<'_>,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let segs = segments(to);
    let mut rel = String::new();
    for s in segs.iter().take(segs.len().saturating_sub(1)) {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(s);
        make_dir(upper, &rel, below, owner)?;
    }
    Ok(())
}

/// Makes the folder `rel` in `upper` (and nothing if it is there).
pub fn make_dir(
    upper: &Path,
    rel: &str,
    below: &Below<'_>,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let p = upper.join(rel);
    match fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(&p)?,
        Err(_) => {}
    }
    fs::create_dir(&p)?;
    let (mode, uid, gid) = match below.meta(rel).filter(|m| m.is_dir()) {
        Some(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
        None => {
            let (u, g) = owner.unwrap_or((0, 0));
            (0o755, u, g)
        }
    };
    std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
}

/// Copies each item (`from` a file, folder or symlink, never followed) to its `to` under
/// `upper`, with `attrs`, keeping its modification time (as Docker's `COPY`).
pub fn write_items(
    upper: &Path,
    items: &[Item],
    attrs: Attrs,
    below: &Below<'_>,
) -> io::Result<()> {
    let mut times = Vec::with_capacity(items.len());
    for it in items {
        let to = segments(&it.to).join("/");
        make_parents(upper, &to, below, attrs.owner)?;
        let dest = upper.join(&to);
        let meta = fs::symlink_metadata(&it.from)?;
        let ft = meta.file_type();
        let (uid, gid) = match attrs.owner {
            Some(o) => o,
            None if attrs.keep_owner => (meta.uid(), meta.gid()),
            None => (0, 0),
        };
        let mode = attrs.chmod.unwrap_or(meta.mode() & 0o7777);
        if ft.is_dir() {
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&dest)?;
                    fs::create_dir(&dest)?;
                }
                Err(_) => fs::create_dir(&dest)?,
            }
        } else {
            if let Ok(m) = fs::symlink_metadata(&dest) {
                if m.is_dir() {
                    fs::remove_dir_all(&dest)?;
                } else {
                    fs::remove_file(&dest)?;
                }
            }
            if ft.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&it.from)?, &dest)?;
                std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))?;
                times.push((dest, meta));
                continue;
            } else if ft.is_file() {
                let mut src = fs::File::open(&it.from)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)?;
                io::copy(&mut src, &mut out)?;
            } else {
                return Err(io::Error::other(format!(
                    "{} is not a file, folder or symlink (berth copies no devices, sockets or pipes)",
                    it.from.display()
                )));
            }
        }
        std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        times.push((dest, meta));
    }
    // Last, deepest first: writing into a folder changes its time.
    for (dest, meta) in times.iter().rev() {
        let mtime = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
        nix::sys::stat::utimensat(
            None,
            dest,
            &mtime,
            &mtime,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)?;
    }
    Ok(())
}

/// Whether `path` is a tar archive (plain, gzip or xz) that `ADD` unpacks.
pub fn archive_kind(path: &Path) -> io::Result<Option<Compression>> {
    let mut head = [0u8; 512];
    let mut f = fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = &head[..n];
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(Compression::Gzip));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Ok(Some(Compression::Xz));
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Some(Compression::None));
    }
    Ok(None)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
}

/// Unpacks the archive at `path` into the folder `to` under `upper`, owners and modes as
/// in the archive (as Docker does for `ADD`). Entries that would leave the folder, devices,
/// pipes and hard links to outside are refused.
pub fn unpack_archive(
    upper: &Path,
    path: &Path,
    kind: Compression,
    to: &str,
    below: &Below<'_>,
) -> io::Result<()> {
    let to = segments(to).join("/");
    make_parents(upper, &format!("{to}/x"), below, None)?;
    make_dir(upper, &to, below, None)?;
    let dest = upper.join(&to);
    let f = io::BufReader::new(fs::File::open(path)?);
    let reader: Box<dyn Read> = match kind {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(f)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new(f)),
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut e = entry?;
        let kind = e.header().entry_type();
        let name = e.path()?.to_string_lossy().into_owned();
        let plain = kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link();
        let meta = matches!(kind, tar::EntryType::GNULongName | tar::EntryType::XHeader);
        if !(plain || meta) {
            return Err(io::Error::other(format!(
                "archive entry `{name}` is a device, pipe or other special file; berth's ADD unpacks files, folders and links only"
            )));
        }
        if name.split('/').any(|s| s == "..") {
            return Err(io::Error::other(format!(
                "archive entry `{name}` would land outside the destination folder"
            )));
        }
        if !e.unpack_in(&dest)? {
            return Err(io::Error::other(format!(
                "archive entry `{name}` would land outside the destination folder"
            )));
        }
    }
    Ok(())
}

/// `--chown` value (`user`, `user:group`, numeric or names) → ids, names looked up in the
/// stage's `/etc/passwd` and `/etc/group`.
pub fn owner_ids(spec: &str, layers: &[PathBuf]) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let read = |f: &str| -> String {
        layers
            .iter()
            .rev()
            .find_map(|l| fs::read_to_string(l.join(f)).ok())
            .unwrap_or_default()
    };
    let find = |text: &str, name: &str, field: usize| -> Option<u32> {
        text.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| f.get(field).and_then(|v| v.parse().ok()))
    };
    let passwd = read("etc/passwd");
    let uid: u32 = match user.parse() {
        Ok(n) => n,
        Err(_) => find(&passwd, user, 2)
            .ok_or_else(|| format!("user `{user}` is not in the stage's /etc/passwd"))?,
    };
    let gid: u32 = match group {
        Some(g) => match g.parse() {
            Ok(n) => n,
            Err(_) => find(&read("etc/group"), g, 2)
                .ok_or_else(|| format!("group `{g}` is not in the stage's /etc/group"))?,
        },
        // A user alone: its primary group by name, else the uid (as BuildKit).
        None => match user.parse::<u32>() {
            Ok(n) => n,
            Err(_) => find(&passwd, user, 3).unwrap_or(uid),
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_names_come_from_the_stage_files() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![d.path().to_path_buf()];
        assert_eq!(owner_ids("app", &layers).unwrap(), (1000, 1001));
        assert_eq!(owner_ids("app:staff", &layers).unwrap(), (1000, 50));
        assert_eq!(owner_ids("42", &layers).unwrap(), (42, 42));
        assert_eq!(owner_ids("42:7", &layers).unwrap(), (42, 7));
        assert!(owner_ids("nobody", &layers)
            .unwrap_err()
            .contains("/etc/passwd"));
    }

    #[test]
    fn a_copied_symlink_never_leads_a_later_copy_outside_the_layer() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let upper = d.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("b/evil")).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("evil")).unwrap();
        fs::write(src.join("b/evil/pwned"), "x").unwrap();
        let below = Below { layers: &[] };
        write_items(
            &upper,
            &[
                Item {
                    from: src.join("evil"),
                    to: "/out/evil".into(),
                },
                Item {
                    from: src.join("b/evil/pwned"),
                    to: "/out/evil/pwned".into(),
                },
            ],
            Attrs::default(),
            &below,
        )
        .unwrap();
        assert!(
            !outside.join("pwned").exists(),
            "written through the symlink"
        );
        assert!(upper.join("out/evil").is_dir());
        assert_eq!(
            fs::read_to_string(upper.join("out/evil/pwned")).unwrap(),
            "x"
        );
        // An archive entry climbing out is refused.
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        t.append_link(&mut h, "link", &outside).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_cksum();
        t.append_data(&mut h, "link/pwned2", &b"x"[..]).unwrap();
        let ar = d.path().join("a.tar");
        fs::write(&ar, t.into_inner().unwrap()).unwrap();
        assert!(unpack_archive(&upper, &ar, Compression::None, "/opt", &below).is_err());
        assert!(!outside.join("pwned2").exists());
    }

    #[test]
    fn copies_keep_the_modification_times_of_files_folders_and_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("dir/f"), "x").unwrap();
        std::os::unix::fs::symlink("f", src.join("dir/l")).unwrap();
        let at = |p: &str, secs: i64| {
            let t = nix::sys::time::TimeSpec::new(secs, 5);
            nix::sys::stat::utimensat(
                None,
                &src.join(p),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        };
        at("dir/f", 1_000_000_000);
        at("dir/l", 1_100_000_000);
        at("dir", 1_200_000_000);
        let upper = d.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let item = |from: &str, to: &str| Item {
            from: src.join(from),
            to: to.into(),
        };
        write_items(
            &upper,
            &[
                item("dir", "/app"),
                item("dir/f", "/app/f"),
                item("dir/l", "/app/l"),
            ],
            Attrs::default(),
            &Below { layers: &[] },
        )
        .unwrap();
        let mtime = |p: &str| {
            let m = fs::symlink_metadata(upper.join(p)).unwrap();
            (m.mtime(), m.mtime_nsec())
        };
        assert_eq!(mtime("app/f"), (1_000_000_000, 5));
        assert_eq!(mtime("app/l"), (1_100_000_000, 5));
        assert_eq!(mtime("app"), (1_200_000_000, 5));
    }

    #[test]
    fn parents_below_keep_owner_and_mode() {
        let d = tempfile::tempdir().unwrap();
        let lower = d.path().join("lower");
        fs::create_dir_all(lower.join("home/app")).unwrap();
        fs::set_permissions(lower.join("home/app"), fs::Permissions::from_mode(0o700)).unwrap();
        let upper = d.path().join("upper");
        fs::create_dir(&upper).unwrap();
        let src = d.path().join("f");
        fs::write(&src, "x").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let layers = [lower];
        let below = Below { layers: &layers };
        write_items(
            &upper,
            &[Item {
                from: src,
                to: "/home/app/new/f".into(),
            }],
            Attrs {
                chmod: Some(0o600),
                ..Attrs::default()
            },
            &below,
        )
        .unwrap();
        let m = |p: &str| fs::metadata(upper.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(m("home/app"), 0o700);
        assert_eq!(m("home/app/new"), 0o755);
        assert_eq!(m("home/app/new/f"), 0o600);
        assert_eq!(
            fs::read_to_string(upper.join("home/app/new/f")).unwrap(),
            "x"
        );
    }
}
