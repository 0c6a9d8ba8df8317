//! A fully diagnosed incident in progress: its captures and looks, the
//! verdict decided again from all of them, the second capture and the
//! DWARF passes, and the stuck workers' durations.

use super::*;

/// The least time worth a DWARF pass over the detection capture when the
/// second capture (which has its own pass) is due sooner than that.
const MIN_PASS_BEFORE_SECOND: Duration = Duration::from_millis(50);

/// A fully diagnosed incident in progress.
pub(super) struct ActiveStall {
    pub(super) report: StallReport,
    pub(super) key: StallKey,
    pub(super) workers: Vec<WorkerSpan>,
    pub(super) probe_stalled: bool,
    pub(super) loop_tids: Vec<i32>,
    pub(super) poller: Option<i32>,
    /// The hooks and the poller's polls begun at detection, to count the
    /// polls it completed during the stall (`tokio_unstable`).
    pub(super) polls: Option<(crate::hooks::RuntimeHooks, u64)>,
    pub(super) monitor_gap: Duration,
    pub(super) lag: Duration,
    pub(super) queue_depth: Option<usize>,
    pub(super) first: Vec<ThreadStack>,
    pub(super) first_at: u64,
    pub(super) second: Option<(u64, Vec<ThreadStack>)>,
    /// Looks at the loop thread alone, oldest first: the hiccup's or the
    /// presample's before detection, then between the captures.
    pub(super) samples: Vec<LoopSample>,
    pub(super) next_sample: Option<u64>,
    pub(super) presample: Option<(u64, CpuTimes)>,
    pub(super) second_due: Option<u64>,
    /// The DWARF pass of the latest capture is still to do (done on the
    /// next tick, so that the monitor says the stall and calls back first).
    pub(super) symbolize_pending: bool,
    /// systemd's earliest deadline (µs clock), when pings are on.
    pub(super) deadline: Option<u64>,
    /// Lock cycles found by parking_lot's checker (reported once by it).
    pub(super) deadlock: Vec<String>,
}

impl ActiveStall {
    /// Whether the DWARF pass over the detection capture is put off: the
    /// detection capture took (nearly) all the time before the second
    /// capture, whose own pass, with the full budget, names both; a pass
    /// now would have no time and only add a note. The pass stays pending
    /// (the second capture, or the stall's end, runs it).
    pub(super) fn pass_deferred(&self, now: u64) -> bool {
        self.second.is_none()
            && self
                .second_due
                .is_some_and(|due| due.saturating_sub(now) < clock::micros(MIN_PASS_BEFORE_SECOND))
    }
}

/// A worker stuck during an incident: since when, and until when once it
/// moves again (µs clock), so that every version of the report says how
/// long it has been stuck.
pub(super) struct WorkerSpan {
    pub(super) info: StuckWorker,
    pub(super) since: u64,
    pub(super) until: Option<u64>,
}

impl Diagnostics {
    pub(super) fn second_capture_due(&self, now: u64, deadline: Option<u64>) -> Option<u64> {
        match deadline {
            Some(d) => {
                let due = d.saturating_sub(micros(self.config.deadline_margin));
                // Too close to the deadline: the detection report is the last.
                (due > now.saturating_add(50_000)).then_some(due)
            }
            None => Some(now.saturating_add(1_000_000)),
        }
    }

    /// When the loop thread is next sampled: every quarter of the
    /// threshold (20 ms to 250 ms), until the second capture, at most
    /// [`MAX_SAMPLES`] times.
    pub(super) fn next_sample_after(&self, stall: &ActiveStall, now: u64) -> Option<u64> {
        stall.poller?;
        if stall.samples.len() >= MAX_SAMPLES || stall.second.is_some() {
            return None;
        }
        let every = micros(self.settings.threshold / 4).clamp(20_000, 250_000);
        let at = now.saturating_add(every);
        stall.second_due.is_none_or(|d| at < d).then_some(at)
    }

    /// Recomputes verdict, culprit and thread groups from every capture
    /// and sample, and updates the stuck workers' durations.
    pub(super) fn refresh(&self, stall: &mut ActiveStall, now: u64) {
        update_durations(stall, now);
        let stuck_now: Vec<StuckWorker> = stall
            .workers
            .iter()
            .filter(|w| w.until.is_none())
            .map(|w| w.info.clone())
            .collect();
        stall.deadlock.extend(deadlock_cycles());
        stall.deadlock.dedup();
        let second = stall.second.as_ref().map(|(_, s)| s.as_slice());
        // CPU used: between the two captures when the second exists, else
        // between the presample and the first capture.
        let (cpu_used, gap) = match &stall.second {
            Some((at, sec)) => (
                cpu_delta(&stall.first, sec),
                us(at.saturating_sub(stall.first_at)),
            ),
            None => match &stall.presample {
                Some((at, before)) => (
                    cpu_delta_from(before, &stall.first),
                    us(stall.first_at.saturating_sub(*at)),
                ),
                None => (CpuTimes::new(), Duration::ZERO),
            },
        };
        let evidence = Evidence {
            first: &stall.first,
            second,
            cpu_used: cpu_used.clone(),
            sample_gap: gap,
            loop_tids: stall.loop_tids.clone(),
            monitor_gap: stall.monitor_gap,
            lag: stall.lag,
            queue_depth: stall.queue_depth,
            deadlock: stall.deadlock.clone(),
            stuck_workers: stuck_now,
            samples: &stall.samples,
            polls_during_stall: stall.polls.as_ref().and_then(|(h, at_detection)| {
                Some(h.polls_begun(stall.poller?)?.saturating_sub(*at_detection))
            }),
            own: self.own.clone(),
            max_stack_bytes: self.max_stack_bytes(),
            dwarf_pending: stall.symbolize_pending && crate::stacks::executable_has_dwarf(),
        };
        let (verdict, culprit) = decide(&evidence);
        stall.report.verdict = verdict;
        stall.report.culprit = culprit;
        stall.report.threads = group_threads(
            &stall.first,
            second,
            &stall.loop_tids,
            &cpu_used,
            &self.own,
            self.max_stack_bytes(),
        );
    }

    /// The DWARF pass over the latest capture (the second if taken, else
    /// the first), then the report decided again and rewritten. Never past
    /// the second capture's time or systemd's deadline.
    pub(super) fn symbolize_latest(&mut self, stall: &mut ActiveStall) -> Option<Outcome> {
        if !self.symbolize_now(stall) {
            return None;
        }
        let path = self.write(stall);
        // After the last write of this version: the report's own buffers
        // are freed too.
        self.release_symbols();
        Some(Outcome {
            report: path,
            ..Outcome::default()
        })
    }

    /// Runs a pending DWARF pass and decides again; false when none was
    /// pending.
    pub(super) fn symbolize_now(&mut self, stall: &mut ActiveStall) -> bool {
        if !stall.symbolize_pending || stall.pass_deferred(clock::now_us()) {
            return false;
        }
        stall.symbolize_pending = false;
        let until = stall.second_due.or(stall.deadline);
        let mut notes = std::mem::take(&mut stall.report.notes);
        match &mut stall.second {
            Some((_, second)) => {
                self.symbolize(second, &mut notes, until);
                // The report's thread groups show the detection capture's
                // frames, whose own pass may have been put off: they get
                // the names this pass found.
                crate::stacks::carry_names(second, &mut stall.first);
            }
            None => self.symbolize(&mut stall.first, &mut notes, until),
        }
        stall.report.notes = notes;
        // Files and lines now known: learn the workspace from them.
        let latest = match &stall.second {
            Some((_, second)) => second,
            None => &stall.first,
        };
        self.own.learn(latest);
        self.refresh(stall, clock::now_us());
        true
    }

    /// Step 4: the second capture.
    pub(super) fn second_capture(&mut self, stall: &mut ActiveStall) -> Outcome {
        stall.second_due = None;
        stall.next_sample = None;
        let reason = if stall.deadline.is_some() {
            "before-deadline"
        } else {
            "still-stalled"
        };
        let (mut second, info) = self.capture(reason, &stall.loop_tids.clone(), stall.deadline);
        // Names the first capture's DWARF pass found, so that this version
        // does not compare DWARF names with symbol-table names.
        crate::stacks::carry_names(&stall.first, &mut second);
        self.own.learn(&second);
        let at = clock::now_us();
        stall.report.captures.extend(info);
        stall.report.stalled_for_seconds =
            us(at.saturating_sub(stall.first_at)).as_secs_f64() + stall.lag.as_secs_f64();
        stall.second = Some((at, second));
        stall.symbolize_pending = self.sampler.is_some();
        self.refresh(stall, at);
        let mut path = self.write(stall);
        if let Some(p) = self.symbolize_latest(stall).and_then(|o| o.report) {
            path = Some(p);
        }
        tracing::warn!(
            runtime = %stall.report.runtime,
            report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
            "loopwatch: second capture taken; {}", stall.report.summary()
        );
        Outcome {
            report: path,
            trigger_watchdog: self.config.trigger_watchdog && reason == "before-deadline",
            ..Outcome::default()
        }
    }
}

/// Worker spans for workers stuck at `now`.
pub(super) fn spans(stuck: &[StuckWorker], now: u64) -> Vec<WorkerSpan> {
    stuck
        .iter()
        .map(|s| WorkerSpan {
            info: s.clone(),
            since: now.saturating_sub(micros(Duration::from_secs_f64(
                s.stuck_for_seconds.max(0.0),
            ))),
            until: None,
        })
        .collect()
}

/// Every stuck worker's duration as of `now` (or as of when it moved
/// again), in the report too.
pub(super) fn update_durations(stall: &mut ActiveStall, now: u64) {
    for w in &mut stall.workers {
        w.info.stuck_for_seconds = us(w.until.unwrap_or(now).saturating_sub(w.since)).as_secs_f64();
    }
    stall.report.stuck_workers = stall.workers.iter().map(|w| w.info.clone()).collect();
}
