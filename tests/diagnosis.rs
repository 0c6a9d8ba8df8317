//! Issue 13's classes of stall, end to end through the public API and the
//! demo daemon: CPU inside a dependency called from the application, a
//! blocking call inside an `async fn`, a loop saturated by many short
//! polls, a hooked runtime that stalls whole (one incident, which ends only
//! when its last stuck worker moves), and a single
//! stuck worker (reported at once, pings withheld only after the limit).
//! Every text report stays within 160 columns. (A CPU stall in a stripped
//! binary is in `tests/shipped_binaries.rs`.)

mod common;

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{
    assert_child_ok, block_for, hooked_runtime, mark, newest_report, role, DemoStall,
    NotifyListener,
};
use loopwatch::{RuntimeHooks, StallEvent, Watchdog};
use serde_json::Value;

/// Runs the demo with a stall of `kind` lasting `stall_for` seconds, and
/// returns its final report (recovered) and the text file's content.
fn demo_stall(kind: &str, stall_for: &str) -> (Value, String) {
    let demo = DemoStall::start(kind, stall_for);
    let r = demo
        .report_when(Duration::from_secs(30), |r| r["recovered"] == true)
        .unwrap_or_else(|| {
            panic!(
                "no recovered report for --stall-kind {kind}: {:?}",
                demo.newest_report()
            )
        });
    let id = r["id"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(demo.dir.path().join(format!("stall-{id}.txt"))).unwrap();
    (r, text)
}

fn assert_narrow(text: &str) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= 160,
            "a text line of {} columns:\n{line}",
            line.chars().count()
        );
    }
}

fn function(v: &Value) -> &str {
    v["function"].as_str().unwrap_or_default()
}

#[test]
fn cpu_inside_a_dependency_names_the_caller_and_where_it_was() {
    let (r, text) = demo_stall("dependency-cpu", "3");
    assert_eq!(r["verdict"]["kind"], "cpu-bound", "{}", r["verdict"]);
    let culprit = &r["culprit"];
    assert!(
        function(culprit).ends_with("stall_import_catalog"),
        "the application's function is the culprit: {culprit}"
    );
    // Where the thread really was: somewhere in serde's code (the parser,
    // serde_core's visitors, or dropping serde_json's values).
    assert!(
        function(&culprit["stuck_in"]).contains("serde"),
        "and it says where the thread really was: {culprit}"
    );
    assert!(text.contains("stall_import_catalog"), "{text}");
    assert_narrow(&text);
}

#[test]
fn a_blocking_call_inside_an_async_fn_is_blamed_on_that_fn() {
    let (r, text) = demo_stall("async-blocking", "3");
    assert_eq!(r["verdict"]["kind"], "blocked-syscall", "{}", r["verdict"]);
    let culprit = &r["culprit"];
    assert!(
        function(culprit).ends_with("fetch_prices"),
        "the async fn is the culprit, not `{{async_fn#0}}`: {culprit}"
    );
    assert!(
        culprit["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("demo.rs"))
            && culprit["line"].is_u64(),
        "with file and line: {culprit}"
    );
    let duration = r["duration_seconds"].as_f64().unwrap();
    assert!(
        duration >= 2.5,
        "the blocking read lasted its 3 s: a capture signal did not cut it short ({duration} s)"
    );
    assert_narrow(&text);
}

#[test]
fn a_loop_saturated_by_short_polls_is_overload_not_cpu_bound() {
    let (r, text) = demo_stall("saturated", "3");
    assert_eq!(r["verdict"]["kind"], "overload", "{}", r["verdict"]);
    assert_narrow(&text);
}

#[test]
fn a_hooked_runtime_stalled_whole_is_one_incident() {
    let hooks = RuntimeHooks::new();
    let rt = hooked_runtime(&hooks, 2);
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let (tx, rx) = mpsc::channel();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(300))
        .report_dir(dir.path())
        .registry(registry.clone())
        .watch_with_hooks("main", rt.handle().clone(), &hooks)
        .on_stall(move |e| {
            let _ = tx.send(e.clone());
        })
        .start()
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Every worker blocked: the probe stalls and each worker is stuck.
        let blocks: Vec<_> = (0..2)
            .map(|_| tokio::spawn(async { block_for(Duration::from_millis(1500)) }))
            .collect();
        for b in blocks {
            b.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let events: Vec<StallEvent> = rx.try_iter().collect();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    wd.shutdown();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("loopwatch_stalls_total{runtime=\"main\"} "))
        .unwrap_or_default();
    assert_eq!(count, "1", "one incident counted once:\n{text}");
    let reports = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(reports, 1, "one report");
    assert_eq!(events.len(), 2, "one callback pair: {events:#?}");
    let r = newest_report(dir.path()).unwrap();
    assert_eq!(r["recovered"], true);
    let d = r["duration_seconds"].as_f64().unwrap();
    assert!(
        (1.0..=2.5).contains(&d),
        "its duration covers the whole stall: {d}"
    );
}

/// The value of `loopwatch_stalled{runtime="main"}` in `registry`.
fn stalled_gauge(registry: &prometheus::Registry) -> String {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("loopwatch_stalled{runtime=\"main\"} "))
        .unwrap_or_else(|| panic!("no loopwatch_stalled for main:\n{text}"))
        .to_string()
}

#[test]
fn a_stall_ends_only_when_its_last_stuck_worker_moves() {
    let hooks = RuntimeHooks::new();
    let rt = hooked_runtime(&hooks, 2);
    let registry = prometheus::Registry::new();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(300))
        .registry(registry.clone())
        .watch_with_hooks("main", rt.handle().clone(), &hooks)
        .start()
        .unwrap();
    let (during, after) = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Both workers blocked, so the probe stalls; one moves after 1 s,
        // and the probe is answered again while the other is still stuck.
        let short = tokio::spawn(async { block_for(Duration::from_millis(1000)) });
        let long = tokio::spawn(async { block_for(Duration::from_millis(3500)) });
        short.await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let during = (wd.status(), stalled_gauge(&registry));
        long.await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        (during, (wd.status(), stalled_gauge(&registry)))
    });
    wd.shutdown();
    let (st, gauge) = during;
    assert_eq!(
        gauge, "1",
        "loopwatch_stalled stays 1 while a worker of the stall is still stuck: {st:?}"
    );
    assert!(
        !st.healthy,
        "pings stay withheld (and /healthz unhealthy) while a worker of the stall is stuck: {st:?}"
    );
    let (st, gauge) = after;
    assert_eq!(gauge, "0", "cleared once every cause has ended: {st:?}");
    assert!(st.healthy, "{st:?}");
    assert_eq!(
        st.runtime("main").unwrap().stalls,
        1,
        "one incident: {st:?}"
    );
}

#[test]
fn a_single_stuck_worker_is_reported_at_once_but_only_stops_pings_after_the_limit() {
    if role().as_deref() == Some("one-worker") {
        let hooks = RuntimeHooks::new();
        let rt = Arc::new(hooked_runtime(&hooks, 3));
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let wd = Watchdog::builder()
            .worker_stuck_limit(Duration::from_secs(2))
            .report_dir(dir.path())
            .watch_with_hooks("main", rt.handle().clone(), &hooks)
            .on_stall(move |e| {
                let _ = tx.send((Instant::now(), e.clone()));
            })
            .start()
            .unwrap();
        wd.ready().unwrap();
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            mark("short-block");
            let short = tokio::spawn(async { block_for(Duration::from_millis(1200)) });
            // The other workers go on serving meanwhile.
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            short.await.unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            mark("long-block");
            let long = tokio::spawn(async { block_for(Duration::from_millis(4000)) });
            long.await.unwrap();
            mark("long-end");
            tokio::time::sleep(Duration::from_millis(600)).await;
        });
        let events: Vec<(Instant, StallEvent)> = rx.try_iter().collect();
        let st = wd.status();
        wd.shutdown();
        let stuck: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, StallEvent::WorkerStuck { .. }))
            .collect();
        assert_eq!(stuck.len(), 2, "each stuck worker reported: {events:#?}");
        assert_eq!(
            st.runtime("main").unwrap().stalls,
            0,
            "the probe never stalled: {st:?}"
        );
        let r = newest_report(dir.path()).expect("a report");
        assert_eq!(r["verdict"]["kind"], "worker-stuck", "{}", r["verdict"]);
        return;
    }
    let l = NotifyListener::new();
    // WatchdogSec=1 s: pings every 250 ms while healthy.
    let (out, d) = l.run_child(
        "a_single_stuck_worker_is_reported_at_once_but_only_stops_pings_after_the_limit",
        "one-worker",
        &[("WATCHDOG_USEC", "1000000".into())],
    );
    assert_child_ok(&out);
    let at = |name: &str| {
        d.iter()
            .find(|g| g.marker() == Some(name))
            .unwrap_or_else(|| panic!("marker {name}: {d:#?}"))
            .at
    };
    let pings: Vec<Duration> = d
        .iter()
        .filter(|g| g.has("WATCHDOG=1"))
        .map(|g| g.at)
        .collect();
    // A worker stuck 1.2 s (under the 2 s limit): pings go on.
    let (short, long) = (at("short-block"), at("long-block"));
    let during: Vec<_> = pings.iter().filter(|t| **t > short && **t < long).collect();
    assert!(
        during.len() >= 5,
        "pings went on while one worker was stuck under the limit: {during:?}"
    );
    // A worker stuck 4 s: pings stop once it has been stuck 2 s, and
    // resume when it moves again.
    let end = at("long-end");
    let window: Vec<Duration> = pings
        .iter()
        .copied()
        .filter(|t| *t > long && *t < end + Duration::from_millis(500))
        .collect();
    let (gap_start, gap) = window
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .max_by_key(|(_, g)| *g)
        .unwrap_or_else(|| panic!("pings around the long block: {window:?}"));
    let stopped_after = gap_start.saturating_sub(long);
    assert!(
        gap >= Duration::from_millis(1200),
        "pings were withheld for a while: the longest gap is {gap:?} ({window:?})"
    );
    assert!(
        stopped_after >= Duration::from_millis(1500)
            && stopped_after <= Duration::from_millis(3200),
        "pings stopped {stopped_after:?} after the worker got stuck (limit 2 s + detection)"
    );
}
