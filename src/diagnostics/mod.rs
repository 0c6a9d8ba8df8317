//! Stall diagnostics: captures, verdict and report for each incident.
//!
//! The monitor hands every incident (a runtime's stall, whatever its causes:
//! its probe, its stuck workers) to [`Diagnostics`], which runs it through
//! fixed steps, all on the monitor thread and none waiting on a runtime:
//!
//! 1. **presample** — when a probe is late by half the threshold, the CPU
//!    time of every thread (of the loop thread only, during a storm) is
//!    read from `/proc`, so that at detection the CPU used during the stall
//!    is already known;
//! 2. **detection** — within a storm's cool-down, a cheap capture of the
//!    loop thread alone decides whether the stall looks like the previous
//!    one; if so it is coalesced into that report ([`storm`]). Otherwise
//!    every thread's stack is captured within the capture budget (loop
//!    threads and stuck workers first), the verdict and the culprit are
//!    decided from symbol-table names, and the report is written and
//!    fsync'd at once; then the DWARF pass names files and lines, the
//!    report is rewritten, and all symbolization state is released;
//! 3. **samples** — until the second capture, the loop thread alone is
//!    sampled a few times, so that a verdict rests on more than one look
//!    even when the stall ends early;
//! 4. **second capture** — close to systemd's deadline (last ping +
//!    WatchdogSec − margin), or a second after detection without systemd,
//!    the stacks are captured again; frames that did not move are marked
//!    stuck, the verdict is refined and the report rewritten. Optionally
//!    `WATCHDOG=trigger` follows;
//! 5. **end** — the report is rewritten, marked recovered, with every
//!    duration measured.
//!
//! Every version of the report on disk is complete; later versions replace
//! earlier ones atomically.
//!
//! This file runs the steps and decides between a full report and
//! coalescing; [`looks`] takes the captures and looks, [`active`] keeps an
//! incident in progress and decides again as evidence comes in, [`output`]
//! writes reports and journal entries, [`storm`] keeps the coalescing
//! bookkeeping, [`evidence`] gathers CPU times and lock cycles, and
//! [`assemble`] builds a new report. The verdict itself is
//! [`verdict`](crate::verdict)'s, writing files
//! [`report_store`](crate::report_store)'s.

mod active;
mod assemble;
mod evidence;
mod looks;
mod output;
mod storm;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::{self, micros, us};
use crate::hooks::StuckWorker;
use crate::journal::{self, Journal, JournalEntry};
use crate::metrics::Metrics;
use crate::origin::OwnCode;
use crate::procfs;
use crate::report::{
    group_threads, rfc3339, wall, CaptureInfo, Occurrence, RuntimeMetricsSnapshot, StallReport,
};
use crate::report_store::{Pin, ReportStore, Saved};
use crate::settings::{DiagnosticsConfig, Settings};
use crate::stacks::{Capture, CaptureOutcome, NotCaptured, StackSampler, ThreadStack};
use crate::status::human;
use crate::verdict::{decide, Evidence, LoopSample, Reading, VerdictKind};
use active::{spans, update_durations, ActiveStall};
use assemble::{new_report, NewReport};
use evidence::{cpu_delta, cpu_delta_from, cpu_sample, deadlock_cycles, CpuTimes};
use storm::{Decision, StallKey, Storm};

/// Most samples of the loop thread taken between detection and the second
/// capture.
const MAX_SAMPLES: usize = 8;
/// Budget of one cheap capture of the loop thread alone.
const CHEAP_CAPTURE_BUDGET: Duration = Duration::from_millis(20);

/// What the monitor must do after a diagnostics step.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The report's text file, when it is on disk.
    pub report: Option<PathBuf>,
    /// Ask systemd to act now (`WATCHDOG=trigger`).
    pub trigger_watchdog: bool,
    /// The verdict, after the detection step.
    pub verdict: Option<VerdictKind>,
    /// The stall was coalesced into an earlier report.
    pub coalesced: bool,
}

/// What the monitor knows about an incident when it hands it over.
pub(crate) struct IncidentContext<'a> {
    /// The runtime's index.
    pub idx: usize,
    pub runtime: &'a str,
    /// When the first cause began (µs clock).
    pub started_at: u64,
    /// When it was declared.
    pub detected_at: u64,
    /// The largest lag seen so far.
    pub max_lag: u64,
    pub now: u64,
    /// Workers stuck now (runtimes watched with hooks).
    pub stuck_workers: Vec<StuckWorker>,
    /// Whether the probe is stalled (else only workers are stuck).
    pub probe_stalled: bool,
    pub timeline: &'a VecDeque<(u64, u64)>,
    /// The thread that last polled the probe: one that runs the loop.
    pub poller: Option<i32>,
    /// The runtime's worker threads the hooks know of.
    pub hook_threads: Vec<i32>,
    /// The hooks, when the runtime is watched with them (for poll counts
    /// under `tokio_unstable`).
    pub hooks: Option<crate::hooks::RuntimeHooks>,
    /// How long the monitor itself was not scheduled during the stall.
    pub monitor_gap: Duration,
    pub handle: &'a tokio::runtime::Handle,
    /// systemd's earliest deadline (µs clock), when pings are on.
    pub deadline: Option<u64>,
    /// The loop thread's capture from the hiccup this stall grew out of:
    /// the stall's first look.
    pub prior_sample: Option<LoopSample>,
    /// Whether `prior_sample` came from a hiccup (else from the presample;
    /// set by the diagnostics).
    pub prior_from_hiccup: bool,
    /// The runtime's hiccups before the stall, and its top blockers.
    pub hiccups: Vec<crate::hiccups::Hiccup>,
    pub top_blockers: Vec<crate::hiccups::Blocker>,
}

/// An incident in progress, per runtime.
enum Active {
    Full(Box<ActiveStall>),
    /// Coalesced into the kept report `kept` of the runtime's storm, as
    /// its occurrence `occurrence` (when listed).
    Coalesced {
        kept: usize,
        occurrence: Option<usize>,
    },
}

/// Taken while a probe was late by half the threshold: the late probe's
/// wake time, when sampled, CPU time per tid, and a look at the loop thread.
struct Presample {
    woken_at: u64,
    at: u64,
    cpu: CpuTimes,
    look: Option<LoopSample>,
}

/// Counters the metrics read.
#[derive(Debug, Default)]
pub(crate) struct DiagnosticsCounters {
    pub reports_written: AtomicU64,
    pub reports_failed: AtomicU64,
    /// Saves refused by the hourly byte cap.
    pub reports_dropped: AtomicU64,
    /// Journal entries sent, and sends that failed.
    pub journal_sent: AtomicU64,
    pub journal_failed: AtomicU64,
}

/// Per-watchdog diagnostics state.
pub(crate) struct Diagnostics {
    settings: Arc<Settings>,
    config: DiagnosticsConfig,
    sampler: Option<Arc<StackSampler>>,
    store: ReportStore,
    /// journald, under systemd: an entry per stall, recovery and storm.
    journal: Option<Journal>,
    active: Vec<Option<Active>>,
    storms: Vec<Storm>,
    presamples: Vec<Option<Presample>>,
    /// What is known of the application's own code; learned from captures.
    own: OwnCode,
    /// Time spent waiting for report writes (the disk), so far.
    pub(crate) io_wait: Duration,
    seq: u64,
    /// loopwatch's metrics: report and capture counters, and the text
    /// snapshot in each report.
    pub metrics: Option<Arc<Metrics>>,
    /// The registry whose text goes into each report.
    pub registry: Option<prometheus::Registry>,
    pub counters: Arc<DiagnosticsCounters>,
}

impl Diagnostics {
    /// Prepares capture (the signal handler only) and storage for
    /// `runtimes` runtimes.
    pub(crate) fn new(
        settings: Arc<Settings>,
        config: DiagnosticsConfig,
        runtimes: usize,
    ) -> crate::Result<Self> {
        // The store first: a refused report directory fails start() before
        // the signal handler is installed.
        let store = ReportStore::new(
            config.report_dir.clone(),
            config.keep,
            config.report_bytes_per_hour,
        )?;
        let sampler = match &config.capture {
            Some(c) => Some(Arc::new(StackSampler::new(c.clone())?)),
            None => None,
        };
        Ok(Diagnostics {
            settings,
            sampler,
            store,
            journal: Journal::detect(),
            active: (0..runtimes).map(|_| None).collect(),
            storms: (0..runtimes).map(|_| Storm::default()).collect(),
            presamples: (0..runtimes).map(|_| None).collect(),
            own: OwnCode::for_process(&config.own_crates),
            io_wait: Duration::ZERO,
            seq: 0,
            metrics: None,
            registry: None,
            counters: Arc::default(),
            config,
        })
    }

    /// The report directory, if reports go to files.
    pub(crate) fn report_dir(&self) -> Option<&std::path::Path> {
        self.store.dir()
    }

    fn cool_down(&self) -> u64 {
        micros(self.config.storm_cool_down)
    }

    /// Step 2: an incident was declared. Coalesces it into an earlier
    /// report, or captures, decides and writes a report of its own.
    pub(crate) fn incident_started(&mut self, ctx: IncidentContext<'_>) -> Outcome {
        let idx = ctx.idx;
        let (presample, look) = match self.presamples[idx].take() {
            Some(p) if p.woken_at == ctx.started_at => (Some((p.at, p.cpu)), p.look),
            _ => (None, None),
        };
        let mut ctx = ctx;
        ctx.prior_from_hiccup = ctx.prior_sample.is_some();
        if ctx.prior_sample.is_none() {
            ctx.prior_sample = look;
        }
        let lag = us(ctx.now.saturating_sub(ctx.started_at).max(ctx.max_lag));
        let cool_down = self.cool_down();
        let per_hour = self.config.reports_per_hour;
        self.storms[idx].stall_started(ctx.now);
        if self.storms[idx].may_coalesce(ctx.now, cool_down, per_hour) {
            let key = self.cheap_key(&ctx, presample.as_ref(), lag);
            if let Decision::Coalesce(kept) =
                self.storms[idx].decide(&key, ctx.now, cool_down, per_hour)
            {
                return self.coalesce(idx, kept, key, &ctx);
            }
        }
        self.full_report(ctx, presample, lag)
    }

    /// The verdict and culprit of a stall from the loop thread alone.
    fn cheap_key(
        &self,
        ctx: &IncidentContext<'_>,
        presample: Option<&(u64, CpuTimes)>,
        lag: Duration,
    ) -> StallKey {
        let mut tids: Vec<i32> = ctx
            .stuck_workers
            .iter()
            .flat_map(|s| s.tids.clone())
            .collect();
        tids.extend(ctx.poller);
        let threads = self.capture_threads(&tids, CHEAP_CAPTURE_BUDGET).threads;
        let at = clock::now_us();
        let (cpu_used, gap) = match presample {
            Some((t, before)) => (cpu_delta_from(before, &threads), us(at.saturating_sub(*t))),
            None => (CpuTimes::new(), Duration::ZERO),
        };
        let evidence = Evidence {
            first: &threads,
            second: None,
            cpu_used,
            sample_gap: gap,
            loop_tids: tids,
            monitor_gap: ctx.monitor_gap,
            lag,
            queue_depth: None,
            deadlock: Vec::new(),
            stuck_workers: ctx.stuck_workers.clone(),
            samples: ctx.prior_sample.as_slice(),
            polls_during_stall: None,
            own: self.own.clone(),
            max_stack_bytes: self.max_stack_bytes(),
            // Only the storm key is decided here: the notes do not matter.
            dwarf_pending: false,
        };
        let (verdict, culprit) = decide(&evidence);
        StallKey {
            verdict: verdict.kind,
            culprit: culprit.map(|c| c.function),
        }
    }

    /// Coalesces a stall into the kept report `kept`.
    fn coalesce(
        &mut self,
        idx: usize,
        kept: usize,
        key: StallKey,
        ctx: &IncidentContext<'_>,
    ) -> Outcome {
        let occurrence = Occurrence {
            start: wall(ctx.started_at),
            duration_seconds: None,
            verdict: key.verdict,
            culprit: key.culprit.clone(),
        };
        let listed = self.storms[idx].add_occurrence(kept, occurrence);
        if let Some(m) = &self.metrics {
            m.stall_coalesced(idx);
        }
        let same = self.storms[idx]
            .kept_mut(kept)
            .is_some_and(|k| k.key == key);
        tracing::info!(
            runtime = ctx.runtime,
            verdict = %key.verdict,
            culprit = key.culprit.as_deref().unwrap_or("-"),
            "event loop {:?} stalled again {}; counted in the earlier report, no new capture",
            ctx.runtime,
            if same { "the same way" } else { "past the hourly report budget" }
        );
        self.active[idx] = Some(Active::Coalesced {
            kept,
            occurrence: listed,
        });
        Outcome {
            report: None,
            trigger_watchdog: false,
            verdict: Some(key.verdict),
            coalesced: true,
        }
    }

    /// A full capture and report for a new incident.
    fn full_report(
        &mut self,
        ctx: IncidentContext<'_>,
        presample: Option<(u64, CpuTimes)>,
        lag: Duration,
    ) -> Outcome {
        let t0 = clock::now_us();
        let loop_tids = Self::loop_threads(&ctx);
        let (first, info) = self.capture("detection", &loop_tids, ctx.deadline);
        self.own.learn(&first);
        let first_at = clock::now_us();
        let rm = RuntimeMetricsSnapshot::read(ctx.handle);
        self.seq += 1;
        let report = new_report(
            &self.settings,
            NewReport {
                seq: self.seq,
                runtime: ctx.runtime,
                started_at: ctx.started_at,
                detected_at: ctx.detected_at,
                lag,
                deadline: ctx.deadline,
                timeline: ctx.timeline,
                stuck_workers: ctx.stuck_workers.clone(),
                runtime_metrics: rm.clone(),
                capture: info,
                capture_on: self.sampler.is_some(),
                hiccups: ctx.hiccups,
                top_blockers: ctx.top_blockers,
            },
        );
        let second_due = self.second_capture_due(ctx.now, ctx.deadline);
        let mut report = report;
        if let Some(look) = &ctx.prior_sample {
            let reason = if ctx.prior_from_hiccup {
                "hiccup"
            } else {
                "presample"
            };
            report.loop_looks.push(self.look_info(reason, look));
        }
        let mut stall = ActiveStall {
            report,
            key: StallKey {
                verdict: VerdictKind::Unknown,
                culprit: None,
            },
            workers: spans(&ctx.stuck_workers, ctx.now),
            probe_stalled: ctx.probe_stalled,
            loop_tids,
            poller: ctx.poller,
            polls: ctx.hooks.clone().and_then(|h| {
                let begun = h.polls_begun(ctx.poller?)?;
                Some((h, begun))
            }),
            monitor_gap: ctx.monitor_gap,
            lag,
            queue_depth: Some(rm.global_queue_depth),
            first,
            first_at,
            second: None,
            samples: ctx.prior_sample.into_iter().collect(),
            next_sample: None,
            presample,
            second_due,
            symbolize_pending: self.sampler.is_some(),
            deadline: ctx.deadline,
            deadlock: Vec::new(),
        };
        stall.next_sample = self.next_sample_after(&stall, first_at);
        self.refresh(&mut stall, clock::now_us());
        stall.key = StallKey {
            verdict: stall.report.verdict.kind,
            culprit: stall.report.culprit.as_ref().map(|c| c.function.clone()),
        };
        self.storms[ctx.idx].full_report(stall.key.clone(), ctx.now);
        let path = self.write(&mut stall);
        self.to_journal(&journal::stall_entry(&stall.report, path.as_deref()));
        tracing::error!(
            runtime = ctx.runtime,
            verdict = %stall.report.verdict.kind,
            culprit = stall.report.culprit.as_ref().map(|c| c.function.as_str()).unwrap_or("-"),
            report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
            took = %human(us(clock::now_us() - t0)),
            "{}", stall.report.summary()
        );
        let verdict = Some(stall.report.verdict.kind);
        self.active[ctx.idx] = Some(Active::Full(Box::new(stall)));
        Outcome {
            report: path,
            trigger_watchdog: false,
            verdict,
            coalesced: false,
        }
    }

    /// The causes of runtime `idx`'s incident changed (the probe stalled
    /// too, or the set of stuck workers changed): the verdict is decided
    /// again and the report rewritten.
    pub(crate) fn causes_changed(
        &mut self,
        idx: usize,
        stuck_workers: &[StuckWorker],
        probe_stalled: bool,
        now: u64,
    ) -> Outcome {
        let Some(active) = self.active[idx].take() else {
            return Outcome::default();
        };
        let Active::Full(mut stall) = active else {
            self.active[idx] = Some(active);
            return Outcome::default();
        };
        for w in &mut stall.workers {
            if w.until.is_none() && !stuck_workers.iter().any(|s| s.worker == w.info.worker) {
                w.until = Some(now);
            }
        }
        for s in stuck_workers {
            if !stall
                .workers
                .iter()
                .any(|w| w.until.is_none() && w.info.worker == s.worker)
            {
                stall.workers.extend(spans(std::slice::from_ref(s), now));
            }
        }
        if probe_stalled && !stall.probe_stalled {
            stall
                .report
                .notes
                .push("the whole event loop stopped answering while workers were stuck".into());
        }
        stall.probe_stalled |= probe_stalled;
        self.refresh(&mut stall, now);
        let path = self.write(&mut stall);
        self.active[idx] = Some(Active::Full(stall));
        Outcome {
            report: path,
            ..Outcome::default()
        }
    }

    /// Steps 3 and 4 when due (samples, the second capture), and storm
    /// reports whose occurrences should be written.
    pub(crate) fn tick(&mut self, now: u64) -> Vec<Outcome> {
        let mut out = Vec::new();
        for i in 0..self.active.len() {
            let Some(Active::Full(mut stall)) = self.active[i].take() else {
                continue;
            };
            if stall.next_sample.is_some_and(|at| now >= at) {
                if let Some(t) = stall.poller.and_then(|tid| self.sample_thread(tid)) {
                    let look = LoopSample {
                        at: clock::now_us(),
                        stack: t,
                    };
                    let info = self.look_info("sample", &look);
                    stall.report.loop_looks.push(info);
                    stall.samples.push(look);
                }
                stall.next_sample = self.next_sample_after(&stall, now);
            }
            if stall.symbolize_pending {
                out.extend(self.symbolize_latest(&mut stall));
            }
            if stall.second_due.is_some_and(|d| now >= d) {
                out.push(self.second_capture(&mut stall));
            }
            self.active[i] = Some(Active::Full(stall));
        }
        let cool_down = self.cool_down();
        for i in 0..self.storms.len() {
            for k in self.storms[i].due_flushes(now, cool_down) {
                if let Some(path) = self.flush_kept(i, k, now) {
                    out.push(Outcome {
                        report: Some(path),
                        ..Outcome::default()
                    });
                }
            }
        }
        out
    }

    /// Step 5: runtime `idx`'s incident ended after `duration` (µs).
    pub(crate) fn incident_ended(&mut self, idx: usize, duration: u64, ended_at: u64) -> Outcome {
        self.presamples[idx] = None;
        match self.active[idx].take() {
            None => Outcome::default(),
            Some(Active::Coalesced { kept, occurrence }) => {
                if let Some(k) = self.storms[idx].kept_mut(kept) {
                    if let (Some(r), Some(o)) = (k.report.as_mut(), occurrence) {
                        if let Some(occ) = r.occurrences.get_mut(o) {
                            occ.duration_seconds = Some(us(duration).as_secs_f64());
                        }
                    }
                    k.dirty = true;
                }
                Outcome {
                    coalesced: true,
                    ..Outcome::default()
                }
            }
            Some(Active::Full(mut stall)) => {
                // No second capture after the end: its time no longer
                // limits the pass (systemd's deadline still does).
                stall.second_due = None;
                self.symbolize_now(&mut stall);
                stall.report.recovered = true;
                stall.report.duration_seconds = Some(us(duration).as_secs_f64());
                stall.report.stalled_for_seconds = us(duration).as_secs_f64();
                stall.report.times.end = Some(wall(ended_at));
                for w in &mut stall.workers {
                    w.until.get_or_insert(ended_at);
                }
                update_durations(&mut stall, ended_at);
                let path = self.write(&mut stall);
                self.release_symbols();
                self.to_journal(&journal::stall_entry(&stall.report, path.as_deref()));
                tracing::warn!(
                    runtime = %stall.report.runtime,
                    report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
                    "{}", stall.report.summary()
                );
                let written_at = clock::now_us();
                if let Some(k) = self.storms[idx].newest_mut() {
                    k.report = Some(stall.report);
                    k.written_at = written_at;
                }
                Outcome {
                    report: path,
                    ..Outcome::default()
                }
            }
        }
    }

    /// The next time a step is due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let now = clock::now_us();
        let active = self.active.iter().filter_map(|a| match a {
            Some(Active::Full(s)) if s.symbolize_pending && !s.pass_deferred(now) => Some(0),
            Some(Active::Full(s)) => [s.second_due, s.next_sample].into_iter().flatten().min(),
            _ => None,
        });
        let cool_down = self.cool_down();
        let flushes = self.storms.iter().filter_map(|s| s.next_flush(cool_down));
        active.chain(flushes).min()
    }
}
