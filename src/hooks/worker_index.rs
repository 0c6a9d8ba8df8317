//! Stable tokio: how a worker thread learns which worker index it runs.
//!
//! tokio's stable API has no `RuntimeMetrics::worker_thread_id`, so each
//! worker thread learns its index from its own park/unpark hooks: the park
//! hook snapshots every worker's published park/unpark count; between the
//! two hooks the thread's own worker publishes an odd count (before
//! sleeping) and then an even one (right after waking), so at the unpark
//! hook its index is among those whose count rose to an even value.
//! Successive cycles are intersected (and must chain: while awake a
//! worker's count does not move), which narrows the candidates to the
//! thread's own index; the thread starts over only when two cycles in a
//! row disagree with what it learned (it now runs another worker, after
//! `block_in_place`). A worker thread is thus known from its first
//! park/unpark cycle, not before (see the limits in [`super::watch`]).
//!
//! This module owns the thread side: [`Learned`], what a thread publishes
//! in its slot, and [`LocalLearn`], its private state. It does not own the
//! reading: the monitor's use of what the threads learned is in
//! [`super::attribution`]. With `--cfg tokio_unstable` tokio names each
//! worker's thread itself and none of this is compiled.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use tokio::runtime::RuntimeMetrics;

/// Published by a worker thread at each unpark: what it has learned about
/// its worker index.
pub(super) struct Learned {
    /// Every worker's published park/unpark count at this thread's last
    /// unpark hook.
    pub(super) at_unpark: Box<[AtomicU64]>,
    /// Bit set of the worker indices this thread may be running.
    pub(super) mask: Box<[AtomicU64]>,
}

impl Learned {
    pub(super) fn new(workers: usize) -> Self {
        Learned {
            at_unpark: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            mask: (0..workers.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

/// A worker thread's private learning state.
pub(super) struct LocalLearn {
    metrics: RuntimeMetrics,
    /// Every worker's published park/unpark count at the last park hook.
    at_park: Vec<u64>,
    /// Whether `Learned::at_unpark` holds a previous cycle's snapshot.
    cycled: bool,
    /// Scratch bit sets (no allocation per park).
    cand: Vec<u64>,
    chained: Vec<u64>,
    /// The candidates of the last cycle that disagreed with the mask.
    pending: Option<Vec<u64>>,
}

impl LocalLearn {
    pub(super) fn new(metrics: RuntimeMetrics, workers: usize) -> Self {
        let words = workers.div_ceil(64);
        LocalLearn {
            metrics,
            at_park: vec![0; workers],
            cycled: false,
            cand: vec![0; words],
            chained: vec![0; words],
            pending: None,
        }
    }

    pub(super) fn at_park(&mut self) {
        for (i, a) in self.at_park.iter_mut().enumerate() {
            *a = self.metrics.worker_park_unpark_count(i);
        }
    }

    /// Between the park and the unpark hook this thread's worker published
    /// an odd count (before sleeping) and then an even one (right after
    /// waking), so its index is among those whose count rose to an even
    /// value; while awake its count does not move, so it also chains with
    /// the previous cycle.
    pub(super) fn at_unpark(&mut self, learned: &Learned) {
        // Seqlock writer: the slot's park sequence is odd since the park
        // hook; a monitor that reads these stores will see it changed.
        fence(Ordering::Release);
        self.cand.fill(0);
        self.chained.fill(0);
        let mut any = false;
        for (i, &a) in self.at_park.iter().enumerate() {
            let b = self.metrics.worker_park_unpark_count(i);
            let previous = learned.at_unpark[i].load(Ordering::Relaxed);
            if b % 2 == 0 && b > a {
                any = true;
                self.cand[i / 64] |= 1 << (i % 64);
                if self.cycled && a == previous {
                    self.chained[i / 64] |= 1 << (i % 64);
                }
            }
            learned.at_unpark[i].store(b, Ordering::Relaxed);
        }
        self.cycled = true;
        if !any {
            // The worker did not actually park (tokio found work between
            // the hooks): nothing learned.
            return;
        }
        // Narrow when consistent. When not, the thread may now run another
        // worker (after `block_in_place`), or this cycle was not a real park
        // and only saw other workers move: start over only when two cycles
        // in a row agree with each other and not with the mask.
        let mask = &learned.mask;
        let overlaps = |set: &[u64]| {
            mask.iter()
                .zip(set)
                .any(|(m, s)| m.load(Ordering::Relaxed) & s != 0)
        };
        let narrow = |set: &[u64]| {
            for (m, s) in mask.iter().zip(set) {
                m.store(m.load(Ordering::Relaxed) & s, Ordering::Relaxed);
            }
        };
        let empty = mask.iter().all(|m| m.load(Ordering::Relaxed) == 0);
        if overlaps(&self.chained) {
            narrow(&self.chained);
            self.pending = None;
        } else if overlaps(&self.cand) {
            narrow(&self.cand);
            self.pending = None;
        } else if empty {
            for (m, s) in mask.iter().zip(&self.cand) {
                m.store(*s, Ordering::Relaxed);
            }
        } else {
            let agreed: Option<Vec<u64>> = self.pending.take().and_then(|p| {
                let both: Vec<u64> = p.iter().zip(&self.cand).map(|(p, c)| p & c).collect();
                both.iter().any(|w| *w != 0).then_some(both)
            });
            match agreed {
                Some(both) => {
                    for (m, s) in mask.iter().zip(both) {
                        m.store(s, Ordering::Relaxed);
                    }
                }
                None => self.pending = Some(self.cand.clone()),
            }
        }
    }
}
