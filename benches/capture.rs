//! Target 5 (and issue 12's footprint targets): what stack capture costs.
//!
//! * **start**: `Watchdog::start()` with stack capture on and off, and
//!   `StackSampler::new` alone, in fresh child processes (this binary
//!   re-run with `LOOPWATCH_BENCH_CHILD=cold`): target `start()` ≤ 5 ms.
//!   Nothing is loaded at start; the first capture reads the module list
//!   and builds the unwinder, timed here too.
//! * **single thread**: `capture_within(&[tid])` of one parked thread,
//!   warm, as a stall's extra samples take it: signal + copy + unwind
//!   (target ≤ 100 µs) and the symbol-table names on top.
//! * **every thread**: `capture_all` with the process at 8, 64 and 256
//!   threads; per-thread signal + copy, unwind and symbol-table naming.
//! * **DWARF pass**: the report's second step over a capture of every
//!   thread, cold (fresh process, nothing cached) and warm (the same
//!   stacks again: answered from the bounded answers cache).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, SamplingMode};
use loopwatch::bench_support::{CaptureBench, CaptureTimes};

/// A parked thread and its tid.
struct Parked {
    tid: i32,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Parked {
    fn spawn() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let handle = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tid.store(
                    unsafe { libc::syscall(libc::SYS_gettid) } as i32,
                    Ordering::SeqCst,
                );
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(100));
                }
            })
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        Parked {
            tid: tid.load(Ordering::SeqCst),
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn child_cold() {
    // start() with capture on, then off (each in its own runtime).
    let start_with = |capture: bool| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = Instant::now();
        let mut b = loopwatch::Watchdog::builder()
            .no_report_files()
            .watch(if capture { "on" } else { "off" }, rt.handle().clone());
        if !capture {
            b = b.no_stack_capture();
        }
        let wd = b.start().expect("start");
        let took = t0.elapsed();
        wd.shutdown();
        took
    };
    let start_on = start_with(true);
    let start_off = start_with(false);
    let t0 = Instant::now();
    let cb = CaptureBench::new().expect("sampler");
    let new = t0.elapsed();
    let mut idle = IdleThreads::new();
    idle.fill_to(8);
    std::thread::sleep(Duration::from_millis(20));
    let t0 = Instant::now();
    let first = cb.capture_all();
    let first_wall = t0.elapsed();
    let second = cb.capture_all();
    let mut captured = cb.capture_for_symbols();
    let (dwarf_cold, _) = cb.symbolize(&mut captured, Duration::from_secs(10));
    cb.release();
    let mut again = cb.capture_for_symbols();
    let (dwarf_warm, _) = cb.symbolize(&mut again, Duration::from_secs(10));
    cb.release();
    println!(
        "COLD {} {} {} {} {} {} {} {} {}",
        us(start_on),
        us(start_off),
        us(new),
        us(first_wall),
        us(first.symbolize),
        us(second.signal + second.unwind + second.symbolize),
        us(dwarf_cold),
        us(dwarf_warm),
        captured.frames_with_lines(),
    );
}

#[derive(Default)]
struct Cold {
    start_on_ms: Vec<f64>,
    start_off_ms: Vec<f64>,
    new_ms: Vec<f64>,
    first_wall_ms: Vec<f64>,
    first_names_ms: Vec<f64>,
    second_ms: Vec<f64>,
    dwarf_cold_ms: Vec<f64>,
    dwarf_warm_ms: Vec<f64>,
    lines: Vec<f64>,
}

fn cold_runs(n: usize) -> Cold {
    let exe = std::env::current_exe().expect("own exe");
    let mut c = Cold::default();
    for _ in 0..n {
        let out = Command::new(&exe)
            .env("LOOPWATCH_BENCH_CHILD", "cold")
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("COLD ")) else {
            eprintln!(
                "cold child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        c.start_on_ms.push(v[0] / 1e3);
        c.start_off_ms.push(v[1] / 1e3);
        c.new_ms.push(v[2] / 1e3);
        c.first_wall_ms.push(v[3] / 1e3);
        c.first_names_ms.push(v[4] / 1e3);
        c.second_ms.push(v[5] / 1e3);
        c.dwarf_cold_ms.push(v[6] / 1e3);
        c.dwarf_warm_ms.push(v[7] / 1e3);
        c.lines.push(v[8]);
    }
    c
}

fn main() {
    if std::env::var("LOOPWATCH_BENCH_CHILD").as_deref() == Ok("cold") {
        child_cold();
        return;
    }
    heading("stack capture (target 5) and start-up cost (issue 12)");
    let cold = cold_runs(pick(7, 1));

    let cb = CaptureBench::new().expect("sampler");
    let mut c = Criterion::default()
        .sample_size(pick(20, 10))
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(2000, 100)))
        .configure_from_args();

    // One parked thread, sampled alone.
    let parked = Parked::spawn();
    let _ = cb.capture_one(parked.tid);
    let mut single: Vec<(Duration, CaptureTimes)> = Vec::new();
    {
        let mut g = c.benchmark_group("capture_one");
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function("one parked thread", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let r = cb.capture_one(parked.tid);
                    total += r.0;
                    single.push(r);
                }
                total
            })
        });
        g.finish();
    }
    drop(parked);

    let mut idle = IdleThreads::new();
    let mut rows: Vec<(usize, Vec<CaptureTimes>, Vec<f64>)> = Vec::new();
    for n in [8usize, 64, 256] {
        idle.fill_to(n);
        std::thread::sleep(Duration::from_millis(50));
        let _first = cb.capture_all();
        let mut times: Vec<CaptureTimes> = Vec::new();
        let mut walls: Vec<f64> = Vec::new();
        let mut g = c.benchmark_group("capture_all");
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function(format!("{n} threads"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    let t = cb.capture_all();
                    let wall = t0.elapsed();
                    total += wall;
                    walls.push(us(wall) / t.captured.max(1) as f64);
                    times.push(t);
                }
                total
            })
        });
        g.finish();
        rows.push((n, times, walls));
    }
    c.final_summary();

    let mut t = Table::new(
        "one thread alone, warm (µs, over all criterion iterations); target: signal + copy + unwind <= 100 µs",
        &[
            "samples",
            "wall median",
            "wall p99",
            "signal + copy + unwind median",
            "p99",
            "symbol-table names median",
            "target",
        ],
    );
    let wall = stats(&single.iter().map(|(w, _)| us(*w)).collect::<Vec<_>>());
    let core = stats(
        &single
            .iter()
            .map(|(_, t)| us(t.signal + t.unwind))
            .collect::<Vec<_>>(),
    );
    let names = stats(
        &single
            .iter()
            .map(|(_, t)| us(t.symbolize))
            .collect::<Vec<_>>(),
    );
    t.row(vec![
        wall.n.to_string(),
        f(wall.median, 1),
        f(wall.p99, 1),
        f(core.median, 1),
        f(core.p99, 1),
        f(names.median, 1),
        verdict(core.median <= 100.0),
    ]);
    t.print();

    let mut t = Table::new(
        "capture of every thread, per captured thread (µs), warm (median over captures); \
         targets: signal + copy <= 50 µs median",
        &[
            "threads",
            "captured",
            "captures",
            "signal + copy median",
            "p99",
            "unwind median",
            "symbol-table names median",
            "whole capture median (ms)",
            "capture_all wall per thread median (incl. /proc reads)",
            "target",
        ],
    );
    for (n, times, walls) in &rows {
        let per = |f: &dyn Fn(&CaptureTimes) -> Duration| -> Vec<f64> {
            times
                .iter()
                .map(|t| us(f(t)) / t.captured.max(1) as f64)
                .collect()
        };
        let sig = stats(&per(&|t| t.signal));
        let unw = stats(&per(&|t| t.unwind));
        let sym = stats(&per(&|t| t.symbolize));
        let whole: Vec<f64> = times
            .iter()
            .map(|t| ms(t.signal + t.unwind + t.symbolize))
            .collect();
        let captured = times.last().map_or(0, |t| t.captured);
        let threads = times.last().map_or(0, |t| t.threads);
        t.row(vec![
            format!("{threads} (asked {n})"),
            captured.to_string(),
            times.len().to_string(),
            f(sig.median, 1),
            f(sig.p99, 1),
            f(unw.median, 1),
            f(sym.median, 2),
            f(median(&whole), 2),
            f(median(walls), 1),
            verdict(sig.median <= 50.0),
        ]);
    }
    t.print();

    let mut t = Table::new(
        "cold (fresh process), ms, median of runs; target: start() <= 5 ms with capture on",
        &["what", "runs", "median", "min", "max", "target"],
    );
    for (what, v, target) in [
        (
            "Watchdog::start(), stack capture on",
            &cold.start_on_ms,
            Some(5.0),
        ),
        (
            "Watchdog::start(), no_stack_capture()",
            &cold.start_off_ms,
            None,
        ),
        (
            "StackSampler::new (handler only, loads nothing)",
            &cold.new_ms,
            None,
        ),
        (
            "first capture of 8+ threads: module list, unwinder, names (wall)",
            &cold.first_wall_ms,
            None,
        ),
        ("  of which symbol-table names", &cold.first_names_ms, None),
        ("second capture (warm)", &cold.second_ms, None),
        (
            "DWARF pass over every thread, cold (nothing cached)",
            &cold.dwarf_cold_ms,
            None,
        ),
        (
            "DWARF pass, same stacks again (answers cached)",
            &cold.dwarf_warm_ms,
            None,
        ),
        ("  frames with file:line after the pass", &cold.lines, None),
    ] {
        let s = stats(v);
        t.row(vec![
            what.into(),
            s.n.to_string(),
            f(s.median, 2),
            f(s.min, 2),
            f(s.max, 2),
            target.map_or("(reported)".into(), |limit| verdict(s.median <= limit)),
        ]);
    }
    t.print();
    drop(idle);
}
