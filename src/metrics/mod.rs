//! Prometheus metrics: what loopwatch measures, in the Prometheus data model.
//!
//! This module owns every metric family loopwatch exports (all named
//! `loopwatch_*`) and their registration in the application's
//! [`prometheus::Registry`]. The monitor thread feeds them through
//! [`Metrics`]; the exporter (or the application's own `/metrics` handler)
//! reads them with [`Metrics::encode`] or [`prometheus::Registry::gather`].
//! It does not serve HTTP (that is the exporter's) and does not decide what
//! to record (that is the monitor's).
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
//!
//! The parts, each depending only on the ones before it:
//!
//! * [`families`]: the families' definitions (names, help, buckets) and
//!   their bounded label values;
//! * [`collector`]: the one registered collector, which reads the tokio
//!   runtimes' metrics at scrape time;
//! * [`recorder`]: the [`Metrics`] handle the monitor records into.

mod collector;
mod families;
mod recorder;

pub(crate) use families::PingResult;
pub(crate) use recorder::Metrics;

#[cfg(test)]
mod tests;
