//! Hourly budgets: bytes written to the report directory, bytes printed on
//! stderr, and how often a repeated condition is logged.
//!
//! Time here is the store's monotonic clock in seconds (a wall clock step
//! neither refills nor drains a budget). A budget counts bytes in 60
//! one-minute buckets, so "the last hour" is exact to the minute and the
//! memory is fixed.
//!
//! The stderr fallback lives here too: the compact report of a report that
//! did not reach the disk is printed once per report id (not again on each
//! rewrite of the same report), within [`STDERR_BYTES_PER_HOUR`]; past the
//! budget one line per hour says how many were left out. stderr is written
//! with `write_all` and its errors ignored: `eprint!` would panic on a
//! broken stderr.

use std::collections::VecDeque;
use std::io::Write;

/// Compact reports printed on stderr per hour, at most (1 MiB, a few
/// hundred compact reports).
pub const STDERR_BYTES_PER_HOUR: u64 = 1024 * 1024;
/// Report ids remembered as already printed.
const PRINTED_IDS: usize = 16;
const MINUTES: usize = 60;

/// Bytes spent over the last hour, against a limit.
#[derive(Debug)]
pub(super) struct HourlyBytes {
    limit: u64,
    /// (minute, bytes spent in it).
    buckets: [(u64, u64); MINUTES],
}

impl HourlyBytes {
    /// A budget of `limit` bytes per hour.
    pub(super) fn new(limit: u64) -> Self {
        HourlyBytes {
            limit,
            buckets: [(u64::MAX, 0); MINUTES],
        }
    }

    /// Bytes spent in the hour up to `now` (seconds).
    pub(super) fn spent(&self, now: u64) -> u64 {
        let minute = now / 60;
        self.buckets
            .iter()
            .filter(|(m, _)| *m != u64::MAX && minute.saturating_sub(*m) < MINUTES as u64)
            .map(|(_, b)| *b)
            .fold(0u64, |a, b| a.saturating_add(b))
    }

    /// True when `bytes` more fit in the budget at `now`.
    pub(super) fn fits(&self, now: u64, bytes: u64) -> bool {
        self.spent(now).saturating_add(bytes) <= self.limit
    }

    /// Records `bytes` spent at `now`.
    pub(super) fn spend(&mut self, now: u64, bytes: u64) {
        let minute = now / 60;
        let slot = &mut self.buckets[(minute % MINUTES as u64) as usize];
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
    }
}

/// Lets a message through at most once per hour.
#[derive(Debug, Default)]
pub(super) struct HourlyGate {
    last: Option<u64>,
}

impl HourlyGate {
    /// True (and closes the gate for an hour) when the message may go out at `now`.
    pub(super) fn open(&mut self, now: u64) -> bool {
        if self.last.is_some_and(|l| now.saturating_sub(l) < 3600) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// The bounded stderr fallback.
#[derive(Debug)]
pub(super) struct StderrFallback {
    budget: HourlyBytes,
    printed: VecDeque<String>,
    left_out: u64,
    notice: HourlyGate,
}

impl StderrFallback {
    pub(super) fn new() -> Self {
        StderrFallback {
            budget: HourlyBytes::new(STDERR_BYTES_PER_HOUR),
            printed: VecDeque::new(),
            left_out: 0,
            notice: HourlyGate::default(),
        }
    }

    /// Prints `text` (report `id`'s compact form, made only when it is
    /// printed) after `headline`, unless this id was printed already or
    /// the hour's budget is spent.
    pub(super) fn print(
        &mut self,
        now: u64,
        id: &str,
        headline: &str,
        text: impl FnOnce() -> String,
    ) {
        if self.printed.iter().any(|p| p == id) {
            return;
        }
        let text = text();
        let bytes = (headline.len() + text.len()) as u64;
        if !self.budget.fits(now, bytes) {
            self.left_out += 1;
            if self.notice.open(now) {
                write_stderr(&format!(
                    "loopwatch: stderr budget of {STDERR_BYTES_PER_HOUR} bytes per hour spent; \
                     {} compact stall report(s) not printed so far\n",
                    self.left_out
                ));
            }
            return;
        }
        self.budget.spend(now, bytes);
        if self.printed.len() >= PRINTED_IDS {
            self.printed.pop_front();
        }
        self.printed.push_back(id.to_string());
        write_stderr(&format!("{headline}{text}"));
    }
}

/// Writes to stderr, ignoring errors (never panics, unlike `eprint!`).
fn write_stderr(s: &str) {
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_bytes_slide_by_the_minute() {
        let mut b = HourlyBytes::new(100);
        assert!(b.fits(0, 100));
        b.spend(0, 60);
        b.spend(59, 30);
        assert!(!b.fits(120, 11), "90 spent in the first minute");
        assert!(b.fits(120, 10));
        b.spend(1800, 10);
        assert_eq!(b.spent(3599), 100);
        assert_eq!(b.spent(3600), 10, "the first minute left the window");
        assert!(b.fits(3600, 90));
        assert_eq!(b.spent(1800 + 3600), 0);
    }

    #[test]
    fn gate_opens_once_per_hour() {
        let mut g = HourlyGate::default();
        assert!(g.open(10));
        assert!(!g.open(11));
        assert!(!g.open(3609));
        assert!(g.open(3610));
    }
}
