//! Tests of the metrics through the [`Metrics`] handle: every family in the
//! text, label values, buckets, scrape-time tokio figures, registration and
//! unregistration, and `promtool check metrics` on the result.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use prometheus::{IntGauge, Registry};

use super::families::VERDICTS;
use super::{Metrics, PingResult};
use crate::error::Error;

fn rt(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A registry with every family populated, as after a stall and a report.
fn populated() -> (Registry, Metrics, tokio::runtime::Runtime) {
    let runtime = rt(2);
    let registry = Registry::new();
    let m = Metrics::new(
        &registry,
        &[("main".to_string(), runtime.handle().clone())],
        Duration::from_millis(500),
    )
    .unwrap();
    m.observe_probe(0, Duration::from_micros(300));
    m.set_lag(0, Duration::from_micros(300));
    m.stall_started(0);
    m.stall_classified(0, "blocked-syscall");
    m.stall_ended(0, Duration::from_millis(1500));
    m.ping(PingResult::Sent);
    m.ping(PingResult::Suppressed);
    m.set_deadline_left(Some(Duration::from_secs(3)));
    m.report("written");
    m.capture_took(Duration::from_millis(4));
    m.set_worker_stuck(0, 1, true);
    (registry, m, runtime)
}

const FAMILIES: &[&str] = &[
    "loopwatch_probe_lag_seconds",
    "loopwatch_lag_seconds",
    "loopwatch_stall_threshold_seconds",
    "loopwatch_stalled",
    "loopwatch_stalls_total",
    "loopwatch_stall_duration_seconds",
    "loopwatch_stalls_by_verdict_total",
    "loopwatch_watchdog_pings_total",
    "loopwatch_watchdog_deadline_seconds",
    "loopwatch_reports_total",
    "loopwatch_journal_entries_total",
    "loopwatch_capture_duration_seconds",
    "loopwatch_worker_stuck",
    "loopwatch_runtime_workers",
    "loopwatch_runtime_alive_tasks",
    "loopwatch_runtime_global_queue_depth",
    "loopwatch_runtime_worker_busy_seconds_total",
    "loopwatch_runtime_worker_park_total",
    "loopwatch_runtime_worker_park_unpark_total",
];

#[test]
fn every_family_is_in_the_text() {
    let (registry, _m, _rt) = populated();
    let text = Metrics::encode(&registry);
    for f in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {f} ")),
            "{f} missing from:\n{text}"
        );
        assert!(text.contains(&format!("# HELP {f} ")), "{f} has no help");
    }
    assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(0.5));
    assert_eq!(
        value(&text, r#"loopwatch_stalls_total{runtime="main"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"loopwatch_stalled{runtime="main"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"loopwatch_stalls_by_verdict_total{runtime="main",verdict="blocked-syscall"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"loopwatch_worker_stuck{runtime="main",worker="1"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "loopwatch_watchdog_deadline_seconds"),
        Some(3.0)
    );
}

#[test]
fn counters_with_a_result_start_at_zero() {
    let runtime = rt(1);
    let registry = Registry::new();
    let _m = Metrics::new(
        &registry,
        &[("main".to_string(), runtime.handle().clone())],
        Duration::from_secs(1),
    )
    .unwrap();
    let text = Metrics::encode(&registry);
    for series in [
        r#"loopwatch_watchdog_pings_total{result="sent"}"#,
        r#"loopwatch_watchdog_pings_total{result="suppressed"}"#,
        r#"loopwatch_watchdog_pings_total{result="failed"}"#,
        r#"loopwatch_reports_total{result="written"}"#,
        r#"loopwatch_reports_total{result="failed"}"#,
        r#"loopwatch_journal_entries_total{result="sent"}"#,
        r#"loopwatch_journal_entries_total{result="failed"}"#,
        r#"loopwatch_stalls_total{runtime="main"}"#,
        r#"loopwatch_stalled{runtime="main"}"#,
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series} in:\n{text}");
    }
    for v in VERDICTS {
        let s = format!(r#"loopwatch_stalls_by_verdict_total{{runtime="main",verdict="{v}"}}"#);
        assert_eq!(value(&text, &s), Some(0.0), "{s}");
    }
    // No systemd watchdog: no deadline series.
    assert!(!text.contains("loopwatch_watchdog_deadline_seconds "));
}

#[test]
fn probe_lag_histogram_counts_into_the_right_bucket() {
    let (registry, m, _rt) = populated();
    m.observe_probe(0, Duration::from_millis(3));
    let text = Metrics::encode(&registry);
    let b = |le: &str| {
        value(
            &text,
            &format!(r#"loopwatch_probe_lag_seconds_bucket{{runtime="main",le="{le}"}}"#),
        )
    };
    assert_eq!(b("0.0001"), Some(0.0));
    assert_eq!(b("0.0005"), Some(1.0)); // the 300 µs probe
    assert_eq!(b("0.0025"), Some(1.0));
    assert_eq!(b("0.005"), Some(2.0)); // and the 3 ms one
    assert_eq!(b("30"), Some(2.0));
    assert_eq!(b("+Inf"), Some(2.0));
    assert_eq!(
        value(
            &text,
            r#"loopwatch_probe_lag_seconds_count{runtime="main"}"#
        ),
        Some(2.0)
    );
    let sum = value(&text, r#"loopwatch_probe_lag_seconds_sum{runtime="main"}"#).unwrap();
    assert!((sum - 0.0033).abs() < 1e-9, "{sum}");
    assert_eq!(
        value(
            &text,
            r#"loopwatch_stall_duration_seconds_bucket{runtime="main",le="1"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            r#"loopwatch_stall_duration_seconds_bucket{runtime="main",le="2.5"}"#
        ),
        Some(1.0)
    );
}

#[test]
fn deadline_series_comes_and_goes() {
    let (registry, m, _rt) = populated();
    assert!(Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds 3\n"));
    m.set_deadline_left(None);
    assert!(!Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds"));
    m.set_deadline_left(Some(Duration::from_millis(250)));
    assert!(Metrics::encode(&registry).contains("loopwatch_watchdog_deadline_seconds 0.25\n"));
}

#[test]
fn unknown_verdicts_and_bad_indices_do_not_grow_the_label_set_or_panic() {
    let (registry, m, _rt) = populated();
    m.stall_classified(0, "a verdict from the future");
    m.stall_classified(7, "cpu-bound");
    m.observe_probe(3, Duration::from_secs(1));
    m.set_worker_stuck(0, 99, true);
    m.set_worker_stuck(5, 0, true);
    let text = Metrics::encode(&registry);
    assert_eq!(
        value(
            &text,
            r#"loopwatch_stalls_by_verdict_total{runtime="main",verdict="unknown"}"#
        ),
        Some(1.0)
    );
    assert!(!text.contains("future"));
    assert!(!text.contains(r#"worker="99""#));
}

#[test]
fn tokio_metrics_are_read_at_scrape_time() {
    let runtime = rt(2);
    let registry = Registry::new();
    let _m = Metrics::new(
        &registry,
        &[("pool".to_string(), runtime.handle().clone())],
        Duration::from_secs(1),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        // Keep a worker busy for a while, then hold a task alive.
        std::thread::sleep(Duration::from_millis(50));
        tx.send(()).unwrap();
        let _ = release_rx.await;
    });
    rx.recv().unwrap();
    // Let the worker publish its busy time (it does when it parks).
    std::thread::sleep(Duration::from_millis(100));
    let text = Metrics::encode(&registry);
    assert_eq!(
        value(&text, r#"loopwatch_runtime_workers{runtime="pool"}"#),
        Some(2.0)
    );
    assert_eq!(
        value(&text, r#"loopwatch_runtime_alive_tasks{runtime="pool"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"loopwatch_runtime_global_queue_depth{runtime="pool"}"#
        ),
        Some(0.0)
    );
    let busy: f64 = ["0", "1"]
        .iter()
        .map(|w| {
            value(
                &text,
                &format!(
                    r#"loopwatch_runtime_worker_busy_seconds_total{{runtime="pool",worker="{w}"}}"#
                ),
            )
            .unwrap()
        })
        .sum();
    assert!(busy >= 0.04, "busy {busy} in:\n{text}");
    let parks = value(
        &text,
        r#"loopwatch_runtime_worker_park_total{runtime="pool",worker="0"}"#,
    )
    .unwrap();
    assert!(parks >= 1.0, "{text}");
    assert!(value(
        &text,
        r#"loopwatch_runtime_worker_park_unpark_total{runtime="pool",worker="1"}"#
    )
    .is_some());
    // A second scrape does not double the counters.
    let again = Metrics::encode(&registry);
    let busy2: f64 = ["0", "1"]
        .iter()
        .map(|w| {
            value(
                &again,
                &format!(
                    r#"loopwatch_runtime_worker_busy_seconds_total{{runtime="pool",worker="{w}"}}"#
                ),
            )
            .unwrap()
        })
        .sum();
    assert!(busy2 >= busy && busy2 < busy + 0.03, "{busy} then {busy2}");
    let _ = release_tx.send(());
}

#[test]
fn a_clash_leaves_the_registry_unchanged_and_drop_unregisters() {
    let runtime = rt(1);
    let registry = Registry::new();
    let runtimes = [("main".to_string(), runtime.handle().clone())];
    let first = Metrics::new(&registry, &runtimes, Duration::from_secs(1)).unwrap();
    let clash = Metrics::new(&registry, &runtimes, Duration::from_secs(2));
    assert!(matches!(clash, Err(Error::Metrics(_))), "{clash:?}");
    let text = Metrics::encode(&registry);
    assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(1.0));
    drop(first);
    assert_eq!(Metrics::encode(&registry), "");
    let again = Metrics::new(&registry, &runtimes, Duration::from_secs(2)).unwrap();
    let text = Metrics::encode(&registry);
    assert_eq!(value(&text, "loopwatch_stall_threshold_seconds"), Some(2.0));
    drop(again);
}

#[test]
fn a_name_taken_by_the_application_is_an_error() {
    let runtime = rt(1);
    let registry = Registry::new();
    registry
        .register(Box::new(
            IntGauge::new("loopwatch_stalled", "the application's own").unwrap(),
        ))
        .unwrap();
    let r = Metrics::new(
        &registry,
        &[("main".to_string(), runtime.handle().clone())],
        Duration::from_secs(1),
    );
    assert!(matches!(r, Err(Error::Metrics(_))));
    // Only the application's metric is there.
    let text = Metrics::encode(&registry);
    assert_eq!(text.matches("# TYPE").count(), 1, "{text}");
}

/// Runs `promtool check metrics` on `text`; its findings, or a loud failure.
pub(crate) fn promtool_check_metrics(text: &str) -> String {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run promtool ({e}): install Debian's prometheus package: \
             apt-get install prometheus"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{findings}\non:\n{text}",
        out.status
    );
    findings
}

#[test]
fn promtool_check_metrics_has_no_finding() {
    let (registry, m, _rt) = populated();
    m.ping(PingResult::Failed);
    m.report("failed");
    let text = Metrics::encode(&registry);
    let findings = promtool_check_metrics(&text);
    assert!(findings.trim().is_empty(), "promtool findings:\n{findings}");
}
