//! Building the stages a target needs: those that do not need each other at once, on a
//! bounded pool of threads ([`STAGE_WORKERS`]: the machines berth runs on are often small,
//! and a stage's `RUN` is a whole sandboxed process tree). Each stage builds on a [`Run`] of
//! its own that holds only the finished stages it needs; the first error stops new stages
//! from starting (those running finish) and is the build's error. Notices and step counts
//! are merged in the plan's order, so the output does not depend on which stage won a race.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};

use super::build::Run;
use super::config::StageState;
use super::error::DockerfileError;

/// Stages built at once.
pub const STAGE_WORKERS: usize = 2;

/// What the workers share.
#[derive(Default)]
struct Board {
    done: BTreeMap<usize, StageState>,
    started: BTreeSet<usize>,
    /// Per stage: its notices, and steps run, cached and (of those) pulled.
    counts: BTreeMap<usize, (Vec<String>, [usize; 3])>,
    failed: Option<DockerfileError>,
}

impl Run<'_> {
    /// Builds every stage of the plan's order into `self.done`.
    pub(super) fn build_stages(&mut self) -> Result<(), DockerfileError> {
        let order = self.plan.order.clone();
        let workers = STAGE_WORKERS.min(order.len());
        let board = Mutex::new(Board::default());
        let wake = Condvar::new();
        {
            let this: &Run<'_> = self;
            std::thread::scope(|s| {
                for _ in 1..workers {
                    s.spawn(|| this.worker(&order, &board, &wake));
                }
                this.worker(&order, &board, &wake);
            });
        }
        let board = board.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = board.failed {
            return Err(e);
        }
        for i in &order {
            if let Some((notices, counts)) = board.counts.get(i) {
                self.add_counts(notices.clone(), *counts);
            }
        }
        self.done = board.done;
        Ok(())
    }

    /// Takes the next stage whose needs are built, builds it, until none is left.
    fn worker(&self, order: &[usize], board: &Mutex<Board>, wake: &Condvar) {
        loop {
            let (i, needed) = {
                let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if b.failed.is_some() || b.started.len() == order.len() {
                        return;
                    }
                    let ready = order.iter().copied().find(|i| {
                        !b.started.contains(i)
                            && self.plan.needs[i].iter().all(|d| b.done.contains_key(d))
                    });
                    if let Some(i) = ready {
                        b.started.insert(i);
                        let needed: BTreeMap<usize, StageState> = self.plan.needs[&i]
                            .iter()
                            .map(|d| (*d, b.done[d].clone()))
                            .collect();
                        break (i, needed);
                    }
                    b = wake.wait(b).unwrap_or_else(|p| p.into_inner());
                }
            };
            let mut run = self.fork(needed);
            let result = run.stage(i);
            let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(st) => {
                    b.done.insert(i, st);
                    b.counts.insert(i, run.take_counts());
                }
                Err(e) => {
                    if b.failed.is_none() {
                        b.failed = Some(e);
                    }
                }
            }
            wake.notify_all();
        }
    }
}
