//! Issue 11, target 4: what a stall storm costs.
//!
//! A current_thread runtime, driven by a thread of its own like a daemon's
//! main loop, stalls 400 ms every 600 ms for 60 s (threshold 200 ms: 100
//! stalls) in a process of 200 threads, watched by a Watchdog with its
//! defaults (stack capture on, reports to a directory on the real disk,
//! storm cool-down 60 s, 10 full reports per runtime per hour, 16 MiB of
//! report files per hour). The stall is either a blocking system call
//! (`sleep`) or a busy loop on CPU; each is one row.
//!
//! Measured, against the targets:
//!
//! * full reports: distinct report ids seen by the `on_stall` callback or
//!   on disk (target ≤ 10);
//! * bytes written: what the monitor thread handed to `write(2)` during the
//!   storm (`wchar` of `/proc/self/task/<tid>/io`: every version of every
//!   report, temporary files included), and what is on disk at the end
//!   (target ≤ 1 MB written);
//! * monitor CPU: the monitor thread's time on CPU (schedstat) over the
//!   storm's wall time (target ≤ 1 % of one core);
//! * every stall counted: `loopwatch_stalls_total` and `status()` against
//!   the stalls made;
//! * the first report kept: the report with sequence number 1 is still on
//!   disk at the end and lists later stalls as occurrences.
//!
//! Without `--bench` (smoke run) the storm lasts 6 s with 50 threads.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loopwatch::StallEvent;

const THRESHOLD: Duration = Duration::from_millis(200);
const BLOCK: Duration = Duration::from_millis(400);
const PERIOD: Duration = Duration::from_millis(600);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sleep,
    Spin,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sleep => "sleep",
            Kind::Spin => "spin",
        }
    }

    fn block(self) {
        match self {
            Kind::Sleep => std::thread::sleep(BLOCK),
            Kind::Spin => {
                let end = Instant::now() + BLOCK;
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// What one storm cost.
struct Outcome {
    stalls_made: u64,
    stalls_seen: u64,
    stalls_counted: f64,
    coalesced: f64,
    full_reports: usize,
    versions_written: f64,
    versions_dropped: f64,
    bytes_written: u64,
    write_calls: u64,
    bytes_on_disk: u64,
    files_on_disk: usize,
    first_kept: bool,
    first_occurrences: u64,
    monitor_cpu_pct: f64,
    monitor_cpu: Duration,
    monitor_cpu_first_two: Duration,
    wall: Duration,
}

/// `wchar` and `syscw` of this process's threads named `loopwatch-monit*`.
fn monitor_io() -> (u64, u64) {
    let mut total = (0, 0);
    for e in std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .flatten()
    {
        let named = std::fs::read_to_string(e.path().join("comm"))
            .is_ok_and(|c| c.starts_with("loopwatch-monit"));
        if !named {
            continue;
        }
        let io = std::fs::read_to_string(e.path().join("io")).unwrap_or_default();
        for line in io.lines() {
            let value = |p: &str| line.strip_prefix(p)?.trim().parse::<u64>().ok();
            if let Some(v) = value("wchar:") {
                total.0 += v;
            }
            if let Some(v) = value("syscw:") {
                total.1 += v;
            }
        }
    }
    total
}

/// The value of one series in Prometheus text.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The report id in a report file's path (`stall-<id>.json|txt`).
fn report_id(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("stall-")?;
    let id = rest
        .strip_suffix(".json")
        .or_else(|| rest.strip_suffix(".txt"))?;
    Some(id.to_string())
}

fn storm(kind: Kind, length: Duration, threads: usize) -> Outcome {
    let mut idle = IdleThreads::new();
    idle.fill_to(threads.saturating_sub(4));
    let dir = scratch_dir().join(format!("storm-{}-{}", kind.name(), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = DrivenRuntime::current_thread("storm-loop");
    let registry = prometheus::Registry::new();
    let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let seen_cb = seen.clone();
    let wd = loopwatch::Watchdog::builder()
        .stall_threshold(THRESHOLD)
        .report_dir(&dir)
        .registry(registry.clone())
        .watch("main", rt.handle.clone())
        .on_stall(move |e| {
            let report = match e {
                StallEvent::Started { report, .. } | StallEvent::Ended { report, .. } => report,
                _ => &None,
            };
            if let Some(id) = report.as_deref().and_then(report_id) {
                seen_cb.lock().unwrap().insert(id);
            }
        })
        .start()
        .expect("start watchdog");
    // The monitor's start-up work (and the first capture's module list) is
    // not the storm's.
    std::thread::sleep(Duration::from_millis(500));

    let stalls_made = (length.as_millis() / PERIOD.as_millis()) as u64;
    let cpu0 = threads_cpu_ns("loopwatch-monit");
    let (w0, c0) = monitor_io();
    let start = Instant::now();
    let mut cpu_first_two = 0;
    for i in 0..stalls_made {
        let due = start + PERIOD * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if i == 2 {
            // The first stall's full report and the second stall's cheap
            // look are done by now.
            cpu_first_two = threads_cpu_ns("loopwatch-monit").saturating_sub(cpu0);
        }
        rt.handle.spawn(async move { kind.block() });
    }
    // The last stall ends, and the incident with it.
    std::thread::sleep(PERIOD + Duration::from_millis(1000));
    let wall = start.elapsed();
    let cpu = threads_cpu_ns("loopwatch-monit").saturating_sub(cpu0);
    let (w1, c1) = monitor_io();

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encode metrics");
    let stalls_seen = wd.status().runtime("main").map_or(0, |r| r.stalls);
    wd.shutdown();
    drop(rt);
    drop(idle);

    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let mut ids = seen.lock().unwrap().clone();
    ids.extend(files.iter().filter_map(|p| report_id(p)));
    let first = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .find(|p| report_id(p).is_some_and(|id| id.ends_with("-0001")));
    let first_occurrences = first
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["coalesced_stalls"].as_u64())
        .unwrap_or(0);
    let outcome = Outcome {
        stalls_made,
        stalls_seen,
        stalls_counted: series(&text, "loopwatch_stalls_total{runtime=\"main\"}"),
        coalesced: series(&text, "loopwatch_stalls_coalesced_total{runtime=\"main\"}"),
        full_reports: ids.len(),
        versions_written: series(&text, "loopwatch_reports_total{result=\"written\"}"),
        versions_dropped: series(&text, "loopwatch_reports_total{result=\"dropped\"}"),
        bytes_written: w1.saturating_sub(w0),
        write_calls: c1.saturating_sub(c0),
        bytes_on_disk: files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum(),
        files_on_disk: files.len(),
        first_kept: first.is_some(),
        first_occurrences,
        monitor_cpu_pct: cpu as f64 / wall.as_nanos() as f64 * 100.0,
        monitor_cpu: Duration::from_nanos(cpu),
        monitor_cpu_first_two: Duration::from_nanos(cpu_first_two),
        wall,
    };
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn main() {
    heading("storm");
    let length = pick(Duration::from_secs(60), Duration::from_secs(6));
    let threads = pick(200, 50);
    println!(
        "{} s storm: stall {} ms every {} ms, threshold {} ms, {threads} threads",
        length.as_secs(),
        BLOCK.as_millis(),
        PERIOD.as_millis(),
        THRESHOLD.as_millis()
    );
    let mut t = Table::new(
        "Stall storm, Watchdog defaults",
        &[
            "stall",
            "stalls made / seen / counted",
            "coalesced",
            "full reports (≤ 10)",
            "versions written / dropped",
            "bytes written (≤ 1 MB)",
            "write calls",
            "on disk (files)",
            "first kept (occurrences)",
            "monitor CPU (≤ 1 %)",
            "CPU: total / first 2 stalls",
            "verdict",
        ],
    );
    for kind in [Kind::Sleep, Kind::Spin] {
        let o = storm(kind, length, threads);
        let ok = o.full_reports <= 10
            && o.bytes_written <= 1_000_000
            && o.monitor_cpu_pct <= 1.0
            && o.stalls_seen == o.stalls_made
            && o.stalls_counted == o.stalls_made as f64
            && o.first_kept;
        t.row(vec![
            kind.name().to_string(),
            format!(
                "{} / {} / {}",
                o.stalls_made, o.stalls_seen, o.stalls_counted
            ),
            format!("{}", o.coalesced),
            format!("{}", o.full_reports),
            format!("{} / {}", o.versions_written, o.versions_dropped),
            format!("{:.0} KB", o.bytes_written as f64 / 1e3),
            format!("{}", o.write_calls),
            format!(
                "{:.0} KB ({})",
                o.bytes_on_disk as f64 / 1e3,
                o.files_on_disk
            ),
            format!(
                "{} ({})",
                if o.first_kept { "yes" } else { "NO" },
                o.first_occurrences
            ),
            format!(
                "{} % over {:.1} s",
                f(o.monitor_cpu_pct, 3),
                o.wall.as_secs_f64()
            ),
            format!(
                "{} / {} ms",
                f(ms(o.monitor_cpu), 1),
                f(ms(o.monitor_cpu_first_two), 1)
            ),
            verdict(ok),
        ]);
    }
    t.print();
}
