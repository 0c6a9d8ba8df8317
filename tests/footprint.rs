//! What stack capture costs in memory: nothing much while the daemon is
//! healthy, and back to that after a stall report.
//!
//! Two child processes (this test binary re-run with a role) do the same
//! thing, one with stack capture on (the default) and one with
//! `no_stack_capture()`: a runtime, warmed, then a Watchdog, two seconds
//! idle, one 700 ms stall with a report on disk, recovery, then a second
//! and a half. Each prints its resident memory at those points. With
//! capture on, the process must stay within 8 MiB of the other one while
//! idle and again after the report (the landed code kept 45–86 MiB of
//! symbols for the life of the process). The exact figures, and the peak
//! during a report, are in `benches/memory.rs`.

mod common;

use std::time::Duration;

use common::{assert_child_ok, block_for, role, run_child, wait_for};
use loopwatch::Watchdog;

const BOUND_KIB: u64 = 8 * 1024;

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page / 1024
}

/// The child: prints `FOOTPRINT <before> <idle> <after report>` in KiB.
fn child(capture: bool) {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::current_thread();
    rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..100 {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    let mut builder = Watchdog::builder()
        .stall_threshold(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .report_dir(dir.path())
        .watch("main", rt.handle().clone());
    if !capture {
        builder = builder.no_stack_capture();
    }
    let wd = builder.start().expect("start");
    // Idle, with the loop running (it must answer the probe).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });
    let idle = rss_kib();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        block_for(Duration::from_millis(700));
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let st = wait_for(Duration::from_secs(10), || {
        let st = wd.status();
        (st.runtime("main")?.stalls == 1 && st.healthy && st.reports_written >= 2).then_some(st)
    })
    .unwrap_or_else(|| panic!("no recovered stall report: {:?}", wd.status()));
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(1500)).await });
    let after = rss_kib();
    assert_eq!(st.reports_failed, 0, "{st:?}");
    wd.shutdown();
    println!("FOOTPRINT {before} {idle} {after}");
}

fn measure(which: &str) -> [u64; 3] {
    let out = run_child(
        "stack_capture_costs_little_memory_while_idle_and_after_a_report",
        which,
        &[],
    );
    assert_child_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.split("FOOTPRINT ").nth(1))
        .unwrap_or_else(|| panic!("no FOOTPRINT line from the {which} child:\n{text}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|x| x.parse().unwrap())
        .collect();
    [v[0], v[1], v[2]]
}

#[test]
fn stack_capture_costs_little_memory_while_idle_and_after_a_report() {
    match role().as_deref() {
        Some("capture-on") => return child(true),
        Some("capture-off") => return child(false),
        _ => {}
    }
    let off = measure("capture-off");
    let on = measure("capture-on");
    let report =
        format!("RSS KiB [before start, idle, after report]: capture on {on:?}, off {off:?}");
    // Compare growth from each process's own baseline: the two processes
    // are the same binary doing the same thing.
    let growth = |m: [u64; 3], i: usize| m[i].saturating_sub(m[0]);
    assert!(
        growth(on, 1) <= growth(off, 1) + BOUND_KIB,
        "idle with capture on costs more than 8 MiB: {report}"
    );
    assert!(
        growth(on, 2) <= growth(off, 2) + BOUND_KIB,
        "after a stall report, capture on stays more than 8 MiB above capture off: {report}"
    );
    eprintln!("{report}");
}
