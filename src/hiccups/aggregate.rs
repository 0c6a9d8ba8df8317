//! One log line per hiccup, aggregated under load.
//!
//! Within each minute, the first hiccup of each culprit (at most
//! [`MAX_LINES_PER_MINUTE`] culprits) is logged at once; later ones are
//! only counted, and when the minute is over one line per culprit says how
//! many more there were: `event loop "main" blocked 87 ms in
//! myapp::render (on CPU)`, then `event loop "main": 12 more blocks like it
//! in myapp::render in the last minute (longest 150 ms)`. The log therefore
//! carries at most a few dozen hiccup lines a minute whatever the rate.
//! This module only decides what to say; the monitor says it.

use std::collections::BTreeMap;

/// Culprits logged line by line per minute; the rest are only summarised.
pub(crate) const MAX_LINES_PER_MINUTE: usize = 10;
/// The aggregation window, µs.
const WINDOW: u64 = 60_000_000;

/// Per culprit in the current window: hiccups not logged, longest one (µs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Suppressed {
    pub count: u64,
    pub longest: u64,
}

/// One runtime's log aggregation.
#[derive(Debug, Default)]
pub(crate) struct LogAggregator {
    window_start: Option<u64>,
    /// Culprits logged this window, with what was not logged since.
    seen: BTreeMap<String, Suppressed>,
}

impl LogAggregator {
    /// A hiccup of `culprit` lasting `duration` µs at `now`: the summaries
    /// of the window that just ended (culprit, what was suppressed), and
    /// whether to log this hiccup's own line.
    pub(crate) fn note(
        &mut self,
        culprit: &str,
        duration: u64,
        now: u64,
    ) -> (Vec<(String, Suppressed)>, bool) {
        let summaries = self.roll(now);
        if !self.seen.contains_key(culprit) && self.seen.len() < MAX_LINES_PER_MINUTE {
            self.seen.insert(culprit.to_string(), Suppressed::default());
            return (summaries, true);
        }
        let key = if self.seen.contains_key(culprit) {
            culprit.to_string()
        } else {
            super::OTHER_CULPRIT.to_string()
        };
        let e = self.seen.entry(key).or_default();
        e.count += 1;
        e.longest = e.longest.max(duration);
        (summaries, false)
    }

    /// Ends the window if a minute has passed since it began; returns what
    /// it suppressed.
    pub(crate) fn roll(&mut self, now: u64) -> Vec<(String, Suppressed)> {
        match self.window_start {
            Some(start) if now.saturating_sub(start) < WINDOW => Vec::new(),
            _ => {
                self.window_start = Some(now);
                std::mem::take(&mut self.seen)
                    .into_iter()
                    .filter(|(_, s)| s.count > 0)
                    .collect()
            }
        }
    }

    /// When the current window ends, if anything is waiting to be said.
    pub(crate) fn due(&self) -> Option<u64> {
        let pending = self.seen.values().any(|s| s.count > 0);
        pending.then(|| self.window_start.unwrap_or(0).saturating_add(WINDOW))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_culprit_is_logged_the_rest_summarised() {
        let mut a = LogAggregator::default();
        let (s, log) = a.note("app::render", 87_000, 1);
        assert!(s.is_empty() && log);
        for i in 0..12 {
            let (s, log) = a.note("app::render", 100_000 + i, 2 + i);
            assert!(s.is_empty() && !log);
        }
        assert!(
            a.note("app::other", 50_000, 20).1,
            "another culprit is logged"
        );
        assert_eq!(a.due(), Some(1 + WINDOW));
        let (s, log) = a.note("app::render", 90_000, 2 + WINDOW);
        assert!(log, "a new window logs again");
        assert_eq!(
            s,
            vec![(
                "app::render".to_string(),
                Suppressed {
                    count: 12,
                    longest: 100_011
                }
            )]
        );
    }

    #[test]
    fn lines_per_minute_are_capped() {
        let mut a = LogAggregator::default();
        let logged = (0..50)
            .filter(|i| a.note(&format!("app::f{i}"), 1000, 1).1)
            .count();
        assert_eq!(logged, MAX_LINES_PER_MINUTE);
        let s = a.roll(1 + WINDOW);
        let other = s.iter().find(|(c, _)| c == "other").unwrap();
        assert_eq!(other.1.count, 40);
    }
}
