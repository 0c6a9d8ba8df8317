//! The core promise against a fake systemd notify socket: pings every W/4
//! while healthy, none during a stall, READY/STATUS/STOPPING, WATCHDOG_PID,
//! several runtimes, measured block lengths and typed configuration errors.
//!
//! Tests that need `NOTIFY_SOCKET`/`WATCHDOG_*` run their scenario in a child
//! process (see `common`), because the environment is process-wide.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{assert_child_ok, block_for, mark, role, run_child, Datagram, NotifyListener};
use loopwatch::{Error, LoopState, StallEvent, Watchdog};

const W_USEC: u64 = 800_000; // WatchdogSec=0.8 s: pings every 200 ms
const T: Duration = Duration::from_millis(200);
const PROBE: Duration = Duration::from_millis(20);

fn marker_at(d: &[Datagram], name: &str) -> Duration {
    d.iter()
        .find(|g| g.marker() == Some(name))
        .unwrap_or_else(|| panic!("marker {name} never arrived; got {d:#?}"))
        .at
}

fn pings(d: &[Datagram]) -> Vec<Duration> {
    d.iter()
        .filter(|g| g.has("WATCHDOG=1"))
        .map(|g| g.at)
        .collect()
}

/// The child side of the gating scenarios: healthy, blocked, healthy, stop.
fn gating_child(multi_thread: bool) {
    let rt = if multi_thread {
        common::multi_thread(2)
    } else {
        common::current_thread()
    };
    rt.block_on(async {
        let wd = Watchdog::builder()
            .probe_interval(PROBE)
            .watch("main", tokio::runtime::Handle::current())
            .start()
            .expect("start");
        assert_eq!(wd.status().stall_threshold, T, "default threshold is W/4");
        assert!(wd.status().pings_enabled);
        wd.ready().expect("ready");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        mark("block-start");
        if multi_thread {
            // Occupy both workers so that nobody polls the probe.
            // The first worker to finish marks the end, before it can poll.
            let b = std::sync::Arc::new(std::sync::Barrier::new(2));
            let ended = std::sync::Arc::new(std::sync::Once::new());
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let (b, ended) = (b.clone(), ended.clone());
                    tokio::spawn(async move {
                        b.wait();
                        block_for(Duration::from_millis(1000));
                        ended.call_once(|| mark("block-end"));
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        } else {
            block_for(Duration::from_millis(1000));
            mark("block-end");
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let st = wd.status();
        assert_eq!(st.runtime("main").unwrap().stalls, 1, "{st:?}");
        mark("shutdown");
        wd.shutdown();
    });
}

fn gating_parent(test: &str, role_name: &str) {
    let l = NotifyListener::new();
    let (out, d) = l.run_child(test, role_name, &[("WATCHDOG_USEC", W_USEC.to_string())]);
    assert_child_ok(&out);
    let ready = d
        .iter()
        .find(|g| g.has("READY=1"))
        .expect("READY=1 arrives")
        .at;
    let b = marker_at(&d, "block-start");
    let e = marker_at(&d, "block-end");
    let s = marker_at(&d, "shutdown");
    let p = pings(&d);

    // Healthy: about every W/4 (200 ms).
    let healthy: Vec<_> = p.iter().copied().filter(|t| *t > ready && *t < b).collect();
    assert!(
        healthy.len() >= 3,
        "too few pings while healthy: {healthy:?}"
    );
    for w in healthy.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(100) && gap <= Duration::from_millis(400),
            "ping gap {gap:?} is not about W/4 = 200 ms: {healthy:?}"
        );
    }
    // Stalled: pings stop within T plus one probe interval (plus generous slack).
    let cutoff = b + T + PROBE + Duration::from_millis(150);
    let during: Vec<_> = p.iter().filter(|t| **t > cutoff && **t < e).collect();
    assert!(
        during.is_empty(),
        "pings during the stall: {during:?} (block {b:?}..{e:?})"
    );
    assert!(
        d.iter().any(|g| g.at > b
            && g.status()
                .is_some_and(|s| s.starts_with("event loop \"main\" stalled for"))),
        "no STATUS= naming the stall: {d:#?}"
    );
    // Recovered: pings resume promptly.
    let resumed = p
        .iter()
        .find(|t| **t > e)
        .expect("pings resume after the block");
    assert!(
        *resumed - e <= Duration::from_millis(400),
        "pings resumed only {:?} after the block ended",
        *resumed - e
    );
    assert!(d.iter().any(|g| g
        .status()
        .is_some_and(|s| s.starts_with("event loop healthy, lag "))));
    assert!(
        d.iter().any(|g| g.at >= s && g.has("STOPPING=1")),
        "STOPPING=1 on shutdown"
    );
}

#[test]
fn pings_follow_health_current_thread() {
    match role().as_deref() {
        Some("gating") => gating_child(false),
        _ => gating_parent("pings_follow_health_current_thread", "gating"),
    }
}

#[test]
fn pings_follow_health_multi_thread() {
    match role().as_deref() {
        Some("gating") => gating_child(true),
        _ => gating_parent("pings_follow_health_multi_thread", "gating"),
    }
}

#[test]
fn a_process_that_is_not_watchdog_pid_never_pings() {
    if role().as_deref() == Some("foreign") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let wd = Watchdog::builder()
                .watch("main", tokio::runtime::Handle::current())
                .start()
                .expect("start");
            assert!(!wd.status().pings_enabled);
            assert_eq!(wd.status().watchdog_interval, None);
            wd.ready().expect("ready is a quiet no-op");
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert_eq!(wd.status().pings_sent, 0);
            mark("done");
            wd.shutdown();
        });
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "a_process_that_is_not_watchdog_pid_never_pings",
        "foreign",
        &[
            ("WATCHDOG_USEC", "400000".into()),
            // Our parent's pid: certainly not the child's.
            ("WATCHDOG_PID", std::process::id().to_string()),
        ],
    );
    assert_child_ok(&out);
    marker_at(&d, "done");
    let from_loopwatch: Vec<_> = d.iter().filter(|g| g.marker().is_none()).collect();
    assert!(
        from_loopwatch.is_empty(),
        "a process that is not WATCHDOG_PID sent {from_loopwatch:?}"
    );
}

fn measure_block(rt: tokio::runtime::Runtime, workers: usize) -> Duration {
    let (tx, rx) = mpsc::channel();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(100))
        .probe_interval(Duration::from_millis(10))
        .watch("main", rt.handle().clone())
        .on_stall(move |e| {
            let _ = tx.send(e.clone());
        })
        .start()
        .expect("start");
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(workers));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let b = barrier.clone();
                tokio::spawn(async move {
                    b.wait();
                    block_for(Duration::from_millis(300));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let started = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("stall start");
    assert!(matches!(started, StallEvent::Started { .. }), "{started:?}");
    let ended = rx.recv_timeout(Duration::from_secs(5)).expect("stall end");
    let StallEvent::Ended {
        duration, runtime, ..
    } = ended
    else {
        panic!("expected the end of the stall, got {ended:?}");
    };
    assert_eq!(runtime, "main");
    assert_eq!(wd.status().runtime("main").unwrap().stalls, 1);
    wd.shutdown();
    duration
}

#[test]
fn a_300ms_block_is_measured_as_300ms() {
    let ct = common::current_thread();
    // current_thread: the blocking task runs on the test thread inside block_on.
    let d = measure_block(ct, 1);
    assert!(
        d >= Duration::from_millis(250) && d <= Duration::from_millis(450),
        "current_thread: a 300 ms block measured as {d:?}"
    );
    let mt = common::multi_thread(2);
    let d = measure_block(mt, 2);
    assert!(
        d >= Duration::from_millis(250) && d <= Duration::from_millis(450),
        "multi_thread: a 300 ms block measured as {d:?}"
    );
}

#[test]
fn two_runtimes_name_the_stalled_one() {
    if role().as_deref() == Some("two") {
        let api = common::multi_thread(1);
        let jobs = common::current_thread();
        let wd = Watchdog::builder()
            .probe_interval(PROBE)
            .watch("api", api.handle().clone())
            .watch("jobs", jobs.handle().clone())
            .start()
            .expect("start");
        wd.ready().unwrap();
        jobs.block_on(async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            mark("block-start");
            let seen = std::thread::scope(|s| {
                let h = s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(700));
                    wd.status()
                });
                block_for(Duration::from_millis(1200));
                h.join().unwrap()
            });
            mark("block-end");
            assert_eq!(
                seen.runtime("jobs").unwrap().state,
                LoopState::Stalled,
                "{seen:?}"
            );
            assert_eq!(
                seen.runtime("api").unwrap().state,
                LoopState::Healthy,
                "{seen:?}"
            );
            assert!(!seen.healthy);
            assert!(seen.runtime("jobs").unwrap().stalled_for.is_some());
            tokio::time::sleep(Duration::from_millis(400)).await;
        });
        let st = wd.status();
        assert!(st.healthy, "{st:?}");
        assert_eq!(st.runtime("jobs").unwrap().stalls, 1);
        assert_eq!(st.runtime("api").unwrap().stalls, 0);
        wd.shutdown();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "two_runtimes_name_the_stalled_one",
        "two",
        &[("WATCHDOG_USEC", W_USEC.to_string())],
    );
    assert_child_ok(&out);
    let statuses: Vec<&str> = d.iter().filter_map(|g| g.status()).collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("event loop \"jobs\" stalled for")),
        "{statuses:?}"
    );
    assert!(
        !statuses.iter().any(|s| s.contains("\"api\" stalled")),
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .any(|s| s.starts_with("event loops healthy, max lag")));
}

fn start_with_env() -> Result<Watchdog, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    Watchdog::builder()
        .watch("main", rt.handle().clone())
        .start()
}

#[test]
fn bad_settings_give_typed_errors() {
    match role().as_deref() {
        Some("bad-usec") => {
            let e = start_with_env().expect_err("bad WATCHDOG_USEC must be refused");
            let value = std::env::var("WATCHDOG_USEC").unwrap();
            assert!(
                matches!(&e, Error::InvalidWatchdogUsec { value: v } if *v == value),
                "{e:?}"
            );
            println!("refused: {e}");
            return;
        }
        Some("threshold-above-w") => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let e = Watchdog::builder()
                .stall_threshold(Duration::from_secs(2))
                .watch("main", rt.handle().clone())
                .start()
                .expect_err("threshold not below W must be refused");
            assert!(
                matches!(e, Error::ThresholdNotBelowWatchdog { .. }),
                "{e:?}"
            );
            return;
        }
        Some(other) => panic!("unknown role {other}"),
        None => {}
    }
    for v in ["abc", "0", "-1", "1.5"] {
        let out = run_child(
            "bad_settings_give_typed_errors",
            "bad-usec",
            &[("WATCHDOG_USEC", v.to_string())],
        );
        assert_child_ok(&out);
    }
    let out = run_child(
        "bad_settings_give_typed_errors",
        "threshold-above-w",
        &[("WATCHDOG_USEC", "1000000".to_string())],
    );
    assert_child_ok(&out);

    // Settings that do not depend on the environment, in this process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let h = || rt.handle().clone();
    let e = Watchdog::builder()
        .watch("m", h())
        .probe_interval(Duration::ZERO)
        .start()
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ZeroDuration {
                setting: "probe_interval"
            }
        ),
        "{e:?}"
    );
    let e = Watchdog::builder()
        .watch("m", h())
        .stall_threshold(Duration::from_millis(50))
        .probe_interval(Duration::from_millis(50))
        .start()
        .unwrap_err();
    assert!(
        matches!(e, Error::ProbeIntervalNotBelowThreshold { .. }),
        "{e:?}"
    );
    assert!(matches!(
        Watchdog::builder().start().unwrap_err(),
        Error::NoRuntime
    ));
    let e = Watchdog::builder()
        .watch("m", h())
        .watch("m", h())
        .start()
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateRuntimeName { .. }), "{e:?}");
}

#[test]
fn a_dropped_runtime_stops_the_pings() {
    if role().as_deref() == Some("dropped") {
        let rt = common::multi_thread(1);
        let wd = Watchdog::builder()
            .probe_interval(PROBE)
            .watch("main", rt.handle().clone())
            .start()
            .expect("start");
        std::thread::sleep(Duration::from_millis(700));
        mark("drop");
        drop(rt);
        std::thread::sleep(Duration::from_millis(900));
        let st = wd.status();
        assert_eq!(st.runtime("main").unwrap().state, LoopState::Gone, "{st:?}");
        assert!(!st.healthy);
        mark("done");
        wd.shutdown();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "a_dropped_runtime_stops_the_pings",
        "dropped",
        &[("WATCHDOG_USEC", W_USEC.to_string())],
    );
    assert_child_ok(&out);
    let dropped = marker_at(&d, "drop");
    let done = marker_at(&d, "done");
    let p = pings(&d);
    assert!(
        p.iter().any(|t| *t < dropped),
        "pings before the drop: {p:?}"
    );
    let late: Vec<_> = p
        .iter()
        .filter(|t| **t > dropped + PROBE * 3 && **t < done)
        .collect();
    assert!(
        late.is_empty(),
        "pings after the runtime was dropped: {late:?}"
    );
    let gone: Vec<_> = d
        .iter()
        .filter(|g| g.status().is_some_and(|s| s.contains("is gone")))
        .collect();
    assert!(!gone.is_empty(), "STATUS= says the loop is gone: {d:#?}");
}

#[test]
fn a_panicking_callback_is_caught_and_the_monitor_lives_on() {
    let rt = common::current_thread();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(60))
        .probe_interval(Duration::from_millis(10))
        .watch("main", rt.handle().clone())
        .on_stall(|e| panic!("user callback bug on {e:?}"))
        .start()
        .expect("start");
    for _ in 0..2 {
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            block_for(Duration::from_millis(200));
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
    }
    let st = wd.status();
    assert_eq!(st.runtime("main").unwrap().stalls, 2, "{st:?}");
    assert_eq!(st.callback_panics, 4, "two starts and two ends: {st:?}");
    assert!(st.healthy);
    wd.shutdown();
}
