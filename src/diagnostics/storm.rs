//! Stall storms: how a flapping service costs bounded work and disk.
//!
//! A loop that stalls every few hundred milliseconds would otherwise get a
//! full capture of every thread and a report per stall. Per runtime this
//! module keeps the last few full reports with the verdict and culprit they
//! had at detection (their [`StallKey`]), and decides for each new stall:
//!
//! * within the cool-down after a full report that has the same key (from
//!   a cheap capture of the loop thread alone), the stall is **coalesced**:
//!   counted, appended to that report's occurrences, no new capture;
//! * past the hourly budget of full reports, it is coalesced into the
//!   latest report whatever its key (the occurrence keeps its own verdict
//!   and culprit), and the report says the budget was used up;
//! * otherwise it gets a full report of its own.
//!
//! Rewrites of a report that gained occurrences are throttled
//! ([`FLUSH_EVERY`]); the last one happens once the storm is over. A report
//! with occurrences is the first of its storm: it is pinned against
//! retention. This module owns the bookkeeping only; capturing and writing
//! are the parent's.

use std::collections::VecDeque;

use crate::report::{Occurrence, StallReport};
use crate::verdict::VerdictKind;

/// Full reports remembered per runtime for coalescing.
const KEPT: usize = 4;
/// Occurrences listed in one report; later ones are only counted.
pub(super) const MAX_OCCURRENCES: usize = 1000;
/// Shortest time between two rewrites of a report gaining occurrences, µs.
pub(super) const FLUSH_EVERY: u64 = 30_000_000;
/// One hour, µs.
const HOUR: u64 = 3_600_000_000;

/// What makes two stalls "look the same": the verdict and the culprit
/// function decided from the detection capture (symbol-table names, before
/// any DWARF pass), so that a cheap capture gives comparable keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StallKey {
    pub verdict: VerdictKind,
    pub culprit: Option<String>,
}

/// A full report kept for coalescing.
#[derive(Debug)]
pub(super) struct Kept {
    pub key: StallKey,
    /// When the full report was made (µs clock).
    pub at: u64,
    /// The report as last written, once its incident is over.
    pub report: Option<StallReport>,
    /// When it was last written (µs clock).
    pub written_at: u64,
    /// Occurrences added since the last write.
    pub dirty: bool,
}

/// One runtime's storm state.
#[derive(Debug, Default)]
pub(super) struct Storm {
    kept: VecDeque<Kept>,
    /// When the full reports of the last hour were made (µs clock).
    full_reports: VecDeque<u64>,
    /// When the last stall of this runtime started (µs clock).
    last_stall: Option<u64>,
}

/// What to do with a new stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// A full capture and report.
    Full,
    /// Coalesce into the kept report at this index.
    Coalesce(usize),
}

impl Storm {
    /// Whether a new stall at `now` might be coalesced, so that a cheap look
    /// at the loop thread is worth taking first.
    pub(super) fn may_coalesce(&self, now: u64, cool_down: u64, per_hour: u32) -> bool {
        self.over_budget(now, per_hour)
            || self
                .kept
                .iter()
                .any(|k| now.saturating_sub(k.at) <= cool_down)
    }

    fn over_budget(&self, now: u64, per_hour: u32) -> bool {
        let recent = self
            .full_reports
            .iter()
            .filter(|t| now.saturating_sub(**t) < HOUR)
            .count();
        recent >= per_hour as usize
    }

    /// Decides what to do with a stall that starts at `now` and looks like
    /// `key`.
    pub(super) fn decide(
        &self,
        key: &StallKey,
        now: u64,
        cool_down: u64,
        per_hour: u32,
    ) -> Decision {
        let same = self
            .kept
            .iter()
            .rposition(|k| &k.key == key && now.saturating_sub(k.at) <= cool_down);
        if let Some(i) = same {
            return Decision::Coalesce(i);
        }
        if self.over_budget(now, per_hour) && !self.kept.is_empty() {
            return Decision::Coalesce(self.kept.len() - 1);
        }
        Decision::Full
    }

    /// A stall started (full or coalesced).
    pub(super) fn stall_started(&mut self, now: u64) {
        self.last_stall = Some(now);
    }

    /// A full report was made at `at` for a stall that looks like `key`.
    pub(super) fn full_report(&mut self, key: StallKey, at: u64) {
        while self
            .full_reports
            .front()
            .is_some_and(|t| at.saturating_sub(*t) >= HOUR)
        {
            self.full_reports.pop_front();
        }
        self.full_reports.push_back(at);
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(Kept {
            key,
            at,
            report: None,
            written_at: at,
            dirty: false,
        });
    }

    /// The newest kept report, while its incident is active.
    pub(super) fn newest_mut(&mut self) -> Option<&mut Kept> {
        self.kept.back_mut()
    }

    /// The kept report at `i`.
    pub(super) fn kept_mut(&mut self, i: usize) -> Option<&mut Kept> {
        self.kept.get_mut(i)
    }

    /// Records a coalesced stall in the kept report `i`; returns the
    /// occurrence's index, if it is listed.
    pub(super) fn add_occurrence(&mut self, i: usize, occurrence: Occurrence) -> Option<usize> {
        let kept = self.kept.get_mut(i)?;
        kept.dirty = true;
        let report = kept.report.as_mut()?;
        report.coalesced_stalls += 1;
        if report.occurrences.len() < MAX_OCCURRENCES {
            report.occurrences.push(occurrence);
            Some(report.occurrences.len() - 1)
        } else {
            None
        }
    }

    /// Kept reports whose occurrences should be written now: not written
    /// for [`FLUSH_EVERY`], or the storm is over (no stall for the
    /// cool-down).
    pub(super) fn due_flushes(&self, now: u64, cool_down: u64) -> Vec<usize> {
        let quiet = self
            .last_stall
            .is_none_or(|t| now.saturating_sub(t) > cool_down);
        self.kept
            .iter()
            .enumerate()
            .filter(|(_, k)| k.dirty && k.report.is_some())
            .filter(|(_, k)| quiet || now.saturating_sub(k.written_at) >= FLUSH_EVERY)
            .map(|(i, _)| i)
            .collect()
    }

    /// Every kept report with occurrences not written yet.
    pub(super) fn dirty(&self) -> Vec<usize> {
        self.kept
            .iter()
            .enumerate()
            .filter(|(_, k)| k.dirty && k.report.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    /// When the next flush may be due.
    pub(super) fn next_flush(&self, cool_down: u64) -> Option<u64> {
        let storm_over = self.last_stall.map(|t| t.saturating_add(cool_down + 1));
        self.kept
            .iter()
            .filter(|k| k.dirty && k.report.is_some())
            .map(|k| {
                let throttle = k.written_at.saturating_add(FLUSH_EVERY);
                storm_over.map_or(throttle, |s| s.min(throttle))
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: u64 = 60_000_000;

    fn key(culprit: &str) -> StallKey {
        StallKey {
            verdict: VerdictKind::CpuBound,
            culprit: Some(culprit.into()),
        }
    }

    #[test]
    fn the_same_stall_within_the_cool_down_is_coalesced() {
        let mut s = Storm::default();
        assert!(!s.may_coalesce(0, COOL, 10));
        assert_eq!(s.decide(&key("a"), 0, COOL, 10), Decision::Full);
        s.full_report(key("a"), 0);
        assert!(s.may_coalesce(1_000_000, COOL, 10));
        assert_eq!(
            s.decide(&key("a"), 1_000_000, COOL, 10),
            Decision::Coalesce(0)
        );
        assert_eq!(s.decide(&key("b"), 1_000_000, COOL, 10), Decision::Full);
        assert_eq!(s.decide(&key("a"), COOL + 1, COOL, 10), Decision::Full);
    }

    #[test]
    fn past_the_hourly_budget_everything_is_coalesced_into_the_latest() {
        let mut s = Storm::default();
        for i in 0..3 {
            s.full_report(key(&i.to_string()), i * 100 * COOL / 100);
        }
        assert_eq!(
            s.decide(&key("new"), 3 * COOL, COOL, 3),
            Decision::Coalesce(2)
        );
        assert_eq!(s.decide(&key("new"), 3 * COOL, COOL, 4), Decision::Full);
        // An hour after the first, the budget has room again.
        assert_eq!(s.decide(&key("new"), HOUR + 1, COOL, 3), Decision::Full);
    }

    #[test]
    fn flushes_are_throttled_until_the_storm_is_over() {
        let mut s = Storm::default();
        s.full_report(key("a"), 0);
        s.kept_mut(0).unwrap().report = Some(StallReport::blank());
        s.stall_started(1_000_000);
        assert_eq!(s.add_occurrence(0, Occurrence::default()), Some(0));
        assert!(s.due_flushes(2_000_000, COOL).is_empty(), "throttled");
        assert_eq!(s.due_flushes(FLUSH_EVERY, COOL), vec![0]);
        assert_eq!(s.next_flush(COOL), Some(FLUSH_EVERY));
        s.kept_mut(0).unwrap().dirty = false;
        s.kept_mut(0).unwrap().written_at = FLUSH_EVERY;
        s.stall_started(FLUSH_EVERY + 1);
        s.add_occurrence(0, Occurrence::default());
        // No stall for the cool-down: flush at once, whatever the throttle.
        assert_eq!(s.due_flushes(FLUSH_EVERY + 2 + COOL, COOL), vec![0]);
    }

    #[test]
    fn occurrences_beyond_the_cap_are_counted_not_listed() {
        let mut s = Storm::default();
        s.full_report(key("a"), 0);
        s.kept_mut(0).unwrap().report = Some(StallReport::blank());
        for _ in 0..MAX_OCCURRENCES {
            assert!(s.add_occurrence(0, Occurrence::default()).is_some());
        }
        assert_eq!(s.add_occurrence(0, Occurrence::default()), None);
        let r = s.kept_mut(0).unwrap().report.as_ref().unwrap();
        assert_eq!(r.occurrences.len(), MAX_OCCURRENCES);
        assert_eq!(r.coalesced_stalls, MAX_OCCURRENCES as u64 + 1);
    }
}
