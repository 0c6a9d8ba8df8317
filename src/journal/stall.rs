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
        .field("LOOPWATCH_VERSION", &report.loopwatch_version)
}

/// The entry for a storm: `report` (at `report_path`) has had stalls
/// coalesced into it; the entry says how many so far.
pub(crate) fn storm_entry(report: &StallReport, report_path: Option<&Path>) -> JournalEntry {
    let culprit = report.culprit.as_ref().map(|c| c.function.as_str());
    let message = format!(
        "event loop {:?}: {} more stall(s) like report {} ({}{}) coalesced into it",
        report.runtime,
        report.coalesced_stalls,
        report.id,
        report.verdict.kind,
        culprit.map(|c| format!(" in {c}")).unwrap_or_default()
    );
    JournalEntry::new(JournalEvent::StallStormCoalesced, &message)
        .field("LOOPWATCH_STALL_ID", &report.id)
        .field("LOOPWATCH_RUNTIME", &report.runtime)
        .field("LOOPWATCH_VERDICT", report.verdict.kind.as_str())
        .field_opt("LOOPWATCH_CULPRIT", culprit)
        .field_opt("CODE_FUNC", culprit)
        .field(
            "LOOPWATCH_COALESCED_STALLS",
            report.coalesced_stalls.to_string(),
        )
        .field_opt(
            "LOOPWATCH_REPORT",
            report_path.map(|p| p.as_os_str().as_encoded_bytes()),
        )
        .field("LOOPWATCH_VERSION", &report.loopwatch_version)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::journal::{
        field_name_is_valid, Priority, MESSAGE_ID_STALL_DETECTED, MESSAGE_ID_STALL_RECOVERED,
        MESSAGE_ID_WORKER_STUCK,
    };

    pub(crate) fn sample_report() -> crate::report::StallReport {
        use crate::report::{ReportTimes, StallReport, Thresholds};
        use crate::verdict::{Culprit, Verdict, VerdictKind};
        StallReport {
            id: "20260101T000000Z-main-42-1".into(),
            runtime: "main".into(),
            recovered: false,
            duration_seconds: None,
            stalled_for_seconds: 1.25,
            lag_at_detection_seconds: 1.0,
            times: ReportTimes {
                stall_start: "2026-01-01T00:00:00.000Z".into(),
                detected: "2026-01-01T00:00:01.000Z".into(),
                deadline: None,
                end: None,
                written: "2026-01-01T00:00:01.100Z".into(),
            },
            thresholds: Thresholds {
                stall_threshold_seconds: 1.0,
                probe_interval_seconds: 0.1,
                watchdog_seconds: Some(4.0),
                deadline_margin_seconds: 0.5,
            },
            verdict: Verdict {
                kind: VerdictKind::CpuBound,
                summary: "the loop thread was on CPU in application code".into(),
                evidence: vec![],
            },
            culprit: Some(Culprit {
                tid: 4242,
                thread: "tokio-runtime-w".into(),
                function: "myapp::render::spin".into(),
                file: Some("src/render.rs".into()),
                line: Some(88),
                frames: vec![],
                stuck_in: None,
            }),
            ..StallReport::blank()
        }
    }

    fn text(entry: &JournalEntry, name: &str) -> String {
        String::from_utf8(
            entry
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .to_vec(),
        )
        .expect("utf-8")
    }

    #[test]
    fn a_stall_report_maps_to_a_stall_detected_entry() {
        let report = sample_report();
        let path = Path::new("/var/lib/myapp/loopwatch/stall-x.txt");
        let entry = stall_entry(&report, Some(path));
        assert_eq!(entry.event(), JournalEvent::StallDetected);
        assert_eq!(entry.message_id(), MESSAGE_ID_STALL_DETECTED);
        assert_eq!(entry.priority_level(), Priority::Error);
        assert_eq!(
            entry.message(),
            "event loop \"main\" stalled for 1.2 s: cpu-bound in myapp::render::spin \
             (src/render.rs:88); report /var/lib/myapp/loopwatch/stall-x.txt"
        );
        for (name, want) in [
            ("LOOPWATCH_STALL_ID", "20260101T000000Z-main-42-1"),
            ("LOOPWATCH_RUNTIME", "main"),
            ("LOOPWATCH_VERDICT", "cpu-bound"),
            ("LOOPWATCH_CULPRIT", "myapp::render::spin"),
            ("CODE_FUNC", "myapp::render::spin"),
            ("CODE_FILE", "src/render.rs"),
            ("CODE_LINE", "88"),
            ("LOOPWATCH_CULPRIT_THREAD", "tokio-runtime-w"),
            ("LOOPWATCH_CULPRIT_TID", "4242"),
            ("LOOPWATCH_STALLED_SECONDS", "1.250"),
            ("LOOPWATCH_LAG_SECONDS", "1.000"),
            ("LOOPWATCH_STALL_THRESHOLD_SECONDS", "1.000"),
            ("LOOPWATCH_STALL_START", "2026-01-01T00:00:00.000Z"),
            ("LOOPWATCH_DETECTED", "2026-01-01T00:00:01.000Z"),
            ("LOOPWATCH_REPORT", "/var/lib/myapp/loopwatch/stall-x.txt"),
            ("LOOPWATCH_VERSION", "0.1.0"),
        ] {
            assert_eq!(text(&entry, name), want, "{name}");
        }
        assert!(entry.get("LOOPWATCH_DURATION_SECONDS").is_none());
        assert!(entry.get("LOOPWATCH_STUCK_WORKERS").is_none());
        assert_eq!(entry.dropped_fields(), 0);
        for (name, _) in entry.fields() {
            assert!(field_name_is_valid(name), "{name}");
        }
    }

    #[test]
    fn recovered_and_worker_reports_get_their_own_events() {
        let mut report = sample_report();
        report.recovered = true;
        report.duration_seconds = Some(3.2);
        report.times.end = Some("2026-01-01T00:00:03.200Z".into());
        let entry = stall_entry(&report, None);
        assert_eq!(entry.event(), JournalEvent::StallRecovered);
        assert_eq!(entry.message_id(), MESSAGE_ID_STALL_RECOVERED);
        assert_eq!(entry.priority_level(), Priority::Notice);
        assert_eq!(
            entry.message(),
            "event loop \"main\" recovered after 3.2 s (cpu-bound in myapp::render::spin \
             (src/render.rs:88))"
        );
        assert_eq!(text(&entry, "LOOPWATCH_DURATION_SECONDS"), "3.200");
        assert_eq!(text(&entry, "LOOPWATCH_END"), "2026-01-01T00:00:03.200Z");
        assert!(entry.get("LOOPWATCH_REPORT").is_none(), "no file, no path");

        let mut report = sample_report();
        report.verdict.kind = crate::verdict::VerdictKind::WorkerStuck;
        report.culprit = None;
        report.stuck_workers = vec![crate::hooks::StuckWorker {
            worker: 1,
            tids: vec![77],
            thread: Some("tokio-runtime-w".into()),
            stuck_for_seconds: 1.3,
            task: None,
        }];
        let entry = stall_entry(&report, None);
        assert_eq!(entry.event(), JournalEvent::WorkerStuck);
        assert_eq!(entry.message_id(), MESSAGE_ID_WORKER_STUCK);
        assert_eq!(
            entry.message(),
            "runtime \"main\": worker 1 stuck in a poll for 1.2 s: worker-stuck"
        );
        assert_eq!(text(&entry, "LOOPWATCH_STUCK_WORKERS"), "1");
        assert!(
            entry.get("CODE_FILE").is_none(),
            "no culprit, no code location"
        );
    }
}
