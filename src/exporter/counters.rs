//! What the exporter did with its clients, counted.
//!
//! This module owns [`ExporterCounters`]: atomics the accept loop and the
//! connection tasks bump, readable from any thread through the `Arc` that
//! [`Exporter::counters`](super::Exporter::counters) hands out (for metrics
//! and status). Nothing the exporter drops goes uncounted: evicted idle
//! connections, refused ones, heads that came too slowly, failed accepts.
//!
//! It does not export the counts as Prometheus series (that is
//! [`crate::metrics`]'s job, once it reads them) nor log anything.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals of the exporter's connections since it started.
#[derive(Debug, Default)]
pub(crate) struct ExporterCounters {
    /// Connections accepted from the listening socket (admitted or not).
    pub(super) accepted: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub(super) evicted: AtomicU64,
    /// New connections closed at once because every slot was inside a
    /// request.
    pub(super) refused: AtomicU64,
    /// Connections closed because no complete request head came in time.
    pub(super) head_timeouts: AtomicU64,
    /// `accept` calls that failed (typically `EMFILE`).
    pub(super) accept_errors: AtomicU64,
    /// Connections open now.
    pub(super) open: AtomicU64,
    /// Panics caught while answering (a health check or hiccup source that
    /// panicked): each was a 500.
    pub(super) panics: AtomicU64,
}

/// A copy of [`ExporterCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExporterCounts {
    /// See [`ExporterCounters::accepted`].
    pub accepted: u64,
    /// See [`ExporterCounters::evicted`].
    pub evicted: u64,
    /// See [`ExporterCounters::refused`].
    pub refused: u64,
    /// See [`ExporterCounters::head_timeouts`].
    pub head_timeouts: u64,
    /// See [`ExporterCounters::accept_errors`].
    pub accept_errors: u64,
    /// See [`ExporterCounters::open`].
    pub open: u64,
    /// See [`ExporterCounters::panics`].
    pub panics: u64,
}

impl ExporterCounters {
    /// The counts now (each read on its own: they need not add up exactly
    /// while connections come and go).
    pub(crate) fn snapshot(&self) -> ExporterCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExporterCounts {
            accepted: r(&self.accepted),
            evicted: r(&self.evicted),
            refused: r(&self.refused),
            head_timeouts: r(&self.head_timeouts),
            accept_errors: r(&self.accept_errors),
            open: r(&self.open),
            panics: r(&self.panics),
        }
    }

    /// Adds one to `counter`, returning the new total.
    pub(super) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }
}
