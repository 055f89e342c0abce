//! File copies: one file whole, retried while its source changes under the copy, and many at
//! once by a few threads that each take whole folders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Worker;
use crate::sync::base::Side;
use crate::sync::transport::{Transport, TransportError};
use crate::sync::tree::{parent, Entry, HashingReader};

/// Attempts to copy a file that keeps changing while it is read.
const COPY_ATTEMPTS: usize = 5;

impl Worker<'_> {
    /// Copies a batch of files with a few threads (they are independent: their folders
    /// exist). Each thread takes all the files of one folder at a time ([`folder_groups`]).
    /// Results come back in order; a job not run because `stop` was set reports `Changed`
    /// (looked at again later).
    pub(super) fn copy_files(&self, jobs: &[CopyJob], stop: &AtomicBool) -> Vec<CopyResult> {
        let host: &dyn Transport = &*self.engine.host;
        let env: &dyn Transport = &*self.engine.env;
        let threads = copy_threads().min(jobs.len());
        let groups = folder_groups(jobs, threads);
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<CopyResult>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    let Some(group) = groups.get(g) else { break };
                    // The group's folder stays open on both sides while its files are
                    // copied (one lookup of it instead of one per file).
                    let _kept = group
                        .first()
                        .map(|&k| KeptFolder::new([host, env], parent(&jobs[k].rel)));
                    for &k in group {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let job = &jobs[k];
                        let (src, dst) = match job.from {
                            Side::Host => (host, env),
                            Side::Env => (env, host),
                        };
                        let r = copy_file(
                            src,
                            dst,
                            &job.rel,
                            Some(&job.src_seen),
                            job.dst_expect.as_ref(),
                        );
                        *slots[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                    }
                });
            }
        });
        slots
            .into_iter()
            .zip(jobs)
            .map(|(slot, job)| {
                slot.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| {
                        Err(TransportError::Changed {
                            side: "engine".into(),
                            path: job.rel.clone(),
                        })
                    })
            })
            .collect()
    }
}

/// Both sides keep a folder open ([`Transport::keep_folder`]) until this is dropped.
struct KeptFolder<'a>([&'a dyn Transport; 2]);

impl<'a> KeptFolder<'a> {
    fn new(sides: [&'a dyn Transport; 2], folder: &str) -> Self {
        for side in sides {
            side.keep_folder(folder);
        }
        KeptFolder(sides)
    }
}

impl Drop for KeptFolder<'_> {
    fn drop(&mut self) {
        for side in self.0 {
            side.release_folder();
        }
    }
}

/// The source entry copied (with its hash) and the entry written, or why not.
type CopyResult = Result<(Entry, Entry), TransportError>;

/// One file to copy.
pub(super) struct CopyJob {
    pub(super) from: Side,
    pub(super) rel: String,
    /// The source's entry as looked up for the decision.
    pub(super) src_seen: Entry,
    pub(super) dst_expect: Option<Entry>,
}

/// The jobs (indexes into `jobs`) grouped by folder, in order of first appearance, so that
/// each copy thread works in a folder of its own: the kernel serializes creating and renaming
/// entries of one folder on that folder's lock, and threads in the same folder spend their
/// time waiting (spinning) for it. With fewer folders than `threads`, every job is a group of
/// its own (sharing folders then still overlaps the reading and writing of contents).
fn folder_groups(jobs: &[CopyJob], threads: usize) -> Vec<Vec<usize>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (k, job) in jobs.iter().enumerate() {
        let g = *index.entry(parent(&job.rel)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(k);
    }
    if groups.len() < threads {
        return (0..jobs.len()).map(|k| vec![k]).collect();
    }
    groups
}

/// Copy threads: the machine's parallelism, at most 4.
fn copy_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// Copies a file whole from `src` to `dst`, retrying while the source changes under the copy.
/// `src_seen`: the source's entry as the engine just looked it up (the first attempt starts
/// from it instead of looking again).
pub(super) fn copy_file(
    src: &dyn Transport,
    dst: &dyn Transport,
    rel: &str,
    src_seen: Option<&Entry>,
    dst_expect: Option<&Entry>,
) -> Result<(Entry, Entry), TransportError> {
    let changed = || TransportError::Changed {
        side: src.describe(),
        path: rel.to_string(),
    };
    for attempt in 0..COPY_ATTEMPTS {
        let opened = match src_seen.filter(|_| attempt == 0) {
            Some(seen) => src.read_file_seen(rel, seen),
            None => src.read_file(rel),
        };
        let (before, file) = match opened {
            Ok(f) => f,
            Err(TransportError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(changed())
            }
            Err(e) => return Err(e),
        };
        let mut reader = HashingReader::new(file);
        let staged = dst.stage_file(rel, &mut reader, before.mode, before.mtime_ns);
        let (hash, bytes, mut file) = reader.finish_with_inner();
        // Written to while we read it? (A file replaced by a rename is fine: we copied
        // the old one whole, and the rename brings its own event.) A source that failed to
        // read because it is no longer the file looked up (a folder now) is changed too.
        let after = file.entry_now().ok();
        let unchanged = after.is_some_and(|a| a.same_state(&before));
        let staged = match staged {
            Ok(s) => s,
            Err(_) if !unchanged => continue,
            Err(e) => return Err(e),
        };
        if bytes != before.size || !unchanged {
            dst.discard(staged);
            continue;
        }
        let written = dst.commit(staged, dst_expect)?;
        let mut before = before;
        before.hash = Some(hash);
        return Ok((before, written));
    }
    Err(changed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_jobs_are_grouped_by_folder() {
        let job = |rel: &str| CopyJob {
            from: Side::Host,
            rel: rel.to_string(),
            src_seen: Entry {
                kind: crate::sync::tree::EntryKind::File,
                mode: 0o644,
                size: 0,
                mtime_ns: 0,
                target: None,
                hash: None,
            },
            dst_expect: None,
        };
        // Path order interleaves a folder's files with its subfolder's.
        let jobs: Vec<CopyJob> = ["a/1", "a/b/1", "a/b/2", "a/c", "top", "z/1", "a/d"]
            .into_iter()
            .map(job)
            .collect();
        assert_eq!(
            folder_groups(&jobs, 2),
            vec![vec![0, 3, 6], vec![1, 2], vec![4], vec![5]]
        );
        // Fewer folders than threads: one job per group.
        let jobs: Vec<CopyJob> = ["a/1", "a/2", "a/3"].into_iter().map(job).collect();
        assert_eq!(folder_groups(&jobs, 2), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(folder_groups(&jobs, 1), vec![vec![0, 1, 2]]);
    }
}
