//! The per-worker stuck detector: [`WorkerWatch`], sampled by the monitor
//! thread on its tick, finds a worker of a multi-thread runtime that is
//! stuck while the others still answer the probe (tokio issue 4730), and
//! says which thread runs it (so its stack is captured first) and, with
//! `tokio_unstable`, which task.
//!
//! This module owns the tracking of each worker between ticks and the
//! decision that a worker is stuck or has recovered. It never blocks on the
//! runtime: it reads tokio's runtime metrics and the atomics the hooks
//! publish in each thread's [`Slot`]. It does not own the hooks
//! ([`super::runtime_hooks`]), the report types ([`super::stuck`]), on
//! stable tokio the choice of the thread a stuck worker runs on
//! (`super::attribution`), nor what the monitor does with a stuck worker.
//!
//! # How a stuck worker is recognised
//!
//! tokio publishes each worker's `worker_park_unpark_count` and
//! `worker_total_busy_duration` when it parks, right after it wakes, and at
//! its maintenance, every `event_interval` (61) scheduler ticks. An even
//! park/unpark count means the worker is awake. A worker that keeps polling
//! short tasks republishes its busy duration every 61 polls; a worker stuck
//! inside one poll never republishes anything. So, on stable tokio, worker
//! `i` is stuck when its count is even and neither value has changed for
//! longer than the threshold `T`.
//!
//! With `--cfg tokio_unstable` the before/after-poll hooks keep, per thread,
//! a sequence number that is odd while a poll runs, plus the polled task's
//! id and spawn location. A worker thread that is awake and whose sequence
//! has not moved for longer than `T` is stuck: inside one poll (odd; the
//! task is named) or outside any (even; then its metrics must be frozen
//! too). The hooks only move the sequence and store the task (see
//! `super::poll` for exactly what they do): no clock read, the monitor
//! does the timing when it samples.
//!
//! # Which thread is it
//!
//! With `tokio_unstable`, `RuntimeMetrics::worker_thread_id(i)` names the
//! thread, and the slot with that `ThreadId` gives its OS tid. On stable
//! tokio there is no such accessor: each worker thread learns its index
//! from its own park/unpark hooks (`super::worker_index`), and the monitor
//! attributes a stuck index to the awake threads that may run it
//! (`super::attribution`). When more than one remains, all are reported
//! (`tids`), the most likely first.
//!
//! # Limits
//!
//! * On stable tokio a worker publishes only every 61 polls: a worker whose
//!   61 consecutive polls together take longer than `T` is reported stuck
//!   although each poll returned. With `tokio_unstable` the poll sequence
//!   rules that out.
//! * On stable tokio a worker thread is known from its first park/unpark
//!   cycle; a worker stuck before it ever parked (right at start-up) is not
//!   attributed to a thread and therefore not reported.
//! * A worker thread that the OS does not run for longer than `T`
//!   (descheduled on an overloaded machine, waiting on a page fault) is
//!   reported too: the tasks queued on it did wait that long.
//! * One `RuntimeHooks` serves one runtime.
//! * With `tokio_unstable`, the poll hooks publish into the calling
//!   thread's slot whichever `RuntimeHooks` registered it. A task that
//!   drives another runtime with hooks inside `block_in_place` therefore
//!   has its poll closed by the inner runtime's last poll: if it blocks
//!   after `block_in_place` returns, in the same poll, its worker is still
//!   reported stuck, but without naming the task.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

#[cfg(tokio_unstable)]
use std::collections::HashMap;
#[cfg(tokio_unstable)]
use std::sync::atomic::Ordering;
#[cfg(tokio_unstable)]
use std::thread::ThreadId;

#[cfg(not(tokio_unstable))]
use super::attribution::judge_stable;
use super::runtime_hooks::RuntimeHooks;
use super::slot::Slot;
#[cfg(tokio_unstable)]
use super::spawn_location::location_text;
#[cfg(tokio_unstable)]
use super::stuck::{Found, StuckTask};
use super::stuck::{StuckWorker, WorkerStuck, WorkerTransition};

/// What the monitor tracks per worker index between ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerKey {
    park_unpark: u64,
    busy: Duration,
    /// The holder thread's (slot address, park sequence, poll sequence).
    #[cfg(tokio_unstable)]
    holder: Option<(usize, u64, u64)>,
}

#[derive(Debug)]
struct WorkerTrack {
    key: WorkerKey,
    /// First tick at which `key` was seen.
    since: u64,
    stuck: Option<WorkerStuck>,
}

/// The per-worker stuck detector of one watched runtime, driven by the
/// monitor thread. It never blocks on the runtime: it reads tokio's
/// runtime metrics and the hooks' atomics.
///
/// Call [`sample`](Self::sample) on every monitor tick.
pub(crate) struct WorkerWatch {
    hooks: RuntimeHooks,
    handle: Handle,
    threshold: u64,
    /// When [`WorkerWatch::sample`] last ran, µs.
    last_sample: Option<u64>,
    generation: u64,
    slots: Vec<Arc<Slot>>,
    #[cfg(tokio_unstable)]
    by_thread: HashMap<ThreadId, usize>,
    workers: Vec<WorkerTrack>,
}

impl fmt::Debug for WorkerWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerWatch")
            .field("threshold", &self.threshold)
            .field("threads", &self.slots.len())
            .field("workers", &self.workers)
            .finish()
    }
}

impl WorkerWatch {
    /// Watches the workers of the runtime behind `handle`, which must have
    /// been built with `hooks` installed. `threshold` is in µs. For a
    /// runtime that is not multi-thread, [`sample`](Self::sample) never
    /// reports anything.
    pub(crate) fn new(hooks: RuntimeHooks, handle: Handle, threshold: u64) -> Self {
        WorkerWatch {
            hooks,
            handle,
            threshold,
            last_sample: None,
            generation: u64::MAX,
            slots: Vec::new(),
            #[cfg(tokio_unstable)]
            by_thread: HashMap::new(),
            workers: Vec::new(),
        }
    }

    /// The workers stuck now.
    pub(crate) fn stuck(&self) -> impl Iterator<Item = &WorkerStuck> + '_ {
        self.workers.iter().filter_map(|w| w.stuck.as_ref())
    }

    /// Whether any worker is stuck now.
    pub(crate) fn any_stuck(&self) -> bool {
        self.stuck().next().is_some()
    }

    /// The report sections for the workers stuck now.
    pub(crate) fn stuck_workers(&self, now: u64) -> Vec<StuckWorker> {
        self.stuck().map(|s| s.to_report(now)).collect()
    }

    /// Reads the runtime's metrics and the hooks' state at monitor time
    /// `now` (µs), and returns what changed: each worker that became stuck
    /// and each stuck worker that recovered, once each. Call it on every
    /// monitor tick; if it was not called for longer than the threshold,
    /// that stretch counts as unobserved (a paused process does not make
    /// every busy worker look stuck), so detection takes another threshold.
    pub(crate) fn sample(&mut self, now: u64) -> Vec<WorkerTransition> {
        let mut out = Vec::new();
        if self.handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return out;
        }
        self.refresh_slots();
        // The monitor itself did not run for longer than the threshold (the
        // process was paused, or the machine overloaded): nothing was
        // observed meanwhile, so that stretch is no worker's stuck time.
        let gap = self
            .last_sample
            .is_some_and(|last| now.saturating_sub(last) > self.threshold);
        self.last_sample = Some(now);
        if gap {
            for w in &mut self.workers {
                w.since = now;
            }
        }
        let metrics = self.handle.metrics();
        let n = metrics.num_workers();
        let park_unpark: Vec<u64> = (0..n)
            .map(|i| metrics.worker_park_unpark_count(i))
            .collect();
        #[cfg(tokio_unstable)]
        let holders: Vec<Option<usize>> = (0..n)
            .map(|i| {
                metrics
                    .worker_thread_id(i)
                    .and_then(|t| self.by_thread.get(&t).copied())
            })
            .collect();
        #[cfg(tokio_unstable)]
        let polls: Vec<(u64, Option<(u64, u32)>)> =
            self.slots.iter().map(|s| s.poll.read()).collect();

        if self.workers.len() != n {
            self.workers.clear();
        }
        // Stable tokio: a stuck worker whose threads all stopped is over
        // (with tokio_unstable its key changes instead).
        #[cfg(not(tokio_unstable))]
        for w in &mut self.workers {
            let gone = w
                .stuck
                .as_ref()
                .is_some_and(|stuck| !self.slots.iter().any(|s| stuck.tids.contains(&s.tid)));
            if gone {
                if let Some(stuck) = w.stuck.take() {
                    out.push(WorkerTransition::Recovered {
                        stuck_for: now.saturating_sub(stuck.stuck_since),
                        ended_at: now,
                        stuck,
                    });
                }
            }
        }
        for i in 0..n {
            let key = WorkerKey {
                park_unpark: park_unpark[i],
                busy: metrics.worker_total_busy_duration(i),
                #[cfg(tokio_unstable)]
                holder: holders[i].map(|h| {
                    let slot = &self.slots[h];
                    (
                        Arc::as_ptr(slot) as usize,
                        slot.park_seq.load(Ordering::Acquire),
                        polls[h].0,
                    )
                }),
            };
            if self.workers.len() <= i {
                self.workers.push(WorkerTrack {
                    key,
                    since: now,
                    stuck: None,
                });
                continue;
            }
            let moved = self.workers[i].key != key;
            if moved {
                self.workers[i].key = key;
                self.workers[i].since = now;
                if let Some(stuck) = self.workers[i].stuck.take() {
                    out.push(WorkerTransition::Recovered {
                        stuck_for: now.saturating_sub(stuck.stuck_since),
                        ended_at: now,
                        stuck,
                    });
                }
                continue;
            }
            let since = self.workers[i].since;
            if self.workers[i].stuck.is_some() || now.saturating_sub(since) <= self.threshold {
                continue;
            }
            #[cfg(tokio_unstable)]
            let found = self.judge_unstable(&self.workers[i].key, &polls, holders[i]);
            #[cfg(not(tokio_unstable))]
            let found = judge_stable(&self.slots, i, &park_unpark);
            if let Some((tids, thread, task)) = found {
                let stuck = WorkerStuck {
                    worker: i,
                    tids,
                    thread,
                    stuck_since: since,
                    detected_at: now,
                    task,
                };
                self.workers[i].stuck = Some(stuck.clone());
                out.push(WorkerTransition::Stuck(stuck));
            }
        }
        out
    }

    /// Re-reads the registered threads if they changed. A stuck worker
    /// whose thread is gone has, in effect, recovered: its key changes at
    /// the next read (`tokio_unstable`) or its worker publishes again.
    fn refresh_slots(&mut self) {
        let generation = self.hooks.generation();
        if generation == self.generation {
            return;
        }
        let (generation, slots) = self.hooks.snapshot();
        self.generation = generation;
        self.slots = slots;
        #[cfg(tokio_unstable)]
        {
            self.by_thread = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.thread_id, i))
                .collect();
        }
    }

    /// `tokio_unstable`: worker `i`, unchanged for longer than the
    /// threshold, is stuck if its thread is awake, and either inside one
    /// poll or, outside any, its metrics say awake too.
    #[cfg(tokio_unstable)]
    fn judge_unstable(
        &self,
        key: &WorkerKey,
        polls: &[(u64, Option<(u64, u32)>)],
        holder: Option<usize>,
    ) -> Option<Found> {
        let h = holder?;
        let slot = &self.slots[h];
        let (_, park_seq, poll_seq) = key.holder?;
        if park_seq & 1 == 1 {
            return None; // parked
        }
        let task = if poll_seq & 1 == 1 {
            polls[h].1.map(|(task, location)| StuckTask {
                id: task.to_string(),
                spawned_at: location_text(location).unwrap_or_else(|| "unknown".to_owned()),
            })
        } else if key.park_unpark % 2 == 0 {
            None
        } else {
            return None;
        };
        Some((vec![slot.tid], slot.name.clone(), task))
    }
}
