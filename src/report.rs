//! The stall report: what the on-call engineer reads.
//!
//! A [`StallReport`] is plain data (serde) assembled by the diagnostics on
//! the monitor thread: when and how long, the thresholds, the verdict with
//! its evidence, the culprit, the lag timeline before the stall, every
//! thread grouped by identical stack (frames that did not move between the
//! two captures marked as stuck), the runtime and Prometheus metrics, and
//! facts about the process. It renders as JSON for tools and as text for
//! humans (short lines, readable in `journalctl`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::procfs::ProcessFacts;
use crate::stacks::{CaptureOutcome, Frame, ThreadStack};
use crate::status::human;
use crate::verdict::{Culprit, Verdict};

/// A complete account of one stall.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StallReport {
    /// Unique id: UTC time of detection, runtime, pid and a sequence number.
    pub id: String,
    /// The loopwatch version that wrote it.
    pub loopwatch_version: &'static str,
    /// The stalled runtime's name.
    pub runtime: String,
    /// True once the loop answered again.
    pub recovered: bool,
    /// How long the loop did not answer, once it recovered (seconds).
    pub duration_seconds: Option<f64>,
    /// How long the stall had lasted when this version of the report was written (seconds).
    pub stalled_for_seconds: f64,
    /// The probe lag when the stall was declared (seconds).
    pub lag_at_detection_seconds: f64,
    /// Timestamps (RFC 3339, UTC).
    pub times: ReportTimes,
    /// The settings that applied.
    pub thresholds: Thresholds,
    /// What kind of stall, and why loopwatch thinks so.
    pub verdict: Verdict,
    /// The application code that blocked the loop, when found.
    pub culprit: Option<Culprit>,
    /// Workers stuck in a poll (runtimes watched with hooks): which worker,
    /// its thread, for how long, and (with `--cfg tokio_unstable`) the task
    /// and where it was spawned.
    pub stuck_workers: Vec<crate::hooks::StuckWorker>,
    /// Probe lag over the seconds before the stall, oldest first.
    pub timeline: Vec<LagSample>,
    /// The stack captures taken.
    pub captures: Vec<CaptureInfo>,
    /// Every thread, grouped by identical stack; loop threads first.
    pub threads: Vec<ThreadGroup>,
    /// The tokio runtime's own metrics at detection.
    pub runtime_metrics: Option<RuntimeMetricsSnapshot>,
    /// loopwatch's Prometheus metrics at the time of writing (text format).
    pub metrics: String,
    /// Facts about the process.
    pub process: ProcessFacts,
    /// Notes about the report itself (a failed capture, a skipped step).
    pub notes: Vec<String>,
}

/// When things happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportTimes {
    /// When the unanswered probe was sent: the loop was stuck from then at the latest.
    pub stall_start: String,
    /// When the monitor declared the stall.
    pub detected: String,
    /// systemd's earliest possible watchdog deadline (last ping + WatchdogSec), if any.
    pub deadline: Option<String>,
    /// When the loop answered again.
    pub end: Option<String>,
    /// When this version of the report was written.
    pub written: String,
}

/// The thresholds in force.
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// Stall threshold (seconds).
    pub stall_threshold_seconds: f64,
    /// Probe interval (seconds).
    pub probe_interval_seconds: f64,
    /// systemd's watchdog interval, if any (seconds).
    pub watchdog_seconds: Option<f64>,
    /// How long before the deadline the report must be complete (seconds).
    pub deadline_margin_seconds: f64,
}

/// One answered probe.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LagSample {
    /// When the probe was answered, relative to the stall start (negative: before).
    pub at_seconds: f64,
    /// Its lag (seconds).
    pub lag_seconds: f64,
}

/// One stack capture.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureInfo {
    /// Why it was taken: `detection`, `before-deadline`, `still-stalled`.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// Threads in the process.
    pub threads: usize,
    /// Threads that did not answer the signal.
    pub unresponsive: usize,
    /// Time spent signalling and copying stacks (seconds).
    pub signal_seconds: f64,
    /// Time spent unwinding and symbolizing (seconds).
    pub unwind_symbolize_seconds: f64,
}

/// Threads with the same stack.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadGroup {
    /// How many threads.
    pub count: usize,
    /// Their ids.
    pub tids: Vec<i32>,
    /// Their names (distinct).
    pub names: Vec<String>,
    /// True when one of them runs the watched event loop.
    pub loop_thread: bool,
    /// Capture outcome.
    pub outcome: CaptureOutcome,
    /// Kernel state letter and name, e.g. `S (sleeping)`.
    pub state: Option<String>,
    /// Current system call, if any.
    pub syscall: Option<String>,
    /// Kernel wait channel, if any.
    pub wchan: Option<String>,
    /// CPU time used by the group between the two samples (seconds).
    pub cpu_seconds: Option<f64>,
    /// The stack, innermost first.
    pub frames: Vec<ReportFrame>,
}

/// A frame in a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportFrame {
    /// The frame.
    #[serde(flatten)]
    pub frame: Frame,
    /// True when the frame is the same in both captures.
    pub stuck: bool,
}

/// The tokio runtime's stable metrics.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeMetricsSnapshot {
    /// Worker threads.
    pub workers: usize,
    /// Tasks alive.
    pub alive_tasks: usize,
    /// Tasks in the global (injection) queue.
    pub global_queue_depth: usize,
    /// Per worker: total busy time (seconds), park count and park/unpark count.
    pub worker_busy_seconds: Vec<f64>,
    /// Per worker: times parked.
    pub worker_park_count: Vec<u64>,
    /// Per worker: park+unpark transitions (odd = awake).
    pub worker_park_unpark_count: Vec<u64>,
}

impl RuntimeMetricsSnapshot {
    /// Reads a runtime's metrics (atomics only; never blocks on the runtime).
    pub(crate) fn read(handle: &tokio::runtime::Handle) -> Self {
        let m = handle.metrics();
        let n = m.num_workers();
        RuntimeMetricsSnapshot {
            workers: n,
            alive_tasks: m.num_alive_tasks(),
            global_queue_depth: m.global_queue_depth(),
            worker_busy_seconds: (0..n)
                .map(|w| m.worker_total_busy_duration(w).as_secs_f64())
                .collect(),
            worker_park_count: (0..n).map(|w| m.worker_park_count(w)).collect(),
            worker_park_unpark_count: (0..n).map(|w| m.worker_park_unpark_count(w)).collect(),
        }
    }
}

/// RFC 3339 UTC, milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The key that makes two stacks "identical".
fn stack_key(t: &ThreadStack) -> (String, Vec<String>) {
    (
        format!("{:?}", t.outcome),
        t.frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip)))
            .collect(),
    )
}

/// Which frames of `first` are the same in `second` (compared from the
/// outermost frame inwards, by function, or address when unsymbolized).
pub(crate) fn stuck_mask(first: &[Frame], second: Option<&[Frame]>) -> Vec<bool> {
    let mut mask = vec![false; first.len()];
    let Some(second) = second else { return mask };
    let key = |f: &Frame| f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip));
    for (i, (a, b)) in first.iter().rev().zip(second.iter().rev()).enumerate() {
        if key(a) != key(b) {
            break;
        }
        let idx = first.len() - 1 - i;
        mask[idx] = true;
    }
    mask
}

/// Groups threads by identical stacks, loop threads first, then larger groups.
pub(crate) fn group_threads(
    first: &[ThreadStack],
    second: Option<&[ThreadStack]>,
    loop_tids: &[i32],
    cpu_used: &std::collections::HashMap<i32, Duration>,
) -> Vec<ThreadGroup> {
    let mut groups: BTreeMap<(String, Vec<String>), Vec<&ThreadStack>> = BTreeMap::new();
    for t in first {
        groups.entry(stack_key(t)).or_default().push(t);
    }
    let mut out: Vec<ThreadGroup> = groups
        .into_values()
        .map(|ts| {
            let rep = ts[0];
            let later = second.and_then(|s| s.iter().find(|x| x.tid == rep.tid));
            let mask = stuck_mask(&rep.frames, later.map(|l| l.frames.as_slice()));
            let mut names: Vec<String> = ts
                .iter()
                .filter_map(|t| t.facts.as_ref().map(|f| f.name.clone()))
                .collect();
            names.sort();
            names.dedup();
            let cpu: Option<f64> = ts
                .iter()
                .map(|t| cpu_used.get(&t.tid).map(Duration::as_secs_f64))
                .sum();
            let facts = rep.facts.as_ref();
            ThreadGroup {
                count: ts.len(),
                tids: ts.iter().map(|t| t.tid).collect(),
                names,
                loop_thread: ts.iter().any(|t| loop_tids.contains(&t.tid)),
                outcome: rep.outcome,
                state: facts.map(|f| format!("{} ({})", f.state, f.state_name)),
                syscall: facts.and_then(|f| f.syscall.as_ref()).map(|s| {
                    s.name
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("#{}", s.number))
                }),
                wchan: facts.and_then(|f| f.wchan.clone()),
                cpu_seconds: cpu,
                frames: rep
                    .frames
                    .iter()
                    .zip(mask)
                    .map(|(f, stuck)| ReportFrame {
                        frame: f.clone(),
                        stuck,
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by_key(|g| (!g.loop_thread, std::cmp::Reverse(g.count)));
    out
}

/// A unicode sparkline of lags.
pub(crate) fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn secs(v: f64) -> String {
    human(Duration::from_secs_f64(v.max(0.0)))
}

impl StallReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// One line: verdict, culprit, duration.
    pub fn summary(&self) -> String {
        let culprit = self
            .culprit
            .as_ref()
            .map(|c| format!(", culprit {}", c.function))
            .unwrap_or_default();
        let how_long = match self.duration_seconds {
            Some(d) => format!("recovered after {}", secs(d)),
            None => format!("stalled for {} so far", secs(self.stalled_for_seconds)),
        };
        format!(
            "event loop {:?} stall: verdict {}{culprit}; {how_long}",
            self.runtime, self.verdict.kind
        )
    }

    /// The compact form: header, verdict, culprit, the stuck thread's stack.
    pub fn to_compact_text(&self) -> String {
        let mut s = String::new();
        self.write_head(&mut s);
        if let Some(g) = self.threads.iter().find(|g| g.loop_thread) {
            let _ = writeln!(s, "loop thread stack:");
            write_frames(&mut s, &g.frames, 24);
        }
        s
    }

    fn write_head(&self, s: &mut String) {
        let title = format!("loopwatch stall report {}", self.id);
        let _ = writeln!(s, "{title}\n{}", "=".repeat(title.chars().count()));
        let _ = writeln!(
            s,
            "event loop {:?} {} — verdict: {}",
            self.runtime,
            if self.recovered {
                "RECOVERED"
            } else {
                "STALLED"
            },
            self.verdict.kind
        );
        let _ = writeln!(s, "  {}", self.verdict.summary);
        match &self.culprit {
            Some(c) => {
                let loc = match (&c.file, c.line) {
                    (Some(f), Some(l)) => format!(" at {f}:{l}"),
                    (Some(f), None) => format!(" in {f}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "culprit: {}{loc} (thread {} {:?})",
                    c.function, c.tid, c.thread
                );
            }
            None => {
                let _ = writeln!(s, "culprit: none found in application code");
            }
        }
        let t = &self.times;
        let th = &self.thresholds;
        let _ = writeln!(s);
        let _ = writeln!(s, "stall start  {}", t.stall_start);
        let _ = writeln!(
            s,
            "detected     {} (lag {} > threshold {})",
            t.detected,
            secs(self.lag_at_detection_seconds),
            secs(th.stall_threshold_seconds)
        );
        match (&t.deadline, th.watchdog_seconds) {
            (Some(d), Some(w)) => {
                let _ = writeln!(s, "deadline     {d} (systemd WatchdogSec={})", secs(w));
            }
            _ => {
                let _ = writeln!(s, "deadline     none (no systemd watchdog)");
            }
        }
        match (&t.end, self.duration_seconds) {
            (Some(e), Some(d)) => {
                let _ = writeln!(s, "ended        {e} (recovered after {})", secs(d));
            }
            _ => {
                let _ = writeln!(
                    s,
                    "ended        not yet (stalled for {} when written at {})",
                    secs(self.stalled_for_seconds),
                    t.written
                );
            }
        }
        let _ = writeln!(s, "\nevidence:");
        for e in &self.verdict.evidence {
            let _ = writeln!(s, "  - {e}");
        }
        if !self.stuck_workers.is_empty() {
            let _ = writeln!(s, "\nstuck workers:");
            for w in &self.stuck_workers {
                let _ = writeln!(
                    s,
                    "  - worker {} (thread {} {:?}) stuck for {}{}",
                    w.worker,
                    w.tids
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                    w.thread.as_deref().unwrap_or("?"),
                    secs(w.stuck_for_seconds),
                    w.task
                        .as_ref()
                        .map(|t| format!(", polling task {} spawned at {}", t.id, t.spawned_at))
                        .unwrap_or_default()
                );
            }
        }
    }

    /// The full human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_head(&mut s);
        if !self.timeline.is_empty() {
            let lags: Vec<f64> = self.timeline.iter().map(|l| l.lag_seconds).collect();
            let max = lags.iter().copied().fold(0.0, f64::max);
            let span = -self.timeline[0].at_seconds;
            let _ = writeln!(
                s,
                "\nlag before the stall (last {}, {} probes, max {}):\n  {}",
                secs(span),
                lags.len(),
                secs(max),
                sparkline(&lags)
            );
        }
        let total: usize = self.threads.iter().map(|g| g.count).sum();
        let _ = writeln!(
            s,
            "\nthreads: {total} in {} groups of identical stacks (* = frame did not move between captures)",
            self.threads.len()
        );
        for g in &self.threads {
            let _ = writeln!(
                s,
                "\n{}{} thread(s) {}: tids {}",
                if g.loop_thread { "[event loop] " } else { "" },
                g.count,
                g.names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                g.tids
                    .iter()
                    .take(16)
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut facts = vec![format!("capture {:?}", g.outcome).to_lowercase()];
            if let Some(st) = &g.state {
                facts.push(format!("state {st}"));
            }
            if let Some(sc) = &g.syscall {
                facts.push(format!("syscall {sc}"));
            }
            if let Some(w) = &g.wchan {
                facts.push(format!("wchan {w}"));
            }
            if let Some(c) = g.cpu_seconds {
                facts.push(format!("cpu {c:.3} s"));
            }
            let _ = writeln!(s, "  {}", facts.join(", "));
            write_frames(&mut s, &g.frames, 48);
        }
        if let Some(m) = &self.runtime_metrics {
            let _ = writeln!(
                s,
                "\ntokio runtime: {} worker(s), {} alive task(s), global queue depth {}",
                m.workers, m.alive_tasks, m.global_queue_depth
            );
            for w in 0..m.workers {
                let _ = writeln!(
                    s,
                    "  worker {w}: busy {:.3} s, parked {} times, park/unpark {}",
                    m.worker_busy_seconds.get(w).copied().unwrap_or(0.0),
                    m.worker_park_count.get(w).copied().unwrap_or(0),
                    m.worker_park_unpark_count.get(w).copied().unwrap_or(0)
                );
            }
        }
        let p = &self.process;
        let _ = writeln!(
            s,
            "\nprocess: pid {}, {} threads, RSS {:.1} MiB, up {}, executable {}, build id {}",
            p.pid,
            p.threads,
            p.rss_bytes as f64 / (1024.0 * 1024.0),
            human(p.uptime),
            p.executable.as_deref().unwrap_or("?"),
            p.build_id.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            s,
            "settings: threshold {}, probe every {}, watchdog {}, deadline margin {}",
            secs(self.thresholds.stall_threshold_seconds),
            secs(self.thresholds.probe_interval_seconds),
            self.thresholds
                .watchdog_seconds
                .map_or("off".to_string(), secs),
            secs(self.thresholds.deadline_margin_seconds)
        );
        for c in &self.captures {
            let _ = writeln!(
                s,
                "capture ({}) at {}: {} threads, {} unresponsive, signals {}, unwind+symbols {}",
                c.reason,
                c.at,
                c.threads,
                c.unresponsive,
                secs(c.signal_seconds),
                secs(c.unwind_symbolize_seconds)
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if !self.metrics.is_empty() {
            let _ = writeln!(s, "\nmetrics at the time of writing:");
            for l in self.metrics.lines().filter(|l| !l.starts_with('#')) {
                let _ = writeln!(s, "  {l}");
            }
        }
        s
    }
}

/// A source path made short for reading: the standard library's and
/// registry crates' long prefixes are abbreviated (the JSON keeps them).
fn short_path(p: &str) -> String {
    if let Some((_, rest)) = p.split_once("/library/") {
        if p.starts_with("/rustc/") {
            return format!("<rust>/{rest}");
        }
    }
    if let Some((_, rest)) = p.split_once("/registry/src/") {
        if let Some((_, krate)) = rest.split_once('/') {
            return format!("<cargo>/{krate}");
        }
    }
    p.to_string()
}

fn write_frames(s: &mut String, frames: &[ReportFrame], max: usize) {
    for (i, f) in frames.iter().take(max).enumerate() {
        let fr = &f.frame;
        let name = fr
            .function
            .clone()
            .unwrap_or_else(|| format!("{:#x}", fr.ip));
        let loc = match (&fr.file, fr.line) {
            (Some(file), Some(line)) => format!(" at {}:{line}", short_path(file)),
            _ => fr
                .module
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
        };
        let _ = writeln!(
            s,
            "  {}{i:>3}: {}{name}{loc}",
            if f.stuck { "*" } else { " " },
            if fr.inlined { "(inlined) " } else { "" }
        );
    }
    if frames.len() > max {
        let _ = writeln!(s, "       ... {} more frames", frames.len() - max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> Frame {
        Frame {
            ip: 0x1000,
            function: Some(name.into()),
            file: None,
            line: None,
            inlined: false,
            module: None,
        }
    }

    #[test]
    fn stuck_frames_are_the_common_outer_part() {
        let a = vec![frame("inner_a"), frame("mid"), frame("main")];
        let b = vec![frame("inner_b"), frame("mid"), frame("main")];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![false, true, true]);
        assert_eq!(stuck_mask(&a, Some(&a)), vec![true, true, true]);
        assert_eq!(stuck_mask(&a, None), vec![false, false, false]);
    }

    #[test]
    fn long_paths_are_shortened_in_text() {
        assert_eq!(
            short_path("/rustc/5980/library/std/src/thread/mod.rs"),
            "<rust>/std/src/thread/mod.rs"
        );
        assert_eq!(
            short_path("/root/.cargo/registry/src/index.crates.io-1949/tokio-1.54.1/src/lib.rs"),
            "<cargo>/tokio-1.54.1/src/lib.rs"
        );
        assert_eq!(short_path("/work/app/src/main.rs"), "/work/app/src/main.rs");
    }

    #[test]
    fn sparkline_scales_to_the_max() {
        assert_eq!(sparkline(&[0.0, 1.0, 0.5]), "▁█▅");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    }
}
