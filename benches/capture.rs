//! Target 5: stack capture of every thread, for processes of 8, 64 and 256
//! threads (the extra threads sleep in `park()`).
//!
//! `CaptureBench::capture_all` is loopwatch's sampler on its own: a
//! real-time signal per thread (`tgkill`), a handler that copies the
//! registers and the stack into preallocated memory, then — outside the
//! handler — unwinding from `.eh_frame` and symbolization with a
//! per-address cache. Criterion times whole captures; the table splits
//! them per thread into signal + copy, unwind and (warm) symbolization.
//!
//! The cold cost is measured in fresh child processes (this binary re-run
//! with `LOOPWATCH_BENCH_CHILD=cold`): creating the sampler (module list
//! and symbolizer warm-up, which loads the debug info) and the first
//! capture's symbolization (addresses not cached yet).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, SamplingMode};
use loopwatch::bench_support::{CaptureBench, CaptureTimes};

fn child_cold() {
    let t0 = Instant::now();
    let cb = CaptureBench::new().expect("sampler");
    let new = t0.elapsed();
    let mut idle = IdleThreads::new();
    idle.fill_to(8);
    std::thread::sleep(Duration::from_millis(20));
    let first = cb.capture_all();
    let second = cb.capture_all();
    println!(
        "COLD {} {} {} {} {}",
        us(new),
        us(first.symbolize),
        first.captured,
        us(second.symbolize),
        us(first.signal + first.unwind + first.symbolize)
    );
}

struct Cold {
    new_ms: Vec<f64>,
    first_sym_ms: Vec<f64>,
    second_sym_ms: Vec<f64>,
    first_total_ms: Vec<f64>,
}

fn cold_runs(n: usize) -> Cold {
    let exe = std::env::current_exe().expect("own exe");
    let mut c = Cold {
        new_ms: vec![],
        first_sym_ms: vec![],
        second_sym_ms: vec![],
        first_total_ms: vec![],
    };
    for _ in 0..n {
        let out = Command::new(&exe)
            .env("LOOPWATCH_BENCH_CHILD", "cold")
            .output()
            .expect("run child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("COLD ")) else {
            eprintln!(
                "cold child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        };
        let v: Vec<f64> = line[5..]
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        c.new_ms.push(v[0] / 1e3);
        c.first_sym_ms.push(v[1] / 1e3);
        c.second_sym_ms.push(v[3] / 1e3);
        c.first_total_ms.push(v[4] / 1e3);
    }
    c
}

fn main() {
    if std::env::var("LOOPWATCH_BENCH_CHILD").as_deref() == Ok("cold") {
        child_cold();
        return;
    }
    heading("stack capture (target 5)");
    let cold = cold_runs(pick(5, 1));

    let cb = CaptureBench::new().expect("sampler");
    let mut idle = IdleThreads::new();
    let mut c = Criterion::default()
        .sample_size(pick(20, 10))
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(2000, 100)))
        .configure_from_args();
    let mut rows: Vec<(usize, Vec<CaptureTimes>, Vec<f64>)> = Vec::new();
    for n in [8usize, 64, 256] {
        idle.fill_to(n);
        std::thread::sleep(Duration::from_millis(50));
        // The first capture at this size (new threads: their stack
        // mappings are read again; their addresses are already cached
        // since all idle threads sleep in the same place).
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
        "capture of every thread, per captured thread (µs), warm (median over captures); \
         targets: signal + copy <= 50 µs median, symbolization <= 1000 µs",
        &[
            "threads",
            "captured",
            "captures",
            "signal + copy median",
            "p99",
            "unwind median",
            "symbolize (warm) median",
            "symbolize p99",
            "signal+unwind+symbolize, whole capture median (ms)",
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
            f(sym.p99, 2),
            f(median(&whole), 2),
            f(median(walls), 1),
            verdict(sig.median <= 50.0 && sym.median <= 1000.0),
        ]);
    }
    t.print();

    let mut t = Table::new(
        "cold (fresh process, 8 threads), ms, median of runs",
        &["what", "runs", "median", "min", "max"],
    );
    for (what, v) in [
        (
            "sampler creation: module list + symbolizer warm-up (loads debug info)",
            &cold.new_ms,
        ),
        (
            "first capture: symbolization of uncached addresses",
            &cold.first_sym_ms,
        ),
        ("first capture: whole", &cold.first_total_ms),
        (
            "second capture: symbolization (cached)",
            &cold.second_sym_ms,
        ),
    ] {
        let s = stats(v);
        t.row(vec![
            what.into(),
            s.n.to_string(),
            f(s.median, 2),
            f(s.min, 2),
            f(s.max, 2),
        ]);
    }
    t.print();
    drop(idle);
}
