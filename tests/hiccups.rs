//! Hiccups: blocks above the warn threshold are recorded with their
//! culprit and duration, rate-limited, never mistaken for cooperative work,
//! and a hiccup that grows into a stall becomes that stall's first look.

mod common;

use std::time::{Duration, Instant};

use common::{assert_child_ok, mark, role, NotifyListener};
use loopwatch::{HiccupCause, Watchdog};

/// A named function that blocks the loop on CPU for `d`.
#[inline(never)]
fn render_page_for_test(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    std::hint::black_box(x);
}

/// A watchdog builder for `rt` (as `main`) that records blocks above 50 ms
/// as hiccups and calls a block of a second a stall.
fn warned_at_50_ms(rt: &tokio::runtime::Runtime) -> loopwatch::Builder {
    Watchdog::builder()
        .stall_threshold(Duration::from_secs(1))
        .warn_threshold(Duration::from_millis(50))
        .watch("main", rt.handle().clone())
}

#[test]
fn blocks_of_150_ms_are_recorded_with_culprit_and_duration_and_pings_go_on() {
    if role().as_deref() == Some("blocks") {
        let rt = common::current_thread();
        let wd = warned_at_50_ms(&rt).no_report_files().start().unwrap();
        wd.ready().unwrap();
        rt.block_on(async {
            mark("start");
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(850)).await;
                render_page_for_test(Duration::from_millis(150));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            mark("end");
        });
        let st = wd.status();
        let hiccups = wd.hiccups();
        wd.shutdown();
        assert_eq!(st.runtime("main").unwrap().stalls, 0, "no stall: {st:?}");
        let named: Vec<_> = hiccups
            .iter()
            .filter(|h| {
                h.culprit
                    .as_deref()
                    .is_some_and(|c| c.ends_with("render_page_for_test"))
            })
            .collect();
        assert!(
            named.len() >= 9,
            "at least 90 % of the 10 blocks named: {hiccups:#?}"
        );
        for h in &named {
            assert!(
                (0.150 - 0.1..=0.150 + 0.1).contains(&h.duration_seconds),
                "duration within one probe interval (100 ms) of 150 ms: {h:?}"
            );
            assert_eq!(h.cause, HiccupCause::OnCpu, "{h:?}");
            assert!(h.caught_live && !h.stack.is_empty(), "{h:?}");
            assert!(!h.grew_into_stall);
        }
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "blocks_of_150_ms_are_recorded_with_culprit_and_duration_and_pings_go_on",
        "blocks",
        &[("WATCHDOG_USEC", "4000000".into())],
    );
    assert_child_ok(&out);
    let start = d.iter().find(|g| g.marker() == Some("start")).unwrap().at;
    let end = d.iter().find(|g| g.marker() == Some("end")).unwrap().at;
    let pings: Vec<_> = d
        .iter()
        .filter(|g| g.has("WATCHDOG=1") && g.at > start && g.at < end)
        .map(|g| g.at)
        .collect();
    // About 10 s at W/4 = 1 s: pings never stop.
    assert!(pings.len() >= 7, "pings went on: {pings:?}");
    for w in pings.windows(2) {
        assert!(
            w[1] - w[0] < Duration::from_secs(2),
            "no gap in pings: {pings:?}"
        );
    }
}

#[test]
fn fifty_blocks_a_second_are_all_counted_but_captures_are_rate_limited() {
    let rt = common::current_thread();
    let registry = prometheus::Registry::new();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_secs(1))
        .warn_threshold(Duration::from_millis(5))
        .probe_interval(Duration::from_millis(2))
        .no_report_files()
        .keep_hiccups(1000)
        .registry(registry.clone())
        .watch("main", rt.handle().clone())
        .start()
        .unwrap();
    let blocks = 100;
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..blocks {
            render_page_for_test(Duration::from_millis(12));
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let hiccups = wd.hiccups();
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    wd.shutdown();
    let live = hiccups.iter().filter(|h| h.caught_live).count();
    let total = value(&text, "loopwatch_hiccups_total{runtime=\"main\"}");
    let skipped = value(
        &text,
        "loopwatch_hiccup_captures_skipped_total{runtime=\"main\"}",
    );
    // Two seconds of blocks: one capture per second on average, bursts of
    // two.
    assert!(live <= 4, "{live} live captures in about 2 s");
    // Every block seen is counted, captured or not. A block is seen when a
    // probe wake is outstanding as it starts: nearly all of them on a quiet
    // machine, fewer when the monitor thread itself waits for a CPU.
    assert_eq!(
        total as usize,
        hiccups.len(),
        "every hiccup counted\n{text}"
    );
    assert!(
        total >= f64::from(blocks) * 0.3,
        "most blocks seen: {total} of {blocks}\n{text}"
    );
    assert!(
        skipped >= 1.0,
        "captures beyond the limit are counted as skipped: {skipped} of {total}"
    );
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn cooperative_polls_of_a_few_ms_are_no_hiccup() {
    let rt = common::current_thread();
    let wd = warned_at_50_ms(&rt).no_report_files().start().unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..150 {
                        render_page_for_test(Duration::from_millis(2));
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let hiccups = wd.hiccups();
    wd.shutdown();
    assert!(hiccups.is_empty(), "{hiccups:#?}");
}

#[test]
fn a_hiccup_that_grows_into_a_stall_is_its_first_look() {
    let rt = common::current_thread();
    let dir = tempfile::tempdir().unwrap();
    let wd = warned_at_50_ms(&rt).report_dir(dir.path()).start().unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        render_page_for_test(Duration::from_millis(2500));
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let r = common::wait_for_report(dir.path(), Duration::from_secs(10), |r| {
        r["recovered"] == true
    })
    .expect("a recovered report");
    let st = wd.status();
    wd.shutdown();
    assert_eq!(st.runtime("main").unwrap().stalls, 1, "{st:?}");
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 2, "one report (json + txt)");
    let grown: Vec<_> = r["hiccups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["grew_into_stall"] == true)
        .collect();
    assert_eq!(grown.len(), 1, "{}", r["hiccups"]);
    assert!(
        grown[0]["culprit"]
            .as_str()
            .is_some_and(|c| c.ends_with("render_page_for_test")),
        "{}",
        grown[0]
    );
    let first = &r["loop_looks"][0];
    assert_eq!(
        first["reason"], "hiccup",
        "the stall's first look is the hiccup's: {}",
        r["loop_looks"]
    );
    assert!(
        first["culprit"]
            .as_str()
            .is_some_and(|c| c.ends_with("render_page_for_test")),
        "{first}"
    );
    assert!(
        r["culprit"]["function"]
            .as_str()
            .is_some_and(|c| c.ends_with("render_page_for_test")),
        "{}",
        r["culprit"]
    );
}

#[test]
fn the_exporter_serves_the_hiccups_as_json() {
    let rt = common::current_thread();
    let wd = warned_at_50_ms(&rt)
        .no_report_files()
        .serve_metrics("127.0.0.1:0")
        .start()
        .unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            render_page_for_test(Duration::from_millis(200));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let addr = wd.metrics_addr().unwrap().to_string();
    let (code, body) = common::http_get(&addr, "/hiccups", Duration::from_secs(2)).unwrap();
    let (_, metrics) = common::http_get(&addr, "/metrics", Duration::from_secs(2)).unwrap();
    wd.shutdown();
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let hiccups = doc["hiccups"].as_array().unwrap();
    assert!(hiccups.len() >= 2, "{body}");
    assert_eq!(hiccups[0]["runtime"], "main");
    let top = &doc["top_blockers"][0];
    assert_eq!(top["runtime"], "main");
    assert!(
        top["blockers"][0]["culprit"]
            .as_str()
            .is_some_and(|c| c.ends_with("render_page_for_test")),
        "{body}"
    );
    assert!(
        metrics.contains("loopwatch_hiccup_seconds_total{culprit=\"")
            && metrics.contains("render_page_for_test"),
        "{metrics}"
    );
    assert!(
        metrics.contains("loopwatch_exporter_connections_total{result=\"accepted\"}"),
        "{metrics}"
    );
}
