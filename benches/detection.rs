//! Targets 3 (stall duration) and 4 (detection latency), through the real
//! monitor thread.
//!
//! A current_thread runtime driven by its own thread is watched by a
//! Watchdog with `no_report_files()` and `no_stack_capture()`, so that the
//! `on_stall` callback (which runs after the detection report) comes right
//! after detection. A task blocks the runtime's thread for a known time;
//! its start `t0` (Instant and wall clock) and end are stamped by the
//! blocking task itself.
//!
//! * Detection latency: `StallEvent::Started` callback time − `t0`, and
//!   `detected_at − t0` (wall clock). Target: ≤ T + probe interval + 1 ms.
//! * Stall duration error: `StallEvent::Ended.duration` − the real block.
//!   The probe that ends up unanswered is sent up to one probe interval
//!   after the block started, so the duration reads short by up to one
//!   interval. Target: |error| ≤ one probe interval.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use loopwatch::StallEvent;

struct Config {
    threshold: Duration,
    interval: Duration,
    blocks: Vec<(Duration, usize)>,
}

#[derive(Default)]
struct Results {
    cb_latency_ms: Vec<f64>,
    detected_latency_ms: Vec<f64>,
    cb_after_detect_ms: Vec<f64>,
    reported_lag_ms: Vec<f64>,
    /// (block ms, duration error ms)
    duration_err: Vec<(u64, f64)>,
    missed: usize,
}

type Event = (StallEvent, Instant, SystemTime);

fn run_config(cfg: &Config) -> Results {
    let rt = DrivenRuntime::current_thread("bench-loop");
    let (tx, rx) = mpsc::channel::<Event>();
    let wd = loopwatch::Watchdog::builder()
        .stall_threshold(cfg.threshold)
        .probe_interval(cfg.interval)
        .watch("main", rt.handle.clone())
        .no_report_files()
        .no_stack_capture()
        .on_stall(move |e| {
            let _ = tx.send((e.clone(), Instant::now(), SystemTime::now()));
        })
        .start()
        .expect("start watchdog");
    std::thread::sleep(Duration::from_millis(300));
    let mut r = Results::default();
    for &(block, n) in &cfg.blocks {
        for i in 0..n {
            // Vary the phase of the block against the probe schedule.
            std::thread::sleep(cfg.interval * 3 + Duration::from_micros(7919 * i as u64 % 10_000));
            let times = spawn_block(&rt.handle, block, BlockKind::Sleep);
            let (t0, sys0) = times.wait_started();
            let timeout = block + cfg.threshold + Duration::from_secs(2);
            let mut started = None;
            let mut ended = None;
            while started.is_none() || ended.is_none() {
                match rx.recv_timeout(timeout) {
                    Ok((e @ StallEvent::Started { .. }, at, sys)) => started = Some((e, at, sys)),
                    Ok((e @ StallEvent::Ended { .. }, at, sys)) => ended = Some((e, at, sys)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let t_end = times.wait_ended();
            let real = t_end - t0;
            match (started, ended) {
                (
                    Some((
                        StallEvent::Started {
                            lag, detected_at, ..
                        },
                        at,
                        sys,
                    )),
                    Some((StallEvent::Ended { duration, .. }, _, _)),
                ) => {
                    r.cb_latency_ms.push(ms(at - t0));
                    r.detected_latency_ms.push(sys_diff_ms(detected_at, sys0));
                    r.cb_after_detect_ms.push(sys_diff_ms(sys, detected_at));
                    r.reported_lag_ms.push(ms(lag));
                    r.duration_err
                        .push((block.as_millis() as u64, diff_ms(duration, real)));
                }
                _ => r.missed += 1,
            }
        }
    }
    wd.shutdown();
    r
}

fn main() {
    heading("detection latency and stall duration (targets 3 and 4)");
    let log = scratch_dir().join("detection-stderr.log");
    println!(
        "(loopwatch's compact stall reports go to {})",
        log.display()
    );
    let configs = vec![
        Config {
            threshold: Duration::from_millis(50),
            interval: Duration::from_millis(10),
            blocks: vec![
                (Duration::from_millis(100), pick(10, 2)),
                (Duration::from_millis(1000), pick(3, 1)),
            ],
        },
        Config {
            threshold: Duration::from_millis(100),
            interval: Duration::from_millis(25),
            blocks: vec![(Duration::from_millis(300), pick(10, 2))],
        },
        Config {
            threshold: loopwatch::DEFAULT_STALL_THRESHOLD,
            interval: loopwatch::DEFAULT_PROBE_INTERVAL,
            blocks: vec![(Duration::from_millis(1500), pick(3, 1))],
        },
    ];
    let mut lat = Table::new(
        "detection latency: stall start (block start) -> stall declared, ms; target <= T + probe interval + 1 ms",
        &[
            "T / interval",
            "stalls",
            "detected_at - t0 median",
            "max",
            "callback - t0 median",
            "max",
            "callback - detected_at median",
            "bound",
            "target (max)",
        ],
    );
    let mut dur = Table::new(
        "stall duration: Ended.duration - real block, ms; target abs error <= one probe interval",
        &[
            "T / interval",
            "block",
            "stalls",
            "error median",
            "min",
            "max",
            "bound",
            "target",
        ],
    );
    for cfg in &configs {
        let r = {
            let _quiet = QuietStderr::to(&log);
            run_config(cfg)
        };
        let label = format!("{} / {} ms", ms(cfg.threshold), ms(cfg.interval));
        let bound = ms(cfg.threshold + cfg.interval) + 1.0;
        let d = stats(&r.detected_latency_ms);
        let c = stats(&r.cb_latency_ms);
        let a = stats(&r.cb_after_detect_ms);
        let mut target = verdict(d.max <= bound && r.missed == 0);
        if r.missed > 0 {
            target.push_str(&format!(" ({} missed)", r.missed));
        }
        lat.row(vec![
            label.clone(),
            d.n.to_string(),
            f(d.median, 2),
            f(d.max, 2),
            f(c.median, 2),
            f(c.max, 2),
            f(a.median, 3),
            f(bound, 1),
            target,
        ]);
        for &(block, _) in &cfg.blocks {
            let errs: Vec<f64> = r
                .duration_err
                .iter()
                .filter(|(b, _)| *b == block.as_millis() as u64)
                .map(|(_, e)| *e)
                .collect();
            let s = stats(&errs);
            let worst = s.min.abs().max(s.max.abs());
            dur.row(vec![
                label.clone(),
                format!("{} ms", ms(block)),
                s.n.to_string(),
                f(s.median, 2),
                f(s.min, 2),
                f(s.max, 2),
                format!("{} ms", ms(cfg.interval)),
                verdict(worst <= ms(cfg.interval) && s.n > 0),
            ]);
        }
    }
    lat.print();
    dur.print();
}
