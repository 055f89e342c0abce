//! Looking a whole chain of steps up in the registry cache at once, instead of one round
//! trip per step just before it would run: every step's key is known before the first one
//! runs (each chains its parent's), so the entries of all steps missing locally are asked
//! for together, checked against each other (each entry's `below` must be the layers the
//! entries before it give), and the layers of the chain are downloaded and unpacked in
//! parallel while the build goes through its steps; [`BuildCache::fetch`] then takes a
//! step's answer from here (waiting for it when it is still on its way).
//!
//! Only a chain that holds is fetched ahead: at the first miss, unreadable entry, or entry
//! built on other layers, the prefetch stops, and that step and those after it go the
//! sequential way (same messages, same checks). A registry problem found here is the
//! step's answer (the cache is turned off as the sequential way would).
//!
//! When the base is pulled, none of this waits for it ([`BuildCache::while_pulling`]): the
//! keys need only the base's config, which the pull has before its first layer, so the
//! steps are looked up and their layers fetched while the base's layers download. Only the
//! package manager (which decides the `packages` step's command, so its key) is not known
//! before the base is unpacked: the chain of each one is planned, and the one whose
//! `packages` entry the cache holds is fetched (the cache has an entry for one of them
//! only: the one the building machine found in the same base).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use envfile_spec::reference::ImageReference;

use super::{below_digest, BuildCache, CacheEntry};
use crate::image::digest::Digest;
use crate::image::error::ImageError;
use crate::image::image_store::LayerRecord;
use crate::image::manifest::ConfigFile;
use crate::image::pull::PullOptions;
use crate::image::registry::RegistryClient;
use crate::image::step_cache::cache_name;
use crate::image::store::{ImageStore, ResolvedImage};

/// Layers downloaded at the same time.
const JOBS: usize = 3;
/// Entries asked for at the same time.
const LOOKUPS: usize = 8;

/// The answer for one step.
enum Slot {
    /// On its way.
    Pending,
    /// Final, for a step built on the layers whose [`below_digest`] is `below`.
    Done {
        below: String,
        answer: Result<Option<LayerRecord>, String>,
    },
}

/// Answers fetched ahead, by step key.
#[derive(Default)]
pub(super) struct Prefetch {
    slots: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
    stop: AtomicBool,
    /// Set by the first plan: a build plans once (a prefetch started during the pull is
    /// the build's).
    planned: AtomicBool,
}

impl Prefetch {
    fn set(&self, key: &str, slot: Option<Slot>) {
        if let Ok(mut s) = self.slots.lock() {
            match slot {
                Some(v) => {
                    s.insert(key.to_string(), v);
                }
                None => {
                    s.remove(key);
                }
            }
        }
        self.changed.notify_all();
    }
}

impl BuildCache {
    /// Marks the steps (`keys`, in order) whose answers [`BuildCache::run_prefetch`] will
    /// fetch: those missing from the local cache. Returns whether there is anything to
    /// fetch. Call before the build's first `fetch`; nothing is planned when a prefetch
    /// was planned already (during the pull: [`BuildCache::while_pulling`]).
    pub fn plan_prefetch(&self, store: &ImageStore, keys: &[String]) -> bool {
        self.plan_chains(store, std::slice::from_ref(&keys.to_vec()))
    }

    /// Marks the steps of every chain of `chains` that are missing from the local cache.
    fn plan_chains(&self, store: &ImageStore, chains: &[Vec<String>]) -> bool {
        if self.settings.from.is_none() || !self.reads() {
            return false;
        }
        if self.prefetch.planned.swap(true, Ordering::Relaxed) {
            return false;
        }
        let Ok(mut slots) = self.prefetch.slots.lock() else {
            return false;
        };
        for key in chains.iter().flatten() {
            let local = store
                .records
                .get(&cache_name(key))
                .ok()
                .flatten()
                .is_some_and(|r| store.is_complete(&r));
            if !local {
                slots.insert(key.clone(), Slot::Pending);
            }
        }
        !slots.is_empty()
    }

    /// Fetches the answers planned by [`BuildCache::plan_prefetch`] (run beside the build,
    /// in a thread of its own); `base` is the base image's layers. Whatever happens, no
    /// step is left waiting: an answer not fetched is left to the sequential way.
    pub fn run_prefetch(&self, store: &ImageStore, keys: &[String], base: &[LayerRecord]) {
        let below: Vec<Digest> = base.iter().map(|l| l.diff_id.clone()).collect();
        self.run_chains(store, std::slice::from_ref(&keys.to_vec()), &below);
    }

    /// [`BuildCache::run_prefetch`] for the chains planned by `plan_chains`, over the base
    /// layers `below` (diff-ids).
    fn run_chains(&self, store: &ImageStore, chains: &[Vec<String>], below: &[Digest]) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.fetch_ahead(store, chains, below)
        }));
        if let Ok(mut slots) = self.prefetch.slots.lock() {
            slots.retain(|_, v| !matches!(v, Slot::Pending));
        }
        self.prefetch.changed.notify_all();
    }

    /// Resolves the base with `pull` and builds on it with `build`, looking the steps up in
    /// the cache (and fetching their layers) from the moment the pull has the base's
    /// config: beside the download of its layers, not after it. `chains_of` gives the
    /// steps' keys from the base's id and config (`early_keys::early_chains`). A base that
    /// is not pulled (in the store already) changes nothing: `build` plans its prefetch.
    pub fn while_pulling(
        &self,
        store: &ImageStore,
        chains_of: impl FnOnce(&Digest, &ConfigFile) -> Vec<Vec<String>> + Send,
        mut pull_options: PullOptions,
        pull: impl FnOnce(PullOptions) -> Result<ResolvedImage, ImageError>,
        build: impl FnOnce(&ResolvedImage) -> Result<ResolvedImage, ImageError>,
    ) -> Result<ResolvedImage, ImageError> {
        if !self.reads() {
            return build(&pull(pull_options)?);
        }
        enum Heard {
            Config(Digest, Box<ConfigFile>),
            PullEnded,
        }
        let (tx, rx) = mpsc::channel::<Heard>();
        let seen = Mutex::new(tx.clone());
        pull_options.on_config = Some(Arc::new(move |id: &Digest, config: &ConfigFile| {
            if let Ok(tx) = seen.lock() {
                let _ = tx.send(Heard::Config(id.clone(), Box::new(config.clone())));
            }
        }));
        let (planned_tx, planned_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                let Ok(Heard::Config(id, config)) = rx.recv() else {
                    return;
                };
                let chains = chains_of(&id, &config);
                let planned = !chains.is_empty() && self.plan_chains(store, &chains);
                // The build may start: whatever it asks for is planned.
                drop(planned_tx);
                if planned {
                    self.run_chains(store, &chains, &config.rootfs.diff_ids);
                }
            });
            let base = pull(pull_options);
            let _ = tx.send(Heard::PullEnded);
            // Until the prefetch is planned (or known not to be).
            let _ = planned_rx.recv();
            let built = base.and_then(|b| build(&b));
            self.stop_prefetch();
            built
        })
    }

    fn fetch_ahead(&self, store: &ImageStore, chains: &[Vec<String>], base: &[Digest]) {
        let pending = |key: &String| {
            self.prefetch
                .slots
                .lock()
                .is_ok_and(|s| matches!(s.get(key), Some(Slot::Pending)))
        };
        let Some(target) = self.settings.from.as_ref() else {
            return;
        };
        let Ok(client) = self.client(&self.reader, target, false) else {
            return;
        };
        let Some(first_chain) = chains.first() else {
            return;
        };
        // Where the chains part (the `packages` step): the keys before are everyone's.
        let common = (0..first_chain.len())
            .find(|&i| chains.iter().any(|c| c.get(i) != first_chain.get(i)))
            .unwrap_or(first_chain.len());
        let mut entries: HashMap<String, Result<Option<CacheEntry>, String>> = HashMap::new();
        let hit = |entries: &HashMap<String, Result<Option<CacheEntry>, String>>, k: &String| {
            matches!(entries.get(k), Some(Ok(Some(_)))) || !pending(k)
        };
        // The first step's entry alone (a miss there finds out whether there is a cache
        // at all, and ends every chain).
        let mut going = true;
        if let Some(first) = first_chain[..common].iter().find(|k| pending(k)) {
            entries.insert(first.clone(), self.lookup(client, target, first));
            going = hit(&entries, first);
        }
        // Then, with several chains, the first step of each that is not everyone's (asked
        // on speculation: their misses say nothing): the chain the cache holds goes on.
        // When it holds none, the step is asked again the sequential way, with its checks
        // and messages.
        let mut chosen = first_chain;
        if going && chains.len() > 1 {
            let parting: Vec<&String> = chains
                .iter()
                .filter_map(|c| c.get(common))
                .filter(|k| pending(k))
                .collect();
            entries.extend(self.lookup_all(client, target, &parting, false));
            match chains
                .iter()
                .find(|c| c.get(common).is_some_and(|k| hit(&entries, k)))
            {
                Some(c) => chosen = c,
                None => {
                    entries.retain(|k, _| !parting.contains(&k));
                    going = false;
                }
            }
        }
        // Not the cache's: never asked by the build (their keys are not its keys).
        for key in chains.iter().flatten() {
            if !chosen.contains(key) && pending(key) {
                self.prefetch.set(key, None);
            }
        }
        // The rest of the chain at once (a few requests at a time).
        if going {
            let rest: Vec<&String> = chosen
                .iter()
                .filter(|k| pending(k) && !entries.contains_key(*k))
                .collect();
            entries.extend(self.lookup_all(client, target, &rest, true));
        }
        self.fetch_chain(store, client, chosen, entries, base);
    }

    /// Looks `keys` up, a few at a time (`checked`: a miss checks once that the
    /// repository exists, see [`BuildCache::lookup`]).
    fn lookup_all(
        &self,
        client: &RegistryClient,
        target: &ImageReference,
        keys: &[&String],
        checked: bool,
    ) -> Vec<(String, Result<Option<CacheEntry>, String>)> {
        let mut out = Vec::new();
        for group in keys.chunks(LOOKUPS) {
            std::thread::scope(|s| {
                let handles: Vec<_> = group
                    .iter()
                    .map(|k| {
                        s.spawn(move || match checked {
                            true => self.lookup(client, target, k),
                            false => self.lookup_quiet(client, k),
                        })
                    })
                    .collect();
                for (k, h) in group.iter().zip(handles) {
                    let got = h.join().unwrap_or_else(|_| Err("lookup panicked".into()));
                    out.push(((*k).clone(), got));
                }
            });
        }
        out
    }

    /// Walks the chain `keys` with the `entries` looked up: each entry must sit on what
    /// the ones before it (or the local cache) give; the layers of the entries that do are
    /// fetched, in parallel, in order of need.
    fn fetch_chain(
        &self,
        store: &ImageStore,
        client: &RegistryClient,
        keys: &[String],
        mut entries: HashMap<String, Result<Option<CacheEntry>, String>>,
        base: &[Digest],
    ) {
        let planned: Vec<&String> = {
            let Ok(slots) = self.prefetch.slots.lock() else {
                return;
            };
            keys.iter().filter(|k| slots.contains_key(*k)).collect()
        };
        let give_up = |from: usize| {
            for k in &planned[from..] {
                self.prefetch.set(k, None);
            }
        };
        // The chain: each entry must sit on what the ones before it (or the local cache)
        // give.
        let mut below: Vec<Digest> = base.to_vec();
        let mut chain: Vec<(&String, CacheEntry, String)> = Vec::new();
        for key in keys {
            let Some(i) = planned.iter().position(|k| *k == key) else {
                // Cached locally: the next steps sit on its layers.
                match store.records.get(&cache_name(key)).ok().flatten() {
                    Some(r) => below = r.layers.iter().map(|l| l.diff_id.clone()).collect(),
                    None => return give_up(0),
                }
                continue;
            };
            let here = below_digest(&below);
            match entries.remove(key) {
                Some(Ok(Some(e))) if e.below == here => {
                    below.push(e.diff_id.clone());
                    chain.push((key, e, here));
                }
                // A miss, or the registry or the entry is the problem: this step's answer
                // (as the sequential way gives it); the steps after it go that way.
                Some(answer @ (Ok(None) | Err(_))) => {
                    self.prefetch.set(
                        key,
                        Some(Slot::Done {
                            below: here,
                            answer: answer.map(|_| None),
                        }),
                    );
                    give_up(i + 1);
                    break;
                }
                // Built on other layers, or not asked: asked again the sequential way,
                // with its messages.
                _ => {
                    give_up(i);
                    break;
                }
            }
        }
        // The layers of the chain, in parallel, in order of need.
        let queue = Mutex::new(chain.into_iter());
        std::thread::scope(|s| {
            for _ in 0..JOBS {
                s.spawn(|| loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some((key, entry, below)) = next else {
                        return;
                    };
                    if self.prefetch.stop.load(Ordering::Relaxed) || !self.reads() {
                        self.prefetch.set(key, None);
                        continue;
                    }
                    let answer = self
                        .take_layer(store, client, &entry)
                        .map(Some)
                        .map_err(|e| format!("refused its layer {}: {e}", entry.layer.digest));
                    self.prefetch.set(key, Some(Slot::Done { below, answer }));
                });
            }
        });
    }

    /// Ends fetching ahead: layers not started are not fetched.
    pub fn stop_prefetch(&self) {
        self.prefetch.stop.store(true, Ordering::Relaxed);
    }

    /// The answer fetched ahead for `key` on `below` (waiting while it is on its way), or
    /// `None`: ask the sequential way.
    pub(super) fn prefetched(
        &self,
        key: &str,
        below: &[Digest],
    ) -> Option<Result<Option<LayerRecord>, String>> {
        let mut slots = self.prefetch.slots.lock().ok()?;
        loop {
            match slots.get(key) {
                None => return None,
                Some(Slot::Pending) => slots = self.prefetch.changed.wait(slots).ok()?,
                Some(Slot::Done { .. }) => break,
            }
        }
        match slots.remove(key) {
            Some(Slot::Done { below: b, answer }) if b == below_digest(below) => Some(answer),
            // Fetched for other layers than the build has: not used.
            _ => None,
        }
    }
}
