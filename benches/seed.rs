//! The seed's approach against loopwatch, in the same run: does each one
//! notice a stuck loop, and how late.
//!
//! The process gets systemd's environment for `WatchdogSec=1`
//! (`NOTIFY_SOCKET` = a fake socket, `WATCHDOG_USEC=1000000`), so loopwatch
//! runs with its defaults under systemd: threshold W/4 = 250 ms, probe every
//! 62.5 ms, `WATCHDOG=1` every 250 ms while healthy, stack capture on, and a
//! report directory on the real disk. The seed's heartbeat is a tokio
//! interval task in the watched runtime that sends `WATCHDOG=1` every W/4 to
//! a second fake socket. Both sockets record arrival times.
//!
//! * `current_thread`: a task blocks the loop's only thread for 2 s (2 W).
//!   The seed's pings stop with the loop, so systemd would notice at its
//!   deadline (last ping + W) and kill the process without any report;
//!   loopwatch declares the stall, writes the report, and stops pinging.
//! * `multi_thread, 2 workers, one blocked`: a task blocks one worker for
//!   2 s. The seed's task runs on the other worker and keeps pinging: it
//!   never notices. loopwatch's probe is answered by the other worker too;
//!   the runtime is built with `RuntimeHooks` and watched with
//!   `watch_with_hooks`, so the per-worker detector flags the stuck worker
//!   (`loopwatch_worker_stuck`, polled from the registry every 5 ms) and,
//!   by default, counts it as a stall of the runtime (callback, report,
//!   pings held back).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use loopwatch::StallEvent;

const W: Duration = Duration::from_secs(1);
const BLOCK: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Row {
    /// Seed: ms from block start to systemd's deadline when the seed's
    /// pings stopped for longer than W (None: kept pinging in time).
    seed_deadline_ms: Option<f64>,
    /// Seed: pings that arrived during the block.
    seed_pings_during: usize,
    /// loopwatch: ms from block start to the Started callback (report on disk).
    lw_started_ms: Option<f64>,
    lw_report: bool,
    /// loopwatch: pings that arrived during the block.
    lw_pings_during: usize,
    /// loopwatch: pings that arrived between detection and the block's end.
    lw_pings_after_detect: usize,
    /// loopwatch: ms from block start to its own systemd deadline.
    lw_deadline_ms: Option<f64>,
    /// loopwatch_worker_stuck first seen at (ms after block start).
    worker_stuck_ms: Option<f64>,
}

/// The deadline systemd would act on: walking the pings from the last one
/// before `t0`, the first one not followed by another within W (before the
/// block's end at `t_end`), plus W. None: pings kept arriving in time.
fn deadline_hit(pings: &[Instant], t0: Instant, t_end: Instant) -> Option<Instant> {
    let mut p: Vec<Instant> = pings.to_vec();
    p.sort();
    let start = p.iter().rposition(|x| *x <= t0)?;
    for i in start..p.len() {
        let a = p[i];
        if a > t_end {
            break;
        }
        match p.get(i + 1) {
            Some(b) if *b <= a + W => {}
            _ => return Some(a + W),
        }
    }
    None
}

fn worker_stuck_now(reg: &prometheus::Registry) -> bool {
    reg.gather()
        .iter()
        .filter(|mf| mf.name() == "loopwatch_worker_stuck")
        .flat_map(|mf| mf.get_metric().iter())
        .any(|m| m.get_gauge().get_value() > 0.5)
}

fn scenario(
    flavor: &str,
    lw_sink: &NotifySink,
    seed_sink: &NotifySink,
    report_dir: &std::path::Path,
    reps: usize,
) -> Vec<Row> {
    let ct;
    let mt;
    let hooks = loopwatch::RuntimeHooks::new();
    let handle = if flavor == "current_thread" {
        ct = DrivenRuntime::current_thread("bench-loop");
        ct.handle.clone()
    } else {
        mt = hooks
            .install(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all(),
            )
            .build()
            .expect("runtime");
        mt.handle().clone()
    };
    let seed = spawn_seed_pinger(&handle, seed_sink.path.clone(), W / 4);
    let (tx, rx) = mpsc::channel::<(StallEvent, Instant)>();
    let builder = loopwatch::Watchdog::builder();
    let builder = if flavor == "current_thread" {
        builder.watch("main", handle.clone())
    } else {
        // The per-worker detector needs the hooks installed on the runtime.
        builder.watch_with_hooks("main", handle.clone(), &hooks)
    };
    let wd = builder
        .report_dir(report_dir)
        .on_stall(move |e| {
            let _ = tx.send((e.clone(), Instant::now()));
        })
        .start()
        .expect("start watchdog");
    wd.ready().expect("READY=1");
    let reg = wd.registry().clone();
    std::thread::sleep(Duration::from_millis(1500));
    let mut rows = Vec::new();
    for i in 0..reps {
        // Vary the phase of the block against the 250 ms ping schedule.
        std::thread::sleep(Duration::from_millis(97 * i as u64 % 250));
        while rx.try_recv().is_ok() {}
        let times = spawn_block(&handle, BLOCK, BlockKind::Sleep);
        let (t0, _) = times.wait_started();
        let mut row = Row::default();
        while times.started().is_some() && !times.is_ended() {
            if row.worker_stuck_ms.is_none() && worker_stuck_now(&reg) {
                row.worker_stuck_ms = Some(ms(t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let t_end = times.wait_ended();
        // Let the loop recover and both heartbeats resume.
        std::thread::sleep(Duration::from_millis(1200));
        let seed_pings = seed_sink.pings();
        let lw_pings = lw_sink.pings();
        row.seed_pings_during = seed_pings
            .iter()
            .filter(|p| **p > t0 && **p < t_end)
            .count();
        row.lw_pings_during = lw_pings.iter().filter(|p| **p > t0 && **p < t_end).count();
        row.seed_deadline_ms = deadline_hit(&seed_pings, t0, t_end).map(|d| ms(d - t0));
        row.lw_deadline_ms = deadline_hit(&lw_pings, t0, t_end).map(|d| ms(d - t0));
        while let Ok((e, at)) = rx.try_recv() {
            let report = match e {
                StallEvent::Started { report, .. } => Some(report),
                StallEvent::WorkerStuck { report, .. } => Some(report),
                _ => None,
            };
            if let Some(report) = report {
                if row.lw_started_ms.is_none() {
                    row.lw_started_ms = Some(ms(at - t0));
                    row.lw_report = report.is_some();
                    row.lw_pings_after_detect =
                        lw_pings.iter().filter(|p| **p > at && **p < t_end).count();
                }
            }
        }
        rows.push(row);
    }
    wd.shutdown();
    seed.abort();
    rows
}

fn opt(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| f(v, 1))
}

fn main() {
    heading("the seed's in-loop heartbeat vs loopwatch: who notices a stuck loop");
    let dir = tempfile::tempdir().expect("tempdir");
    let lw_socket = dir.path().join("loopwatch.sock");
    let seed_socket = dir.path().join("seed.sock");
    // systemd's environment, set before any thread exists.
    std::env::set_var("NOTIFY_SOCKET", &lw_socket);
    std::env::set_var("WATCHDOG_USEC", W.as_micros().to_string());
    std::env::remove_var("WATCHDOG_PID");
    let lw_sink = NotifySink::bind(&lw_socket);
    let seed_sink = NotifySink::bind(&seed_socket);
    let reports = tempfile::tempdir_in(scratch_dir()).expect("report dir");
    let reps = pick(4, 1);

    let mut t = Table::new(
        "WatchdogSec=1 (W), loop blocked for 2 s; times in ms from the block's start",
        &[
            "runtime",
            "rep",
            "seed: pings during block",
            "seed: systemd deadline hit at",
            "seed: report",
            "loopwatch: Started / WorkerStuck callback (after the report) at",
            "loopwatch: pings during block (after detection)",
            "loopwatch: systemd deadline at",
            "loopwatch_worker_stuck at",
        ],
    );
    for flavor in ["current_thread", "multi_thread, 2 workers, 1 blocked"] {
        let rows = {
            let _quiet = QuietStderr::to(&scratch_dir().join("seed-stderr.log"));
            scenario(flavor, &lw_sink, &seed_sink, reports.path(), reps)
        };
        for (i, r) in rows.iter().enumerate() {
            t.row(vec![
                flavor.into(),
                (i + 1).to_string(),
                r.seed_pings_during.to_string(),
                opt(r.seed_deadline_ms),
                "none".into(),
                match r.lw_started_ms {
                    Some(v) => format!(
                        "{} ({})",
                        f(v, 1),
                        if r.lw_report { "report" } else { "no file" }
                    ),
                    None => "never".into(),
                },
                format!("{} ({})", r.lw_pings_during, r.lw_pings_after_detect),
                opt(r.lw_deadline_ms),
                opt(r.worker_stuck_ms),
            ]);
        }
    }
    t.print();
    println!(
        "\n(\"systemd deadline hit\": the last WATCHDOG=1 before the block plus W passed before the next one \
         arrived, so systemd would have killed the service then; \"never\": pings kept arriving in time)"
    );
}
