//! loopwatch's own failures and absurd settings: a monitor that panics or
//! freezes must never look healthy, and values a misconfigured unit can
//! carry must give a typed error or a clamped value, never a panic.
//!
//! Each scenario runs in a child process (the environment and the injected
//! faults are process-wide), with a fake notify socket recording what
//! loopwatch tells systemd.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_child_ok, block_until, http_get, mark, role, wait_for, NotifyListener};
use loopwatch::{bench_support, Error, Watchdog};

const W_USEC: &str = "400000"; // WatchdogSec=0.4 s: pings every 100 ms

/// A watchdog with an exporter on a free loopback port, probing every 20 ms.
fn watched(rt: &tokio::runtime::Runtime) -> Watchdog {
    Watchdog::builder()
        .probe_interval(Duration::from_millis(20))
        .stall_threshold(Duration::from_millis(100))
        .no_report_files()
        .serve_metrics("127.0.0.1:0")
        .watch("main", rt.handle().clone())
        .start()
        .expect("start")
}

fn healthz(wd: &Watchdog) -> (u16, String) {
    let addr = wd.metrics_addr().expect("exporter").to_string();
    http_get(&addr, "/healthz", Duration::from_secs(2)).expect("GET /healthz")
}

/// Blocks `rt`'s only thread (a deadlock, as far as the probe can tell)
/// until the returned flag is set.
fn deadlock(rt: Arc<tokio::runtime::Runtime>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let h = std::thread::spawn(move || rt.block_on(async move { block_until(&r) }));
    (release, h)
}

#[test]
fn a_monitor_that_keeps_panicking_gives_up_and_says_so_everywhere() {
    if role().as_deref() == Some("panics") {
        let rt = Arc::new(common::current_thread());
        let wd = watched(&rt);
        wd.ready().unwrap();
        let driver = {
            let rt = rt.clone();
            std::thread::spawn(move || {
                rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await })
            })
        };
        driver.join().unwrap();
        assert_eq!(healthz(&wd).0, 200, "healthy before the fault");
        let (release, stuck) = deadlock(rt.clone());
        wait_for(Duration::from_secs(5), || {
            (!wd.status().healthy).then_some(())
        })
        .expect("the deadlock is detected");
        mark("inject");
        bench_support::inject_monitor_panics(3);
        let st = wait_for(Duration::from_secs(5), || {
            let st = wd.status();
            st.monitor_failure.is_some().then_some(st)
        })
        .expect("the monitor gives up after three panics");
        assert_eq!(st.internal_errors, 3, "{st:?}");
        assert!(!st.healthy, "{st:?}");
        let (code, body) = healthz(&wd);
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("monitor failed"), "{body}");
        let addr = wd.metrics_addr().unwrap().to_string();
        let (code, metrics) = http_get(&addr, "/metrics", Duration::from_secs(2)).unwrap();
        assert_eq!(code, 200);
        assert!(
            metrics.contains("loopwatch_internal_errors_total{part=\"monitor\"} 3"),
            "collectors stay registered and count the panics:\n{metrics}"
        );
        // The loop recovers, but a monitor that gave up never pings again.
        release.store(true, Ordering::Release);
        stuck.join().unwrap();
        mark("released");
        let rt2 = rt.clone();
        std::thread::spawn(move || {
            rt2.block_on(async { tokio::time::sleep(Duration::from_millis(600)).await })
        })
        .join()
        .unwrap();
        assert_eq!(healthz(&wd).0, 503, "still failed");
        mark("end");
        wd.shutdown();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "a_monitor_that_keeps_panicking_gives_up_and_says_so_everywhere",
        "panics",
        &[("WATCHDOG_USEC", W_USEC.into())],
    );
    assert_child_ok(&out);
    let inject = d.iter().find(|g| g.marker() == Some("inject")).unwrap().at;
    let end = d.iter().find(|g| g.marker() == Some("end")).unwrap().at;
    assert!(
        d.iter().any(|g| g.has("WATCHDOG=1") && g.at < inject),
        "pings went out before the stall: {d:#?}"
    );
    let late_pings: Vec<_> = d
        .iter()
        .filter(|g| g.has("WATCHDOG=1") && g.at > inject && g.at < end)
        .collect();
    assert!(
        late_pings.is_empty(),
        "no ping after the monitor failed: {late_pings:#?}"
    );
    assert!(
        d.iter().any(|g| g
            .status()
            .is_some_and(|s| s.contains("loopwatch monitor failed"))),
        "STATUS= says the monitor failed: {d:#?}"
    );
}

#[test]
fn a_frozen_monitor_is_never_healthy() {
    if role().as_deref() != Some("frozen") {
        // In a child: the injected hang applies to every monitor in the process.
        let out = common::run_child("a_frozen_monitor_is_never_healthy", "frozen", &[]);
        assert_child_ok(&out);
        return;
    }
    let rt = Arc::new(common::current_thread());
    let wd = watched(&rt);
    let driver = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            rt.block_on(async { tokio::time::sleep(Duration::from_secs(9)).await })
        })
    };
    wait_for(Duration::from_secs(5), || {
        (healthz(&wd).0 == 200).then_some(())
    })
    .expect("healthy at first");
    bench_support::inject_monitor_hang(Duration::from_secs(5));
    let (_, body) = wait_for(Duration::from_secs(5), || {
        let r = healthz(&wd);
        (r.0 == 503).then_some(r)
    })
    .expect("/healthz turns 503 while the monitor is frozen");
    assert!(body.contains("has not run"), "{body}");
    wait_for(Duration::from_secs(6), || {
        (healthz(&wd).0 == 200).then_some(())
    })
    .expect("healthy again once the monitor runs");
    assert_eq!(wd.status().internal_errors, 0);
    wd.shutdown();
    driver.join().unwrap();
}

#[test]
fn absurd_watchdog_intervals_are_refused_or_clamped() {
    match role().as_deref() {
        Some("usec-1") => {
            let rt = common::current_thread();
            let e = Watchdog::builder()
                .watch("main", rt.handle().clone())
                .start()
                .expect_err("WATCHDOG_USEC=1 must be refused");
            assert!(
                matches!(e, Error::WatchdogTooShort { value: 1, .. }),
                "{e:?}"
            );
            return;
        }
        Some("usec-huge") => {
            let rt = common::current_thread();
            let dir = tempfile::tempdir().unwrap();
            let wd = Watchdog::builder()
                .stall_threshold(Duration::from_millis(100))
                .report_dir(dir.path())
                .watch("main", rt.handle().clone())
                .start()
                .expect("a huge WATCHDOG_USEC is clamped, not fatal");
            assert_eq!(
                wd.status().watchdog_interval,
                Some(Duration::from_secs(24 * 3600)),
                "clamped to one day"
            );
            // A stall with that deadline: the report must still be written
            // (the deadline's timestamp once failed to format and killed
            // the monitor).
            rt.block_on(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                common::block_for(Duration::from_millis(600));
                tokio::time::sleep(Duration::from_millis(300)).await;
            });
            let st = wd.status();
            assert_eq!(st.internal_errors, 0, "{st:?}");
            assert!(st.monitor_failure.is_none(), "{st:?}");
            assert_eq!(st.runtime("main").unwrap().stalls, 1, "{st:?}");
            let report = wait_for(Duration::from_secs(5), || common::newest_report(dir.path()))
                .expect("a report was written");
            assert!(report["times"]["deadline"].is_string(), "{report}");
            wd.shutdown();
            return;
        }
        _ => {}
    }
    let l = NotifyListener::new();
    let (out, _) = l.run_child(
        "absurd_watchdog_intervals_are_refused_or_clamped",
        "usec-1",
        &[("WATCHDOG_USEC", "1".into())],
    );
    assert_child_ok(&out);
    for huge in ["300000000000000000", "18446744073709551615"] {
        let (out, _) = l.run_child(
            "absurd_watchdog_intervals_are_refused_or_clamped",
            "usec-huge",
            &[("WATCHDOG_USEC", huge.into())],
        );
        assert_child_ok(&out);
    }
}

#[test]
fn a_stall_storm_costs_bounded_reports_and_bytes_and_keeps_the_first() {
    let rt = common::current_thread();
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(200))
        .report_dir(dir.path())
        .registry(registry.clone())
        .watch("main", rt.handle().clone())
        .start()
        .expect("start");
    let storms = 20;
    rt.block_on(async {
        for _ in 0..storms {
            tokio::time::sleep(Duration::from_millis(200)).await;
            common::block_for(Duration::from_millis(400));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let st = wait_for(Duration::from_secs(5), || {
        let st = wd.status();
        (st.runtime("main").unwrap().stalls >= storms && st.healthy).then_some(st)
    })
    .unwrap_or_else(|| wd.status());
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    wd.shutdown();
    let counted = metric(&text, "loopwatch_stalls_total{runtime=\"main\"}");
    let coalesced = metric(&text, "loopwatch_stalls_coalesced_total{runtime=\"main\"}");
    assert_eq!(
        st.runtime("main").unwrap().stalls,
        storms,
        "every stall seen: {st:?}"
    );
    assert_eq!(counted as u64, storms, "every stall counted:\n{text}");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let reports = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .count();
    assert!(
        reports <= 3,
        "{reports} full reports for {storms} like stalls ({coalesced} coalesced)"
    );
    assert!(
        coalesced >= (storms - 3) as f64,
        "{coalesced} coalesced\n{text}"
    );
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes < 1_000_000, "{bytes} bytes on disk");
    // The first report holds the later stalls as occurrences.
    let mut jsons: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    jsons.sort();
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(jsons[0]).unwrap()).unwrap();
    assert!(
        first["id"].as_str().unwrap().ends_with("-0001"),
        "the storm's first report is kept: {}",
        first["id"]
    );
    assert!(
        first["coalesced_stalls"].as_u64().unwrap() >= 1,
        "later stalls are listed in the first report: {}",
        first["coalesced_stalls"]
    );
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn a_forked_child_sends_systemd_nothing_even_without_watchdog_pid() {
    if role().as_deref() == Some("forker") {
        let rt = common::current_thread();
        let wd = Watchdog::builder()
            .no_report_files()
            .watch("main", rt.handle().clone())
            .start()
            .unwrap();
        mark("before-fork");
        // SAFETY: the child only calls ready() (one datagram through a
        // socket the parent made) and _exit; it touches no lock another
        // thread could hold mid-operation in a way that matters here.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let _ = wd.ready();
            // SAFETY: leave the forked child without running destructors.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        mark("after-fork");
        wd.ready().unwrap();
        wd.shutdown();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "a_forked_child_sends_systemd_nothing_even_without_watchdog_pid",
        "forker",
        &[],
    );
    assert_child_ok(&out);
    let before = d
        .iter()
        .position(|g| g.marker() == Some("before-fork"))
        .unwrap();
    let after = d
        .iter()
        .position(|g| g.marker() == Some("after-fork"))
        .unwrap();
    assert!(
        !d[before..after].iter().any(|g| g.has("READY=1")),
        "the forked child said READY=1: {d:#?}"
    );
    assert!(
        d[after..].iter().any(|g| g.has("READY=1")),
        "the parent's READY=1 arrives: {d:#?}"
    );
}

#[test]
fn shutdown_right_after_a_stall_reports_it_recovered() {
    let rt = common::multi_thread(1);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(100))
        .no_hiccups()
        .report_dir(dir.path())
        .watch("main", rt.handle().clone())
        .on_stall(move |e| {
            let _ = tx.send(e.clone());
        })
        .start()
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::spawn(async { common::block_for(Duration::from_millis(700)) })
            .await
            .unwrap();
    });
    // The worker answers the probe as soon as the block ends; shutdown's
    // last look sees that before the monitor's next regular tick.
    wd.shutdown();
    let events: Vec<_> = rx.try_iter().collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, loopwatch::StallEvent::Ended { .. })),
        "the stall ended before shutdown: {events:#?}"
    );
    let r = common::newest_report(dir.path()).expect("a report");
    assert_eq!(r["recovered"], true, "{}", r["times"]);
}
