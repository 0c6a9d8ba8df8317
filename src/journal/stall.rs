//! The journal entry of a stall report: which event it is, its message and
//! its fields.
//!
//! [`stall_entry`] is the one place that maps a [`StallReport`] to journal
//! fields; a field added to the report that belongs in the journal is added
//! here. It decides nothing about the stall and sends nothing.

use std::path::Path;

use super::entry::{JournalEntry, JournalEvent};
use crate::report::StallReport;
use crate::status::human;

/// Seconds with millisecond precision, as the `*_SECONDS` fields carry them.
fn seconds(v: f64) -> String {
    format!("{:.3}", v.max(0.0))
}

/// The event a report stands for: recovered, one stuck worker, or a stall.
pub(crate) fn stall_event(report: &StallReport) -> JournalEvent {
    if report.recovered {
        JournalEvent::StallRecovered
    } else if !report.stuck_workers.is_empty()
        || report.verdict.kind == crate::verdict::VerdictKind::WorkerStuck
    {
        JournalEvent::WorkerStuck
    } else {
        JournalEvent::StallDetected
    }
}

/// The entry for `report`, whose files are at `report_path` (the report
/// store's answer; `None` when the report went to stderr only).
///
/// The event is [`StallRecovered`](JournalEvent::StallRecovered) once the
/// report says so, [`WorkerStuck`](JournalEvent::WorkerStuck) for a worker
/// stuck in a poll, [`StallDetected`](JournalEvent::StallDetected)
/// otherwise. The fields are listed in the [module's catalog](super).
pub(crate) fn stall_entry(report: &StallReport, report_path: Option<&Path>) -> JournalEntry {
    let event = stall_event(report);
    let culprit = report.culprit.as_ref();
    let location = culprit.and_then(|c| match (&c.file, c.line) {
        (Some(f), Some(l)) => Some(format!("{f}:{l}")),
        (Some(f), None) => Some(f.clone()),
        _ => None,
    });
    let blame = match (culprit, &location) {
        (Some(c), Some(loc)) => format!("{} in {} ({loc})", report.verdict.kind, c.function),
        (Some(c), None) => format!("{} in {}", report.verdict.kind, c.function),
        (None, _) => format!("{}", report.verdict.kind),
    };
    let path_note = report_path
        .map(|p| format!("; report {}", p.display()))
        .unwrap_or_default();
    let for_how_long = |s: f64| human(std::time::Duration::from_secs_f64(s.max(0.0)));
    let message = match event {
        JournalEvent::StallRecovered => format!(
            "event loop {:?} recovered after {} ({blame}){path_note}",
            report.runtime,
            for_how_long(
                report
                    .duration_seconds
                    .unwrap_or(report.stalled_for_seconds)
            )
        ),
        JournalEvent::WorkerStuck => {
            let workers: Vec<String> = report
                .stuck_workers
                .iter()
                .map(|w| w.worker.to_string())
                .collect();
            format!(
                "runtime {:?}: worker {} stuck in a poll for {}: {blame}{path_note}",
                report.runtime,
                if workers.is_empty() {
                    "?".to_string()
                } else {
                    workers.join(", ")
                },
                for_how_long(report.stalled_for_seconds)
            )
        }
        _ => format!(
            "event loop {:?} stalled for {}: {blame}{path_note}",
            report.runtime,
            for_how_long(report.stalled_for_seconds)
        ),
    };

    let stuck_workers = (!report.stuck_workers.is_empty()).then(|| {
        report
            .stuck_workers
            .iter()
            .map(|w| w.worker.to_string())
            .collect::<Vec<_>>()
            .join(",")
    });
    JournalEntry::new(event, &message)
        .field("LOOPWATCH_STALL_ID", &report.id)
        .field("LOOPWATCH_RUNTIME", &report.runtime)
        .field("LOOPWATCH_VERDICT", report.verdict.kind.as_str())
        .field("LOOPWATCH_VERDICT_SUMMARY", &report.verdict.summary)
        .field_opt("LOOPWATCH_CULPRIT", culprit.map(|c| &c.function))
        .field_opt("CODE_FUNC", culprit.map(|c| &c.function))
        .field_opt("CODE_FILE", culprit.and_then(|c| c.file.as_ref()))
        .field_opt(
            "CODE_LINE",
            culprit.and_then(|c| c.line).map(|l| l.to_string()),
        )
        .field_opt("LOOPWATCH_CULPRIT_THREAD", culprit.map(|c| &c.thread))
        .field_opt("LOOPWATCH_CULPRIT_TID", culprit.map(|c| c.tid.to_string()))
        .field(
            "LOOPWATCH_STALLED_SECONDS",
            seconds(report.stalled_for_seconds),
        )
        .field_opt(
            "LOOPWATCH_DURATION_SECONDS",
            report.duration_seconds.map(seconds),
        )
        .field(
            "LOOPWATCH_LAG_SECONDS",
            seconds(report.lag_at_detection_seconds),
        )
        .field(
            "LOOPWATCH_STALL_THRESHOLD_SECONDS",
            seconds(report.thresholds.stall_threshold_seconds),
        )
        .field("LOOPWATCH_STALL_START", &report.times.stall_start)
        .field("LOOPWATCH_DETECTED", &report.times.detected)
        .field_opt("LOOPWATCH_END", report.times.end.as_ref())
        .field_opt("LOOPWATCH_STUCK_WORKERS", stuck_workers)
        .field_opt(
            "LOOPWATCH_REPORT",
            report_path.map(|p| p.as_os_str().as_encoded_bytes()),
        )
        .field("LOOPWATCH_VERSION", report.loopwatch_version)
}
