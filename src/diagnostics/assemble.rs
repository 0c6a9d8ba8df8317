//! Assembling a new [`StallReport`]: id, times, thresholds, the lag
//! timeline before the stall, the runtime's metrics and the process facts.
//!
//! Everything here is known at detection; verdict, culprit and threads are
//! filled in afterwards from the captures (the parent's `refresh`). This
//! module also turns monotonic clock readings into wall-clock timestamps.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::clock::us;
use crate::procfs;
use crate::report::{
    rfc3339, wall, CaptureInfo, LagSample, ReportTimes, RuntimeMetricsSnapshot, StallReport,
    Thresholds, REPORT_FORMAT_VERSION,
};
use crate::settings::Settings;
use crate::verdict::{Verdict, VerdictKind};

/// How far back the report's lag timeline reaches, µs.
const TIMELINE_SPAN: u64 = 30_000_000;

/// What a new report is made from.
pub(super) struct NewReport<'a> {
    pub seq: u64,
    pub runtime: &'a str,
    pub started_at: u64,
    pub detected_at: u64,
    pub lag: Duration,
    pub deadline: Option<u64>,
    pub timeline: &'a VecDeque<(u64, u64)>,
    pub stuck_workers: Vec<crate::hooks::StuckWorker>,
    pub runtime_metrics: RuntimeMetricsSnapshot,
    pub capture: Option<CaptureInfo>,
    pub capture_on: bool,
    pub hiccups: Vec<crate::hiccups::Hiccup>,
    pub top_blockers: Vec<crate::hiccups::Blocker>,
}

/// A report with everything known at detection.
pub(super) fn new_report(settings: &Settings, n: NewReport<'_>) -> StallReport {
    let id = format!(
        "{}-{}-{}-{:04}",
        compact_utc(SystemTime::now()),
        sanitize(n.runtime),
        std::process::id(),
        n.seq
    );
    let timeline = n
        .timeline
        .iter()
        .filter(|(at, _)| at.saturating_add(TIMELINE_SPAN) >= n.started_at && *at <= n.started_at)
        .map(|(at, lag)| LagSample {
            at_seconds: -(us(n.started_at - at).as_secs_f64()),
            lag_seconds: us(*lag).as_secs_f64(),
        })
        .collect();
    StallReport {
        id,
        format_version: REPORT_FORMAT_VERSION,
        loopwatch_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime: n.runtime.to_string(),
        recovered: false,
        duration_seconds: None,
        stalled_for_seconds: n.lag.as_secs_f64(),
        lag_at_detection_seconds: n.lag.as_secs_f64(),
        times: ReportTimes {
            stall_start: wall(n.started_at),
            detected: wall(n.detected_at),
            deadline: n.deadline.map(wall),
            end: None,
            written: String::new(),
        },
        thresholds: Thresholds {
            stall_threshold_seconds: settings.threshold.as_secs_f64(),
            probe_interval_seconds: settings.probe_interval.as_secs_f64(),
            watchdog_seconds: settings.watchdog.map(|w| w.as_secs_f64()),
            deadline_margin_seconds: settings.diagnostics.deadline_margin.as_secs_f64(),
        },
        verdict: Verdict {
            kind: VerdictKind::Unknown,
            summary: String::new(),
            evidence: Vec::new(),
        },
        culprit: None,
        stuck_workers: n.stuck_workers,
        timeline,
        captures: n.capture.into_iter().collect(),
        threads: Vec::new(),
        runtime_metrics: Some(n.runtime_metrics),
        metrics: String::new(),
        process: procfs::process_facts(),
        notes: if n.capture_on {
            Vec::new()
        } else {
            vec!["stack capture is off: threads show /proc facts only".into()]
        },
        occurrences: Vec::new(),
        coalesced_stalls: 0,
        hiccups: n.hiccups,
        top_blockers: n.top_blockers,
        loop_looks: Vec::new(),
    }
}

/// `20261124T215722Z`: a UTC time to the second, for report ids.
fn compact_utc(t: SystemTime) -> String {
    let full = rfc3339(t);
    let seconds = full.split('.').next().unwrap_or_default();
    format!("{}Z", seconds.replace([':', '-'], ""))
}

/// A runtime name made safe for a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_file_names() {
        assert_eq!(sanitize("main/../x y"), "main____x_y");
        assert_eq!(sanitize(&"a".repeat(100)).len(), 32);
        let c = compact_utc(std::time::UNIX_EPOCH);
        assert_eq!(c, "19700101T000000Z");
    }
}
