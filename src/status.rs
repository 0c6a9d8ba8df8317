//! What the application can see: status snapshots and stall events.
//!
//! [`Status`] is a copy of the monitor's view taken at its last tick, cheap
//! to ask for from any thread. [`StallEvent`] is what the `on_stall` callback
//! receives when a runtime stalls and when it recovers.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// Where a watched runtime is in loopwatch's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoopState {
    /// The probe is answered within the stall threshold.
    Healthy,
    /// The probe has gone unanswered for longer than the threshold.
    Stalled,
    /// The probe was answered again after a stall; healthy from the next tick.
    Recovered,
    /// The runtime was shut down while still watched.
    Gone,
}

impl LoopState {
    /// True when this state lets the watchdog ping go out.
    pub fn is_healthy(self) -> bool {
        matches!(self, LoopState::Healthy | LoopState::Recovered)
    }
}

/// One watched runtime, as of the monitor's last tick.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RuntimeStatus {
    /// The name given to `watch()`.
    pub name: String,
    /// Its state.
    pub state: LoopState,
    /// The current probe lag: the last answered probe's lag, or, while a
    /// probe is unanswered for longer than that, the time it has waited.
    pub lag: Duration,
    /// How long the current stall has lasted, while stalled.
    pub stalled_for: Option<Duration>,
    /// Stalls seen since start.
    pub stalls: u64,
    /// Workers (tokio worker indexes) stuck in a poll now, when the runtime
    /// is watched with hooks.
    pub stuck_workers: Vec<usize>,
}

/// A snapshot of the whole watchdog.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Status {
    /// Every watched runtime, in the order they were added.
    pub runtimes: Vec<RuntimeStatus>,
    /// True when every runtime is healthy.
    pub healthy: bool,
    /// One line for humans, as sent in systemd's `STATUS=`: for example
    /// `event loop healthy, lag 0.3 ms` or `event loop "main" stalled for 2.1 s`.
    pub summary: String,
    /// systemd's watchdog interval, when it applies to this process.
    pub watchdog_interval: Option<Duration>,
    /// The stall threshold in force.
    pub stall_threshold: Duration,
    /// Whether this watchdog sends `WATCHDOG=1` at all.
    pub pings_enabled: bool,
    /// When the last `WATCHDOG=1` went out.
    pub last_ping: Option<Instant>,
    /// `WATCHDOG=1` messages sent.
    pub pings_sent: u64,
    /// Pings held back because a runtime was stalled.
    pub pings_suppressed: u64,
    /// Pings that could not be sent.
    pub pings_failed: u64,
    /// Panics caught in the `on_stall` callback.
    pub callback_panics: u64,
    /// Stall report versions written to disk.
    pub reports_written: u64,
    /// Stall report writes that failed (the report went to stderr instead).
    pub reports_failed: u64,
    /// Failures of loopwatch itself caught so far (panics in the monitor
    /// thread); each is logged and counted in
    /// `loopwatch_internal_errors_total`.
    pub internal_errors: u64,
    /// Set when the monitor gave up after repeated internal failures: it
    /// then sends no more pings (so systemd restarts the service) and
    /// `/healthz` answers 503 with this reason.
    pub monitor_failure: Option<String>,
    /// When the monitor last published this snapshot. A snapshot much
    /// older than the probe interval means the monitor is frozen;
    /// `/healthz` then answers 503.
    pub updated_at: Instant,
}

impl Status {
    /// Whether the snapshot says "healthy" and is fresh: published less
    /// than `stale_after` ago by a monitor that has not given up. This is
    /// what `/healthz` answers.
    pub fn is_healthy_now(&self, stale_after: Duration) -> Result<(), String> {
        if let Some(reason) = &self.monitor_failure {
            return Err(format!("loopwatch monitor failed: {reason}"));
        }
        let age = self.updated_at.elapsed();
        if age > stale_after {
            return Err(format!(
                "loopwatch monitor has not run for {} (frozen?)",
                human(age)
            ));
        }
        if self.healthy {
            Ok(())
        } else {
            Err(self.summary.clone())
        }
    }

    /// The status of the runtime called `name`.
    pub fn runtime(&self, name: &str) -> Option<&RuntimeStatus> {
        self.runtimes.iter().find(|r| r.name == name)
    }
}

/// A stall starting or ending, as passed to the `on_stall` callback.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StallEvent {
    /// A runtime's probe went unanswered for longer than the threshold.
    Started {
        /// The runtime's name.
        runtime: String,
        /// The lag when the stall was declared.
        lag: Duration,
        /// The threshold it crossed.
        threshold: Duration,
        /// Wall-clock time of detection.
        detected_at: SystemTime,
        /// The stall report file, when one was written at detection.
        report: Option<PathBuf>,
    },
    /// The runtime answered again.
    Ended {
        /// The runtime's name.
        runtime: String,
        /// How long the loop did not answer, as measured by the probe.
        duration: Duration,
        /// The stall report file, when one was written.
        report: Option<PathBuf>,
    },
    /// One worker of a runtime watched with hooks made no progress for
    /// longer than the threshold (the probe may still be answered).
    WorkerStuck {
        /// The runtime's name.
        runtime: String,
        /// tokio's worker index.
        worker: usize,
        /// How long it has made no progress.
        stuck_for: Duration,
        /// The task it is stuck polling (`--cfg tokio_unstable` only).
        task: Option<crate::hooks::StuckTask>,
        /// The stall report file, when one was written.
        report: Option<PathBuf>,
    },
    /// A stuck worker made progress again.
    WorkerRecovered {
        /// The runtime's name.
        runtime: String,
        /// tokio's worker index.
        worker: usize,
        /// How long it was stuck.
        stuck_for: Duration,
        /// The stall report file, when one was written.
        report: Option<PathBuf>,
    },
}

impl StallEvent {
    /// The name of the runtime concerned.
    pub fn runtime(&self) -> &str {
        match self {
            StallEvent::Started { runtime, .. }
            | StallEvent::Ended { runtime, .. }
            | StallEvent::WorkerStuck { runtime, .. }
            | StallEvent::WorkerRecovered { runtime, .. } => runtime,
        }
    }
}

/// The `on_stall` callback, as stored.
pub(crate) type StallCallback = Box<dyn Fn(&StallEvent) + Send + 'static>;

/// Formats a duration the way loopwatch's messages do: `0.3 ms`, `2.1 s`.
pub(crate) fn human(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_micros(300)), "0.3 ms");
        assert_eq!(human(Duration::from_millis(2100)), "2.1 s");
        assert_eq!(human(Duration::from_millis(999)), "999.0 ms");
    }
}
