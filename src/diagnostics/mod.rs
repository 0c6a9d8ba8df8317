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
//! earlier ones atomically. Gathering raw evidence is [`evidence`]'s job,
//! assembling a new report [`assemble`]'s; the verdict itself is
//! [`verdict`](crate::verdict)'s, writing files
//! [`report_store`](crate::report_store)'s.

mod assemble;
mod evidence;
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

/// A worker stuck during an incident: since when, and until when once it
/// moves again (µs clock), so that every version of the report says how
/// long it has been stuck.
struct WorkerSpan {
    info: StuckWorker,
    since: u64,
    until: Option<u64>,
}

/// A fully diagnosed incident in progress.
struct ActiveStall {
    report: StallReport,
    key: StallKey,
    workers: Vec<WorkerSpan>,
    probe_stalled: bool,
    loop_tids: Vec<i32>,
    poller: Option<i32>,
    /// The hooks and the poller's polls begun at detection, to count the
    /// polls it completed during the stall (`tokio_unstable`).
    polls: Option<(crate::hooks::RuntimeHooks, u64)>,
    monitor_gap: Duration,
    lag: Duration,
    queue_depth: Option<usize>,
    first: Vec<ThreadStack>,
    first_at: u64,
    second: Option<(u64, Vec<ThreadStack>)>,
    /// Looks at the loop thread alone, oldest first: the hiccup's or the
    /// presample's before detection, then between the captures.
    samples: Vec<LoopSample>,
    next_sample: Option<u64>,
    presample: Option<(u64, CpuTimes)>,
    second_due: Option<u64>,
    /// The DWARF pass of the latest capture is still to do (done on the
    /// next tick, so that the monitor says the stall and calls back first).
    symbolize_pending: bool,
    /// systemd's earliest deadline (µs clock), when pings are on.
    deadline: Option<u64>,
    /// Lock cycles found by parking_lot's checker (reported once by it).
    deadlock: Vec<String>,
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
    fn capture_threads(&self, tids: &[i32], budget: Duration) -> Capture {
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
    fn capture(
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
    fn capture_budget(&self, deadline: Option<u64>) -> Duration {
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
    fn look_info(&self, reason: &str, look: &LoopSample) -> crate::report::LoopLook {
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

    fn max_stack_bytes(&self) -> Option<usize> {
        self.config.capture.as_ref().map(|c| c.max_stack_bytes)
    }

    /// The loop thread alone, cheaply: one signal, symbol-table names.
    pub(crate) fn sample_thread(&self, tid: i32) -> Option<ThreadStack> {
        self.capture_threads(&[tid], CHEAP_CAPTURE_BUDGET)
            .threads
            .into_iter()
            .next()
    }

    /// The second pass over a report's stacks: files, lines and inlined
    /// functions from debug information, within the symbolization budget
    /// (and never past `until`, a monotonic clock reading); then every bit
    /// of symbolization state is released.
    fn symbolize(&self, threads: &mut [ThreadStack], notes: &mut Vec<String>, until: Option<u64>) {
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
    fn loop_threads(ctx: &IncidentContext<'_>) -> Vec<i32> {
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

    fn second_capture_due(&self, now: u64, deadline: Option<u64>) -> Option<u64> {
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
    fn next_sample_after(&self, stall: &ActiveStall, now: u64) -> Option<u64> {
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
    fn refresh(&self, stall: &mut ActiveStall, now: u64) {
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

    /// Writes the incident's report; the compact form goes to stderr once
    /// per incident when there is no report file.
    fn write(&mut self, stall: &mut ActiveStall) -> Option<PathBuf> {
        let pin = stall.report.coalesced_stalls > 0;
        self.write_report(&mut stall.report, pin)
    }

    fn write_report(&mut self, report: &mut StallReport, pin: bool) -> Option<PathBuf> {
        report.times.written = rfc3339(SystemTime::now());
        if let Some(r) = &self.registry {
            report.metrics = Metrics::encode(r);
        }
        let saved = self
            .store
            .save(report, if pin { Pin::Yes } else { Pin::No });
        if let Some(m) = &self.metrics {
            match saved {
                Saved::Written(_) => m.report("written"),
                Saved::Failed => m.report("failed"),
                Saved::Dropped => m.report("dropped"),
                Saved::StderrOnly => {}
            }
        }
        self.counters
            .reports_written
            .store(self.store.written(), Ordering::Relaxed);
        self.counters
            .reports_failed
            .store(self.store.failed(), Ordering::Relaxed);
        self.counters
            .reports_dropped
            .store(self.store.dropped(), Ordering::Relaxed);
        saved.path()
    }

    /// Sends `entry` to journald under systemd; a failure is counted and
    /// logged once until sending works again.
    fn to_journal(&self, entry: &JournalEntry) {
        let Some(j) = &self.journal else { return };
        match j.send(entry) {
            Ok(()) => {
                self.counters.journal_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let failed = self.counters.journal_failed.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged on the 1st, 2nd, 4th, 8th, ... failure: bounded.
                if failed.is_power_of_two() {
                    tracing::warn!(error = %e, failed, "loopwatch could not send a journal entry; \
                        the report files and log lines are unaffected");
                }
            }
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

    /// At shutdown: writes every report whose coalesced stalls are not on
    /// disk yet, whatever the throttle.
    pub(crate) fn flush_storms(&mut self, now: u64) {
        for i in 0..self.storms.len() {
            for k in self.storms[i].dirty() {
                self.flush_kept(i, k, now);
            }
        }
    }

    /// Rewrites a kept report that gained occurrences.
    fn flush_kept(&mut self, runtime: usize, kept: usize, now: u64) -> Option<PathBuf> {
        let mut report = {
            let k = self.storms[runtime].kept_mut(kept)?;
            k.dirty = false;
            k.written_at = now;
            k.report.take()?
        };
        let path = self.write_report(&mut report, true);
        self.to_journal(&journal::storm_entry(&report, path.as_deref()));
        if let Some(k) = self.storms[runtime].kept_mut(kept) {
            k.report = Some(report);
        }
        path
    }

    /// The DWARF pass over the latest capture (the second if taken, else
    /// the first), then the report decided again and rewritten. Never past
    /// the second capture's time or systemd's deadline.
    fn symbolize_latest(&mut self, stall: &mut ActiveStall) -> Option<Outcome> {
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

    /// Drops the sampler's symbolization state and returns the freed heap
    /// to the OS: after the last write of a report version.
    fn release_symbols(&self) {
        if let Some(sampler) = &self.sampler {
            sampler.release();
        }
    }

    /// Runs a pending DWARF pass and decides again; false when none was
    /// pending.
    fn symbolize_now(&mut self, stall: &mut ActiveStall) -> bool {
        if !std::mem::take(&mut stall.symbolize_pending) {
            return false;
        }
        let until = stall.second_due.or(stall.deadline);
        let mut notes = std::mem::take(&mut stall.report.notes);
        match &mut stall.second {
            Some((_, second)) => self.symbolize(second, &mut notes, until),
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
    fn second_capture(&mut self, stall: &mut ActiveStall) -> Outcome {
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
        self.refresh(stall, at);
        let mut path = self.write(stall);
        stall.symbolize_pending = self.sampler.is_some();
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
        let active = self.active.iter().filter_map(|a| match a {
            Some(Active::Full(s)) if s.symbolize_pending => Some(0),
            Some(Active::Full(s)) => [s.second_due, s.next_sample].into_iter().flatten().min(),
            _ => None,
        });
        let cool_down = self.cool_down();
        let flushes = self.storms.iter().filter_map(|s| s.next_flush(cool_down));
        active.chain(flushes).min()
    }
}

/// Worker spans for workers stuck at `now`.
fn spans(stuck: &[StuckWorker], now: u64) -> Vec<WorkerSpan> {
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
fn update_durations(stall: &mut ActiveStall, now: u64) {
    for w in &mut stall.workers {
        w.info.stuck_for_seconds = us(w.until.unwrap_or(now).saturating_sub(w.since)).as_secs_f64();
    }
    stall.report.stuck_workers = stall.workers.iter().map(|w| w.info.clone()).collect();
}
