//! Target 6: from detection to an fsync'd stall report, in a process of 64
//! threads.
//!
//! A Watchdog with its defaults for capture (every thread's stack, unwound
//! and symbolized) and a report directory on the real disk (under the
//! cargo target directory, ext4 here) watches a current_thread runtime
//! (threshold 100 ms, probe every 25 ms). Idle threads bring the process
//! to 64 threads. A task blocks the loop for 400 ms. The `on_stall`
//! callback for `Started` runs on the monitor thread after the detection
//! report (JSON and text) was written, fsync'd and renamed into place; its
//! wall-clock time minus `detected_at` is the detection-to-report time.
//! The report's own capture timings are read back from its JSON.

mod common;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::*;
use loopwatch::StallEvent;

struct Seen {
    after_detect_ms: f64,
    lag_ms: f64,
    threads: u64,
    signal_ms: f64,
    unwind_sym_ms: f64,
    verdict: String,
    bytes: u64,
}

fn main() {
    heading("detection to fsync'd report, 64 threads (target 6)");
    let reports = tempfile::tempdir_in(scratch_dir()).expect("report dir");
    println!("report directory: {}", reports.path().display());
    let rt = DrivenRuntime::current_thread("bench-loop");
    let (tx, rx) = mpsc::channel::<(SystemTime, SystemTime, Duration, Option<PathBuf>, String)>();
    let wd = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(25))
        .watch("main", rt.handle.clone())
        .report_dir(reports.path())
        .keep_reports(100)
        .on_stall(move |e| {
            let now = SystemTime::now();
            if let StallEvent::Started {
                detected_at,
                report,
                lag,
                ..
            } = e
            {
                let json = report
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p.with_extension("json")).ok())
                    .unwrap_or_default();
                let _ = tx.send((now, *detected_at, *lag, report.clone(), json));
            }
        })
        .start()
        .expect("start watchdog");
    // Let the start-up warm-up capture (on a short-lived thread) finish,
    // then bring the process to 64 threads.
    std::thread::sleep(Duration::from_millis(500));
    let mut idle = IdleThreads::new();
    idle.fill_to(64);
    std::thread::sleep(Duration::from_millis(100));
    let threads_now = thread_count();

    let n = pick(10, 1);
    let mut seen = Vec::new();
    let mut missing = 0;
    for _ in 0..n {
        let times = spawn_block(&rt.handle, Duration::from_millis(400), BlockKind::Sleep);
        times.wait_started();
        let got = rx.recv_timeout(Duration::from_secs(5));
        times.wait_ended();
        std::thread::sleep(Duration::from_millis(300));
        match got {
            Ok((now, detected_at, lag, Some(path), json)) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                let cap = &v["captures"][0];
                seen.push(Seen {
                    after_detect_ms: sys_diff_ms(now, detected_at),
                    lag_ms: ms(lag),
                    threads: cap["threads"].as_u64().unwrap_or(0),
                    signal_ms: cap["signal_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3,
                    unwind_sym_ms: cap["unwind_symbolize_seconds"].as_f64().unwrap_or(f64::NAN)
                        * 1e3,
                    verdict: v["verdict"]["kind"]
                        .as_str()
                        .or_else(|| v["verdict"].as_str())
                        .unwrap_or("?")
                        .to_string(),
                    bytes: std::fs::metadata(&path).map_or(0, |m| m.len())
                        + std::fs::metadata(path.with_extension("json")).map_or(0, |m| m.len()),
                });
            }
            _ => missing += 1,
        }
    }
    wd.shutdown();

    let after: Vec<f64> = seen.iter().map(|s| s.after_detect_ms).collect();
    let a = stats(&after);
    let mut t = Table::new(
        "detection -> report fsync'd (Started callback wall time - detected_at), ms; target <= 50 ms",
        &[
            "threads",
            "stalls",
            "median",
            "min",
            "max",
            "capture: signal+copy (median)",
            "capture: unwind+symbolize (median)",
            "report size (txt+json)",
            "verdict",
            "target (max)",
        ],
    );
    t.row(vec![
        format!(
            "{} (in report: {})",
            threads_now,
            seen.first().map_or(0, |s| s.threads)
        ),
        format!(
            "{}{}",
            seen.len(),
            if missing > 0 {
                format!(" ({missing} without report)")
            } else {
                String::new()
            }
        ),
        f(a.median, 2),
        f(a.min, 2),
        f(a.max, 2),
        f(
            median(&seen.iter().map(|s| s.signal_ms).collect::<Vec<_>>()),
            2,
        ),
        f(
            median(&seen.iter().map(|s| s.unwind_sym_ms).collect::<Vec<_>>()),
            2,
        ),
        format!(
            "{:.0} KiB",
            median(&seen.iter().map(|s| s.bytes as f64).collect::<Vec<_>>()) / 1024.0
        ),
        seen.first().map_or("?".into(), |s| s.verdict.clone()),
        verdict(a.max <= 50.0 && missing == 0),
    ]);
    t.print();
    println!(
        "\n(lag at detection, median: {:.1} ms)",
        median(&seen.iter().map(|s| s.lag_ms).collect::<Vec<_>>())
    );
    drop(idle);
}
