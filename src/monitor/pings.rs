//! The monitor's side of systemd's notify protocol.
//!
//! `WATCHDOG=1` goes out every quarter of the watchdog interval while, and
//! only while, every runtime is healthy; while one is not, the ping is
//! counted as suppressed and `STATUS=` says why. A failed send is counted
//! and logged once until sending works again. This file also knows
//! systemd's earliest possible deadline (last ping + `WatchdogSec`), which
//! the diagnostics time their last capture against, and sends
//! `WATCHDOG=trigger` when a report asks for it. The socket itself belongs
//! to [`notify`](crate::notify).

use super::Monitor;
use crate::clock::micros;
use crate::diagnostics::Outcome;
use crate::metrics::PingResult;
use crate::notify::NotifyState;

impl Monitor {
    /// Acts on what a diagnostics step asks for.
    pub(super) fn after_report(&mut self, outcome: &Outcome) {
        if outcome.trigger_watchdog {
            tracing::warn!(
                "loopwatch: report written; asking systemd to act now (WATCHDOG=trigger)"
            );
            if let Err(e) = self.shared.notify(&[NotifyState::WatchdogTrigger]) {
                self.notify_failed(&e);
            }
        }
    }

    pub(super) fn send_status(&mut self, now: u64) {
        let line = self.status_line(now);
        if let Err(e) = self.shared.notify(&[NotifyState::Status(&line)]) {
            self.notify_failed(&e);
        }
    }

    pub(super) fn notify_failed(&mut self, e: &std::io::Error) {
        if !self.notify_failure_logged {
            self.notify_failure_logged = true;
            tracing::error!(error = %e, "loopwatch cannot reach systemd's notify socket; will keep trying");
        }
    }

    /// When the next ping is due: a period after the last one, or, while
    /// pings are withheld, a period after the last one held back (so that
    /// the monitor does not wake up again and again for a ping it will not
    /// send).
    pub(super) fn next_ping_due(&self) -> Option<u64> {
        let every = self.ping_every?;
        let last = self.last_ping?;
        let base = match self.last_suppressed {
            Some(s) if !self.all_healthy() => s.max(last),
            _ => last,
        };
        Some(base.saturating_add(every))
    }

    pub(super) fn maybe_ping(&mut self, now: u64) {
        let Some(every) = self.ping_every else { return };
        let due = |last: Option<u64>| last.is_none_or(|t| now >= t.saturating_add(every));
        if self.all_healthy() {
            if !due(self.last_ping) && self.last_suppressed.is_none() {
                return;
            }
            let line = self.status_line(now);
            match self
                .shared
                .notify(&[NotifyState::Watchdog, NotifyState::Status(&line)])
            {
                Ok(_) => {
                    self.pings_sent += 1;
                    self.metrics.ping(PingResult::Sent);
                    if self.notify_failure_logged {
                        tracing::info!("loopwatch reaches systemd's notify socket again");
                        self.notify_failure_logged = false;
                    }
                }
                Err(e) => {
                    self.pings_failed += 1;
                    self.metrics.ping(PingResult::Failed);
                    self.notify_failed(&e);
                }
            }
            // A failed ping is retried on the next period, not every tick.
            self.last_ping = Some(now);
            self.last_suppressed = None;
        } else if due(self.last_ping) && due(self.last_suppressed) {
            self.pings_suppressed += 1;
            self.metrics.ping(PingResult::Suppressed);
            self.last_suppressed = Some(now);
            self.send_status(now);
        }
    }

    /// systemd's earliest possible deadline (µs clock): the last ping plus
    /// WatchdogSec, while this monitor pings.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.ping_every?;
        Some(self.last_ping? + micros(self.shared.settings.watchdog?))
    }
}
