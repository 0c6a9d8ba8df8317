//! What the monitor says about the state of things: the one-line summary
//! sent as systemd's `STATUS=`, and the [`Status`] snapshot that
//! [`Watchdog::status`](crate::Watchdog::status) and `/healthz` read.
//!
//! The snapshot is published at the end of every tick; readers never wait
//! for the monitor longer than it takes to copy it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Monitor;
use crate::clock::{self, us};
use crate::settings::Settings;
use crate::status::{human, LoopState, RuntimeStatus, Status};

impl Monitor {
    /// The `STATUS=` text for the current state.
    pub(crate) fn status_line(&self, now: u64) -> String {
        let stalled: Vec<String> = self
            .loops
            .iter()
            .filter_map(|w| {
                let s = w.tracker.stall?;
                Some(format!(
                    "event loop {:?} stalled for {}",
                    w.name,
                    human(us(now.saturating_sub(s.started_at)))
                ))
            })
            .collect();
        let mut stalled = stalled;
        for w in &self.loops {
            let Some(ww) = &w.workers else { continue };
            for s in ww.stuck() {
                stalled.push(format!(
                    "worker {} of event loop {:?} stuck for {}",
                    s.worker,
                    w.name,
                    human(us(now.saturating_sub(s.stuck_since)))
                ));
            }
        }
        if !stalled.is_empty() {
            return stalled.join("; ");
        }
        let gone: Vec<String> = self
            .loops
            .iter()
            .filter(|w| w.tracker.state == LoopState::Gone)
            .map(|w| format!("event loop {:?} is gone", w.name))
            .collect();
        if !gone.is_empty() {
            return gone.join("; ");
        }
        let lag = self.loops.iter().map(|w| w.tracker.lag).max().unwrap_or(0);
        if self.loops.len() == 1 {
            format!("event loop healthy, lag {}", human(us(lag)))
        } else {
            format!("event loops healthy, max lag {}", human(us(lag)))
        }
    }

    pub(super) fn publish(&self, now: u64) {
        let summary = self.status_line(now);
        let runtimes = self
            .loops
            .iter()
            .map(|w| RuntimeStatus {
                name: w.name.clone(),
                state: w.tracker.state,
                lag: us(w.tracker.lag),
                stalled_for: w
                    .tracker
                    .stall
                    .map(|s| us(now.saturating_sub(s.started_at))),
                stalls: w.tracker.stalls,
                stuck_workers: w
                    .workers
                    .as_ref()
                    .map(|ww| ww.stuck().map(|s| s.worker).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let mut st = self.shared.status.lock();
        st.runtimes = runtimes;
        st.healthy = self.all_healthy();
        st.summary = summary;
        st.last_ping = self.last_ping.map(clock::instant_of);
        st.pings_sent = self.pings_sent;
        st.pings_suppressed = self.pings_suppressed;
        st.pings_failed = self.pings_failed;
        st.callback_panics = self.callback_panics;
        st.internal_errors = self.internal_errors;
        st.updated_at = std::time::Instant::now();
        st.reports_written = self.diag.counters.reports_written.load(Ordering::Relaxed);
        st.reports_failed = self.diag.counters.reports_failed.load(Ordering::Relaxed);
    }
}

/// The initial status, before the first tick.
pub(crate) fn initial_status(settings: &Settings, names: &[String], pings: bool) -> Status {
    Status {
        runtimes: names
            .iter()
            .map(|n| RuntimeStatus {
                name: n.clone(),
                state: LoopState::Healthy,
                lag: Duration::ZERO,
                stalled_for: None,
                stalls: 0,
                stuck_workers: Vec::new(),
            })
            .collect(),
        healthy: true,
        summary: "starting".to_string(),
        watchdog_interval: settings.watchdog,
        stall_threshold: settings.threshold,
        pings_enabled: pings && settings.watchdog.is_some(),
        last_ping: None,
        pings_sent: 0,
        pings_suppressed: 0,
        pings_failed: 0,
        callback_panics: 0,
        reports_written: 0,
        reports_failed: 0,
        internal_errors: 0,
        monitor_failure: None,
        updated_at: std::time::Instant::now(),
    }
}
