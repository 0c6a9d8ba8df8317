//! The [`Metrics`] handle: what the monitor records into the families.
//!
//! This module owns the hot-path side of loopwatch's metrics. [`Metrics::new`]
//! creates the families, resolves once the children each update touches
//! (per runtime, per verdict, per worker, per result) and registers the
//! collector; after that every update is a plain atomic operation on a
//! child: no label lookup, no allocation, no lock. Dropping [`Metrics`]
//! unregisters the collector. [`Metrics::encode`] renders a registry for a
//! scrape.
//!
//! It does not define the families (names, help, buckets, label values:
//! [`super::families`]) and does not read tokio's runtime metrics (the
//! collector does, at scrape time: [`super::collector`]).

use std::time::Duration;

use prometheus::{Gauge, Histogram, IntCounter, IntGauge, Registry, TextEncoder};
use tokio::runtime::Handle;

use super::collector::LoopwatchCollector;
use super::families::{
    Families, PingResult, INTERNAL_PARTS, JOURNAL_RESULTS, REPORT_RESULTS, UNKNOWN_VERDICT,
    VERDICTS,
};
use crate::error::Error;

/// The children of one watched runtime, resolved once.
struct RuntimeChildren {
    /// The runtime's name, for labels resolved later (hiccup culprits).
    name: String,
    probe_lag: Histogram,
    lag: Gauge,
    stalled: IntGauge,
    stalls: IntCounter,
    stalls_coalesced: IntCounter,
    stall_duration: Histogram,
    hiccups: IntCounter,
    hiccup_duration: Histogram,
    hiccup_captures_skipped: IntCounter,
    /// Indexed like [`VERDICTS`].
    by_verdict: Vec<IntCounter>,
    /// Indexed by worker number.
    worker_stuck: Vec<IntGauge>,
}

/// loopwatch's metrics, registered in one registry.
///
/// Runtimes are addressed by their index in the `runtimes` slice given to
/// [`Metrics::new`] (the order of `watch()` calls); an index out of range is
/// ignored. Dropping the value unregisters every family.
pub(crate) struct Metrics {
    /// Also registered in `registry`.
    collector: LoopwatchCollector,
    runtimes: Vec<RuntimeChildren>,
    pings: [IntCounter; 3],
    /// Indexed like [`REPORT_RESULTS`].
    reports: Vec<IntCounter>,
    /// Indexed like [`JOURNAL_RESULTS`].
    journal_entries: Vec<IntCounter>,
    /// Indexed like [`INTERNAL_PARTS`].
    internal_errors: Vec<IntCounter>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("runtimes", &self.runtimes.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates every family, with the children of each runtime at zero, and
    /// registers them in `registry` as one collector.
    ///
    /// Fails with [`Error::Metrics`] when a family of the same name is
    /// already registered (for example by another watchdog still running
    /// with the same registry); the registry is then left unchanged.
    pub(crate) fn new(
        registry: &Registry,
        runtimes: &[(String, Handle)],
        threshold: Duration,
    ) -> Result<Metrics, Error> {
        let families = Families::new(threshold)?;
        let mut children = Vec::with_capacity(runtimes.len());
        for (name, handle) in runtimes {
            let rt = &[name.as_str()];
            let workers = handle.metrics().num_workers();
            let worker_labels: Vec<String> = (0..workers).map(|w| w.to_string()).collect();
            children.push(RuntimeChildren {
                name: name.clone(),
                probe_lag: families.probe_lag.with_label_values(rt),
                lag: families.lag.with_label_values(rt),
                stalled: families.stalled.with_label_values(rt),
                stalls: families.stalls.with_label_values(rt),
                stalls_coalesced: families.stalls_coalesced.with_label_values(rt),
                stall_duration: families.stall_duration.with_label_values(rt),
                hiccups: families.hiccups.with_label_values(rt),
                hiccup_duration: families.hiccup_duration.with_label_values(rt),
                hiccup_captures_skipped: families.hiccup_captures_skipped.with_label_values(rt),
                by_verdict: VERDICTS
                    .iter()
                    .map(|v| families.stalls_by_verdict.with_label_values(&[name, *v]))
                    .collect(),
                worker_stuck: worker_labels
                    .iter()
                    .map(|w| families.worker_stuck.with_label_values(&[name, w]))
                    .collect(),
            });
        }
        let pings = [PingResult::Sent, PingResult::Suppressed, PingResult::Failed]
            .map(|r| families.pings.with_label_values(&[r.as_str()]));
        let reports = REPORT_RESULTS
            .iter()
            .map(|r| families.reports.with_label_values(&[*r]))
            .collect();
        let journal_entries = JOURNAL_RESULTS
            .iter()
            .map(|r| families.journal_entries.with_label_values(&[*r]))
            .collect();
        let internal_errors = INTERNAL_PARTS
            .iter()
            .map(|p| families.internal_errors.with_label_values(&[*p]))
            .collect();
        let collector = LoopwatchCollector::new(families, runtimes);
        registry.register(Box::new(collector.clone()))?;
        Ok(Metrics {
            collector,
            runtimes: children,
            pings,
            reports,
            journal_entries,
            internal_errors,
            registry: registry.clone(),
        })
    }

    /// Records the lag of one answered probe (the histogram).
    pub(crate) fn observe_probe(&self, runtime: usize, lag: Duration) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.probe_lag.observe(lag.as_secs_f64());
        }
    }

    /// Sets the current lag (the gauge), answered or still waiting.
    pub(crate) fn set_lag(&self, runtime: usize, lag: Duration) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.lag.set(lag.as_secs_f64());
        }
    }

    /// Sets `loopwatch_stalled`. [`stall_started`](Self::stall_started) and
    /// [`stall_ended`](Self::stall_ended) already do; this is for other
    /// changes (a runtime that is gone is not stalled).
    pub(crate) fn set_stalled(&self, runtime: usize, stalled: bool) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.stalled.set(i64::from(stalled));
        }
    }

    /// A stall (an incident, whatever its causes) was declared: counts it.
    pub(crate) fn stall_started(&self, runtime: usize) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.stalls.inc();
        }
    }

    /// A stall was coalesced into an earlier report.
    pub(crate) fn stall_coalesced(&self, runtime: usize) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.stalls_coalesced.inc();
        }
    }

    /// The stall's verdict is known: counts it once under that verdict.
    ///
    /// Call it once per stall, when the first report gives a verdict (not at
    /// the end of the stall: a stall that ends with the process killed by
    /// systemd must have been counted by then). A verdict outside
    /// [`VERDICTS`] is counted as `unknown`.
    pub(crate) fn stall_classified(&self, runtime: usize, verdict: &str) {
        let Some(rt) = self.runtimes.get(runtime) else {
            return;
        };
        let i = VERDICTS
            .iter()
            .position(|v| *v == verdict)
            .unwrap_or_else(|| {
                tracing::debug!(
                    verdict,
                    "loopwatch: verdict not in the metric's list, counted as unknown"
                );
                UNKNOWN_VERDICT
            });
        if let Some(c) = rt.by_verdict.get(i) {
            c.inc();
        }
    }

    /// A stall ended after `duration`: records it and sets `loopwatch_stalled` to 0.
    pub(crate) fn stall_ended(&self, runtime: usize, duration: Duration) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.stall_duration.observe(duration.as_secs_f64());
            rt.stalled.set(0);
        }
    }

    /// Counts one due watchdog ping by its result.
    pub(crate) fn ping(&self, result: PingResult) {
        let i = match result {
            PingResult::Sent => 0,
            PingResult::Suppressed => 1,
            PingResult::Failed => 2,
        };
        self.pings[i].inc();
    }

    /// Sets the time left until systemd's earliest deadline; `None` (no
    /// systemd watchdog for this process) removes the series from scrapes.
    pub(crate) fn set_deadline_left(&self, left: Option<Duration>) {
        match left {
            Some(left) => {
                self.collector.families().deadline.set(left.as_secs_f64());
                self.collector.set_deadline_present(true);
            }
            None => self.collector.set_deadline_present(false),
        }
    }

    /// Counts one stall report version by its result, one of
    /// [`REPORT_RESULTS`] (anything else is ignored).
    pub(crate) fn report(&self, result: &str) {
        if let Some(i) = REPORT_RESULTS.iter().position(|r| *r == result) {
            self.reports[i].inc();
        }
    }

    /// Counts one journal entry by its result, one of [`JOURNAL_RESULTS`]
    /// (anything else is ignored).
    pub(crate) fn journal_entry(&self, result: &str) {
        if let Some(i) = JOURNAL_RESULTS.iter().position(|r| *r == result) {
            self.journal_entries[i].inc();
        }
    }

    /// Counts one failure of loopwatch itself in `part` (one of
    /// [`INTERNAL_PARTS`]; anything else is counted as `monitor`).
    pub(crate) fn internal_error(&self, part: &str) {
        let i = INTERNAL_PARTS.iter().position(|p| *p == part).unwrap_or(0);
        if let Some(c) = self.internal_errors.get(i) {
            c.inc();
        }
    }

    /// Records one hiccup of `duration` blamed on `culprit` (a label the
    /// hiccup log already capped).
    pub(crate) fn hiccup(&self, runtime: usize, duration: Duration, culprit: &str) {
        let Some(rt) = self.runtimes.get(runtime) else {
            return;
        };
        rt.hiccups.inc();
        rt.hiccup_duration.observe(duration.as_secs_f64());
        self.collector
            .families()
            .hiccup_seconds
            .with_label_values(&[rt.name.as_str(), culprit])
            .inc_by(duration.as_secs_f64());
    }

    /// A hiccup went without a capture (rate limit).
    pub(crate) fn hiccup_capture_skipped(&self, runtime: usize) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.hiccup_captures_skipped.inc();
        }
    }

    /// Exports the exporter's connection totals, read from `source` at
    /// every scrape (indexed accepted, evicted, refused, head timeout,
    /// accept error).
    pub(crate) fn set_exporter_source(&self, source: super::collector::ExporterSource) {
        self.collector.set_exporter_source(source);
    }

    /// Sets the warn threshold gauge (zero: hiccups off).
    pub(crate) fn set_warn_threshold(&self, warn: Option<Duration>) {
        self.collector
            .families()
            .warn_threshold
            .set(warn.map_or(0.0, |w| w.as_secs_f64()));
    }

    /// Records how long one stack capture took.
    pub(crate) fn capture_took(&self, d: Duration) {
        self.collector
            .families()
            .capture_duration
            .observe(d.as_secs_f64());
    }

    /// Sets `loopwatch_worker_stuck` for one worker of one runtime.
    pub(crate) fn set_worker_stuck(&self, runtime: usize, worker: usize, stuck: bool) {
        let Some(rt) = self.runtimes.get(runtime) else {
            return;
        };
        match rt.worker_stuck.get(worker) {
            Some(g) => g.set(i64::from(stuck)),
            None => tracing::debug!(
                runtime,
                worker,
                "loopwatch: worker index beyond the runtime's workers, not exported"
            ),
        }
    }

    /// Renders every family of `registry` (loopwatch's and the
    /// application's) in Prometheus' text format, version 0.0.4.
    ///
    /// A family that cannot be encoded is left out and logged; the others
    /// are still rendered.
    pub(crate) fn encode(registry: &Registry) -> String {
        let encoder = TextEncoder::new();
        let mut out = String::with_capacity(16 * 1024);
        for family in registry.gather() {
            let before = out.len();
            if let Err(e) = encoder.encode_utf8(std::slice::from_ref(&family), &mut out) {
                out.truncate(before);
                tracing::warn!(family = family.name(), error = %e, "loopwatch: metric family left out of the scrape");
            }
        }
        out
    }
}

impl Drop for Metrics {
    fn drop(&mut self) {
        if let Err(e) = self.registry.unregister(Box::new(self.collector.clone())) {
            tracing::debug!(error = %e, "loopwatch: metrics were already unregistered");
        }
    }
}
