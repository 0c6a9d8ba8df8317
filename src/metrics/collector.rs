//! The collector: loopwatch's families registered as one unit, and tokio's
//! runtime metrics read at scrape time.
//!
//! This module owns [`LoopwatchCollector`], the one
//! [`prometheus::core::Collector`] that goes into the application's
//! registry. Registering one collector makes registration all-or-nothing (a
//! name clash leaves the registry untouched) and lets dropping
//! [`Metrics`](super::Metrics) unregister the lot. At collection time it
//! copies every watched runtime's [`tokio::runtime::RuntimeMetrics`] (atomic
//! reads, never a wait on the runtime) into the `loopwatch_runtime_*`
//! families, and leaves `loopwatch_watchdog_deadline_seconds` out while no
//! deadline is set.
//!
//! It does not define the families (that is [`super::families`]) and does
//! not record what the monitor observes (that is
//! [`Metrics`](super::Metrics)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntCounter, IntGauge};
use tokio::runtime::Handle;

use super::families::{Families, EXPORTER_RESULTS};

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

impl TokioChildren {
    /// Resolves the children of the runtime `name`, one per worker.
    fn new(families: &Families, name: &str, handle: &Handle) -> TokioChildren {
        let rt = &[name];
        let workers = handle.metrics().num_workers();
        TokioChildren {
            handle: handle.clone(),
            workers: families.rt_workers.with_label_values(rt),
            alive_tasks: families.rt_alive_tasks.with_label_values(rt),
            global_queue_depth: families.rt_global_queue_depth.with_label_values(rt),
            per_worker: (0..workers)
                .map(|w| {
                    let w = w.to_string();
                    WorkerChildren {
                        busy: families.rt_busy.with_label_values(&[name, w.as_str()]),
                        park: families.rt_park.with_label_values(&[name, w.as_str()]),
                        park_unpark: families
                            .rt_park_unpark
                            .with_label_values(&[name, w.as_str()]),
                    }
                })
                .collect(),
        }
    }
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

fn saturating_i64(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the collector and [`Metrics`](super::Metrics) share.
struct Shared {
    families: Families,
    /// `loopwatch_watchdog_deadline_seconds` is exported only while set.
    deadline_present: AtomicBool,
    /// Refreshed (and read) under this lock at scrape time, so that two
    /// concurrent scrapes never interleave a counter's reset and set.
    tokio: Mutex<Vec<TokioChildren>>,
    /// Where the exporter's connection totals are read at scrape time
    /// (indexed like [`EXPORTER_RESULTS`]), when it runs.
    exporter: Mutex<Option<ExporterSource>>,
}

/// Reads the exporter's connection totals, indexed like
/// [`EXPORTER_RESULTS`], then the panics it caught.
pub(crate) type ExporterSource = Box<dyn Fn() -> [u64; 6] + Send + Sync>;

/// The collector registered in the application's registry: all of
/// loopwatch's families, the tokio ones refreshed at collection time.
///
/// Clones share the families; any clone unregisters them all.
#[derive(Clone)]
pub(super) struct LoopwatchCollector(Arc<Shared>);

impl LoopwatchCollector {
    /// Takes `families` and resolves the tokio children of every runtime in
    /// `runtimes`. Registers nothing.
    pub(super) fn new(families: Families, runtimes: &[(String, Handle)]) -> LoopwatchCollector {
        let tokio = runtimes
            .iter()
            .map(|(name, handle)| TokioChildren::new(&families, name, handle))
            .collect();
        LoopwatchCollector(Arc::new(Shared {
            families,
            deadline_present: AtomicBool::new(false),
            tokio: Mutex::new(tokio),
            exporter: Mutex::new(None),
        }))
    }

    /// The families, to resolve and update their children.
    pub(super) fn families(&self) -> &Families {
        &self.0.families
    }

    /// Reads the exporter's connection totals at every scrape from now on.
    pub(super) fn set_exporter_source(&self, source: ExporterSource) {
        *self.0.exporter.lock() = Some(source);
    }

    /// Whether `loopwatch_watchdog_deadline_seconds` is in the next scrapes.
    /// Set the gauge first.
    pub(super) fn set_deadline_present(&self, present: bool) {
        self.0.deadline_present.store(present, Ordering::Release);
    }
}

impl Collector for LoopwatchCollector {
    fn desc(&self) -> Vec<&Desc> {
        let f = &self.0.families;
        let mut d = Vec::with_capacity(32);
        d.extend(f.probe_lag.desc());
        d.extend(f.lag.desc());
        d.extend(f.threshold.desc());
        d.extend(f.stalled.desc());
        d.extend(f.stalls.desc());
        d.extend(f.stalls_coalesced.desc());
        d.extend(f.stall_duration.desc());
        d.extend(f.stalls_by_verdict.desc());
        d.extend(f.pings.desc());
        d.extend(f.deadline.desc());
        d.extend(f.reports.desc());
        d.extend(f.journal_entries.desc());
        d.extend(f.capture_duration.desc());
        d.extend(f.worker_stuck.desc());
        d.extend(f.internal_errors.desc());
        d.extend(f.hiccups.desc());
        d.extend(f.hiccup_duration.desc());
        d.extend(f.hiccup_seconds.desc());
        d.extend(f.hiccup_captures_skipped.desc());
        d.extend(f.warn_threshold.desc());
        d.extend(f.exporter_connections.desc());
        d.extend(f.rt_workers.desc());
        d.extend(f.rt_alive_tasks.desc());
        d.extend(f.rt_global_queue_depth.desc());
        d.extend(f.rt_busy.desc());
        d.extend(f.rt_park.desc());
        d.extend(f.rt_park_unpark.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = &self.0.families;
        let mut out = Vec::with_capacity(32);
        out.extend(f.probe_lag.collect());
        out.extend(f.lag.collect());
        out.extend(f.threshold.collect());
        out.extend(f.stalled.collect());
        out.extend(f.stalls.collect());
        out.extend(f.stalls_coalesced.collect());
        out.extend(f.stall_duration.collect());
        out.extend(f.stalls_by_verdict.collect());
        out.extend(f.pings.collect());
        if self.0.deadline_present.load(Ordering::Acquire) {
            out.extend(f.deadline.collect());
        }
        out.extend(f.reports.collect());
        out.extend(f.journal_entries.collect());
        out.extend(f.capture_duration.collect());
        out.extend(f.worker_stuck.collect());
        out.extend(f.internal_errors.collect());
        out.extend(f.hiccups.collect());
        out.extend(f.hiccup_duration.collect());
        out.extend(f.hiccup_seconds.collect());
        out.extend(f.hiccup_captures_skipped.collect());
        out.extend(f.warn_threshold.collect());
        if let Some(read) = self.0.exporter.lock().as_ref() {
            // Counters have no `set`: reset and add the running totals.
            let totals = read();
            for (result, total) in EXPORTER_RESULTS.iter().zip(totals) {
                let c = f.exporter_connections.with_label_values(&[*result]);
                c.reset();
                c.inc_by(total);
            }
            let panics = f.internal_errors.with_label_values(&["exporter"]);
            panics.reset();
            panics.inc_by(totals[EXPORTER_RESULTS.len()]);
            out.extend(f.exporter_connections.collect());
        }
        {
            let tokio = self.0.tokio.lock();
            refresh_tokio(&tokio);
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
