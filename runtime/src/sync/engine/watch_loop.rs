//! The engine's loop: watchers feed events through a channel, debounced batches of dirty
//! paths are applied, flush requests (from another thread or the flush file) are served by
//! full passes until one finds nothing to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::apply_phases::FAILURE_RETRY;
use super::{idx, trace, Msg, Worker};
use crate::sync::base::Side;
use crate::sync::status::{self, SyncState};
use crate::sync::transport::{TransportError, WatchEvent};
use crate::sync::SyncError;

/// Flush passes before giving up on reaching a quiet state (changes keep arriving).
const MAX_FLUSH_PASSES: usize = 20;

/// How long a flush waits for the watchers to answer its barrier before it scans instead.
const BARRIER_WAIT: Duration = Duration::from_secs(5);

impl Worker<'_> {
    fn start_watch(&mut self, side: Side, force_poll: bool) -> Result<(), SyncError> {
        let tx = Mutex::new(self.tx.clone());
        let sink = Box::new(move |ev: WatchEvent| {
            let _ = tx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(Msg::Watch(side, ev, Instant::now()));
        });
        self.watchers[idx(side)] = None;
        let w = self.side(side).watch(sink, force_poll)?;
        if let Some(reason) = &w.polling {
            let reason = reason.clone();
            // Keep a reason already given (the other side's watch limit, say): "polling
            // requested" after a failure would hide the message naming the sysctl.
            self.update_status(true, |s| {
                s.polling.get_or_insert(reason);
            });
        }
        self.watchers[idx(side)] = Some(w);
        Ok(())
    }

    pub(super) fn run(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        stop: &AtomicBool,
    ) -> Result<(), SyncError> {
        // Watch first, so nothing changed during the initial scan is missed.
        let poll = self.cfg().force_poll;
        self.start_watch(Side::Host, poll)?;
        self.start_watch(Side::Env, poll)?;
        self.update_status(true, |s| s.state = SyncState::Scanning);
        self.full_pass(stop)?;
        self.first_pass = false;
        // Flush requests made before the start are served by the initial pass.
        let flushed = self.flushed;
        self.update_status(true, |s| {
            s.state = SyncState::Watching;
            s.pending = 0;
            s.flushed = flushed;
        });
        let mut waiters: Vec<Sender<Result<(), String>>> = Vec::new();
        let mut last_request_check = Instant::now();
        let debounce = self.cfg().debounce;
        while !stop.load(Ordering::Relaxed) {
            let wait = self
                .dirty
                .due_in(Instant::now(), debounce)
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            // While a debounce runs, sleep until it is due and then take every event that
            // arrived meanwhile: during a burst (thousands of events a second) waking up per
            // event cost more CPU than the copies. Idle, block until the next message. A
            // flush request waits at most one debounce step (`quiet`, a few ms).
            let first = if self.dirty.is_empty() {
                match rx.recv_timeout(wait) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                std::thread::sleep(wait.min(debounce.quiet));
                None
            };
            if let Some(msg) = first {
                self.on_msg(msg, &mut waiters)?;
            }
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.on_msg(msg, &mut waiters)?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            let now = Instant::now();
            if self
                .dirty
                .due_in(now, debounce)
                .is_some_and(|d| d.is_zero())
            {
                let batch = self.dirty.take();
                match self.apply_batch(batch, stop) {
                    // A path that could not be read gets no new event: a full pass looks at
                    // it again (and a flush meanwhile scans instead of trusting events).
                    Ok(p) if p.failure.is_some() && self.rescan_at.is_none() => {
                        self.rescan_at = Some(Instant::now() + FAILURE_RETRY);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // E.g. a side's folder became unreadable: report, look again in a
                        // second.
                        let msg = e.to_string();
                        self.update_status(true, |s| {
                            s.last_error = Some(msg);
                            s.state = SyncState::Watching;
                        });
                        self.rescan_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            if self.rescan_at.is_some_and(|t| Instant::now() >= t) {
                self.rescan_at = None;
                self.dirty.add(None, WatchEvent::Rescan, Instant::now());
            }
            let mut requested = None;
            if now.duration_since(last_request_check) >= Duration::from_millis(100) {
                last_request_check = now;
                let n = status::read_flush_request(&self.cfg().state_dir);
                if n > self.flushed {
                    requested = Some(n);
                }
            }
            if !waiters.is_empty() || requested.is_some() {
                let r = self.flush_passes(rx, &mut waiters, stop);
                let mut failed_request = None;
                if let Some(n) = requested {
                    match &r {
                        Ok(()) => self.flushed = n,
                        Err(_) => {
                            // Report it to the requester, who then stops waiting.
                            failed_request = Some(n);
                            self.flushed = n;
                        }
                    }
                }
                let flushed = self.flushed;
                let error = r.clone().err();
                for w in waiters.drain(..) {
                    let _ = w.send(r.clone());
                }
                self.update_status(true, |s| {
                    if let Some(n) = failed_request {
                        s.flush_failed = n;
                    } else if requested.is_some() {
                        s.flushed = flushed;
                    }
                    if let Some(e) = error {
                        s.last_error = Some(format!("flush: {e}"));
                    }
                    s.state = SyncState::Watching;
                });
            }
        }
        Ok(())
    }

    pub(super) fn finish(&mut self, result: &Result<(), SyncError>) {
        self.watchers = [None, None];
        let compact = self.base.compact();
        let ok = result.is_ok();
        self.update_status(true, |s| {
            if ok {
                s.state = SyncState::Stopped;
            }
            if let Err(e) = compact {
                s.last_error = Some(e.to_string());
            }
        });
    }

    fn on_msg(
        &mut self,
        msg: Msg,
        waiters: &mut Vec<Sender<Result<(), String>>>,
    ) -> Result<(), SyncError> {
        match msg {
            Msg::Watch(side, ev, at) => self.on_event(side, ev, at),
            Msg::Flush(r) => {
                waiters.push(r);
                Ok(())
            }
            Msg::Barrier(side, n) => {
                let answered = &mut self.barrier_answered[idx(side)];
                *answered = (*answered).max(n);
                Ok(())
            }
        }
    }

    /// An event reported by `side`'s watcher at `at` (when it was sent: the debounce counts
    /// from there, not from when the loop took it).
    fn on_event(&mut self, side: Side, ev: WatchEvent, at: Instant) -> Result<(), SyncError> {
        match ev {
            WatchEvent::Failed { message, limit } => {
                let msg = if limit {
                    TransportError::WatchLimit {
                        side: self.side(side).describe(),
                        detail: message,
                    }
                    .to_string()
                } else {
                    message
                };
                let polling = self.watchers[idx(side)]
                    .as_ref()
                    .is_some_and(|w| w.polling.is_some());
                if !polling {
                    self.start_watch(side, true)?;
                }
                self.update_status(true, |s| {
                    s.polling = Some(msg.clone());
                    s.last_error = Some(msg);
                });
                self.dirty.add(None, WatchEvent::Rescan, at);
            }
            ev => self.dirty.add(Some(side), ev, at),
        }
        Ok(())
    }

    /// Serves a flush: rounds until one finds nothing to do. When both watchers' events are
    /// complete ([`Worker::events_cover_changes`]), the first round looks only at the paths
    /// they reported; otherwise it is a full pass (both sides scanned completely: it finds
    /// every change made before the request, seen by a watcher or not). The rounds after
    /// look only at the paths the watchers reported or the engine must retry since the
    /// previous round: the engine knows what it wrote (recorded in the base as agreed by both
    /// sides), and any other change of either side during the round is an event. A round is
    /// a full pass again when events may have been lost (a watcher's queue overflowed, a
    /// watcher failed) or when the last round's result can only be seen by scanning
    /// ([`PassResult::needs_full_pass`]: a conflict copy made on one side, a `.gitignore`
    /// changed) or a path failed. Flush requests that arrive meanwhile join `waiters` (this
    /// flush's last round starts after them).
    fn flush_passes(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let mut full = match self.events_cover_changes(rx, waiters) {
            Ok(covered) => !covered,
            Err(e) => return Err(e.to_string()),
        };
        trace(format_args!(
            "flush starts with {}",
            if full {
                "a full pass"
            } else {
                "the watchers' events"
            }
        ));
        for _ in 0..MAX_FLUSH_PASSES {
            self.update_status(true, |s| s.state = SyncState::Scanning);
            let round = if full {
                if let Err(e) = self.drop_covered_events(rx, waiters) {
                    return Err(e.to_string());
                }
                self.full_pass(stop)
            } else {
                if let Err(e) = self.take_messages(rx, waiters) {
                    return Err(e.to_string());
                }
                if self.dirty.rescan_pending() {
                    full = true;
                    continue;
                }
                let batch = self.dirty.take();
                if batch.paths.is_empty() {
                    return Ok(());
                }
                self.apply_batch(batch, stop)
            };
            match round {
                Ok(p)
                    if p.applied == 0
                        && p.retries == 0
                        && !p.needs_full_pass
                        && !self.dirty.rescan_pending() =>
                {
                    return match p.failure {
                        None => Ok(()),
                        Some(f) => Err(f),
                    }
                }
                Ok(p) => full = p.needs_full_pass || p.failure.is_some(),
                Err(e) => return Err(e.to_string()),
            }
            if stop.load(Ordering::Relaxed) {
                return Err("the sync is stopping".into());
            }
        }
        Err(format!(
            "changes kept arriving during {MAX_FLUSH_PASSES} rounds of a flush"
        ))
    }

    /// Whether the events received cover every change made before now, so that a flush
    /// needs no full pass: both sides are watched by inotify (the kernel queues an event
    /// before the change's system call returns), nothing was lost or failed since the last
    /// full pass (no overflow or rescan pending, no failed path waiting for its retry), and
    /// each watcher has answered a barrier asked now (every event queued before it is then
    /// in `dirty`). A watcher that does not answer within [`BARRIER_WAIT`] gives `false`.
    fn events_cover_changes(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
    ) -> Result<bool, SyncError> {
        if self.rescan_at.is_some() || self.dirty.rescan_pending() {
            return Ok(false);
        }
        self.barrier_asked += 1;
        let n = self.barrier_asked;
        for side in [Side::Host, Side::Env] {
            let Some(barrier) = self.watchers[idx(side)]
                .as_ref()
                .filter(|w| w.polling.is_none())
                .and_then(|w| w.barrier.as_ref())
            else {
                return Ok(false);
            };
            let tx = self.tx.clone();
            barrier(Box::new(move || {
                let _ = tx.send(Msg::Barrier(side, n));
            }));
        }
        let deadline = Instant::now() + BARRIER_WAIT;
        while self.barrier_answered.iter().any(|&a| a < n) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(msg) => self.on_msg(msg, waiters)?,
                Err(_) => return Ok(false),
            }
            // A watcher that failed meanwhile was replaced by polling (and asked a rescan).
            if self.dirty.rescan_pending() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes every message already received (events join the dirty paths).
    fn take_messages(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
    ) -> Result<(), SyncError> {
        while let Ok(msg) = rx.try_recv() {
            self.on_msg(msg, waiters)?;
        }
        Ok(())
    }

    /// Before a full pass: takes every message already received and forgets the paths
    /// waiting for a batch. They describe changes made before the scan about to start, which
    /// sees their result; without this, a flush after a big burst would be followed by a
    /// batch re-reading every path of the burst (and of the engine's own writes) once more.
    /// Events still to come (changes made during the pass) are kept, as always.
    fn drop_covered_events(
        &mut self,
        rx: &mpsc::Receiver<Msg>,
        waiters: &mut Vec<Sender<Result<(), String>>>,
    ) -> Result<(), SyncError> {
        self.take_messages(rx, waiters)?;
        let dropped = self.dirty.take();
        trace(format_args!(
            "full pass covers {} waiting paths{}",
            dropped.paths.len(),
            if dropped.rescan { " and a rescan" } else { "" }
        ));
        Ok(())
    }
}
