//! Stall diagnostics: captures, verdict and report for each stall.
//!
//! The monitor hands every stall to [`Diagnostics`], which runs it through
//! fixed steps, all on the monitor thread and none waiting on a runtime:
//!
//! 1. **presample** — when a probe is late by half the threshold, the CPU
//!    time of every thread is read from `/proc`, so that at detection the
//!    CPU used during the stall is already known;
//! 2. **detection** — every thread's stack is captured, the verdict and the
//!    culprit are decided, and the report is written and fsync'd at once;
//! 3. **second capture** — close to systemd's deadline (last ping +
//!    WatchdogSec − margin), or a second after detection without systemd,
//!    the stacks are captured again; frames that did not move are marked
//!    stuck, the verdict is refined and the report rewritten. Optionally
//!    `WATCHDOG=trigger` follows;
//! 4. **recovery** — the report is rewritten, marked recovered, with the
//!    measured duration.
//!
//! Every version of the report on disk is complete; later versions replace
//! earlier ones atomically.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::{self, micros, us};
use crate::health::StallTrack;
use crate::metrics::Metrics;
use crate::procfs;
use crate::report::{
    group_threads, rfc3339, CaptureInfo, LagSample, ReportTimes, RuntimeMetricsSnapshot,
    StallReport, Thresholds, REPORT_FORMAT_VERSION,
};
use crate::report_store::ReportStore;
use crate::settings::{DiagnosticsConfig, Settings};
use crate::stacks::{Capture, CaptureOutcome, NotCaptured, StackSampler, ThreadStack};
use crate::status::human;
use crate::verdict::{decide, Evidence};

/// How far back the report's lag timeline reaches.
const TIMELINE_SPAN: u64 = 30_000_000;

/// What the monitor must do after a diagnostics step.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The report's text file, when it is on disk.
    pub report: Option<PathBuf>,
    /// Ask systemd to act now (`WATCHDOG=trigger`).
    pub trigger_watchdog: bool,
    /// The verdict, after the detection step.
    pub verdict: Option<crate::verdict::VerdictKind>,
}

/// What the monitor knows about a stall when it hands it over.
pub(crate) struct StallContext<'a> {
    pub idx: usize,
    /// For a worker stall: the stuck workers (empty for a probe stall).
    pub stuck_workers: Vec<crate::hooks::StuckWorker>,
    pub runtime: &'a str,
    pub track: StallTrack,
    pub now: u64,
    pub timeline: &'a VecDeque<(u64, u64)>,
    pub loop_tids: Vec<i32>,
    pub monitor_gap: Duration,
    pub handle: &'a tokio::runtime::Handle,
    /// systemd's earliest deadline (µs clock), when pings are on.
    pub deadline: Option<u64>,
}

struct ActiveStall {
    report: StallReport,
    stuck_workers: Vec<crate::hooks::StuckWorker>,
    loop_tids: Vec<i32>,
    monitor_gap: Duration,
    lag: Duration,
    queue_depth: Option<usize>,
    first: Vec<ThreadStack>,
    first_at: u64,
    presample: Option<(u64, HashMap<i32, Duration>)>,
    second_due: Option<u64>,
    /// systemd's earliest deadline (µs clock), when pings are on.
    deadline: Option<u64>,
    /// Lock cycles found by parking_lot's checker (reported once by it).
    deadlock: Vec<String>,
}

/// CPU times of every thread, taken while a probe was late: (the late
/// probe's wake time, when sampled, CPU time per tid).
type Presample = (u64, u64, HashMap<i32, Duration>);

/// Counters the metrics read.
#[derive(Debug, Default)]
pub(crate) struct DiagnosticsCounters {
    pub reports_written: AtomicU64,
    pub reports_failed: AtomicU64,
}

/// Per-watchdog diagnostics state.
pub(crate) struct Diagnostics {
    settings: Arc<Settings>,
    config: DiagnosticsConfig,
    sampler: Option<Arc<StackSampler>>,
    store: ReportStore,
    stalls: Vec<Option<ActiveStall>>,
    presamples: Vec<Option<Presample>>,
    seq: u64,
    /// loopwatch's metrics: report and capture counters, and the text
    /// snapshot in each report.
    pub metrics: Option<Arc<Metrics>>,
    /// The registry whose text goes into each report.
    pub registry: Option<prometheus::Registry>,
    pub counters: Arc<DiagnosticsCounters>,
}

impl Diagnostics {
    /// Prepares capture (the signal handler only) and storage.
    pub(crate) fn new(
        settings: Arc<Settings>,
        config: DiagnosticsConfig,
        runtimes: usize,
    ) -> crate::Result<Self> {
        let sampler = match &config.capture {
            Some(c) => Some(Arc::new(StackSampler::new(c.clone())?)),
            None => None,
        };
        let store = ReportStore::new(config.report_dir.clone(), config.keep);
        Ok(Diagnostics {
            settings,
            sampler,
            store,
            stalls: (0..runtimes).map(|_| None).collect(),
            presamples: (0..runtimes).map(|_| None).collect(),
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

    /// Step 1: samples every thread's CPU time for the late probe `woken_at`.
    pub(crate) fn presample(&mut self, idx: usize, woken_at: u64, now: u64) {
        if matches!(self.presamples[idx], Some((w, _, _)) if w == woken_at) {
            return;
        }
        self.presamples[idx] = Some((woken_at, now, cpu_sample()));
    }

    /// True when the late probe `woken_at` was already presampled.
    pub(crate) fn presampled(&self, idx: usize, woken_at: u64) -> bool {
        matches!(self.presamples[idx], Some((w, _, _)) if w == woken_at)
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
        let Some(sampler) = &self.sampler else {
            // Capture off: /proc facts only.
            let threads = procfs::list_threads()
                .into_iter()
                .map(|tid| {
                    let facts = procfs::read_thread(tid);
                    ThreadStack::not_captured(tid, facts, NotCaptured::CaptureOff)
                })
                .collect();
            return (threads, None);
        };
        let mut order: Vec<i32> = first.to_vec();
        order.extend(
            procfs::list_threads()
                .into_iter()
                .filter(|t| !first.contains(t)),
        );
        let budget = self.capture_budget(deadline);
        let c: Capture = sampler.capture_within(&order, budget);
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

    /// The second pass over a report's stacks: files, lines and inlined
    /// functions from debug information, within the symbolization budget
    /// (and never past `until`, a monotonic clock reading); the caller
    /// then decides again, rewrites the report and releases the
    /// symbolization state (`release_symbols`).
    fn symbolize(
        &self,
        stall: &mut ActiveStall,
        second: Option<&mut Vec<ThreadStack>>,
        until: Option<u64>,
    ) {
        let Some(sampler) = &self.sampler else { return };
        let Some(configured) = self.config.capture.as_ref().map(|c| c.symbolize_budget) else {
            return;
        };
        let budget = match until {
            Some(u) => configured.min(us(u.saturating_sub(clock::now_us()))),
            None => configured,
        };
        let done = match second {
            Some(threads) => sampler.symbolize(threads, budget),
            None => sampler.symbolize(&mut stall.first, budget),
        };
        if done.ran_out_of_time {
            stall.report.notes.push(format!(
                "symbolization ran out of its {} budget: some frames show symbol-table names or addresses only",
                human(budget)
            ));
        }
        for note in done.notes {
            // Both captures' passes say the same about a module.
            if !stall.report.notes.contains(&note) {
                stall.report.notes.push(note);
            }
        }
    }

    /// Drops the sampler's symbolization state and returns the freed heap
    /// (the report's own buffers included) to the OS: called after the
    /// last write of a report version.
    fn release_symbols(&self) {
        if let Some(sampler) = &self.sampler {
            sampler.release();
        }
    }

    /// Step 2: the stall was declared. Captures, decides, writes.
    pub(crate) fn stall_started(&mut self, ctx: StallContext<'_>) -> Outcome {
        let t0 = clock::now_us();
        let stuck_first: Vec<i32> = ctx
            .stuck_workers
            .iter()
            .flat_map(|s| s.tids.clone())
            .collect();
        let mut order = stuck_first.clone();
        order.extend(ctx.loop_tids.iter().filter(|t| !stuck_first.contains(t)));
        let (first, info) = self.capture("detection", &order, ctx.deadline);
        let first_at = clock::now_us();
        let presample = self.presamples[ctx.idx]
            .take()
            .filter(|(w, _, _)| *w == ctx.track.started_at)
            .map(|(_, at, cpu)| (at, cpu));
        let rm = RuntimeMetricsSnapshot::read(ctx.handle);
        self.seq += 1;
        let id = format!(
            "{}-{}-{}-{:04}",
            compact_utc(SystemTime::now()),
            sanitize(ctx.runtime),
            std::process::id(),
            self.seq
        );
        let s = &self.settings;
        let timeline = ctx
            .timeline
            .iter()
            .filter(|(at, _)| {
                *at + TIMELINE_SPAN >= ctx.track.started_at && *at <= ctx.track.started_at
            })
            .map(|(at, lag)| LagSample {
                at_seconds: -(us(ctx.track.started_at - at).as_secs_f64()),
                lag_seconds: us(*lag).as_secs_f64(),
            })
            .collect();
        let lag = us(ctx
            .now
            .saturating_sub(ctx.track.started_at)
            .max(ctx.track.max_lag));
        let report = StallReport {
            id,
            format_version: REPORT_FORMAT_VERSION,
            loopwatch_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime: ctx.runtime.to_string(),
            recovered: false,
            duration_seconds: None,
            stalled_for_seconds: lag.as_secs_f64(),
            lag_at_detection_seconds: lag.as_secs_f64(),
            times: ReportTimes {
                stall_start: wall(ctx.track.started_at),
                detected: wall(ctx.track.detected_at),
                deadline: ctx.deadline.map(wall),
                end: None,
                written: String::new(),
            },
            thresholds: Thresholds {
                stall_threshold_seconds: s.threshold.as_secs_f64(),
                probe_interval_seconds: s.probe_interval.as_secs_f64(),
                watchdog_seconds: s.watchdog.map(|w| w.as_secs_f64()),
                deadline_margin_seconds: self.config.deadline_margin.as_secs_f64(),
            },
            verdict: crate::verdict::Verdict {
                kind: crate::verdict::VerdictKind::Unknown,
                summary: String::new(),
                evidence: Vec::new(),
            },
            culprit: None,
            stuck_workers: ctx.stuck_workers.clone(),
            timeline,
            captures: info.into_iter().collect(),
            threads: Vec::new(),
            runtime_metrics: Some(rm.clone()),
            metrics: String::new(),
            process: procfs::process_facts(),
            notes: if self.sampler.is_none() {
                vec!["stack capture is off: threads show /proc facts only".into()]
            } else {
                Vec::new()
            },
        };
        let second_due = self.second_capture_due(ctx.now, ctx.deadline);
        let mut stall = ActiveStall {
            stuck_workers: ctx.stuck_workers,
            report,
            loop_tids: ctx.loop_tids,
            monitor_gap: ctx.monitor_gap,
            lag,
            queue_depth: Some(rm.global_queue_depth),
            first,
            first_at,
            presample,
            second_due,
            deadline: ctx.deadline,
            deadlock: Vec::new(),
        };
        self.refresh(&mut stall, None, None);
        let mut path = self.write(&mut stall);
        if self.sampler.is_some() {
            let until = stall.second_due.or(ctx.deadline);
            self.symbolize(&mut stall, None, until);
            self.refresh(&mut stall, None, None);
            path = self.write(&mut stall).or(path);
            self.release_symbols();
        }
        tracing::error!(
            runtime = ctx.runtime,
            verdict = %stall.report.verdict.kind,
            culprit = stall.report.culprit.as_ref().map(|c| c.function.as_str()).unwrap_or("-"),
            report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
            took = %human(us(clock::now_us() - t0)),
            "{}", stall.report.summary()
        );
        let verdict = Some(stall.report.verdict.kind);
        self.stalls[ctx.idx] = Some(stall);
        Outcome {
            report: path,
            trigger_watchdog: false,
            verdict,
        }
    }

    fn second_capture_due(&self, now: u64, deadline: Option<u64>) -> Option<u64> {
        match deadline {
            Some(d) => {
                let due = d.saturating_sub(micros(self.config.deadline_margin));
                // Too close to the deadline: the detection report is the last.
                (due > now + 50_000).then_some(due)
            }
            None => Some(now + 1_000_000),
        }
    }

    /// Recomputes verdict, culprit and thread groups.
    fn refresh(
        &self,
        stall: &mut ActiveStall,
        second: Option<&[ThreadStack]>,
        second_at: Option<u64>,
    ) {
        stall.deadlock.extend(deadlock_cycles());
        // CPU used: between the presample and the first capture, or between
        // the two captures when the second exists.
        let (cpu_used, gap) = match (second, second_at) {
            (Some(sec), Some(at)) => (cpu_delta(&stall.first, sec), us(at - stall.first_at)),
            _ => match &stall.presample {
                Some((at, before)) => (
                    cpu_delta_from(before, &stall.first),
                    us(stall.first_at.saturating_sub(*at)),
                ),
                None => (HashMap::new(), Duration::ZERO),
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
            stuck_workers: stall.stuck_workers.clone(),
        };
        let (verdict, culprit) = decide(&evidence);
        stall.report.verdict = verdict;
        stall.report.culprit = culprit;
        stall.report.threads = group_threads(&stall.first, second, &stall.loop_tids, &cpu_used);
    }

    fn write(&mut self, stall: &mut ActiveStall) -> Option<PathBuf> {
        stall.report.times.written = rfc3339(SystemTime::now());
        if let Some(r) = &self.registry {
            stall.report.metrics = Metrics::encode(r);
        }
        let path = self.store.save(&stall.report);
        if let (Some(m), Some(_)) = (&self.metrics, self.store.dir()) {
            m.report(path.is_some());
        }
        self.counters
            .reports_written
            .store(self.store.written, Ordering::Relaxed);
        self.counters
            .reports_failed
            .store(self.store.failed, Ordering::Relaxed);
        path
    }

    /// Step 3, when due: the second capture.
    pub(crate) fn tick(&mut self, now: u64) -> Vec<Outcome> {
        let mut out = Vec::new();
        for i in 0..self.stalls.len() {
            let due = matches!(&self.stalls[i], Some(s) if s.second_due.is_some_and(|d| now >= d));
            if !due {
                continue;
            }
            let mut stall = self.stalls[i].take().expect("checked above");
            stall.second_due = None;
            let reason = if stall.report.times.deadline.is_some() {
                "before-deadline"
            } else {
                "still-stalled"
            };
            let stuck_first: Vec<i32> = stall
                .stuck_workers
                .iter()
                .flat_map(|s| s.tids.clone())
                .collect();
            let mut order = stuck_first.clone();
            order.extend(stall.loop_tids.iter().filter(|t| !stuck_first.contains(t)));
            let (mut second, info) = self.capture(reason, &order, stall.deadline);
            // Names the first capture's DWARF pass found, for the write below.
            crate::stacks::carry_names(&stall.first, &mut second);
            let at = clock::now_us();
            stall.report.captures.extend(info);
            stall.report.stalled_for_seconds =
                us(at.saturating_sub(stall.first_at)).as_secs_f64() + stall.lag.as_secs_f64();
            self.refresh(&mut stall, Some(&second), Some(at));
            let mut path = self.write(&mut stall);
            if self.sampler.is_some() {
                let until = stall.deadline;
                self.symbolize(&mut stall, Some(&mut second), until);
                self.refresh(&mut stall, Some(&second), Some(at));
                path = self.write(&mut stall).or(path);
                self.release_symbols();
            }
            tracing::warn!(
                runtime = %stall.report.runtime,
                report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
                "loopwatch: second capture taken; {}", stall.report.summary()
            );
            out.push(Outcome {
                report: path,
                trigger_watchdog: self.config.trigger_watchdog && reason == "before-deadline",
                verdict: None,
            });
            self.stalls[i] = Some(stall);
        }
        out
    }

    /// Step 4: the loop answered again after `duration`.
    pub(crate) fn stall_ended(&mut self, idx: usize, duration: u64, ended_at: u64) -> Outcome {
        self.presamples[idx] = None;
        let Some(mut stall) = self.stalls[idx].take() else {
            return Outcome::default();
        };
        stall.report.recovered = true;
        stall.report.duration_seconds = Some(us(duration).as_secs_f64());
        stall.report.stalled_for_seconds = us(duration).as_secs_f64();
        stall.report.times.end = Some(wall(ended_at));
        let path = self.write(&mut stall);
        tracing::warn!(
            runtime = %stall.report.runtime,
            report = %path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(stderr)".into()),
            "{}", stall.report.summary()
        );
        drop(stall);
        self.release_symbols();
        Outcome {
            report: path,
            ..Outcome::default()
        }
    }

    /// The next time a step is due.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.stalls
            .iter()
            .filter_map(|s| s.as_ref()?.second_due)
            .min()
    }
}

/// The wall-clock time of a monotonic clock reading.
fn wall(at: u64) -> String {
    let now = clock::now_us();
    let wall_now = SystemTime::now();
    let t = if at <= now {
        wall_now.checked_sub(us(now - at))
    } else {
        wall_now.checked_add(us(at - now))
    };
    rfc3339(t.unwrap_or(wall_now))
}

/// `20261124T215722Z`: a UTC time to the second, for report ids.
fn compact_utc(t: SystemTime) -> String {
    let full = rfc3339(t);
    let seconds = full.split('.').next().unwrap_or_default();
    format!("{}Z", seconds.replace([':', '-'], ""))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect()
}

fn cpu_sample() -> HashMap<i32, Duration> {
    procfs::list_threads()
        .into_iter()
        .filter_map(|tid| Some((tid, procfs::read_thread(tid)?.cpu_time)))
        .collect()
}

fn cpu_delta_from(
    before: &HashMap<i32, Duration>,
    after: &[ThreadStack],
) -> HashMap<i32, Duration> {
    after
        .iter()
        .filter_map(|t| {
            let now = t.facts.as_ref()?.cpu_time;
            Some((t.tid, now.saturating_sub(*before.get(&t.tid)?)))
        })
        .collect()
}

fn cpu_delta(first: &[ThreadStack], second: &[ThreadStack]) -> HashMap<i32, Duration> {
    let before: HashMap<i32, Duration> = first
        .iter()
        .filter_map(|t| Some((t.tid, t.facts.as_ref()?.cpu_time)))
        .collect();
    cpu_delta_from(&before, second)
}

/// Threads in a parking_lot lock cycle, with the `deadlock-detection`
/// feature. parking_lot reports each cycle once, so callers keep them.
#[cfg(feature = "deadlock-detection")]
fn deadlock_cycles() -> Vec<String> {
    parking_lot::deadlock::check_deadlock()
        .iter()
        .enumerate()
        .map(|(i, cycle)| {
            let threads: Vec<String> = cycle
                .iter()
                .map(|t| {
                    let waiting_in = t
                        .backtrace()
                        .frames()
                        .iter()
                        .flat_map(|f| f.symbols())
                        .filter_map(|s| s.name().map(|n| format!("{n:#}")))
                        .find(|n| {
                            ![
                                "parking_lot",
                                "lock_api",
                                "std::",
                                "core::",
                                "backtrace",
                                "loopwatch",
                                "<",
                            ]
                            .iter()
                            .any(|p| n.starts_with(p))
                        })
                        .map(|n| crate::verdict::enclosing_function(&n))
                        .unwrap_or_else(|| "?".into());
                    format!("{:?} waiting in {waiting_in}", t.thread_id())
                })
                .collect();
            format!("cycle {}: {}", i + 1, threads.join(" <-> "))
        })
        .collect()
}

#[cfg(not(feature = "deadlock-detection"))]
fn deadlock_cycles() -> Vec<String> {
    Vec::new()
}
