//! Reading a side's tree: a scan (the recursive walk, each folder's `.gitignore` applied as
//! it descends, temporary names reported as leftovers) and the lookup of one path or of many
//! paths, folder by folder.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;

use super::dir_fd_calls::{list_dir, openat2_beneath};
use super::LocalTransport;
use crate::ignore::IgnoreRules;
use crate::transport::TransportError;
use crate::tree::{file_name, is_temp_name, join, parent, Entry, EntryKind, Scan};

impl LocalTransport {
    pub(super) fn scan_tree(&self, rel: &str, rules: &IgnoreRules) -> Result<Scan, TransportError> {
        let mut scan = Scan::default();
        let mut rules = rules.clone();
        if !rel.is_empty() {
            match self.stat_entry(rel)? {
                Some(e) if !rules.is_ignored(rel, e.kind == EntryKind::Dir) => {
                    let is_dir = e.kind == EntryKind::Dir;
                    scan.entries.insert(rel.to_string(), e);
                    if !is_dir {
                        return Ok(scan);
                    }
                }
                _ => return Ok(scan),
            }
        }
        self.walk(rel, &mut rules, &mut scan)?;
        Ok(scan)
    }

    pub(super) fn stat_entry(&self, rel: &str) -> Result<Option<Entry>, TransportError> {
        let dir = match self.parent_fd(rel) {
            Ok(d) => d,
            Err(TransportError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(TransportError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        self.lstat_at(&dir, file_name(rel))
            .map_err(|e| self.err("stat", rel, e))
    }

    pub(super) fn stat_entries(&self, rels: &[&str]) -> Vec<Result<Option<Entry>, TransportError>> {
        // The folder of the previous path, kept while the next paths are in it too.
        let mut dir: Option<(&str, OwnedFd)> = None;
        let mut out = Vec::with_capacity(rels.len());
        for &rel in rels {
            let p = parent(rel);
            if dir.as_ref().is_none_or(|(d, _)| *d != p) {
                dir = None;
                if self.check(rel).is_ok() {
                    if let Ok(fd) = self.open_beneath(p, libc::O_PATH | libc::O_DIRECTORY) {
                        dir = Some((p, fd));
                    }
                }
            }
            out.push(match &dir {
                Some((_, fd)) => self
                    .lstat_at(fd, file_name(rel))
                    .map_err(|e| self.err("stat", rel, e)),
                // Missing folder, symlink on the way, bad path: as `stat` says it.
                None => self.stat_entry(rel),
            });
        }
        out
    }

    fn walk(
        &self,
        dir_rel: &str,
        rules: &mut IgnoreRules,
        scan: &mut Scan,
    ) -> Result<(), TransportError> {
        let fd = match self.open_beneath(dir_rel, libc::O_RDONLY | libc::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.unreadable.push(dir_rel.to_string());
                return Ok(());
            }
            Err(e) => return Err(self.err("list", dir_rel, e)),
        };
        let listed = match list_dir(&fd) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                scan.unreadable.push(dir_rel.to_string());
                return Ok(());
            }
            Err(e) => return Err(self.err("list", dir_rel, e)),
        };
        let mut names = Vec::new();
        for n in listed {
            match n.into_string() {
                Ok(n) => names.push(n),
                Err(n) => scan.skipped.push((
                    join(dir_rel, &n.to_string_lossy()),
                    "name is not UTF-8".into(),
                )),
            }
        }
        names.sort();
        if names.iter().any(|n| n == ".gitignore") {
            if let Ok(f) = openat2_beneath(&fd, ".gitignore", libc::O_RDONLY | libc::O_NONBLOCK) {
                let mut text = String::new();
                if File::from(f).read_to_string(&mut text).is_ok() {
                    rules.add_gitignore(dir_rel, &text);
                    scan.gitignores.insert(dir_rel.to_string(), text);
                }
            }
        }
        let mut subdirs = Vec::new();
        for name in names {
            let rel = join(dir_rel, &name);
            if is_temp_name(&name) {
                scan.leftovers.push(rel);
                continue;
            }
            let entry = match self.lstat_at(&fd, &name) {
                Ok(Some(e)) => e,
                Ok(None) => {
                    scan.skipped
                        .push((rel, "not a file, folder or symlink".into()));
                    continue;
                }
                Err(e) => return Err(self.err("stat", &rel, e)),
            };
            let is_dir = entry.kind == EntryKind::Dir;
            if rules.is_ignored(&rel, is_dir) {
                continue;
            }
            scan.entries.insert(rel.clone(), entry);
            if is_dir {
                subdirs.push(rel);
            }
        }
        drop(fd);
        for sub in subdirs {
            self.walk(&sub, rules, scan)?;
        }
        Ok(())
    }
}
