//! Target 3 (probe part): how exactly the probe measures the loop's lag.
//!
//! * Idle baseline: the bench thread plays the monitor. It wakes the probe
//!   of an idle (parked) runtime and spins until the answer; the lag is the
//!   cross-thread wake-up cost. Measured on a current_thread runtime driven
//!   by its own thread and on 1- and 2-worker multi_thread runtimes, 1 to 2
//!   ms apart so that the runtime is parked each time. Criterion times the
//!   whole wake→answer round trip as seen from the waking thread.
//! * Injected blocks of 1, 10, 100 and 1000 ms: a task blocks the
//!   current_thread runtime's only thread (`std::thread::sleep`, and a busy
//!   loop for 1 and 10 ms). As soon as the blocking task has started (an
//!   atomic flag), the bench thread takes `t_wake` and wakes the probe. The
//!   blocking task stamps `t_end` when it returns. The true lag of that wake
//!   is `t_end - t_wake`; the error is the probe's lag minus that.

mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::Criterion;
use loopwatch::bench_support::ProbeBench;

/// A runtime under test and a probe on it.
struct Subject {
    name: &'static str,
    probe: ProbeBench,
    handle: tokio::runtime::Handle,
    _ct: Option<DrivenRuntime>,
    _mt: Option<tokio::runtime::Runtime>,
}

fn subjects() -> Vec<Subject> {
    let ct = DrivenRuntime::current_thread("bench-ct");
    let mt1 = multi_thread(1);
    let mt2 = multi_thread(2);
    vec![
        Subject {
            name: "current_thread",
            probe: ProbeBench::spawn(&ct.handle),
            handle: ct.handle.clone(),
            _ct: Some(ct),
            _mt: None,
        },
        Subject {
            name: "multi_thread, 1 worker",
            probe: ProbeBench::spawn(mt1.handle()),
            handle: mt1.handle().clone(),
            _ct: None,
            _mt: Some(mt1),
        },
        Subject {
            name: "multi_thread, 2 workers",
            probe: ProbeBench::spawn(mt2.handle()),
            handle: mt2.handle().clone(),
            _ct: None,
            _mt: Some(mt2),
        },
    ]
}

/// Sleeps 1–2 ms (varying) so that the runtime parks before the next wake.
fn idle_gap(i: usize) {
    std::thread::sleep(Duration::from_micros(1000 + (i as u64 * 137) % 1000));
}

fn idle_baseline(subjects: &[Subject]) -> Vec<(String, Stats)> {
    let n = pick(1000, 20);
    let mut out = Vec::new();
    for s in subjects {
        let mut lags = Vec::with_capacity(n);
        for i in 0..n {
            idle_gap(i);
            s.probe.wake();
            let lag = s
                .probe
                .wait_answer(Duration::from_secs(5))
                .expect("probe answers on an idle runtime");
            lags.push(us(lag));
        }
        out.push((s.name.to_string(), stats(&lags)));
    }
    out
}

fn criterion_round_trip(subjects: &[Subject]) {
    let mut c = Criterion::default()
        .sample_size(pick(20, 10))
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(1500, 50)))
        .configure_from_args();
    let mut g = c.benchmark_group("probe-round-trip-parked");
    for s in subjects {
        g.bench_function(s.name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    // Between samples the runtime parks again.
                    std::thread::sleep(Duration::from_micros(500 + (i % 7) * 50));
                    let t0 = Instant::now();
                    s.probe.wake();
                    s.probe.wait_answer(Duration::from_secs(5)).unwrap();
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    c.final_summary();
}

struct BlockResult {
    label: String,
    errors_ms: Vec<f64>,
    lags_ms: Vec<f64>,
}

fn injected_blocks(s: &Subject) -> Vec<BlockResult> {
    let plan: Vec<(u64, usize, BlockKind)> = vec![
        (1, pick(200, 5), BlockKind::Sleep),
        (10, pick(100, 3), BlockKind::Sleep),
        (100, pick(30, 2), BlockKind::Sleep),
        (1000, pick(6, 1), BlockKind::Sleep),
        (1, pick(200, 5), BlockKind::Spin),
        (10, pick(50, 3), BlockKind::Spin),
    ];
    let mut out = Vec::new();
    for (block_ms, n, kind) in plan {
        let mut errors = Vec::with_capacity(n);
        let mut lags = Vec::with_capacity(n);
        for i in 0..n {
            idle_gap(i);
            let times = spawn_block(&s.handle, Duration::from_millis(block_ms), kind);
            times.wait_started();
            let t_wake = Instant::now();
            s.probe.wake();
            let t_end = times.wait_ended();
            let lag = s
                .probe
                .wait_answer(Duration::from_secs(10))
                .expect("probe answers after the block");
            let expected = t_end.saturating_duration_since(t_wake);
            errors.push(diff_ms(lag, expected));
            lags.push(ms(lag));
        }
        out.push(BlockResult {
            label: format!("{block_ms} ms ({kind:?})").to_lowercase(),
            errors_ms: errors,
            lags_ms: lags,
        });
    }
    out
}

fn main() {
    heading("probe accuracy (target 3)");
    let subjects = subjects();

    let idle = idle_baseline(&subjects);
    criterion_round_trip(&subjects);
    let mut t = Table::new(
        "idle runtime: probe lag = cross-thread wake-up cost (µs); target median <= 50 µs",
        &[
            "runtime", "samples", "min", "median", "p99", "max", "target",
        ],
    );
    for (name, s) in &idle {
        t.row(vec![
            name.clone(),
            s.n.to_string(),
            f(s.min, 1),
            f(s.median, 1),
            f(s.p99, 1),
            f(s.max, 1),
            verdict(s.median <= 50.0),
        ]);
    }
    t.print();

    let blocks = injected_blocks(&subjects[0]);
    let mut t = Table::new(
        "injected blocks on a current_thread runtime: probe lag error = lag - (t_end - t_wake), ms; \
         target abs error median <= 0.5 ms, p99 <= 2 ms",
        &[
            "block",
            "samples",
            "lag median",
            "error median (signed)",
            "abs error median",
            "abs error p99",
            "abs error max",
            "target",
        ],
    );
    for b in &blocks {
        let abs: Vec<f64> = b.errors_ms.iter().map(|e| e.abs()).collect();
        let a = stats(&abs);
        let s = stats(&b.errors_ms);
        t.row(vec![
            b.label.clone(),
            a.n.to_string(),
            f(median(&b.lags_ms), 3),
            f(s.median, 4),
            f(a.median, 4),
            f(a.p99, 4),
            f(a.max, 4),
            verdict(a.median <= 0.5 && a.p99 <= 2.0),
        ]);
    }
    t.print();
    println!(
        "\n(p99 is the nearest-rank 99th percentile: with fewer than 100 samples it is the maximum)"
    );
}
