//! The metric families: what loopwatch exports, in the Prometheus data model.
//!
//! This module owns every `loopwatch_*` family's definition: its name, help
//! text, type, label names, histogram buckets, and the bounded sets of label
//! values ([`VERDICTS`], [`PingResult`], [`REPORT_RESULTS`],
//! [`JOURNAL_RESULTS`]). It creates the families with the series whose
//! absence would mislead (a ping, report or journal result at zero) and the
//! threshold set.
//!
//! It does not register anything, resolve per-runtime children or read a
//! runtime: registration as one unit and the scrape-time tokio figures are
//! the collector's ([`super::collector`]), and updating the series is
//! [`Metrics`](super::Metrics)' job.

use std::time::Duration;

use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts,
};

/// Buckets of `loopwatch_probe_lag_seconds`: 100 µs to 30 s.
pub(crate) const PROBE_LAG_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Buckets of `loopwatch_stall_duration_seconds`: 100 ms to 5 min.
pub(crate) const STALL_DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of `loopwatch_capture_duration_seconds`: 500 µs to 5 s.
pub(crate) const CAPTURE_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Buckets of `loopwatch_hiccup_duration_seconds`: 1 ms to 10 s.
pub(crate) const HICCUP_DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The values of the `verdict` label of `loopwatch_stalls_by_verdict_total`.
///
/// A verdict outside this list is counted as `unknown`, so that the label's
/// cardinality stays bounded whatever the diagnostics say.
pub(crate) const VERDICTS: [&str; 7] = [
    "cpu-bound",
    "blocked-syscall",
    "lock-wait",
    "process-paused",
    "overload",
    "worker-stuck",
    "unknown",
];

/// The index of `unknown` in [`VERDICTS`].
pub(super) const UNKNOWN_VERDICT: usize = 6;

/// The values of the `result` label of `loopwatch_reports_total`.
pub(crate) const REPORT_RESULTS: [&str; 3] = ["written", "failed", "dropped"];

/// The values of the `result` label of `loopwatch_journal_entries_total`.
pub(crate) const JOURNAL_RESULTS: [&str; 2] = ["sent", "failed"];

/// The values of the `result` label of
/// `loopwatch_exporter_connections_total`.
pub(crate) const EXPORTER_RESULTS: [&str; 5] = [
    "accepted",
    "evicted",
    "refused",
    "head_timeout",
    "accept_error",
];

/// The values of the `part` label of `loopwatch_internal_errors_total`:
/// which part of loopwatch itself failed.
pub(crate) const INTERNAL_PARTS: [&str; 3] = ["monitor", "diagnostics", "exporter"];

/// The outcome of one watchdog ping opportunity, the `result` label of
/// `loopwatch_watchdog_pings_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingResult {
    /// `WATCHDOG=1` went out.
    Sent,
    /// A ping was due but held back because a runtime was stalled.
    Suppressed,
    /// A ping was due, but sending it failed.
    Failed,
}

impl PingResult {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PingResult::Sent => "sent",
            PingResult::Suppressed => "suppressed",
            PingResult::Failed => "failed",
        }
    }
}

/// Every family loopwatch exports, unregistered.
///
/// The collector registers them as one unit; [`Metrics`](super::Metrics)
/// resolves the children it updates from them.
pub(super) struct Families {
    pub(super) probe_lag: HistogramVec,
    pub(super) lag: GaugeVec,
    pub(super) threshold: Gauge,
    pub(super) stalled: IntGaugeVec,
    pub(super) stalls: IntCounterVec,
    pub(super) stalls_coalesced: IntCounterVec,
    pub(super) stall_duration: HistogramVec,
    pub(super) stalls_by_verdict: IntCounterVec,
    pub(super) pings: IntCounterVec,
    /// Exported only while set (see the collector).
    pub(super) deadline: Gauge,
    pub(super) reports: IntCounterVec,
    pub(super) journal_entries: IntCounterVec,
    pub(super) capture_duration: Histogram,
    pub(super) worker_stuck: IntGaugeVec,
    pub(super) internal_errors: IntCounterVec,
    pub(super) hiccups: IntCounterVec,
    pub(super) hiccup_duration: HistogramVec,
    pub(super) hiccup_seconds: CounterVec,
    pub(super) hiccup_captures_skipped: IntCounterVec,
    pub(super) warn_threshold: Gauge,
    pub(super) exporter_connections: IntCounterVec,
    pub(super) rt_workers: IntGaugeVec,
    pub(super) rt_alive_tasks: IntGaugeVec,
    pub(super) rt_global_queue_depth: IntGaugeVec,
    pub(super) rt_busy: CounterVec,
    pub(super) rt_park: IntCounterVec,
    pub(super) rt_park_unpark: IntCounterVec,
}

impl Families {
    /// Creates every family, with `threshold` set and every ping and report
    /// result at zero.
    pub(super) fn new(threshold: Duration) -> Result<Families, prometheus::Error> {
        let rt = &["runtime"];
        let rt_worker = &["runtime", "worker"];
        let families = Families {
            probe_lag: HistogramVec::new(
                HistogramOpts::new(
                    "loopwatch_probe_lag_seconds",
                    "Scheduling lag of the event loop: time from the monitor waking the probe task \
                     to the runtime polling it, one observation per answered probe.",
                )
                .buckets(PROBE_LAG_BUCKETS.to_vec()),
                rt,
            )?,
            lag: GaugeVec::new(
                Opts::new(
                    "loopwatch_lag_seconds",
                    "Current lag of the event loop: the last answered probe's lag, or, while a \
                     probe is unanswered, how long it has waited (grows during a stall).",
                ),
                rt,
            )?,
            threshold: Gauge::with_opts(Opts::new(
                "loopwatch_stall_threshold_seconds",
                "Lag above which an event loop is declared stalled and watchdog pings stop.",
            ))?,
            stalled: IntGaugeVec::new(
                Opts::new(
                    "loopwatch_stalled",
                    "1 from when loopwatch starts withholding watchdog pings for this runtime \
                     (its probe stalled, or a worker stuck longer than the worker-stuck limit) \
                     until every cause of that stall has ended (probe and stuck workers); else 0.",
                ),
                rt,
            )?,
            stalls: IntCounterVec::new(
                Opts::new(
                    "loopwatch_stalls_total",
                    "Stalls detected since start (counted when the stall is declared).",
                ),
                rt,
            )?,
            stalls_coalesced: IntCounterVec::new(
                Opts::new(
                    "loopwatch_stalls_coalesced_total",
                    "Stalls (also counted in loopwatch_stalls_total) that got no report of their \
                     own: they looked like a recent one, or came past the hourly report budget, and \
                     were listed in an earlier report's occurrences.",
                ),
                rt,
            )?,
            stall_duration: HistogramVec::new(
                HistogramOpts::new(
                    "loopwatch_stall_duration_seconds",
                    "Measured duration of stalls that ended, from the unanswered wake to the \
                     probe's answer.",
                )
                .buckets(STALL_DURATION_BUCKETS.to_vec()),
                rt,
            )?,
            stalls_by_verdict: IntCounterVec::new(
                Opts::new(
                    "loopwatch_stalls_by_verdict_total",
                    "Stalls by the verdict of their stall report (cpu-bound, blocked-syscall, \
                     lock-wait, process-paused, overload, worker-stuck, unknown).",
                ),
                &["runtime", "verdict"],
            )?,
            pings: IntCounterVec::new(
                Opts::new(
                    "loopwatch_watchdog_pings_total",
                    "systemd watchdog pings (WATCHDOG=1) due, by result: sent, suppressed \
                     because an event loop was stalled, or failed to send.",
                ),
                &["result"],
            )?,
            deadline: Gauge::with_opts(Opts::new(
                "loopwatch_watchdog_deadline_seconds",
                "Seconds left until systemd's earliest watchdog deadline (last ping plus \
                 WatchdogSec=); present only when systemd's watchdog applies to this process.",
            ))?,
            reports: IntCounterVec::new(
                Opts::new(
                    "loopwatch_reports_total",
                    "Stall report versions, by result: written to disk, failed to write, or \
                     dropped by the hourly byte cap.",
                ),
                &["result"],
            )?,
            journal_entries: IntCounterVec::new(
                Opts::new(
                    "loopwatch_journal_entries_total",
                    "Structured journal entries (stall, recovery, storm) under systemd, by \
                     result: sent to journald, or failed (journald stopped, busy or refusing).",
                ),
                &["result"],
            )?,
            capture_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "loopwatch_capture_duration_seconds",
                    "Time taken to capture the stacks of every thread for a stall report.",
                )
                .buckets(CAPTURE_DURATION_BUCKETS.to_vec()),
            )?,
            worker_stuck: IntGaugeVec::new(
                Opts::new(
                    "loopwatch_worker_stuck",
                    "1 while a runtime worker thread is stuck in one task poll beyond the \
                     threshold, else 0.",
                ),
                rt_worker,
            )?,
            internal_errors: IntCounterVec::new(
                Opts::new(
                    "loopwatch_internal_errors_total",
                    "Failures of loopwatch itself (a panic caught in the monitor thread, a \
                     diagnostics step or the exporter), by part. Any increase is a loopwatch bug.",
                ),
                &["part"],
            )?,
            hiccups: IntCounterVec::new(
                Opts::new(
                    "loopwatch_hiccups_total",
                    "Blocks of the event loop above the warn threshold but below the stall \
                     threshold (hiccups).",
                ),
                rt,
            )?,
            hiccup_duration: HistogramVec::new(
                HistogramOpts::new(
                    "loopwatch_hiccup_duration_seconds",
                    "Duration of hiccups: how long the probe waited, for blocks above the warn \
                     threshold.",
                )
                .buckets(HICCUP_DURATION_BUCKETS.to_vec()),
                rt,
            )?,
            hiccup_seconds: CounterVec::new(
                Opts::new(
                    "loopwatch_hiccup_seconds_total",
                    "Event-loop time blocked in hiccups, by culprit function (at most 32 distinct \
                     per runtime; the rest as \"other\", blocks caught after they ended as \
                     \"unknown\").",
                ),
                &["runtime", "culprit"],
            )?,
            hiccup_captures_skipped: IntCounterVec::new(
                Opts::new(
                    "loopwatch_hiccup_captures_skipped_total",
                    "Hiccups recorded without a stack capture because of the per-runtime capture \
                     rate limit.",
                ),
                rt,
            )?,
            warn_threshold: Gauge::with_opts(Opts::new(
                "loopwatch_warn_threshold_seconds",
                "Lag above which a block of the event loop is recorded as a hiccup (0: hiccups \
                 off).",
            ))?,
            exporter_connections: IntCounterVec::new(
                Opts::new(
                    "loopwatch_exporter_connections_total",
                    "Connections to loopwatch's /metrics and /healthz exporter, by what became \
                     of them: accepted; evicted (idle, to make room at the connection cap); \
                     refused (every slot busy inside a request); head_timeout (no complete \
                     request head in time); accept_error (accept failed, e.g. EMFILE).",
                ),
                &["result"],
            )?,
            rt_workers: IntGaugeVec::new(
                Opts::new(
                    "loopwatch_runtime_workers",
                    "Worker threads of the tokio runtime.",
                ),
                rt,
            )?,
            rt_alive_tasks: IntGaugeVec::new(
                Opts::new(
                    "loopwatch_runtime_alive_tasks",
                    "Tasks alive in the tokio runtime (spawned and not yet finished).",
                ),
                rt,
            )?,
            rt_global_queue_depth: IntGaugeVec::new(
                Opts::new(
                    "loopwatch_runtime_global_queue_depth",
                    "Tasks waiting in the tokio runtime's global (injection) queue.",
                ),
                rt,
            )?,
            rt_busy: CounterVec::new(
                Opts::new(
                    "loopwatch_runtime_worker_busy_seconds_total",
                    "Time the tokio worker thread spent busy (not parked); its rate is the \
                     worker's busy ratio.",
                ),
                rt_worker,
            )?,
            rt_park: IntCounterVec::new(
                Opts::new(
                    "loopwatch_runtime_worker_park_total",
                    "Times the tokio worker thread parked (went idle).",
                ),
                rt_worker,
            )?,
            rt_park_unpark: IntCounterVec::new(
                Opts::new(
                    "loopwatch_runtime_worker_park_unpark_total",
                    "Times the tokio worker thread parked or unparked; an odd value means the \
                     worker is awake.",
                ),
                rt_worker,
            )?,
        };
        families.threshold.set(threshold.as_secs_f64());
        for result in [PingResult::Sent, PingResult::Suppressed, PingResult::Failed] {
            families.pings.with_label_values(&[result.as_str()]);
        }
        for result in REPORT_RESULTS {
            families.reports.with_label_values(&[result]);
        }
        for result in JOURNAL_RESULTS {
            families.journal_entries.with_label_values(&[result]);
        }
        for part in INTERNAL_PARTS {
            families.internal_errors.with_label_values(&[part]);
        }
        Ok(families)
    }
}
