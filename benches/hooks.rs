//! Target 2: the cost of loopwatch's runtime hooks per task poll.
//!
//! A yield-heavy workload (16 tasks × 20 000 `yield_now`, so one poll per
//! yield) runs on a multi_thread runtime of 1 worker (a pure per-poll cost)
//! and of 2 workers. The tasks come from one `tokio::spawn` call site, or
//! from two used alternately (so consecutive polls on a worker alternate
//! between two spawn locations: the worst case for loopwatch's per-thread
//! spawn-location cache). Each runtime is built:
//!
//! * `none`: without hooks;
//! * `empty-poll-hooks` (only with `--cfg tokio_unstable`): empty
//!   `on_before_task_poll`/`on_after_task_poll` closures — what tokio's
//!   hook dispatch itself costs;
//! * `loopwatch`: `RuntimeHooks::install` — thread start/stop/park/unpark
//!   hooks and, with `--cfg tokio_unstable`, the before/after-poll hooks.
//!
//! The target is loopwatch's own share: `loopwatch − empty-poll-hooks`.
//! Without `--cfg tokio_unstable` tokio has no poll hooks: the bench then
//! measures the stable hooks only (park/unpark, rare on a busy runtime)
//! against `none`, and says so. Polls are counted with `worker_poll_count`
//! under `tokio_unstable`, else computed from the workload.
//!
//! Overhead per poll comes from an interleaved section: every round builds
//! fresh runtimes and runs each variant of a (workers, sites) cell 5 times,
//! in rotated order; the
//! fastest of the 5 (other tenants of the machine only ever add time) is
//! paired with the other variants' fastest of the same round; the median
//! over rounds is reported with its distribution-free 95 % confidence
//! interval. The pass/miss figure uses the CPU time of the process (user +
//! system, all threads), which other tenants of the shared machine disturb
//! far less than wall time; the wall-time figure is shown next to it, and
//! criterion times the same workloads.
//!
//! Instruction counts (noise-free) with callgrind:
//! `LOOPWATCH_BENCH_CALLGRIND=<workers>:<sites>:<variant>:<runs>` makes the
//! binary run only that workload, warmed once, then `runs` times, and print
//! the polls; run it under `valgrind --tool=callgrind` with two values of
//! `runs` and divide the difference in instructions by the difference in
//! polls (see BENCHMARKS.md).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, SamplingMode};

const TASKS: usize = 16;
const RUNS_PER_ROUND: usize = 5;

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

    fn parse(name: &str) -> Option<Variant> {
        Variant::all().into_iter().find(|v| v.name() == name)
    }

    /// What loopwatch's cost is measured against: tokio's dispatch of
    /// empty poll hooks where tokio has poll hooks, else no hooks.
    fn baseline() -> Variant {
        #[cfg(tokio_unstable)]
        {
            Variant::EmptyPollHooks
        }
        #[cfg(not(tokio_unstable))]
        {
            Variant::None
        }
    }
}

/// One (workers, spawn sites) cell of the bench.
type Cell = (usize, usize);

/// Tasks that each yield `yields` times; `sites` (1 or 2) distinct
/// `tokio::spawn` call sites, used alternately, so a worker's consecutive
/// polls alternate between the sites' spawn locations.
async fn yield_storm_from(sites: usize, yields: usize, done: std::sync::mpsc::Sender<()>) {
    async fn yielder(yields: usize) {
        for i in 0..yields {
            std::hint::black_box(i);
            tokio::task::yield_now().await;
        }
    }
    // `tokio::spawn` records its caller: two functions, two locations.
    fn spawn_at_first_site(yields: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(yielder(yields))
    }
    fn spawn_at_second_site(yields: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(yielder(yields))
    }
    let hs: Vec<_> = (0..TASKS)
        .map(|t| {
            if sites == 2 && t % 2 == 1 {
                spawn_at_second_site(yields)
            } else {
                spawn_at_first_site(yields)
            }
        })
        .collect();
    for h in hs {
        h.await.unwrap();
    }
    let _ = done.send(());
}

struct Bed {
    cell: Cell,
    variant: Variant,
    rt: tokio::runtime::Runtime,
    _hooks: Option<loopwatch::RuntimeHooks>,
    yields: usize,
}

impl Bed {
    fn new(cell: Cell, variant: Variant, yields: usize) -> Bed {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cell.0).enable_all();
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
            cell,
            variant,
            rt: b.build().expect("runtime"),
            _hooks: hooks,
            yields,
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
        self.rt.spawn(yield_storm_from(self.cell.1, yields, tx));
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

/// `LOOPWATCH_BENCH_CALLGRIND=<workers>:<sites>:<variant>:<runs>`: one
/// workload only, for an instruction count under callgrind.
fn callgrind_mode(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let parsed = match parts.as_slice() {
        [w, s, v, r] => w
            .parse::<usize>()
            .ok()
            .zip(s.parse::<usize>().ok())
            .zip(Variant::parse(v))
            .zip(r.parse::<usize>().ok()),
        _ => None,
    };
    let Some((((workers, sites), variant), runs)) = parsed else {
        eprintln!(
            "LOOPWATCH_BENCH_CALLGRIND={spec:?}: expected <workers>:<sites>:<variant>:<runs>, \
             variant one of {:?}",
            Variant::all().iter().map(|v| v.name()).collect::<Vec<_>>()
        );
        std::process::exit(2);
    };
    let bed = Bed::new((workers, sites), variant, 2_000);
    let _ = bed.run_once();
    let polls: u64 = (0..runs).map(|_| bed.run_once().2).sum();
    println!("callgrind workload: {workers} worker(s), {sites} site(s), {variant:?}, {runs} runs, {polls} polls");
}

type Samples = Arc<Mutex<HashMap<(Cell, Variant), Vec<f64>>>>;

fn main() {
    if let Ok(spec) = std::env::var("LOOPWATCH_BENCH_CALLGRIND") {
        callgrind_mode(&spec);
        return;
    }
    heading("poll-hook overhead (target 2)");
    if cfg!(tokio_unstable) {
        println!(
            "built with --cfg tokio_unstable: loopwatch's before/after-poll hooks are measured \
             against tokio's dispatch of empty poll hooks"
        );
    } else {
        println!(
            "built WITHOUT --cfg tokio_unstable: tokio has no poll hooks, so only loopwatch's stable \
             hooks (thread start/stop/park/unpark) are measured, against no hooks; rerun with \
             RUSTFLAGS=\"--cfg tokio_unstable\" for the poll hooks"
        );
    }
    // LOOPWATCH_BENCH_WORKERS=1 (or 2): only the cells with that many workers.
    let only_workers: Option<usize> = std::env::var("LOOPWATCH_BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok());
    let cells: Vec<Cell> = [(1, 1), (1, 2), (2, 1), (2, 2)]
        .into_iter()
        .filter(|(workers, _)| only_workers.is_none_or(|w| w == *workers))
        .collect();
    let variants = Variant::all();
    let yields = pick(20_000, 500);
    // Every runtime, warmed by one run.
    let new_beds = || -> Vec<Bed> {
        let beds: Vec<Bed> = cells
            .iter()
            .flat_map(|&cell| variants.iter().map(move |&v| Bed::new(cell, v, yields)))
            .collect();
        for b in &beds {
            let _ = b.run_once();
        }
        beds
    };
    let mut beds = new_beds();
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

    // Criterion: wall time of the same workloads.
    let samples: Samples = Arc::default();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(1500, 100)))
        .configure_from_args();
    for &cell in &cells {
        let mut g = c.benchmark_group(format!("poll-hooks/{}-worker/{}-site", cell.0, cell.1));
        g.sampling_mode(SamplingMode::Flat);
        for b in beds.iter().filter(|b| b.cell == cell) {
            let samples = samples.clone();
            g.bench_function(b.variant.name(), |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (d, _, polls) = b.run_once();
                        samples
                            .lock()
                            .unwrap()
                            .entry((cell, b.variant))
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

    // Interleaved rounds: ns per poll (CPU time and wall time), the fastest
    // of RUNS_PER_ROUND runs of each variant per round.
    let rounds: usize = std::env::var("LOOPWATCH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(pick(25, 2));
    let mut per_poll: HashMap<(Cell, Variant), Vec<(f64, f64)>> = HashMap::new();
    for r in 0..rounds {
        // Fresh runtimes every round: where a runtime's allocations and
        // threads land shifts its time per poll by a nanosecond or two, the
        // same for all its runs; new ones each round turn that bias into
        // noise that the median over rounds averages out.
        if r > 0 {
            drop(std::mem::take(&mut beds));
            beds = new_beds();
        }
        for &cell in &cells {
            let set: Vec<&Bed> = beds.iter().filter(|b| b.cell == cell).collect();
            for k in 0..set.len() {
                let b = set[(r + k) % set.len()];
                let mut cpu = Vec::new();
                let mut wall = Vec::new();
                for _ in 0..RUNS_PER_ROUND {
                    let (d, c, polls) = b.run_once();
                    wall.push(d.as_nanos() as f64 / polls as f64);
                    cpu.push(c.as_nanos() as f64 / polls as f64);
                }
                if std::env::var_os("LOOPWATCH_BENCH_DEBUG").is_some() {
                    println!("{cell:?} {:?} cpu {cpu:.1?} wall {wall:.1?}", b.variant);
                }
                per_poll
                    .entry((cell, b.variant))
                    .or_default()
                    .push((stats(&cpu).min, stats(&wall).min));
            }
        }
    }

    let samples = samples.lock().unwrap().clone();
    let baseline = Variant::baseline();
    let mut t = Table::new(
        &format!(
            "ns per poll, fastest of {RUNS_PER_ROUND} runs per round, {rounds} interleaved rounds; \
             differences paired per round, median over rounds [95 % CI of the median]. Target: \
             loopwatch − {} <= 2 ns/poll on CPU time: pass when the whole interval is below, MISS \
             when above",
            baseline.name()
        ),
        &[
            "workers",
            "sites",
            "variant",
            "criterion wall",
            "CPU",
            "CPU − none",
            "CPU − baseline",
            "wall − baseline",
            "target",
        ],
    );
    for &cell in &cells {
        let none = &per_poll[&(cell, Variant::None)];
        let base = &per_poll[&(cell, baseline)];
        for v in &variants {
            let mine = &per_poll[&(cell, *v)];
            let diff = |other: &[(f64, f64)], wall: bool| -> Vec<f64> {
                mine.iter()
                    .zip(other)
                    .map(|(a, b)| if wall { a.1 - b.1 } else { a.0 - b.0 })
                    .collect()
            };
            let with_ci = |d: &[f64]| {
                let (lo, hi) = median_ci95(d);
                format!("{:.2} [{lo:.2}, {hi:.2}]", median(d))
            };
            let share = diff(base, false);
            t.row(vec![
                cell.0.to_string(),
                cell.1.to_string(),
                v.name().into(),
                f(samples.get(&(cell, *v)).map_or(f64::NAN, |s| median(s)), 2),
                f(median(&mine.iter().map(|x| x.0).collect::<Vec<_>>()), 2),
                if *v == Variant::None {
                    "-".into()
                } else {
                    with_ci(&diff(none, false))
                },
                if *v == baseline || *v == Variant::None {
                    "-".into()
                } else {
                    with_ci(&share)
                },
                if *v == baseline || *v == Variant::None {
                    "-".into()
                } else {
                    with_ci(&diff(base, true))
                },
                if *v == Variant::Loopwatch {
                    let (lo, hi) = median_ci95(&share);
                    if hi <= 2.0 {
                        "pass".into()
                    } else if lo > 2.0 {
                        "MISS".into()
                    } else if median(&share) <= 2.0 {
                        "unresolved (median passes)".into()
                    } else {
                        "unresolved (median misses)".into()
                    }
                } else {
                    "-".into()
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
