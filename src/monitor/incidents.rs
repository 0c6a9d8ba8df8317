//! What the monitor does when a runtime stalls or recovers, or when one of
//! its workers gets stuck or moves again.
//!
//! Each transition is said once in the log, counted in the metrics, handed
//! to the diagnostics (capture, verdict, report) and passed to the
//! application's `on_stall` callback, whose panics are caught here. The
//! transitions themselves are decided elsewhere ([`health`](crate::health)
//! for probes, [`hooks`](crate::hooks) for workers).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::Monitor;
use crate::clock::{self, us};
use crate::diagnostics::{Outcome, StallContext};
use crate::health::{StallTrack, Transition};
use crate::hooks::{WorkerTransition, WorkerWatch};
use crate::notify::NotifyState;
use crate::status::{human, StallEvent};

impl Monitor {
    pub(super) fn on_transition(&mut self, i: usize, t: Transition, now: u64) {
        let name = self.loops[i].name.clone();
        match t {
            Transition::StallStarted(track) => {
                let lag = us(now.saturating_sub(track.started_at).max(track.max_lag));
                tracing::warn!(
                    runtime = %name,
                    lag = %human(lag),
                    threshold = %human(us(self.threshold)),
                    "event loop {name:?} stalled: probe unanswered for {}",
                    human(lag)
                );
                self.send_status(now);
                self.metrics.stall_started(i);
                // Say it (status(), /healthz) before the diagnostics' work.
                self.publish(now);
                let outcome = self.diagnose(i, i, track, now);
                if let Some(kind) = outcome.verdict {
                    self.metrics.stall_classified(i, kind.as_str());
                }
                self.after_report(&outcome);
                self.callback(StallEvent::Started {
                    runtime: name,
                    lag,
                    threshold: us(self.threshold),
                    detected_at: SystemTime::now() - us(clock::now_us().saturating_sub(now)),
                    report: outcome.report,
                });
            }
            Transition::StallEnded {
                duration, ended_at, ..
            } => {
                self.metrics.stall_ended(i, us(duration));
                let outcome = self.diag.stall_ended(i, duration, ended_at);
                tracing::warn!(
                    runtime = %name,
                    duration = %human(us(duration)),
                    "event loop {name:?} recovered after {}",
                    human(us(duration))
                );
                self.callback(StallEvent::Ended {
                    runtime: name,
                    duration: us(duration),
                    report: outcome.report,
                });
            }
            Transition::Gone => {
                self.metrics.set_stalled(i, false);
                if !self.shared.stop.load(Ordering::Acquire) {
                    tracing::warn!(
                        runtime = %name,
                        "watched runtime {name:?} was shut down while loopwatch still watches it; \
                         watchdog pings stop"
                    );
                    let _ = self.shared.notify(&[NotifyState::Status(&format!(
                        "event loop {name:?} is gone (runtime shut down)"
                    ))]);
                }
            }
        }
    }

    /// A worker of runtime `i` got stuck or moved again.
    pub(super) fn on_worker_transition(&mut self, i: usize, t: WorkerTransition, now: u64) {
        let n = self.loops.len();
        let name = self.loops[i].name.clone();
        let counts = self.shared.settings.worker_stuck_is_stall;
        match t {
            WorkerTransition::Stuck(stuck) => {
                self.metrics.set_worker_stuck(i, stuck.worker, true);
                let stuck_for = us(now.saturating_sub(stuck.stuck_since));
                let task = stuck
                    .task
                    .as_ref()
                    .map(|t| format!(" polling task {} spawned at {}", t.id, t.spawned_at))
                    .unwrap_or_default();
                tracing::warn!(
                    runtime = %name,
                    worker = stuck.worker,
                    tids = ?stuck.tids,
                    "worker {} of event loop {name:?} stuck for {}{task}",
                    stuck.worker,
                    human(stuck_for)
                );
                let mut report = None;
                if counts && self.loops[i].worker_stall.is_none() {
                    self.loops[i].worker_stall = Some(stuck.stuck_since);
                    self.metrics.stall_started(i);
                    self.publish(now);
                    let track = StallTrack {
                        started_at: stuck.stuck_since,
                        detected_at: now,
                        max_lag: now.saturating_sub(stuck.stuck_since),
                    };
                    let outcome = self.diagnose(n + i, i, track, now);
                    if let Some(kind) = outcome.verdict {
                        self.metrics.stall_classified(i, kind.as_str());
                    }
                    self.after_report(&outcome);
                    report = outcome.report;
                    self.send_status(now);
                }
                self.callback(StallEvent::WorkerStuck {
                    runtime: name,
                    worker: stuck.worker,
                    stuck_for,
                    task: stuck.task.clone(),
                    report,
                });
            }
            WorkerTransition::Recovered {
                stuck,
                stuck_for,
                ended_at,
            } => {
                self.metrics.set_worker_stuck(i, stuck.worker, false);
                tracing::warn!(
                    runtime = %name,
                    worker = stuck.worker,
                    "worker {} of event loop {name:?} moves again after {}",
                    stuck.worker,
                    human(us(stuck_for))
                );
                let still_stuck = self.loops[i]
                    .workers
                    .as_ref()
                    .is_some_and(WorkerWatch::any_stuck);
                let mut report = None;
                if let (Some(since), false) = (self.loops[i].worker_stall, still_stuck) {
                    self.loops[i].worker_stall = None;
                    let duration = ended_at.saturating_sub(since);
                    self.metrics.stall_ended(i, us(duration));
                    report = self.diag.stall_ended(n + i, duration, ended_at).report;
                }
                self.callback(StallEvent::WorkerRecovered {
                    runtime: name,
                    worker: stuck.worker,
                    stuck_for: us(stuck_for),
                    report,
                });
            }
        }
    }

    /// Hands a new stall to the diagnostics.
    /// `slot` is the diagnostics slot: `i` for a probe stall, runtimes + `i`
    /// for a worker stall of runtime `i`.
    fn diagnose(&mut self, slot: usize, i: usize, track: StallTrack, now: u64) -> Outcome {
        let w = &self.loops[i];
        let worker_stall = slot != i;
        let stuck_workers = match (&w.workers, worker_stall) {
            (Some(ww), true) => ww.stuck_workers(now),
            _ => Vec::new(),
        };
        // The stuck workers' threads first: their stacks are captured first.
        let mut loop_tids: Vec<i32> = stuck_workers.iter().flat_map(|s| s.tids.clone()).collect();
        if !worker_stall {
            loop_tids.extend(w.probe.poller_tid());
        }
        if !worker_stall {
            // Threads that run the runtime: registered by the hooks, or
            // recognised by tokio's default worker name.
            if let Some(h) = &w.hooks {
                loop_tids.extend(h.worker_threads());
            }
            for tid in crate::procfs::list_threads() {
                if !loop_tids.contains(&tid)
                    && crate::procfs::read_thread(tid)
                        .is_some_and(|f| f.name.starts_with("tokio-runtime-w"))
                {
                    loop_tids.push(tid);
                }
            }
            loop_tids.dedup();
        }
        let monitor_gap: u64 = self
            .gaps
            .iter()
            .map(|g| {
                let from = g.from.max(track.started_at);
                g.to.min(now).saturating_sub(from)
            })
            .sum();
        let deadline = self.deadline();
        let ctx = StallContext {
            idx: slot,
            stuck_workers,
            runtime: &w.name,
            track,
            now,
            timeline: &w.tracker.timeline,
            loop_tids,
            monitor_gap: us(monitor_gap),
            handle: &w.handle,
            deadline,
        };
        self.diag.stall_started(ctx)
    }

    fn callback(&mut self, event: StallEvent) {
        let Some(cb) = &self.on_stall else { return };
        if catch_unwind(AssertUnwindSafe(|| cb(&event))).is_err() {
            self.callback_panics += 1;
            tracing::error!(
                panics = self.callback_panics,
                "the on_stall callback panicked; loopwatch caught it and keeps watching"
            );
        }
    }
}
