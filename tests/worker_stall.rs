//! One worker of a multi-thread runtime stuck in a poll while the others
//! keep answering the probe (tokio issue 4730): detected through the hooks,
//! reported with its own verdict, the blocking function, and under
//! `--cfg tokio_unstable` the task's spawn location.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{hooked_runtime, newest_report};
use loopwatch::{RuntimeHooks, StallEvent, Watchdog};

const T: Duration = Duration::from_millis(300);
const TICK: Duration = Duration::from_millis(20);

#[inline(never)]
fn block_worker_for_test(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn one_stuck_worker_is_named_with_its_task_while_the_probe_stays_healthy() {
    let hooks = RuntimeHooks::new();
    let rt = hooked_runtime(&hooks, 4);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel();
    let wd = Watchdog::builder()
        .stall_threshold(T)
        .probe_interval(TICK)
        .report_dir(dir.path())
        .watch_with_hooks("main", rt.handle().clone(), &hooks)
        .on_stall(move |e| {
            let _ = tx.send((Instant::now(), e.clone()));
        })
        .start()
        .unwrap();
    let (spawn_line, block_start, ticks) = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let block_start = Instant::now();
        let spawn_line = line!() + 1;
        let stuck = tokio::spawn(async { block_worker_for_test(Duration::from_secs(2)) });
        // The other workers stay responsive.
        let mut ticks = 0u32;
        while block_start.elapsed() < Duration::from_millis(1800) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        stuck.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        (spawn_line, block_start, ticks)
    });
    assert!(
        ticks > 50,
        "the other workers kept running: {ticks} sleeps done"
    );
    let events: Vec<(Instant, StallEvent)> = {
        let mut v = Vec::new();
        while let Ok(e) = rx.recv_timeout(Duration::from_secs(5)) {
            let done = matches!(e.1, StallEvent::WorkerRecovered { .. });
            v.push(e);
            if done {
                break;
            }
        }
        v
    };
    let st = wd.status();
    wd.shutdown();
    assert_eq!(
        st.runtime("main").unwrap().stalls,
        0,
        "the probe stayed healthy: {events:?}"
    );
    let (at, stuck) = events
        .iter()
        .find(|(_, e)| matches!(e, StallEvent::WorkerStuck { .. }))
        .unwrap_or_else(|| panic!("no stuck worker reported: {events:?}"));
    let StallEvent::WorkerStuck {
        task,
        report,
        stuck_for,
        ..
    } = stuck
    else {
        unreachable!()
    };
    // Flagged within T plus one tick of the first tick that saw the worker
    // frozen (stuck_for is measured at detection, before the report).
    assert!(
        *stuck_for <= T + TICK + Duration::from_millis(100),
        "flagged after {stuck_for:?} without progress (T {T:?} + one tick {TICK:?})"
    );
    assert!(
        *at - block_start < Duration::from_secs(5),
        "the callback came {:?} after the block began",
        *at - block_start
    );
    assert!(report.is_some(), "a report was written: {stuck:?}");
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, StallEvent::WorkerRecovered { .. })),
        "the worker recovered: {events:?}"
    );
    let r = newest_report(dir.path()).expect("report");
    assert_eq!(r["verdict"]["kind"], "worker-stuck", "{}", r["verdict"]);
    assert_eq!(r["recovered"], true);
    let culprit = r["culprit"]["function"].as_str().unwrap_or_default();
    assert!(
        culprit.ends_with("block_worker_for_test"),
        "culprit {culprit:?}: {}",
        r["verdict"]
    );
    let w = &r["stuck_workers"][0];
    assert!(w["tids"].as_array().is_some_and(|t| !t.is_empty()), "{w}");
    if cfg!(tokio_unstable) {
        let at = format!("tests/worker_stall.rs:{spawn_line}:");
        let spawned = w["task"]["spawned_at"].as_str().unwrap_or_default();
        assert!(
            spawned.contains(&at),
            "spawn location {spawned:?} is not {at}"
        );
        let t = task.as_ref().expect("the task in the event");
        assert!(t.spawned_at.contains(&at), "{t:?}");
    }
}

#[test]
fn a_busy_cooperative_workload_is_never_flagged() {
    let hooks = RuntimeHooks::new();
    let rt = hooked_runtime(&hooks, 4);
    let (tx, rx) = mpsc::channel();
    let wd = Watchdog::builder()
        .stall_threshold(T)
        .probe_interval(TICK)
        .no_report_files()
        .watch_with_hooks("main", rt.handle().clone(), &hooks)
        .on_stall(move |e| {
            let _ = tx.send(e.clone());
        })
        .start()
        .unwrap();
    let polls = rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(2);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < end {
                        // A little CPU per poll, then yield.
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                        n += 1;
                        tokio::task::yield_now().await;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    std::thread::sleep(T);
    let st = wd.status();
    wd.shutdown();
    assert!(polls > 10_000, "the workload ran: {polls} polls");
    let events: Vec<StallEvent> = rx.try_iter().collect();
    assert!(
        events.is_empty(),
        "a cooperative workload was flagged: {events:?}"
    );
    assert!(st.runtime("main").unwrap().stuck_workers.is_empty());
}
