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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use super::{below_digest, BuildCache, CacheEntry};
use crate::image::digest::Digest;
use crate::image::image_store::LayerRecord;
use crate::image::step_cache::cache_name;
use crate::image::store::ImageStore;

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
    /// Marks the steps (`keys`, in order, over the base's `base` layers) whose answers
    /// [`BuildCache::run_prefetch`] will fetch: those missing from the local cache. Returns
    /// whether there is anything to fetch. Call before the build's first `fetch`.
    pub fn plan_prefetch(&self, store: &ImageStore, keys: &[String]) -> bool {
        if self.settings.from.is_none() || !self.reads() {
            return false;
        }
        let Ok(mut slots) = self.prefetch.slots.lock() else {
            return false;
        };
        for key in keys {
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
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.fetch_ahead(store, keys, base)
        }));
        if let Ok(mut slots) = self.prefetch.slots.lock() {
            slots.retain(|_, v| !matches!(v, Slot::Pending));
        }
        self.prefetch.changed.notify_all();
    }

    fn fetch_ahead(&self, store: &ImageStore, keys: &[String], base: &[LayerRecord]) {
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
        let Some(target) = self.settings.from.as_ref() else {
            return give_up(0);
        };
        let client = match self.client(&self.reader, target, false) {
            Ok(c) => c,
            Err(_) => return give_up(0),
        };
        // The first step's entry alone (a miss there finds out whether there is a cache at
        // all), then every other entry at once (a few requests at a time).
        let mut entries: HashMap<&String, Result<Option<CacheEntry>, String>> = HashMap::new();
        let Some((first, rest)) = planned.split_first() else {
            return;
        };
        entries.insert(first, self.lookup(client, target, first));
        if matches!(entries.get(first), Some(Ok(Some(_)))) {
            for group in rest.chunks(LOOKUPS) {
                let got: Vec<_> = std::thread::scope(|s| {
                    let handles: Vec<_> = group
                        .iter()
                        .map(|k| s.spawn(move || self.lookup(client, target, k)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err("lookup panicked".into())))
                        .collect()
                });
                entries.extend(group.iter().copied().zip(got));
            }
        }
        // The chain: each entry must sit on what the ones before it (or the local cache)
        // give.
        let mut below: Vec<Digest> = base.iter().map(|l| l.diff_id.clone()).collect();
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
