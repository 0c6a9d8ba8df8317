//! The per-runtime state machine: healthy → stalled → recovered.
//!
//! A [`LoopTracker`] is fed one [`ProbeReading`] per monitor tick and says
//! which transitions that reading causes. It owns no clock and no thread, so
//! every transition is a plain function of its inputs and is unit-tested
//! here. It also keeps the lag timeline of the last seconds, which a stall
//! report shows.

use std::collections::VecDeque;

use crate::probe::ProbeReading;
use crate::status::LoopState;

/// How many answered probes the lag timeline keeps.
pub(crate) const TIMELINE_LEN: usize = 600;

/// A stall in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StallTrack {
    /// When the unanswered wake was sent: the loop was stuck from then at the latest.
    pub started_at: u64,
    /// When the monitor declared the stall.
    pub detected_at: u64,
    /// The largest lag seen so far.
    pub max_lag: u64,
}

/// What one reading changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// The lag crossed the threshold.
    StallStarted(StallTrack),
    /// The stalled probe was answered; `duration` is its lag (µs).
    StallEnded {
        /// The stall as it was when it ended.
        stall: StallTrack,
        /// Measured duration, µs.
        duration: u64,
        /// When the probe was finally answered.
        ended_at: u64,
    },
    /// The runtime was shut down.
    Gone,
}

/// One watched runtime's health.
#[derive(Debug)]
pub(crate) struct LoopTracker {
    pub state: LoopState,
    pub stall: Option<StallTrack>,
    pub stalls: u64,
    /// The lag as of the last reading, µs.
    pub lag: u64,
    /// (answered_at, lag) of recent answered probes, oldest first.
    pub timeline: VecDeque<(u64, u64)>,
    last_recorded: u64,
}

impl Default for LoopTracker {
    fn default() -> Self {
        LoopTracker {
            state: LoopState::Healthy,
            stall: None,
            stalls: 0,
            lag: 0,
            timeline: VecDeque::with_capacity(TIMELINE_LEN),
            last_recorded: u64::MAX,
        }
    }
}

impl LoopTracker {
    /// Feeds one reading taken at `now`; returns the transitions, in order.
    pub(crate) fn observe(
        &mut self,
        reading: ProbeReading,
        now: u64,
        threshold: u64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        if reading == ProbeReading::Gone {
            if self.state != LoopState::Gone {
                self.state = LoopState::Gone;
                self.stall = None;
                out.push(Transition::Gone);
            }
            return out;
        }
        if self.state == LoopState::Gone {
            return out;
        }
        let lag = reading.lag_us(now);
        self.lag = lag;
        if let ProbeReading::Answered { answered_at, .. } = reading {
            self.record(answered_at, lag);
        }
        let woken_at = match reading {
            ProbeReading::Answered { woken_at, .. } | ProbeReading::Waiting { woken_at } => {
                woken_at
            }
            ProbeReading::Gone => unreachable!("handled above"),
        };
        if self.stall.is_none() && lag > threshold {
            let track = StallTrack {
                started_at: woken_at,
                detected_at: now,
                max_lag: lag,
            };
            self.stall = Some(track);
            self.stalls += 1;
            self.state = LoopState::Stalled;
            out.push(Transition::StallStarted(track));
        }
        match (self.stall.as_mut(), reading) {
            // Only a probe sent since the stall began can end it.
            (
                Some(stall),
                ProbeReading::Answered {
                    answered_at,
                    woken_at,
                },
            ) if woken_at >= stall.started_at => {
                stall.max_lag = stall.max_lag.max(lag);
                let stall = *stall;
                self.stall = None;
                self.state = LoopState::Recovered;
                out.push(Transition::StallEnded {
                    stall,
                    duration: answered_at.saturating_sub(stall.started_at),
                    ended_at: answered_at,
                });
            }
            (Some(stall), _) => stall.max_lag = stall.max_lag.max(lag),
            (None, _) => {
                if self.state == LoopState::Recovered && out.is_empty() {
                    self.state = LoopState::Healthy;
                }
            }
        }
        out
    }

    /// The monitor itself did not run from `from` to `now` (longer than the
    /// threshold): the process was paused, and from outside the loop did
    /// not answer either. Declares a stall that the next fresh probe ends.
    pub(crate) fn paused(&mut self, from: u64, now: u64) -> Option<Transition> {
        if self.stall.is_some() || self.state == LoopState::Gone {
            return None;
        }
        let track = StallTrack {
            started_at: from,
            detected_at: now,
            max_lag: now.saturating_sub(from),
        };
        self.stall = Some(track);
        self.stalls += 1;
        self.state = LoopState::Stalled;
        Some(Transition::StallStarted(track))
    }

    fn record(&mut self, answered_at: u64, lag: u64) {
        if answered_at == self.last_recorded {
            return;
        }
        self.last_recorded = answered_at;
        if self.timeline.len() == TIMELINE_LEN {
            self.timeline.pop_front();
        }
        self.timeline.push_back((answered_at, lag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 500_000;

    fn answered(w: u64, a: u64) -> ProbeReading {
        ProbeReading::Answered {
            woken_at: w,
            answered_at: a,
        }
    }

    #[test]
    fn healthy_stalled_recovered_healthy() {
        let mut t = LoopTracker::default();
        assert!(t.observe(answered(0, 100), 1_000, T).is_empty());
        assert_eq!(t.state, LoopState::Healthy);
        assert!(t
            .observe(ProbeReading::Waiting { woken_at: 100_000 }, 400_000, T)
            .is_empty());
        let tr = t.observe(ProbeReading::Waiting { woken_at: 100_000 }, 700_000, T);
        assert_eq!(
            tr,
            vec![Transition::StallStarted(StallTrack {
                started_at: 100_000,
                detected_at: 700_000,
                max_lag: 600_000
            })]
        );
        assert_eq!(t.state, LoopState::Stalled);
        assert!(t
            .observe(ProbeReading::Waiting { woken_at: 100_000 }, 900_000, T)
            .is_empty());
        let tr = t.observe(answered(100_000, 1_000_000), 1_050_000, T);
        match tr.as_slice() {
            [Transition::StallEnded {
                duration, stall, ..
            }] => {
                assert_eq!(*duration, 900_000);
                assert_eq!(stall.max_lag, 900_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.state, LoopState::Recovered);
        assert!(t
            .observe(answered(1_100_000, 1_100_050), 1_200_000, T)
            .is_empty());
        assert_eq!(t.state, LoopState::Healthy);
        assert_eq!(t.stalls, 1);
    }

    #[test]
    fn a_stall_seen_only_after_it_ended_starts_and_ends_at_once() {
        let mut t = LoopTracker::default();
        let tr = t.observe(answered(0, 800_000), 900_000, T);
        assert!(matches!(tr[0], Transition::StallStarted(_)));
        assert!(matches!(
            tr[1],
            Transition::StallEnded {
                duration: 800_000,
                ..
            }
        ));
        assert_eq!(tr.len(), 2);
    }

    #[test]
    fn a_pause_is_a_stall_that_only_a_fresh_probe_ends() {
        let mut t = LoopTracker::default();
        assert!(t.observe(answered(0, 10), 20, T).is_empty());
        assert!(matches!(
            t.paused(100, 2_000_100),
            Some(Transition::StallStarted(_))
        ));
        assert!(t.paused(100, 2_000_200).is_none(), "one stall at a time");
        // The probe answered before the pause does not end it.
        assert!(t.observe(answered(0, 10), 2_000_100, T).is_empty());
        let tr = t.observe(answered(2_000_100, 2_000_150), 2_000_200, T);
        assert!(
            matches!(
                tr[..],
                [Transition::StallEnded {
                    duration: 2_000_050,
                    ..
                }]
            ),
            "{tr:?}"
        );
    }

    #[test]
    fn gone_is_final_and_said_once() {
        let mut t = LoopTracker::default();
        assert_eq!(t.observe(ProbeReading::Gone, 1, T), vec![Transition::Gone]);
        assert!(t.observe(ProbeReading::Gone, 2, T).is_empty());
        assert!(t.observe(answered(0, 1), 3, T).is_empty());
        assert_eq!(t.state, LoopState::Gone);
    }

    #[test]
    fn timeline_is_bounded() {
        let mut t = LoopTracker::default();
        for i in 0..(TIMELINE_LEN as u64 + 50) {
            t.observe(answered(i * 10, i * 10 + 1), i * 10 + 2, T);
        }
        assert_eq!(t.timeline.len(), TIMELINE_LEN);
        assert_eq!(
            t.timeline.back().unwrap().0,
            (TIMELINE_LEN as u64 + 49) * 10 + 1
        );
    }
}
