//! Incidents: one story per stall of a runtime, whatever its causes.
//!
//! A runtime's incident opens when its probe stalls or one of its workers
//! gets stuck, and closes when every cause has ended. However many causes
//! come and go in between (the probe of a hooked runtime stalls while its
//! workers are stuck, a second worker gets stuck), it is **one** incident:
//! counted once (`loopwatch_stalls_total`), one report, one callback pair
//! ([`StallEvent::Started`]/[`StallEvent::Ended`] when the probe opened it,
//! [`StallEvent::WorkerStuck`]/[`StallEvent::WorkerRecovered`] when a
//! worker did).
//!
//! An incident withholds pings (and makes `/healthz` unhealthy, and
//! `loopwatch_stalled` 1) from when its probe stalls, or a worker has been
//! stuck longer than the worker-stuck limit, until every cause has ended: a
//! probe that answers again while a worker is still stuck does not end
//! it. A stuck worker alone is reported at once but, while the other
//! workers still answer the probe, only withholds pings after that limit. Each change is said once in the
//! log and handed to the diagnostics; the application's callback's panics
//! are caught here. The transitions themselves are decided elsewhere
//! ([`health`](crate::health) for probes, [`hooks`](crate::hooks) for
//! workers).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{guard_diag, Monitor};
use crate::clock::{self, micros, us};
use crate::diagnostics::IncidentContext;
use crate::health::Transition;
use crate::hooks::{StuckTask, WorkerTransition, WorkerWatch};
use crate::notify::NotifyState;
use crate::status::{human, StallEvent};

/// What opened an incident; its callback pair follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenedBy {
    /// The probe went unanswered: the whole loop stalled.
    Probe,
    /// A worker got stuck while the probe was answered.
    Worker {
        /// tokio's index of the worker.
        worker: usize,
        /// The task it was stuck polling (`tokio_unstable` only).
        task: Option<StuckTask>,
    },
}

/// A runtime's stall in progress.
#[derive(Debug, Clone)]
pub(crate) struct Incident {
    /// When its first cause began (µs clock).
    pub started_at: u64,
    pub opened_by: OpenedBy,
    /// Whether the probe is stalled now.
    pub probe_stalled: bool,
    /// Whether it withholds pings now.
    pub withholds: bool,
    /// Coalesced into an earlier report (a stall storm).
    pub coalesced: bool,
    /// The report file, once written.
    pub report: Option<PathBuf>,
}

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
                match &mut self.loops[i].incident {
                    Some(incident) => {
                        incident.probe_stalled = true;
                        self.update_withholding(i, now);
                        self.causes_changed(i, now);
                    }
                    None => self.open(i, OpenedBy::Probe, track.started_at, track.max_lag, now),
                }
            }
            Transition::StallEnded { ended_at, .. } => {
                if let Some(incident) = &mut self.loops[i].incident {
                    incident.probe_stalled = false;
                }
                self.update_withholding(i, now);
                if self.loops[i].incident.as_ref().is_some_and(|c| c.withholds) {
                    tracing::warn!(
                        runtime = %name,
                        "event loop {name:?} answers its probe again, but a worker is still \
                         stuck: watchdog pings stay withheld until it moves"
                    );
                }
                self.close_if_over(i, ended_at);
            }
            Transition::Gone => {
                self.loops[i].incident = None;
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
        let name = self.loops[i].name.clone();
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
                    "worker {} of event loop {name:?} stuck for {}{task} (the other workers \
                     still run; pings are withheld only if it stays stuck for {})",
                    stuck.worker,
                    human(stuck_for),
                    self.worker_limit_text()
                );
                if self.loops[i].incident.is_some() {
                    self.causes_changed(i, now);
                } else {
                    let opened_by = OpenedBy::Worker {
                        worker: stuck.worker,
                        task: stuck.task.clone(),
                    };
                    self.open(i, opened_by, stuck.stuck_since, micros(stuck_for), now);
                }
                self.update_withholding(i, now);
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
                if still_stuck {
                    self.causes_changed(i, now);
                }
                self.update_withholding(i, now);
                self.close_if_over(i, ended_at);
            }
        }
    }

    /// Runtime `i`'s incident has other causes now: the diagnostics decide
    /// again with the stuck workers and the probe as they are at `now`.
    fn causes_changed(&mut self, i: usize, now: u64) {
        let stuck = self.stuck_workers(i, now);
        let probe = self.loops[i]
            .incident
            .as_ref()
            .is_some_and(|c| c.probe_stalled);
        let outcome = guard_diag(
            &mut self.diag,
            &self.metrics,
            &mut self.internal_errors,
            |d| d.causes_changed(i, &stuck, probe, now),
        );
        self.after_report(&outcome);
    }

    /// The worker-stuck limit as words, for messages.
    fn worker_limit_text(&self) -> String {
        match self.shared.settings.worker_stuck_limit {
            Some(l) => human(l),
            None => "ever (worker_stuck_is_stall is off)".into(),
        }
    }

    /// The stuck workers of runtime `i` as of `now`.
    fn stuck_workers(&self, i: usize, now: u64) -> Vec<crate::hooks::StuckWorker> {
        self.loops[i]
            .workers
            .as_ref()
            .map(|ww| ww.stuck_workers(now))
            .unwrap_or_default()
    }

    /// Opens an incident on runtime `i`: counted, said, diagnosed, passed
    /// to the callback.
    fn open(&mut self, i: usize, opened_by: OpenedBy, started_at: u64, max_lag: u64, now: u64) {
        let probe_stalled = opened_by == OpenedBy::Probe;
        self.loops[i].incident = Some(Incident {
            started_at,
            opened_by: opened_by.clone(),
            probe_stalled,
            withholds: false,
            coalesced: false,
            report: None,
        });
        self.metrics.stall_started(i);
        self.update_withholding(i, now);
        self.send_status(now);
        // Say it (status(), /healthz) before the diagnostics' work.
        self.publish(now);
        let stuck_workers = self.stuck_workers(i, now);
        let monitor_gap = self.monitor_gap_since(started_at, now);
        let deadline = self.deadline();
        let prior_sample = if probe_stalled {
            self.hiccup_grew_into_stall(
                i,
                started_at,
                max_lag.max(now.saturating_sub(started_at)),
                now,
            )
        } else {
            None
        };
        let (hiccups, top_blockers) = {
            let log = self.hiccup_log.lock();
            (log.recent_of(&self.loops[i].name), log.top_blockers(i, 10))
        };
        let w = &self.loops[i];
        let poller = if probe_stalled {
            w.probe.poller_tid()
        } else {
            stuck_workers
                .iter()
                .flat_map(|s| s.tids.first())
                .copied()
                .next()
        };
        let ctx = IncidentContext {
            idx: i,
            runtime: &w.name,
            started_at,
            detected_at: now,
            max_lag,
            now,
            stuck_workers,
            probe_stalled,
            timeline: &w.tracker.timeline,
            poller,
            hook_threads: w
                .hooks
                .as_ref()
                .map(|h| h.worker_threads())
                .unwrap_or_default(),
            hooks: w.hooks.clone(),
            monitor_gap,
            handle: &w.handle,
            deadline,
            prior_sample,
            prior_from_hiccup: false,
            hiccups,
            top_blockers,
        };
        let outcome = guard_diag(
            &mut self.diag,
            &self.metrics,
            &mut self.internal_errors,
            |d| d.incident_started(ctx),
        );
        if let Some(kind) = outcome.verdict {
            self.metrics.stall_classified(i, kind.as_str());
        }
        self.after_report(&outcome);
        if let Some(incident) = &mut self.loops[i].incident {
            incident.coalesced = outcome.coalesced;
            incident.report = outcome.report.clone();
        }
        let runtime = self.loops[i].name.clone();
        let event = match opened_by {
            OpenedBy::Probe => StallEvent::Started {
                runtime,
                lag: us(now.saturating_sub(started_at).max(max_lag)),
                threshold: us(self.threshold),
                detected_at: SystemTime::now() - us(clock::now_us().saturating_sub(now)),
                report: outcome.report,
            },
            OpenedBy::Worker { worker, task } => StallEvent::WorkerStuck {
                runtime,
                worker,
                stuck_for: us(now.saturating_sub(started_at)),
                task,
                report: outcome.report,
            },
        };
        self.callback(event);
    }

    /// Closes runtime `i`'s incident when no cause is left: the report
    /// says recovered, the callback gets the end of its pair.
    fn close_if_over(&mut self, i: usize, ended_at: u64) {
        let over = self.loops[i].incident.as_ref().is_some_and(|c| {
            !c.probe_stalled
                && !self.loops[i]
                    .workers
                    .as_ref()
                    .is_some_and(WorkerWatch::any_stuck)
        });
        if !over {
            return;
        }
        let Some(incident) = self.loops[i].incident.take() else {
            return;
        };
        let name = self.loops[i].name.clone();
        let duration = ended_at.saturating_sub(incident.started_at);
        self.metrics.stall_ended(i, us(duration));
        let outcome = guard_diag(
            &mut self.diag,
            &self.metrics,
            &mut self.internal_errors,
            |d| d.incident_ended(i, duration, ended_at),
        );
        let report = outcome.report.or(incident.report);
        let event = match incident.opened_by {
            OpenedBy::Probe => {
                tracing::warn!(
                    runtime = %name,
                    duration = %human(us(duration)),
                    "event loop {name:?} recovered after {}",
                    human(us(duration))
                );
                StallEvent::Ended {
                    runtime: name,
                    duration: us(duration),
                    report,
                }
            }
            OpenedBy::Worker { worker, .. } => StallEvent::WorkerRecovered {
                runtime: name,
                worker,
                stuck_for: us(duration),
                report,
            },
        };
        self.callback(event);
    }

    /// Whether runtime `i`'s incident withholds pings at `now`: its probe
    /// is stalled, or a worker has been stuck longer than the limit, or it
    /// withheld them already and a worker is still stuck. Keeps
    /// `loopwatch_stalled` in step and says when it starts withholding.
    pub(super) fn update_withholding(&mut self, i: usize, now: u64) {
        let limit = self.shared.settings.worker_stuck_limit.map(micros);
        let w = &self.loops[i];
        let Some(incident) = &w.incident else {
            return;
        };
        let worker_over_limit = match (limit, &w.workers) {
            (Some(limit), Some(ww)) => ww
                .stuck()
                .find(|s| now.saturating_sub(s.stuck_since) > limit)
                .map(|s| s.worker),
            _ => None,
        };
        // Once withheld, pings stay withheld until every cause has ended: a
        // probe that answers again while a worker is still stuck has not
        // ended the stall.
        let still_stuck =
            incident.withholds && w.workers.as_ref().is_some_and(WorkerWatch::any_stuck);
        let withholds = incident.probe_stalled || worker_over_limit.is_some() || still_stuck;
        if withholds == incident.withholds {
            return;
        }
        if let (Some(worker), false) = (worker_over_limit, incident.probe_stalled) {
            tracing::error!(
                runtime = %w.name,
                worker,
                "worker {worker} of event loop {:?} has been stuck longer than the worker-stuck \
                 limit ({}): loopwatch withholds watchdog pings now",
                w.name,
                self.worker_limit_text()
            );
        }
        if let Some(incident) = &mut self.loops[i].incident {
            incident.withholds = withholds;
        }
        self.metrics.set_stalled(i, withholds);
    }

    /// How long the monitor itself was not scheduled since `from`.
    fn monitor_gap_since(&self, from: u64, now: u64) -> Duration {
        let gap: u64 = self
            .gaps
            .iter()
            .map(|g| g.to.min(now).saturating_sub(g.from.max(from)))
            .sum();
        us(gap)
    }

    pub(super) fn callback(&mut self, event: StallEvent) {
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
