//! The hooks and the detector together: a real multi-thread runtime with
//! [`RuntimeHooks`] installed, and the monitor played by hand with
//! [`WorkerWatch::sample`]. Unit tests of single pieces are in their own
//! files.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::stuck::WorkerStuck;
use super::{RuntimeHooks, WorkerTransition, WorkerWatch};
use crate::clock::now_us;

/// Threshold and monitor tick used by the detection tests, µs.
const T: u64 = 300_000;
const TICK: u64 = 20_000;

fn runtime(hooks: &RuntimeHooks, workers: usize) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    hooks.install(&mut builder).build().expect("runtime")
}

/// Waits until `n` workers have parked once (they do when idle).
fn wait_for_workers(hooks: &RuntimeHooks, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooks.worker_threads().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {:?} of {n} workers parked within 10 s",
            hooks.worker_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Plays the monitor: samples every tick until `until` (µs).
fn sample_until(watch: &mut WorkerWatch, until: u64, log: &mut Vec<WorkerTransition>) {
    loop {
        let now = now_us();
        log.extend(watch.sample(now));
        if now >= until {
            return;
        }
        std::thread::sleep(Duration::from_micros(TICK));
    }
}

fn stuck_of(log: &[WorkerTransition]) -> Vec<&WorkerStuck> {
    log.iter()
        .filter_map(|t| match t {
            WorkerTransition::Stuck(s) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn threads_register_and_unregister() {
    let hooks = RuntimeHooks::new();
    let rt = runtime(&hooks, 3);
    wait_for_workers(&hooks, 3);
    let workers = hooks.worker_threads();
    assert_eq!(workers.len(), 3, "{workers:?}");
    let threads = hooks.threads();
    assert!(workers.iter().all(|w| threads.contains(w)));
    let tid = rt
        .block_on(rt.spawn(async { crate::stacks::current_tid() }))
        .unwrap();
    if tid != 0 {
        assert!(workers.contains(&tid), "{tid} not in {workers:?}");
    }
    drop(rt);
    assert!(hooks.threads().is_empty(), "{:?}", hooks.threads());
    assert!(format!("{hooks:?}").contains("threads: 0"));
}

/// How the blocking task reaches its worker.
#[derive(Clone, Copy, Debug)]
enum Spawn {
    /// From outside the runtime: a parked worker is woken for it.
    Outside,
    /// From a task already running on a worker: it lands in that
    /// worker's LIFO slot and runs right after (tokio issue 4730).
    FromWorker,
}

/// A task that blocks its worker for `block` while the other workers
/// keep running a 10 ms timer loop: exactly that worker is flagged
/// within T plus a tick or two, named by its thread (and, with
/// tokio_unstable, by its task and spawn location), then reported
/// recovered once.
fn blocked_worker(workers: usize, how: Spawn, block: Duration, busy: usize) {
    let hooks = RuntimeHooks::new();
    let rt = runtime(&hooks, workers);
    wait_for_workers(&hooks, workers);
    let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
    let mut log = Vec::new();

    // The probe-like loop: must keep completing while a worker is stuck.
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(Mutex::new(Vec::<u64>::new()));
    let probe = rt.spawn({
        let (stop, beats) = (stop.clone(), beats.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                beats.lock().push(now_us());
            }
        }
    });
    // Background load: `busy` tasks that spin ~50 µs and yield.
    let spinners: Vec<_> = (0..busy)
        .map(|_| {
            let stop = stop.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_micros(50) {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    sample_until(&mut watch, now_us() + 300_000, &mut log);
    assert!(
        stuck_of(&log).is_empty(),
        "flagged before the block: {log:?}"
    );

    let tid = Arc::new(AtomicI32::new(-1));
    let thread = Arc::new(Mutex::new(None));
    let started = Arc::new(AtomicU64::new(0));
    let body = {
        let (tid, thread, started) = (tid.clone(), thread.clone(), started.clone());
        async move {
            tid.store(crate::stacks::current_tid(), Ordering::SeqCst);
            *thread.lock() = Some(std::thread::current().id());
            started.store(now_us(), Ordering::SeqCst);
            std::thread::sleep(block);
        }
    };
    let (blocker, spawn_line) = match how {
        Spawn::Outside => (rt.spawn(body), line!()),
        Spawn::FromWorker => {
            let (handle, line) = rt
                .block_on(rt.spawn(async move {
                    tokio::task::yield_now().await;
                    (tokio::spawn(body), line!())
                }))
                .unwrap();
            (handle, line)
        }
    };
    let blocker_id = blocker.id();
    let begin = now_us();
    while started.load(Ordering::SeqCst) == 0 {
        assert!(now_us() - begin < 1_000_000, "the blocking task never ran");
        log.extend(watch.sample(now_us()));
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = started.load(Ordering::SeqCst);
    let tid = tid.load(Ordering::SeqCst);
    let block_us = block.as_micros() as u64;
    sample_until(&mut watch, started + block_us + 600_000, &mut log);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(probe).unwrap();
    rt.block_on(blocker).unwrap();
    for s in spinners {
        rt.block_on(s).unwrap();
    }

    // The other workers stayed responsive: the timer loop kept beating.
    let beats: Vec<u64> = beats
        .lock()
        .iter()
        .copied()
        .filter(|&b| b > started + 100_000 && b < started + block_us - 100_000)
        .collect();
    let expected = (block_us - 200_000) / 10_000;
    assert!(
        beats.len() as u64 >= expected / 3,
        "only {} beats during the block",
        beats.len()
    );
    let gap = beats.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(gap < 250_000, "the timer loop paused {gap} µs");

    let stuck = stuck_of(&log);
    assert_eq!(stuck.len(), 1, "{how:?}: {log:#?}");
    let stuck = stuck[0];
    eprintln!("{how:?}, {workers} workers, {busy} busy: blocker tid {tid}: {stuck:?}");
    let after = stuck.detected_at as i64 - started as i64;
    assert!(
        after >= (T - 100_000) as i64 && after <= (T + TICK + 250_000) as i64,
        "{how:?}: flagged {after} µs after the block began (T = {T} µs): {stuck:?}"
    );
    if tid != 0 {
        // The most likely thread first; on stable tokio others may follow
        // when the hooks cannot tell (see `attribution.rs`).
        assert_eq!(stuck.tids.first(), Some(&tid), "{how:?}: {stuck:?}");
    }
    assert!(stuck.thread.is_some(), "{stuck:?}");
    #[cfg(tokio_unstable)]
    {
        assert_eq!(stuck.tids.len(), 1, "{stuck:?}");
        let thread = thread.lock().expect("thread id");
        assert_eq!(rt.metrics().worker_thread_id(stuck.worker), Some(thread));
        let task = stuck.task.as_ref().expect("the stuck task");
        assert_eq!(task.id, blocker_id.to_string());
        let prefix = format!("{}:{}:", file!(), spawn_line);
        assert!(task.spawned_at.starts_with(&prefix), "{task:?} vs {prefix}");
    }
    #[cfg(not(tokio_unstable))]
    {
        let _ = (thread, blocker_id, spawn_line);
        assert!(stuck.task.is_none());
    }

    let recovered: Vec<_> = log
        .iter()
        .filter_map(|t| match t {
            WorkerTransition::Recovered {
                stuck,
                stuck_for,
                ended_at,
            } => Some((stuck, *stuck_for, *ended_at)),
            _ => None,
        })
        .collect();
    assert_eq!(recovered.len(), 1, "{how:?}: {log:#?}");
    let (was, stuck_for, ended_at) = recovered[0];
    assert_eq!(was.worker, stuck.worker);
    let ended = ended_at as i64 - started as i64;
    assert!(
        (block_us as i64 - 100_000..=block_us as i64 + 500_000).contains(&ended),
        "{how:?}: recovery seen {ended} µs after the block began"
    );
    assert!(
        (block_us - 300_000..=block_us + 600_000).contains(&stuck_for),
        "{how:?}: stuck for {stuck_for} µs"
    );
    assert!(!watch.any_stuck());
}

#[test]
fn a_worker_blocked_in_one_poll_is_flagged_then_recovers() {
    blocked_worker(4, Spawn::Outside, Duration::from_secs(2), 0);
}

#[test]
fn a_task_blocking_the_worker_that_spawned_it_is_flagged() {
    blocked_worker(4, Spawn::FromWorker, Duration::from_millis(1500), 0);
}

#[test]
fn the_stuck_one_of_many_workers_is_named() {
    blocked_worker(8, Spawn::Outside, Duration::from_millis(1500), 0);
}

#[test]
fn a_worker_stuck_among_busy_ones_is_named() {
    blocked_worker(4, Spawn::Outside, Duration::from_millis(1500), 3);
}

/// Eight tasks that each spin ~50 µs and yield, for 2 s, on 4 workers:
/// every worker is busy, none is flagged. The one exception the test
/// accepts is a worker whose thread really ran none of these polls for
/// longer than T (the OS did not run it: on a loaded CI machine a
/// thread can be descheduled or wait on a page fault that long); that
/// is a true stall of the worker, and reporting it is right.
#[test]
fn a_busy_cooperative_workload_is_never_flagged() {
    let hooks = RuntimeHooks::new();
    let rt = runtime(&hooks, 4);
    wait_for_workers(&hooks, 4);
    let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
    let mut log = Vec::new();
    // Per thread: its last poll, its polls, and its gaps between two
    // polls longer than 100 ms (from, to), µs.
    type PerThread = HashMap<i32, (u64, u64, Vec<(u64, u64)>)>;
    let threads = Arc::new(Mutex::new(PerThread::new()));
    let end = now_us() + 2_000_000;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let threads = threads.clone();
            rt.spawn(async move {
                while now_us() < end {
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_micros(50) {
                        std::hint::spin_loop();
                    }
                    let now = now_us();
                    {
                        let mut threads = threads.lock();
                        let t = threads.entry(crate::stacks::current_tid()).or_insert((
                            now,
                            0,
                            Vec::new(),
                        ));
                        if now - t.0 > 100_000 {
                            t.2.push((t.0, now));
                        }
                        t.0 = now;
                        t.1 += 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let busy_before: Vec<Duration> = (0..4)
        .map(|i| rt.metrics().worker_total_busy_duration(i))
        .collect();
    sample_until(&mut watch, end + 300_000, &mut log);
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let threads = threads.lock().clone();
    for stuck in stuck_of(&log) {
        let starved = stuck.tids.iter().any(|tid| {
            threads.get(tid).is_some_and(|t| {
                t.2.iter().any(|&(from, to)| {
                    to - from >= T - 2 * TICK
                        && from <= stuck.detected_at
                        && to + TICK >= stuck.stuck_since
                })
            })
        });
        assert!(
            starved,
            "a cooperative worker was flagged: {stuck:?}; per thread \
             (last poll, polls, gaps > 100 ms): {threads:?}; {log:#?}"
        );
        eprintln!("flagged, but its thread really ran nothing for > T: {stuck:?}");
    }
    // The workload really kept every worker busy.
    let polls: u64 = threads.values().map(|t| t.1).sum();
    assert!(polls > 10_000, "only {polls} polls");
    for (i, before) in busy_before.iter().enumerate() {
        let busy = rt.metrics().worker_total_busy_duration(i) - *before;
        assert!(
            busy > Duration::from_millis(500),
            "worker {i} busy {busy:?}"
        );
    }
}

/// `block_in_place` hands the worker to another thread: the thread
/// blocking in it stalls nobody and is not flagged.
#[test]
fn block_in_place_is_not_a_stuck_worker() {
    let hooks = RuntimeHooks::new();
    let rt = runtime(&hooks, 2);
    wait_for_workers(&hooks, 2);
    let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
    let mut log = Vec::new();
    let done = Arc::new(AtomicBool::new(false));
    let task = rt.spawn({
        let done = done.clone();
        async move {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
            done.store(true, Ordering::SeqCst);
        }
    });
    sample_until(&mut watch, now_us() + 1_300_000, &mut log);
    rt.block_on(task).unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(stuck_of(&log).is_empty(), "{log:#?}");
}

/// A stretch during which the monitor did not sample (a paused
/// process) is not counted as stuck time: the worker is flagged only a
/// threshold after sampling resumed.
#[test]
fn a_gap_in_sampling_is_not_stuck_time() {
    let hooks = RuntimeHooks::new();
    let rt = runtime(&hooks, 2);
    wait_for_workers(&hooks, 2);
    let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
    let started = Arc::new(AtomicU64::new(0));
    let blocker = rt.spawn({
        let started = started.clone();
        async move {
            started.store(now_us(), Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut log = watch.sample(now_us());
    std::thread::sleep(Duration::from_micros(2 * T));
    let resumed = now_us();
    log.extend(watch.sample(resumed));
    assert!(stuck_of(&log).is_empty(), "flagged across the gap: {log:?}");
    sample_until(&mut watch, resumed + T + 300_000, &mut log);
    let stuck = stuck_of(&log);
    assert_eq!(stuck.len(), 1, "{log:#?}");
    assert!(
        stuck[0].detected_at > resumed + T,
        "{stuck:?} resumed at {resumed}"
    );
    rt.block_on(blocker).unwrap();
}

#[test]
fn a_current_thread_runtime_reports_nothing() {
    let hooks = RuntimeHooks::new();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let rt = hooks.install(builder.enable_all()).build().unwrap();
    let mut watch = WorkerWatch::new(hooks, rt.handle().clone(), 1);
    std::thread::sleep(Duration::from_millis(5));
    assert!(watch.sample(now_us()).is_empty());
    std::thread::sleep(Duration::from_millis(5));
    assert!(watch.sample(now_us()).is_empty());
}
