//! The stall report: what the on-call engineer reads.
//!
//! A [`StallReport`] is plain data (serde) assembled by the diagnostics on
//! the monitor thread: when and how long, the thresholds, the verdict with
//! its evidence, the culprit, the lag timeline before the stall, every
//! thread grouped by identical stack (frames that did not move between the
//! two captures marked as stuck), the runtime and Prometheus metrics, and
//! facts about the process. It renders as JSON for tools and as text for
//! humans (short lines, readable in `journalctl`).
//!
//! This file owns the report's data model. [`threads`] groups threads by
//! identical stack and marks the frames that did not move; [`text`]
//! renders the human-readable forms; [`read`] reads a report back from its
//! JSON for tools, and [`offline`] names a stripped binary's frames after
//! the fact. Deciding the verdict is
//! [`verdict`](crate::verdict)'s job, writing files
//! [`report_store`](crate::report_store)'s.

mod layout;
mod offline;
mod read;
mod text;
mod threads;

pub(crate) use threads::group_threads;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::procfs::ProcessFacts;
use crate::stacks::{CaptureOutcome, Frame, NotCaptured};
use crate::verdict::{Culprit, Verdict, VerdictKind};

/// The version of the report's JSON format that this loopwatch writes.
/// It grows when a field changes meaning or a reader would misread a new
/// report; added optional fields do not change it. Version 1 is the format
/// of loopwatch 0.1's first release (no `format_version` field).
pub const REPORT_FORMAT_VERSION: u32 = 2;

/// A complete account of one stall.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StallReport {
    /// Unique id: UTC time of detection, runtime, pid and a sequence number.
    pub id: String,
    /// The version of this JSON format ([`REPORT_FORMAT_VERSION`]). A
    /// reader refuses a report of a later version than it knows.
    #[serde(default)]
    pub format_version: u32,
    /// The loopwatch version that wrote it.
    pub loopwatch_version: String,
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
    /// Later stalls of the same runtime that looked the same (or came past
    /// the hourly report budget) and were coalesced into this report
    /// instead of getting one of their own, oldest first; at most 1000 are
    /// listed.
    #[serde(default)]
    pub occurrences: Vec<Occurrence>,
    /// How many stalls were coalesced into this report (listed or not).
    #[serde(default)]
    pub coalesced_stalls: u64,
    /// The runtime's hiccups (blocks above the warn threshold) before the
    /// stall, oldest first; the last one may be the stall's own beginning.
    #[serde(default)]
    pub hiccups: Vec<crate::hiccups::Hiccup>,
    /// The runtime's top blockers by hiccup time since start.
    #[serde(default)]
    pub top_blockers: Vec<crate::hiccups::Blocker>,
    /// Looks at the loop thread alone (one signal each) besides the full
    /// captures: the hiccup's or the presample's before detection, then a
    /// few between the captures. The verdict rests on them too.
    #[serde(default)]
    pub loop_looks: Vec<LoopLook>,
}

/// A look at the loop thread alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopLook {
    /// Why it was taken: `hiccup` (the block was still a hiccup),
    /// `presample` (at half the stall threshold), `sample` (between the
    /// captures).
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// The thread's state letter and name, e.g. `R (running)`.
    pub state: Option<String>,
    /// The innermost own-code function on its stack, if any.
    pub culprit: Option<String>,
}

/// A later stall coalesced into a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Occurrence {
    /// When it started (RFC 3339).
    pub start: String,
    /// How long it lasted, once it ended (seconds).
    pub duration_seconds: Option<f64>,
    /// Its verdict, from a cheap capture of the loop thread alone.
    pub verdict: VerdictKind,
    /// Its culprit function, if one was found.
    pub culprit: Option<String>,
}

impl Default for Occurrence {
    fn default() -> Self {
        Occurrence {
            start: String::new(),
            duration_seconds: None,
            verdict: VerdictKind::Unknown,
            culprit: None,
        }
    }
}

/// When things happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LagSample {
    /// When the probe was answered, relative to the stall start (negative: before).
    pub at_seconds: f64,
    /// Its lag (seconds).
    pub lag_seconds: f64,
}

/// One stack capture.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Why the group's stack was not captured, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_captured: Option<NotCaptured>,
    /// The kernel stack of a thread not signalled because it sleeps in the
    /// kernel or is stopped (innermost first), where readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_stack: Vec<String>,
    /// The stack was read where the thread sleeps in a system call,
    /// without a signal (so the call was not cut short).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_asleep: bool,
    /// Kernel state letter and name, e.g. `S (sleeping)`.
    pub state: Option<String>,
    /// Current system call, if any.
    pub syscall: Option<String>,
    /// Kernel wait channel, if any.
    pub wchan: Option<String>,
    /// CPU time used by the group between the two samples (seconds).
    pub cpu_seconds: Option<f64>,
    /// Why the stack is incomplete, when it is: cut at `max_stack_bytes`,
    /// at the frame limit, or not unwound past some frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
    /// The stack, innermost first; each frame says whose code it is.
    pub frames: Vec<ReportFrame>,
}

/// A frame in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportFrame {
    /// The frame.
    #[serde(flatten)]
    pub frame: Frame,
    /// True when the frame is the same in both captures.
    pub stuck: bool,
}

/// The tokio runtime's stable metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The wall-clock time (RFC 3339) of a reading of loopwatch's monotonic
/// microsecond clock.
pub(crate) fn wall(at: u64) -> String {
    let now = crate::clock::now_us();
    let wall_now = SystemTime::now();
    let t = if at <= now {
        wall_now.checked_sub(crate::clock::us(now - at))
    } else {
        wall_now.checked_add(crate::clock::us(at - now))
    };
    rfc3339(t.unwrap_or(wall_now))
}

/// RFC 3339 UTC, milliseconds. Never panics: a time before 1970 (a clock
/// set wrong) or after year 9999 is clamped to the representable range.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    use std::time::{Duration, UNIX_EPOCH};
    // The last millisecond of year 9999.
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    humantime::format_rfc3339_millis(UNIX_EPOCH + since.min(LAST)).to_string()
}

impl StallReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl StallReport {
    /// A report with nothing in it, for tests and benches of what builds on
    /// one.
    pub(crate) fn blank() -> StallReport {
        StallReport {
            id: "test".into(),
            format_version: REPORT_FORMAT_VERSION,
            loopwatch_version: env!("CARGO_PKG_VERSION").into(),
            runtime: "main".into(),
            recovered: false,
            duration_seconds: None,
            stalled_for_seconds: 0.0,
            lag_at_detection_seconds: 0.0,
            times: ReportTimes::default(),
            thresholds: Thresholds {
                stall_threshold_seconds: 1.0,
                probe_interval_seconds: 0.1,
                watchdog_seconds: None,
                deadline_margin_seconds: 0.1,
            },
            verdict: Verdict {
                kind: VerdictKind::Unknown,
                summary: String::new(),
                evidence: Vec::new(),
            },
            culprit: None,
            stuck_workers: Vec::new(),
            timeline: Vec::new(),
            captures: Vec::new(),
            threads: Vec::new(),
            runtime_metrics: None,
            metrics: String::new(),
            process: crate::procfs::process_facts(),
            notes: Vec::new(),
            occurrences: Vec::new(),
            coalesced_stalls: 0,
            hiccups: Vec::new(),
            top_blockers: Vec::new(),
            loop_looks: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_out_of_range_are_clamped_not_panics() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        if let Some(before) = UNIX_EPOCH.checked_sub(Duration::from_secs(10)) {
            assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        }
    }
}
