//! The capture budget against real threads in uninterruptible sleep.
//!
//! 100 threads wait in the kernel (state `D`) for a `vfork`-style child
//! each (see `support/dstate.rs`). A signal could not reach them until the
//! kernel lets them go, so a capture must not signal them at all: it reads
//! them from `/proc` — state, kernel stack, and the user stack where the
//! thread made its system call — and stays within its budget, and
//! `Watchdog::shutdown()` is not held up by them. (The landed code took
//! 5.0 s for one such capture, 50 ms per thread, and `shutdown()` waited
//! 3.6 s.) Timing targets are in `benches/capture.rs`; the bounds here are
//! generous.

mod common;
#[path = "support/dstate.rs"]
mod dstate;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{block_until, newest_report, text_report, wait_for};
use dstate::DStateThreads;
use loopwatch::bench_support::CaptureBench;
use loopwatch::{CaptureOutcome, NotCaptured, Watchdog};

const D_THREADS: usize = 100;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_capture_of_100_threads_in_uninterruptible_sleep_stays_within_its_budget() {
    let held = DStateThreads::start(D_THREADS);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let normal: Vec<_> = (0..4)
        .map(|_| {
            let (stop, tx) = (stop.clone(), tx.clone());
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
                    .unwrap();
                block_until(&stop);
            })
        })
        .collect();
    let normal_tids: Vec<i32> = (0..4).map(|_| rx.recv().unwrap()).collect();
    let mut tids = held.tids.clone();
    tids.extend(&normal_tids);

    let sampler = CaptureBench::new().expect("sampler");
    let budget = Duration::from_millis(200);
    let (took, threads) = sampler.capture_within(&tids, budget);
    stop.store(true, Ordering::Release);

    assert!(
        took < Duration::from_secs(2),
        "a capture with a {budget:?} budget took {took:?} ({D_THREADS} threads in D state)"
    );
    for tid in &held.tids {
        let t = threads.iter().find(|t| t.tid == *tid).expect("in capture");
        // Not signalled: its user stack read where it sleeps in clone(),
        // or, when that cannot be read, reported from /proc alone.
        let read_asleep = t.read_asleep && t.outcome == CaptureOutcome::Captured && t.frames > 0;
        let unsignalled = t.not_captured == Some(NotCaptured::UninterruptibleSleep)
            && t.outcome == CaptureOutcome::Unresponsive;
        assert!(read_asleep || unsignalled, "{t:?}");
        assert_eq!(t.state, Some('D'), "{t:?}");
        if is_root() {
            // /proc/TID/stack needs CAP_SYS_ADMIN; as root it names the wait.
            assert!(
                t.kernel_stack
                    .iter()
                    .any(|f| f.contains("clone") || f.contains("vfork")),
                "kernel stack of a vfork parent: {:?}",
                t.kernel_stack
            );
        }
    }
    for tid in &normal_tids {
        let t = threads.iter().find(|t| t.tid == *tid).expect("in capture");
        assert_eq!(t.outcome, CaptureOutcome::Captured, "{t:?}");
        assert!(t.frames > 0, "{t:?}");
    }
    for h in normal {
        h.join().unwrap();
    }
    drop(held);
}

#[test]
fn a_report_among_100_threads_in_d_state_is_prompt_and_so_is_shutdown() {
    let held = DStateThreads::start(D_THREADS);
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(common::current_thread());
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(20))
        .report_dir(dir.path())
        .watch("main", rt.handle().clone())
        .start()
        .expect("start");
    // Let the probe answer once, then block the loop until released.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    let release = Arc::new(AtomicBool::new(false));
    let stalled = {
        let (rt, release) = (rt.clone(), release.clone());
        std::thread::spawn(move || rt.block_on(async move { block_until(&release) }))
    };
    wait_for(Duration::from_secs(10), || {
        (!wd.status().healthy).then_some(())
    })
    .expect("the stall is detected");
    // The capture is under way now: shutdown waits for it, and for no more
    // than its budget (plus the report's own writing and DWARF pass).
    let started = Instant::now();
    wd.shutdown();
    let shutdown = started.elapsed();
    release.store(true, Ordering::Release);
    stalled.join().unwrap();
    assert!(
        shutdown < Duration::from_millis(2500),
        "shutdown during a capture among {D_THREADS} threads in D state took {shutdown:?}"
    );

    let r = newest_report(dir.path()).expect("the detection report was written");
    let signal = r["captures"][0]["signal_seconds"].as_f64().unwrap();
    assert!(
        signal < 2.0,
        "signalling took {signal} s: {}",
        r["captures"]
    );
    let groups = r["threads"].as_array().unwrap();
    // Every thread in D state is in the report, unsignalled: read asleep
    // in its system call, or from /proc alone.
    let in_d = |g: &&serde_json::Value| g["state"].as_str().is_some_and(|s| s.starts_with('D'));
    let unsignalled = |g: &&serde_json::Value| {
        g["read_asleep"] == true || g["not_captured"] == "uninterruptible-sleep"
    };
    let held_in_report: usize = groups
        .iter()
        .filter(in_d)
        .filter(unsignalled)
        .map(|g| g["count"].as_u64().unwrap() as usize)
        .sum();
    assert!(
        held_in_report >= D_THREADS,
        "{held_in_report} threads reported in uninterruptible sleep, {D_THREADS} expected: {}",
        serde_json::to_string_pretty(&r["threads"]).unwrap()
    );
    let text = text_report(dir.path());
    assert!(
        text.contains("read asleep in its system call (not signalled)")
            || text.contains("not captured: in uninterruptible sleep (D)"),
        "{text}"
    );
    drop(held);
}
