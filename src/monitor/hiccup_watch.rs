//! When the monitor looks at a hiccup, and what it records.
//!
//! On each tick, for each runtime: when the outstanding probe has waited
//! longer than the warn threshold (and less than the stall threshold), the
//! loop thread is captured alone — at most `max_hiccup_captures_per_second`
//! per runtime on average, the rest counted — and kept as the pending hiccup's
//! sample. When the probe answers with a lag above the warn threshold, the
//! hiccup is recorded: into the [`HiccupLog`](crate::hiccups::HiccupLog),
//! the metrics and the log (aggregated). A probe that goes on into a stall
//! hands its sample to the stall as its first look, and is recorded as a
//! hiccup that grew into a stall: no work is done twice.
//!
//! Hiccup work never delays a stall: a capture here is one thread with a
//! small budget, and stall detection runs in the same tick after it.

use super::{guard_diag, Monitor};
use crate::clock::us;
use crate::hiccups::{
    Hiccup, HiccupCause, LogAggregator, Suppressed, OTHER_CULPRIT, UNKNOWN_CULPRIT,
};
use crate::probe::ProbeReading;
use crate::report::wall;
use crate::stacks::ThreadStack;
use crate::status::human;
use crate::verdict::LoopSample;

/// A late probe being watched.
#[derive(Debug)]
struct Pending {
    /// Its wake time (µs clock).
    woken_at: u64,
    /// The loop thread's capture, when one was taken.
    sample: Option<ThreadStack>,
    /// When the capture was started (µs clock).
    taken_at: u64,
    /// When the loop thread's stack had been copied, at the latest (µs
    /// clock): a probe answered before then may have been answered before
    /// the copy, so the sample may show the loop after the block (idle in
    /// `epoll_wait`), not the block itself.
    copied_by: u64,
}

/// One runtime's hiccup state.
#[derive(Debug, Default)]
pub(crate) struct HiccupWatch {
    pending: Option<Pending>,
    /// The capture rate limit's token bucket: (tokens in millionths of a
    /// capture, when last refilled, µs clock).
    bucket: Option<(u64, u64)>,
    /// The wake time of the last probe recorded as a hiccup.
    recorded: Option<u64>,
    log: LogAggregator,
    /// The first probe has been answered. Until then the runtime may not
    /// run yet (a current_thread runtime before `block_on`): no hiccups.
    started: bool,
}

impl Monitor {
    /// Looks at runtime `i`'s probe for a hiccup: captures a late one live,
    /// records an answered one.
    pub(super) fn watch_hiccup(&mut self, i: usize, reading: ProbeReading, now: u64) {
        let Some(warn) = self.warn else { return };
        if !self.loops[i].hiccups.started {
            self.loops[i].hiccups.started = matches!(reading, ProbeReading::Answered { .. });
            if let ProbeReading::Answered { woken_at, .. } = reading {
                self.loops[i].hiccups.recorded = Some(woken_at);
            }
            return;
        }
        match reading {
            ProbeReading::Waiting { woken_at } => {
                let lag = now.saturating_sub(woken_at);
                let w = &self.loops[i];
                if lag < warn
                    || w.tracker.stall.is_some()
                    || w.hiccups
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.woken_at == woken_at)
                {
                    return;
                }
                let sample = if self.may_capture_hiccup(i, now) {
                    let poller = self.loops[i].probe.poller_tid();
                    poller.and_then(|tid| {
                        guard_diag(
                            &mut self.diag,
                            &self.metrics,
                            &mut self.internal_errors,
                            |d| d.sample_thread_timed(tid),
                        )
                    })
                } else {
                    self.metrics.hiccup_capture_skipped(i);
                    None
                };
                let copied_by = sample.as_ref().map_or(now, |(_, at)| *at);
                self.loops[i].hiccups.pending = Some(Pending {
                    woken_at,
                    sample: sample.map(|(t, _)| t),
                    taken_at: now,
                    copied_by,
                });
            }
            ProbeReading::Answered {
                woken_at,
                answered_at,
            } => {
                let lag = answered_at.saturating_sub(woken_at);
                let w = &mut self.loops[i];
                if lag < warn || lag > self.threshold || w.hiccups.recorded == Some(woken_at) {
                    return;
                }
                w.hiccups.recorded = Some(woken_at);
                // A sample is of the block only if the block outlived it;
                // else the hiccup is recorded as not caught live.
                let sample = match w.hiccups.pending.take() {
                    Some(p) if p.woken_at == woken_at && answered_at > p.copied_by => p.sample,
                    _ => None,
                };
                self.record_hiccup(i, woken_at, lag, sample, false, now);
            }
            ProbeReading::Gone => {}
        }
    }

    /// Whether runtime `i` may take another hiccup capture now: a token
    /// bucket refilled at `max_hiccup_captures_per_second` tokens a second,
    /// holding at most twice that, so the long-run rate is the limit and a
    /// block that comes once a second is captured every time despite jitter.
    fn may_capture_hiccup(&mut self, i: usize, now: u64) -> bool {
        let per_second = u64::from(self.shared.settings.hiccup_captures_per_second);
        if per_second == 0 {
            return false;
        }
        let capacity = per_second.saturating_mul(2).saturating_mul(1_000_000);
        let h = &mut self.loops[i].hiccups;
        let (tokens, at) = h.bucket.unwrap_or((capacity, now));
        // Tokens in millionths of a capture: refill per µs = per_second.
        let tokens = tokens
            .saturating_add(now.saturating_sub(at).saturating_mul(per_second))
            .min(capacity);
        if tokens < 1_000_000 {
            h.bucket = Some((tokens, now));
            return false;
        }
        h.bucket = Some((tokens - 1_000_000, now));
        true
    }

    /// Runtime `i`'s probe woken at `woken_at` stalled: its hiccup, if one
    /// was pending, is recorded as grown into a stall and its sample handed
    /// over as the stall's first look.
    pub(super) fn hiccup_grew_into_stall(
        &mut self,
        i: usize,
        woken_at: u64,
        lag: u64,
        now: u64,
    ) -> Option<LoopSample> {
        self.warn?;
        let w = &mut self.loops[i];
        let pending = w
            .hiccups
            .pending
            .take()
            .filter(|p| p.woken_at == woken_at)?;
        w.hiccups.recorded = Some(woken_at);
        let sample = pending.sample.clone();
        self.record_hiccup(i, woken_at, lag, pending.sample, true, now);
        sample.map(|stack| LoopSample {
            at: pending.taken_at,
            stack,
        })
    }

    /// Records one hiccup: the log of hiccups, the metrics, the log lines.
    fn record_hiccup(
        &mut self,
        i: usize,
        woken_at: u64,
        lag: u64,
        sample: Option<ThreadStack>,
        grew_into_stall: bool,
        now: u64,
    ) {
        let paused = self
            .gaps
            .iter()
            .any(|g| g.to > woken_at && g.from < woken_at.saturating_add(lag));
        let cause = HiccupCause::of(sample.as_ref(), paused);
        let (culprit, stack) = match &sample {
            Some(s) => self.diag.culprit_of(s),
            None => (None, Vec::new()),
        };
        let name = self.loops[i].name.clone();
        let hiccup = Hiccup {
            runtime: name.clone(),
            start: wall(woken_at),
            duration_seconds: us(lag).as_secs_f64(),
            cause: cause.clone(),
            culprit: culprit.clone(),
            caught_live: sample.is_some(),
            stack,
            grew_into_stall,
        };
        let label = self.hiccup_log.lock().record(i, hiccup);
        self.metrics.hiccup(i, us(lag), &label);
        let (summaries, say) = self.loops[i].hiccups.log.note(&label, lag, now);
        say_held_back(&name, summaries);
        if say {
            let place = culprit.map(|c| format!(" in {c}")).unwrap_or_default();
            tracing::info!(
                runtime = %name,
                duration = %human(us(lag)),
                cause = %cause,
                "event loop {name:?} blocked {}{place} ({cause}){}",
                human(us(lag)),
                if grew_into_stall { "; it grew into a stall" } else { "" }
            );
        }
    }

    /// Says what the hiccup logs held back once their minute is over.
    pub(super) fn flush_hiccup_logs(&mut self, now: u64) {
        for i in 0..self.loops.len() {
            if self.loops[i].hiccups.log.due().is_none_or(|d| now < d) {
                continue;
            }
            let held_back = self.loops[i].hiccups.log.roll(now);
            say_held_back(&self.loops[i].name, held_back);
        }
    }

    /// When runtime `i` next needs a look for hiccups: when its late probe
    /// crosses the warn threshold, if it has not been looked at yet.
    pub(super) fn next_hiccup_look(&self, i: usize, reading: ProbeReading) -> Option<u64> {
        let warn = self.warn?;
        let w = &self.loops[i];
        match reading {
            ProbeReading::Waiting { woken_at }
                if w.tracker.stall.is_none()
                    && w.hiccups
                        .pending
                        .as_ref()
                        .is_none_or(|p| p.woken_at != woken_at) =>
            {
                Some(woken_at.saturating_add(warn))
            }
            _ => w.hiccups.log.due(),
        }
    }
}

/// One log line per culprit whose hiccups the last minute held back.
fn say_held_back(name: &str, held_back: Vec<(String, Suppressed)>) {
    for (c, s) in held_back {
        let blocks = if s.count == 1 { "block" } else { "blocks" };
        let place = match c.as_str() {
            UNKNOWN_CULPRIT => "with no culprit caught".to_string(),
            OTHER_CULPRIT => "in other functions (past the culprit cap)".to_string(),
            c => format!("like it in {c}"),
        };
        tracing::info!(
            runtime = %name,
            culprit = %c,
            "event loop {name:?}: {} more {blocks} {place} in the last minute (longest {})",
            s.count,
            human(us(s.longest))
        );
    }
}
