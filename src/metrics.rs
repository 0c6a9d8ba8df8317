//! Prometheus metrics: what loopwatch measures, in the Prometheus data model.
//!
//! This module owns every metric family loopwatch exports (all named
//! `loopwatch_*`) and their registration in the application's
//! [`prometheus::Registry`]. The monitor thread feeds them through
//! [`Metrics`]; the exporter (or the application's own `/metrics` handler)
//! reads them with [`Metrics::encode`] or [`Registry::gather`].
//!
//! Everything is registered as **one** collector, so registration is
//! all-or-nothing (a name clash leaves the registry untouched) and dropping
//! [`Metrics`] unregisters the lot, which lets a stopped watchdog be started
//! again with the same registry.
//!
//! Updates on the monitor's hot path are plain atomic operations on children
//! resolved once in [`Metrics::new`]: no label lookup, no allocation, no lock.
//! The tokio runtime's own metrics are read from
//! [`tokio::runtime::RuntimeMetrics`] (atomics too) at scrape time, so a
//! scrape sees fresh values even while the monitor is busy, and never waits
//! on a watched runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::runtime::Handle;

use crate::error::Error;

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
const UNKNOWN_VERDICT: usize = 6;

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

/// The children of one watched runtime, resolved once.
struct RuntimeChildren {
    probe_lag: Histogram,
    lag: Gauge,
    stalled: IntGauge,
    stalls: IntCounter,
    stall_duration: Histogram,
    /// Indexed like [`VERDICTS`].
    by_verdict: Vec<IntCounter>,
    /// Indexed by worker number.
    worker_stuck: Vec<IntGauge>,
}

/// One worker's cumulative tokio counters, as exported.
struct WorkerChildren {
    busy: Counter,
    park: IntCounter,
    park_unpark: IntCounter,
}

/// One runtime's `RuntimeMetrics`, as exported.
struct TokioChildren {
    handle: Handle,
    workers: IntGauge,
    alive_tasks: IntGauge,
    global_queue_depth: IntGauge,
    per_worker: Vec<WorkerChildren>,
}

/// Every family, shared by [`Metrics`] and the registered collector.
struct Families {
    probe_lag: HistogramVec,
    lag: GaugeVec,
    threshold: Gauge,
    stalled: IntGaugeVec,
    stalls: IntCounterVec,
    stall_duration: HistogramVec,
    stalls_by_verdict: IntCounterVec,
    pings: IntCounterVec,
    deadline: Gauge,
    /// `loopwatch_watchdog_deadline_seconds` is exported only while set.
    deadline_present: AtomicBool,
    reports: IntCounterVec,
    capture_duration: Histogram,
    worker_stuck: IntGaugeVec,
    rt_workers: IntGaugeVec,
    rt_alive_tasks: IntGaugeVec,
    rt_global_queue_depth: IntGaugeVec,
    rt_busy: CounterVec,
    rt_park: IntCounterVec,
    rt_park_unpark: IntCounterVec,
    /// Refreshed (and read) under this lock at scrape time, so that two
    /// concurrent scrapes never interleave a counter's reset and set.
    tokio: Mutex<Vec<TokioChildren>>,
}

impl Families {
    fn new(threshold: Duration) -> Result<Families, prometheus::Error> {
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
                    "1 while the event loop is stalled (lag above the threshold), else 0.",
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
            deadline_present: AtomicBool::new(false),
            reports: IntCounterVec::new(
                Opts::new(
                    "loopwatch_reports_total",
                    "Stall reports, by result: written to disk, or failed to write.",
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
            tokio: Mutex::new(Vec::new()),
        };
        families.threshold.set(threshold.as_secs_f64());
        for result in [PingResult::Sent, PingResult::Suppressed, PingResult::Failed] {
            families.pings.with_label_values(&[result.as_str()]);
        }
        for result in ["written", "failed"] {
            families.reports.with_label_values(&[result]);
        }
        Ok(families)
    }

    /// Copies every runtime's `RuntimeMetrics` into the exported families.
    /// Atomic reads only; never waits on a runtime.
    fn refresh_tokio(tokio: &[TokioChildren]) {
        for rt in tokio {
            let m = rt.handle.metrics();
            rt.workers.set(saturating_i64(m.num_workers()));
            rt.alive_tasks.set(saturating_i64(m.num_alive_tasks()));
            rt.global_queue_depth
                .set(saturating_i64(m.global_queue_depth()));
            #[cfg(target_has_atomic = "64")]
            for (w, c) in rt.per_worker.iter().enumerate().take(m.num_workers()) {
                // Counters have no `set`: reset and add the cumulative value.
                // Both happen under the `tokio` lock, which every reader holds.
                c.busy.reset();
                c.busy.inc_by(m.worker_total_busy_duration(w).as_secs_f64());
                c.park.reset();
                c.park.inc_by(m.worker_park_count(w));
                c.park_unpark.reset();
                c.park_unpark.inc_by(m.worker_park_unpark_count(w));
            }
        }
    }
}

fn saturating_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The collector registered in the application's registry: all of
/// loopwatch's families, the tokio ones refreshed at collection time.
#[derive(Clone)]
struct LoopwatchCollector(Arc<Families>);

impl Collector for LoopwatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        let f = &*self.0;
        let mut d = Vec::with_capacity(19);
        d.extend(f.probe_lag.desc());
        d.extend(f.lag.desc());
        d.extend(f.threshold.desc());
        d.extend(f.stalled.desc());
        d.extend(f.stalls.desc());
        d.extend(f.stall_duration.desc());
        d.extend(f.stalls_by_verdict.desc());
        d.extend(f.pings.desc());
        d.extend(f.deadline.desc());
        d.extend(f.reports.desc());
        d.extend(f.capture_duration.desc());
        d.extend(f.worker_stuck.desc());
        d.extend(f.rt_workers.desc());
        d.extend(f.rt_alive_tasks.desc());
        d.extend(f.rt_global_queue_depth.desc());
        d.extend(f.rt_busy.desc());
        d.extend(f.rt_park.desc());
        d.extend(f.rt_park_unpark.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = &*self.0;
        let mut out = Vec::with_capacity(19);
        out.extend(f.probe_lag.collect());
        out.extend(f.lag.collect());
        out.extend(f.threshold.collect());
        out.extend(f.stalled.collect());
        out.extend(f.stalls.collect());
        out.extend(f.stall_duration.collect());
        out.extend(f.stalls_by_verdict.collect());
        out.extend(f.pings.collect());
        if f.deadline_present.load(Ordering::Acquire) {
            out.extend(f.deadline.collect());
        }
        out.extend(f.reports.collect());
        out.extend(f.capture_duration.collect());
        out.extend(f.worker_stuck.collect());
        {
            let tokio = f.tokio.lock();
            Families::refresh_tokio(&tokio);
            out.extend(f.rt_workers.collect());
            out.extend(f.rt_alive_tasks.collect());
            out.extend(f.rt_global_queue_depth.collect());
            out.extend(f.rt_busy.collect());
            out.extend(f.rt_park.collect());
            out.extend(f.rt_park_unpark.collect());
        }
        out
    }
}

/// loopwatch's metrics, registered in one registry.
///
/// Runtimes are addressed by their index in the `runtimes` slice given to
/// [`Metrics::new`] (the order of `watch()` calls); an index out of range is
/// ignored. Dropping the value unregisters every family.
pub(crate) struct Metrics {
    families: Arc<Families>,
    runtimes: Vec<RuntimeChildren>,
    pings: [IntCounter; 3],
    reports_written: IntCounter,
    reports_failed: IntCounter,
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
        let mut tokio = Vec::with_capacity(runtimes.len());
        for (name, handle) in runtimes {
            let rt = &[name.as_str()];
            let workers = handle.metrics().num_workers();
            let worker_labels: Vec<String> = (0..workers).map(|w| w.to_string()).collect();
            children.push(RuntimeChildren {
                probe_lag: families.probe_lag.with_label_values(rt),
                lag: families.lag.with_label_values(rt),
                stalled: families.stalled.with_label_values(rt),
                stalls: families.stalls.with_label_values(rt),
                stall_duration: families.stall_duration.with_label_values(rt),
                by_verdict: VERDICTS
                    .iter()
                    .map(|v| families.stalls_by_verdict.with_label_values(&[name, *v]))
                    .collect(),
                worker_stuck: worker_labels
                    .iter()
                    .map(|w| families.worker_stuck.with_label_values(&[name, w]))
                    .collect(),
            });
            tokio.push(TokioChildren {
                handle: handle.clone(),
                workers: families.rt_workers.with_label_values(rt),
                alive_tasks: families.rt_alive_tasks.with_label_values(rt),
                global_queue_depth: families.rt_global_queue_depth.with_label_values(rt),
                per_worker: worker_labels
                    .iter()
                    .map(|w| WorkerChildren {
                        busy: families.rt_busy.with_label_values(&[name, w]),
                        park: families.rt_park.with_label_values(&[name, w]),
                        park_unpark: families.rt_park_unpark.with_label_values(&[name, w]),
                    })
                    .collect(),
            });
        }
        *families.tokio.lock() = tokio;
        let pings = [PingResult::Sent, PingResult::Suppressed, PingResult::Failed]
            .map(|r| families.pings.with_label_values(&[r.as_str()]));
        let reports_written = families.reports.with_label_values(&["written"]);
        let reports_failed = families.reports.with_label_values(&["failed"]);
        let families = Arc::new(families);
        registry.register(Box::new(LoopwatchCollector(families.clone())))?;
        Ok(Metrics {
            families,
            runtimes: children,
            pings,
            reports_written,
            reports_failed,
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

    /// A stall was declared: counts it and sets `loopwatch_stalled` to 1.
    pub(crate) fn stall_started(&self, runtime: usize) {
        if let Some(rt) = self.runtimes.get(runtime) {
            rt.stalls.inc();
            rt.stalled.set(1);
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
        let f = &self.families;
        match left {
            Some(left) => {
                f.deadline.set(left.as_secs_f64());
                f.deadline_present.store(true, Ordering::Release);
            }
            None => f.deadline_present.store(false, Ordering::Release),
        }
    }

    /// Counts one stall report, written or failed.
    pub(crate) fn report(&self, written: bool) {
        if written {
            self.reports_written.inc();
        } else {
            self.reports_failed.inc();
        }
    }

    /// Records how long one stack capture took.
    pub(crate) fn capture_took(&self, d: Duration) {
        self.families.capture_duration.observe(d.as_secs_f64());
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
        let collector = LoopwatchCollector(self.families.clone());
        if let Err(e) = self.registry.unregister(Box::new(collector)) {
            tracing::debug!(error = %e, "loopwatch: metrics were already unregistered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn rt(workers: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A registry with every family populated, as after a stall and a report.
    fn populated() -> (Registry, Metrics, tokio::runtime::Runtime) {
        let runtime = rt(2);
        let registry = Registry::new();
        let m = Metrics::new(
            &registry,
            &[("main".to_string(), runtime.handle().clone())],
            Duration::from_millis(500),
        )
        .unwrap();
        m.observe_probe(0, Duration::from_micros(300));
        m.set_lag(0, Duration::from_micros(300));
        m.stall_started(0);
        m.stall_classified(0, "blocked-syscall");
        m.stall_ended(0, Duration::from_millis(1500));
        m.ping(PingResult::Sent);
        m.ping(PingResult::Suppressed);
        m.set_deadline_left(Some(Duration::from_secs(3)));
        m.report(true);
        m.capture_took(Duration::from_millis(4));
        m.set_worker_stuck(0, 1, true);
        (registry, m, runtime)
    }

    const FAMILIES: &[&str] = &[
        "loopwatch_probe_lag_seconds",
        "loopwatch_lag_seconds",
        "loopwatch_stall_threshold_seconds",
        "loopwatch_stalled",
        "loopwatch_stalls_total",
        "loopwatch_stall_duration_seconds",
        "loopwatch_stalls_by_verdict_total",
        "loopwatch_watchdog_pings_total",
        "loopwatch_watchdog_deadline_seconds",
        "loopwatch_reports_total",
        "loopwatch_capture_duration_seconds",
        "loopwatch_worker_stuck",
        "loopwatch_runtime_workers",
        "loopwatch_runtime_alive_tasks",
        "loopwatch_runtime_global_queue_depth",
        "loopwatch_runtime_worker_busy_seconds_total",
        "loopwatch_runtime_worker_park_total",
        "loopwatch_runtime_worker_park_unpark_total",
    ];

    #[test]
    fn every_family_is_in_the_text() {
        let (registry, _m, _rt) = populated();
        let text = Metrics::encode(&registry);
        for f in FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {f} ")),
                "{f} missing from:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {f} ")), "{f} has no help");
        }
        assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(0.5));
        assert_eq!(
            value(&text, r#"loopwatch_stalls_total{runtime="main"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"loopwatch_stalled{runtime="main"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"loopwatch_stalls_by_verdict_total{runtime="main",verdict="blocked-syscall"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"loopwatch_worker_stuck{runtime="main",worker="1"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "loopwatch_watchdog_deadline_seconds"),
            Some(3.0)
        );
    }

    #[test]
    fn counters_with_a_result_start_at_zero() {
        let runtime = rt(1);
        let registry = Registry::new();
        let _m = Metrics::new(
            &registry,
            &[("main".to_string(), runtime.handle().clone())],
            Duration::from_secs(1),
        )
        .unwrap();
        let text = Metrics::encode(&registry);
        for series in [
            r#"loopwatch_watchdog_pings_total{result="sent"}"#,
            r#"loopwatch_watchdog_pings_total{result="suppressed"}"#,
            r#"loopwatch_watchdog_pings_total{result="failed"}"#,
            r#"loopwatch_reports_total{result="written"}"#,
            r#"loopwatch_reports_total{result="failed"}"#,
            r#"loopwatch_stalls_total{runtime="main"}"#,
            r#"loopwatch_stalled{runtime="main"}"#,
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} in:\n{text}");
        }
        for v in VERDICTS {
            let s = format!(r#"loopwatch_stalls_by_verdict_total{{runtime="main",verdict="{v}"}}"#);
            assert_eq!(value(&text, &s), Some(0.0), "{s}");
        }
        // No systemd watchdog: no deadline series.
        assert!(!text.contains("loopwatch_watchdog_deadline_seconds "));
    }

    #[test]
    fn probe_lag_histogram_counts_into_the_right_bucket() {
        let (registry, m, _rt) = populated();
        m.observe_probe(0, Duration::from_millis(3));
        let text = Metrics::encode(&registry);
        let b = |le: &str| {
            value(
                &text,
                &format!(r#"loopwatch_probe_lag_seconds_bucket{{runtime="main",le="{le}"}}"#),
            )
        };
        assert_eq!(b("0.0001"), Some(0.0));
        assert_eq!(b("0.0005"), Some(1.0)); // the 300 µs probe
        assert_eq!(b("0.0025"), Some(1.0));
        assert_eq!(b("0.005"), Some(2.0)); // and the 3 ms one
        assert_eq!(b("30"), Some(2.0));
        assert_eq!(b("+Inf"), Some(2.0));
        assert_eq!(
            value(
                &text,
                r#"loopwatch_probe_lag_seconds_count{runtime="main"}"#
            ),
            Some(2.0)
        );
        let sum = value(&text, r#"loopwatch_probe_lag_seconds_sum{runtime="main"}"#).unwrap();
        assert!((sum - 0.0033).abs() < 1e-9, "{sum}");
        assert_eq!(
            value(
                &text,
                r#"loopwatch_stall_duration_seconds_bucket{runtime="main",le="1"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"loopwatch_stall_duration_seconds_bucket{runtime="main",le="2.5"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn deadline_series_comes_and_goes() {
        let (registry, m, _rt) = populated();
        assert!(Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds 3\n"));
        m.set_deadline_left(None);
        assert!(!Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds"));
        m.set_deadline_left(Some(Duration::from_millis(250)));
        assert!(Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds 0.25\n"));
    }

    #[test]
    fn unknown_verdicts_and_bad_indices_do_not_grow_the_label_set_or_panic() {
        let (registry, m, _rt) = populated();
        m.stall_classified(0, "a verdict from the future");
        m.stall_classified(7, "cpu-bound");
        m.observe_probe(3, Duration::from_secs(1));
        m.set_worker_stuck(0, 99, true);
        m.set_worker_stuck(5, 0, true);
        let text = Metrics::encode(&registry);
        assert_eq!(
            value(
                &text,
                r#"loopwatch_stalls_by_verdict_total{runtime="main",verdict="unknown"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains("future"));
        assert!(!text.contains(r#"worker="99""#));
    }

    #[test]
    fn tokio_metrics_are_read_at_scrape_time() {
        let runtime = rt(2);
        let registry = Registry::new();
        let _m = Metrics::new(
            &registry,
            &[("pool".to_string(), runtime.handle().clone())],
            Duration::from_secs(1),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            // Keep a worker busy for a while, then hold a task alive.
            std::thread::sleep(Duration::from_millis(50));
            tx.send(()).unwrap();
            let _ = release_rx.await;
        });
        rx.recv().unwrap();
        // Let the worker publish its busy time (it does when it parks).
        std::thread::sleep(Duration::from_millis(100));
        let text = Metrics::encode(&registry);
        assert_eq!(
            value(&text, r#"loopwatch_runtime_workers{runtime="pool"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"loopwatch_runtime_alive_tasks{runtime="pool"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"loopwatch_runtime_global_queue_depth{runtime="pool"}"#
            ),
            Some(0.0)
        );
        let busy: f64 = ["0", "1"]
            .iter()
            .map(|w| {
                value(
                    &text,
                    &format!(
                        r#"loopwatch_runtime_worker_busy_seconds_total{{runtime="pool",worker="{w}"}}"#
                    ),
                )
                .unwrap()
            })
            .sum();
        assert!(busy >= 0.04, "busy {busy} in:\n{text}");
        let parks = value(
            &text,
            r#"loopwatch_runtime_worker_park_total{runtime="pool",worker="0"}"#,
        )
        .unwrap();
        assert!(parks >= 1.0, "{text}");
        assert!(value(
            &text,
            r#"loopwatch_runtime_worker_park_unpark_total{runtime="pool",worker="1"}"#
        )
        .is_some());
        // A second scrape does not double the counters.
        let again = Metrics::encode(&registry);
        let busy2: f64 = ["0", "1"]
            .iter()
            .map(|w| {
                value(
                    &again,
                    &format!(
                        r#"loopwatch_runtime_worker_busy_seconds_total{{runtime="pool",worker="{w}"}}"#
                    ),
                )
                .unwrap()
            })
            .sum();
        assert!(busy2 >= busy && busy2 < busy + 0.03, "{busy} then {busy2}");
        let _ = release_tx.send(());
    }

    #[test]
    fn a_clash_leaves_the_registry_unchanged_and_drop_unregisters() {
        let runtime = rt(1);
        let registry = Registry::new();
        let runtimes = [("main".to_string(), runtime.handle().clone())];
        let first = Metrics::new(&registry, &runtimes, Duration::from_secs(1)).unwrap();
        let clash = Metrics::new(&registry, &runtimes, Duration::from_secs(2));
        assert!(matches!(clash, Err(Error::Metrics(_))), "{clash:?}");
        let text = Metrics::encode(&registry);
        assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(1.0));
        drop(first);
        assert_eq!(Metrics::encode(&registry), "");
        let again = Metrics::new(&registry, &runtimes, Duration::from_secs(2)).unwrap();
        let text = Metrics::encode(&registry);
        assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(2.0));
        drop(again);
    }

    #[test]
    fn a_name_taken_by_the_application_is_an_error() {
        let runtime = rt(1);
        let registry = Registry::new();
        registry
            .register(Box::new(
                IntGauge::new("loopwatch_stalled", "the application's own").unwrap(),
            ))
            .unwrap();
        let r = Metrics::new(
            &registry,
            &[("main".to_string(), runtime.handle().clone())],
            Duration::from_secs(1),
        );
        assert!(matches!(r, Err(Error::Metrics(_))));
        // Only the application's metric is there.
        let text = Metrics::encode(&registry);
        assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
    }

    /// Runs `promtool check metrics` on `text`; its findings, or a loud failure.
    pub(crate) fn promtool_check_metrics(text: &str) -> String {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run promtool ({e}): install Debian's prometheus package: \
                 apt-get install prometheus"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let findings = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "promtool check metrics failed ({}):\n{findings}\non:\n{text}",
            out.status
        );
        findings
    }

    #[test]
    fn promtool_check_metrics_has_no_finding() {
        let (registry, m, _rt) = populated();
        m.ping(PingResult::Failed);
        m.report(false);
        let text = Metrics::encode(&registry);
        let findings = promtool_check_metrics(&text);
        assert!(findings.trim().is_empty(), "promtool findings:\n{findings}");
    }
}
