//! Target 2: the cost of loopwatch's runtime hooks per task poll.
//!
//! A yield-heavy workload (16 tasks × 20 000 `yield_now`, so one poll per
//! yield) runs on a multi_thread runtime of 1 worker (a pure per-poll cost)
//! and of 2 workers, built:
//!
//! * `none`: without hooks;
//! * `empty-poll-hooks` (only with `--cfg tokio_unstable`): empty
//!   `on_before_task_poll`/`on_after_task_poll` closures — what tokio's
//!   hook dispatch itself costs;
//! * `loopwatch`: `RuntimeHooks::install` — thread start/stop/park/unpark
//!   hooks and, with `--cfg tokio_unstable`, the before/after-poll hooks.
//!
//! Without `--cfg tokio_unstable` tokio has no poll hooks: the bench then
//! measures the stable hooks only (park/unpark, rare on a busy runtime) and
//! says so. Polls are counted with `worker_poll_count` under
//! `tokio_unstable`, else computed from the workload (tasks × (yields + 1)
//! plus the coordinating task's polls).
//!
//! Overhead per poll = (time with hooks − time without) / polls, from an
//! interleaved section (every variant runs 5 times per round, in rotated
//! order; the fastest of the 5 — other tenants of the machine only ever
//! add time — paired per round, median over rounds). The pass/miss figure uses
//! the CPU time of the process (user + system, all threads), which other
//! tenants of the shared machine disturb far less than wall time; the wall
//! time figure is shown next to it, and criterion times the same pairs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, SamplingMode};

const TASKS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Variant {
    None,
    #[cfg(tokio_unstable)]
    EmptyPollHooks,
    Loopwatch,
}

impl Variant {
    fn all() -> Vec<Variant> {
        vec![
            Variant::None,
            #[cfg(tokio_unstable)]
            Variant::EmptyPollHooks,
            Variant::Loopwatch,
        ]
    }
    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            #[cfg(tokio_unstable)]
            Variant::EmptyPollHooks => "empty-poll-hooks",
            Variant::Loopwatch => "loopwatch",
        }
    }
}

struct Bed {
    workers: usize,
    variant: Variant,
    rt: tokio::runtime::Runtime,
    _hooks: Option<loopwatch::RuntimeHooks>,
    yields: usize,
}

impl Bed {
    fn new(workers: usize, variant: Variant) -> Bed {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers).enable_all();
        let mut hooks = None;
        match variant {
            Variant::None => {}
            #[cfg(tokio_unstable)]
            Variant::EmptyPollHooks => {
                b.on_before_task_poll(|m| {
                    std::hint::black_box(m);
                });
                b.on_after_task_poll(|m| {
                    std::hint::black_box(m);
                });
            }
            Variant::Loopwatch => {
                let h = loopwatch::RuntimeHooks::new();
                h.install(&mut b);
                hooks = Some(h);
            }
        }
        Bed {
            workers,
            variant,
            rt: b.build().expect("runtime"),
            _hooks: hooks,
            yields: pick(20_000, 500),
        }
    }

    fn polls_now(&self) -> Option<u64> {
        #[cfg(tokio_unstable)]
        {
            let m = self.rt.metrics();
            Some((0..m.num_workers()).map(|w| m.worker_poll_count(w)).sum())
        }
        #[cfg(not(tokio_unstable))]
        {
            None
        }
    }

    /// Runs the workload once: (wall time, CPU time of the process, polls).
    fn run_once(&self) -> (Duration, Duration, u64) {
        let yields = self.yields;
        let before = self.polls_now();
        let (tx, rx) = std::sync::mpsc::channel();
        let c0 = cpu_time();
        let t0 = Instant::now();
        self.rt.spawn(common::yield_storm(TASKS, yields, tx));
        rx.recv().unwrap();
        let d = t0.elapsed();
        let cpu = cpu_time() - c0;
        // The metrics are published when a worker parks or at maintenance:
        // give the workers a moment to park.
        let polls = match (before, {
            std::thread::sleep(Duration::from_millis(2));
            self.polls_now()
        }) {
            (Some(a), Some(b)) => b - a,
            _ => (TASKS * (yields + 1) + TASKS + 1) as u64,
        };
        (d, cpu, polls)
    }
}

type Samples = Arc<Mutex<HashMap<(usize, Variant), Vec<f64>>>>;

fn main() {
    heading("poll-hook overhead (target 2)");
    if cfg!(tokio_unstable) {
        println!(
            "built with --cfg tokio_unstable: loopwatch's before/after-poll hooks are measured"
        );
    } else {
        println!(
            "built WITHOUT --cfg tokio_unstable: tokio has no poll hooks, so only loopwatch's stable \
             hooks (thread start/stop/park/unpark) are measured; rerun with \
             RUSTFLAGS=\"--cfg tokio_unstable\" for the poll hooks"
        );
    }
    let variants = Variant::all();
    let mut beds: Vec<Bed> = Vec::new();
    for workers in [1usize, 2] {
        for v in &variants {
            beds.push(Bed::new(workers, *v));
        }
    }
    for b in &beds {
        let _ = b.run_once();
    }
    let (d, cpu, polls) = beds[0].run_once();
    println!(
        "one run: {:.1} ms ({:.1} ms CPU), {} polls ({})",
        ms(d),
        ms(cpu),
        polls,
        if cfg!(tokio_unstable) {
            "counted by worker_poll_count"
        } else {
            "computed from the workload"
        }
    );

    // Criterion pairs.
    let samples: Samples = Arc::default();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(1500, 100)))
        .configure_from_args();
    for workers in [1usize, 2] {
        let mut g = c.benchmark_group(format!("poll-hooks/{workers}-worker"));
        g.sampling_mode(SamplingMode::Flat);
        for b in beds.iter().filter(|b| b.workers == workers) {
            let samples = samples.clone();
            g.bench_function(b.variant.name(), |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (d, _, polls) = b.run_once();
                        samples
                            .lock()
                            .unwrap()
                            .entry((workers, b.variant))
                            .or_default()
                            .push(d.as_nanos() as f64 / polls as f64);
                        total += d;
                    }
                    total
                })
            });
        }
        g.finish();
    }
    c.final_summary();

    // Interleaved rounds: ns per poll (CPU time and wall time) for each
    // variant, paired per round.
    let rounds = pick(25, 2);
    let mut per_poll: HashMap<(usize, Variant), Vec<(f64, f64)>> = HashMap::new();
    for r in 0..rounds {
        for workers in [1usize, 2] {
            let set: Vec<&Bed> = beds.iter().filter(|b| b.workers == workers).collect();
            for k in 0..set.len() {
                let b = set[(r + k) % set.len()];
                let mut cpu = Vec::new();
                let mut wall = Vec::new();
                for _ in 0..5 {
                    let (d, c, polls) = b.run_once();
                    wall.push(d.as_nanos() as f64 / polls as f64);
                    cpu.push(c.as_nanos() as f64 / polls as f64);
                }
                if std::env::var_os("LOOPWATCH_BENCH_DEBUG").is_some() {
                    println!("{workers} {:?} cpu {cpu:.1?} wall {wall:.1?}", b.variant);
                }
                per_poll
                    .entry((workers, b.variant))
                    .or_default()
                    .push((stats(&cpu).min, stats(&wall).min));
            }
        }
    }

    let samples = samples.lock().unwrap().clone();
    let mut t = Table::new(
        "ns per poll (fastest of 5 runs per round); overhead = variant - none, paired per \
         interleaved round, median over rounds with its 95 % confidence interval; pass/miss on \
         CPU time; target <= 2 ns: pass when the whole interval is below, MISS when above",
        &[
            "workers",
            "variant",
            "criterion wall ns/poll",
            "CPU ns/poll",
            "overhead, CPU ns/poll",
            "95 % CI of median overhead, CPU",
            "ratio vs none (CPU)",
            "wall ns/poll",
            "overhead, wall ns/poll",
            "target",
        ],
    );
    for workers in [1usize, 2] {
        let none = &per_poll[&(workers, Variant::None)];
        for v in &variants {
            let mine = &per_poll[&(workers, *v)];
            let cpu: Vec<f64> = mine.iter().zip(none).map(|(a, b)| a.0 - b.0).collect();
            let wall: Vec<f64> = mine.iter().zip(none).map(|(a, b)| a.1 - b.1).collect();
            let ratios: Vec<f64> = mine.iter().zip(none).map(|(a, b)| a.0 / b.0).collect();
            let s = stats(&cpu);
            t.row(vec![
                workers.to_string(),
                v.name().into(),
                f(
                    samples.get(&(workers, *v)).map_or(f64::NAN, |s| median(s)),
                    2,
                ),
                f(median(&mine.iter().map(|x| x.0).collect::<Vec<_>>()), 2),
                f(s.median, 2),
                {
                    let (lo, hi) = median_ci95(&cpu);
                    format!("{lo:.2} .. {hi:.2}")
                },
                format!("{:.3}", median(&ratios)),
                f(median(&mine.iter().map(|x| x.1).collect::<Vec<_>>()), 2),
                f(median(&wall), 2),
                match v {
                    Variant::Loopwatch => {
                        let (lo, hi) = median_ci95(&cpu);
                        if hi <= 2.0 {
                            "pass".into()
                        } else if lo > 2.0 {
                            "MISS".into()
                        } else {
                            format!(
                                "unresolved ({})",
                                if s.median <= 2.0 {
                                    "median passes"
                                } else {
                                    "median misses"
                                }
                            )
                        }
                    }
                    _ => "-".into(),
                },
            ]);
        }
    }
    t.print();
    if !cfg!(tokio_unstable) {
        println!(
            "\n(stable build: the loopwatch row has no poll hooks; see the tokio_unstable run)"
        );
    }
}
