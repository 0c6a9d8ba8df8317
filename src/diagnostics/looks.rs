//! How the diagnostics look at threads: captures of every thread within
//! the capture budget, cheap looks at the loop thread alone (presample,
//! samples, hiccups), the culprit of one look, and the DWARF pass with its
//! budget.
//!
//! Capturing itself is [`stacks`](crate::stacks)' job; this file decides
//! which threads, in which order, with which budget, and what a look says.

use super::*;

impl Diagnostics {
    /// Step 1: samples CPU time for the late probe `woken_at` of runtime
    /// `idx`: of every thread, or of the loop thread `poller` alone when
    /// the stall will probably be coalesced into an earlier report.
    pub(crate) fn presample(&mut self, idx: usize, woken_at: u64, now: u64, poller: Option<i32>) {
        if self.presampled(idx, woken_at) {
            return;
        }
        let cheap =
            self.storms[idx].may_coalesce(now, self.cool_down(), self.config.reports_per_hour);
        let tids = poller.filter(|_| cheap).map(|t| vec![t]);
        let cpu = cpu_sample(tids.as_deref());
        // A first look at the loop thread, so that a verdict at detection
        // rests on two (cheap: one signal).
        let look = poller.and_then(|tid| {
            let stack = self.sample_thread(tid)?;
            Some(LoopSample { at: now, stack })
        });
        self.presamples[idx] = Some(Presample {
            woken_at,
            at: now,
            cpu,
            look,
        });
    }

    /// True when the late probe `woken_at` was already presampled.
    pub(crate) fn presampled(&self, idx: usize, woken_at: u64) -> bool {
        self.presamples[idx]
            .as_ref()
            .is_some_and(|p| p.woken_at == woken_at)
    }

    /// Captures `tids` in that order within `budget`: stacks when capture
    /// is on, `/proc` facts only when it is off.
    pub(super) fn capture_threads(&self, tids: &[i32], budget: Duration) -> Capture {
        match &self.sampler {
            Some(s) => s.capture_within(tids, budget),
            None => Capture {
                threads: tids
                    .iter()
                    .map(|&tid| {
                        ThreadStack::not_captured(
                            tid,
                            procfs::read_thread(tid),
                            NotCaptured::CaptureOff,
                        )
                    })
                    .collect(),
                signal_duration: Duration::ZERO,
                unwind_duration: Duration::ZERO,
                symbolize_duration: Duration::ZERO,
            },
        }
    }

    /// Captures every thread, `first` ones first (stuck workers, then the
    /// loop's threads), within the capture budget and never more than half
    /// the time left before systemd's `deadline`.
    pub(super) fn capture(
        &self,
        reason: &str,
        first: &[i32],
        deadline: Option<u64>,
    ) -> (Vec<ThreadStack>, Option<CaptureInfo>) {
        let mut order: Vec<i32> = first.to_vec();
        order.extend(
            procfs::list_threads()
                .into_iter()
                .filter(|t| !first.contains(t)),
        );
        let c = self.capture_threads(&order, self.capture_budget(deadline));
        if self.sampler.is_none() {
            return (c.threads, None);
        }
        let total = c.signal_duration + c.unwind_duration + c.symbolize_duration;
        if let Some(m) = &self.metrics {
            m.capture_took(total);
        }
        let info = CaptureInfo {
            reason: reason.to_string(),
            at: rfc3339(SystemTime::now()),
            threads: c.threads.len(),
            unresponsive: c
                .threads
                .iter()
                .filter(|t| t.outcome == CaptureOutcome::Unresponsive)
                .count(),
            signal_seconds: c.signal_duration.as_secs_f64(),
            unwind_symbolize_seconds: (c.unwind_duration + c.symbolize_duration).as_secs_f64(),
        };
        (c.threads, Some(info))
    }

    /// The capture budget: the configured one, but never more than half the
    /// time left before systemd's deadline (and at least 10 ms).
    pub(super) fn capture_budget(&self, deadline: Option<u64>) -> Duration {
        let configured = self
            .config
            .capture
            .as_ref()
            .map_or(Duration::from_millis(200), |c| c.budget);
        match deadline {
            Some(d) => configured
                .min(us(d.saturating_sub(clock::now_us()) / 2))
                .max(Duration::from_millis(10)),
            None => configured,
        }
    }

    /// What the report says of one look at the loop thread.
    pub(super) fn look_info(&self, reason: &str, look: &LoopSample) -> crate::report::LoopLook {
        let facts = look.stack.facts.as_ref();
        crate::report::LoopLook {
            reason: reason.to_string(),
            at: wall(look.at),
            state: facts.map(|f| format!("{} ({})", f.state, f.state_name)),
            culprit: self.culprit_of(&look.stack).0,
        }
    }

    /// The culprit of one look at a loop thread (the innermost own-code
    /// function inside the current poll), and its frames classified.
    pub(crate) fn culprit_of(
        &self,
        look: &ThreadStack,
    ) -> (Option<String>, Vec<crate::stacks::Frame>) {
        let r = Reading::new(look, &self.own, self.max_stack_bytes());
        (r.culprit_function(), r.frames.clone())
    }

    pub(super) fn max_stack_bytes(&self) -> Option<usize> {
        self.config.capture.as_ref().map(|c| c.max_stack_bytes)
    }

    /// The loop thread alone, cheaply: one signal, symbol-table names.
    pub(crate) fn sample_thread(&self, tid: i32) -> Option<ThreadStack> {
        self.sample_thread_timed(tid).map(|(t, _)| t)
    }

    /// [`sample_thread`](Self::sample_thread), with the time (µs clock) by
    /// which its stack had been copied: the time the capture returned less
    /// its unwinding and naming, which come after the copy.
    pub(crate) fn sample_thread_timed(&self, tid: i32) -> Option<(ThreadStack, u64)> {
        let c = self.capture_threads(&[tid], CHEAP_CAPTURE_BUDGET);
        let copied_by =
            clock::now_us().saturating_sub(clock::micros(c.unwind_duration + c.symbolize_duration));
        c.threads.into_iter().next().map(|t| (t, copied_by))
    }

    /// The second pass over a report's stacks: files, lines and inlined
    /// functions from debug information, within the symbolization budget
    /// (and never past `until`, a monotonic clock reading); then every bit
    /// of symbolization state is released.
    pub(super) fn symbolize(
        &self,
        threads: &mut [ThreadStack],
        notes: &mut Vec<String>,
        until: Option<u64>,
    ) {
        let (Some(sampler), Some(configured)) = (
            &self.sampler,
            self.config.capture.as_ref().map(|c| c.symbolize_budget),
        ) else {
            return;
        };
        let budget = match until {
            Some(u) => configured.min(us(u.saturating_sub(clock::now_us()))),
            None => configured,
        };
        let done = sampler.symbolize(threads, budget);
        if done.ran_out_of_time {
            notes.push(format!(
                "symbolization ran out of its {} budget: some frames show symbol-table names or addresses only",
                human(budget)
            ));
        }
        for n in done.notes {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
    }

    /// The loop's threads: the probe's poller, the workers the hooks know,
    /// and threads named like tokio's workers (one `/proc` read per thread,
    /// so only for a full report).
    pub(super) fn loop_threads(ctx: &IncidentContext<'_>) -> Vec<i32> {
        let mut tids: Vec<i32> = ctx
            .stuck_workers
            .iter()
            .flat_map(|s| s.tids.clone())
            .collect();
        if ctx.probe_stalled {
            tids.extend(ctx.poller);
            tids.extend(ctx.hook_threads.iter().copied());
            for tid in procfs::list_threads() {
                if !tids.contains(&tid)
                    && procfs::read_thread(tid)
                        .is_some_and(|f| f.name.starts_with("tokio-runtime-w"))
                {
                    tids.push(tid);
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        tids.retain(|t| seen.insert(*t));
        tids
    }

    /// Drops the sampler's symbolization state and returns the freed heap
    /// to the OS: after the last write of a report version.
    pub(super) fn release_symbols(&self) {
        if let Some(sampler) = &self.sampler {
            sampler.release();
        }
    }
}
