//! The text forms of a report built from constructed stacks: widths, the
//! compact form's length, what the first screen says.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::origin::OwnCode;
use crate::procfs::ProcessFacts;
use crate::report::{group_threads, CaptureInfo, ReportTimes, Thresholds, REPORT_FORMAT_VERSION};
use crate::stacks::{Frame, ThreadStack};
use crate::verdict::fixtures::*;
use crate::verdict::{decide, Evidence};

const LONG: &str = "<hyper::server::conn::http1::Connection<tokio::runtime::task::core::Core<hyper::proto::h1::dispatch::Dispatcher<hyper::proto::h1::dispatch::Server<tower::util::service_fn::ServiceFn<myapp::routes::{closure#0}>, hyper::body::incoming::Incoming>, http_body_util::combinators::box_body::UnsyncBoxBody<bytes::bytes::Bytes, alloc::boxed::Box<dyn core::error::Error + core::marker::Sync + core::marker::Send>>, hyper_util::rt::tokio::TokioIo<tokio::net::tcp::stream::TcpStream>, hyper::proto::h1::role::Server>, alloc::sync::Arc<tokio::runtime::scheduler::current_thread::Handle>>, F> as core::future::future::Future>::poll";

/// A stack deep in a dependency under own code, with long generic names,
/// 30 runtime frames and a cut.
fn stack(innermost: u64) -> ThreadStack {
    let serde_json = |f: &str| registry("serde_json-1.0.140", f);
    let mut frames = vec![
        dwarf(
            &format!(
                "serde_json::de::Deserializer<serde_json::read::StrRead<{}>>::parse_any",
                "x".repeat(300)
            ),
            &serde_json("de.rs"),
            innermost,
        ),
        dwarf(
            "serde_json::de::from_str<myapp::catalog::Catalog>",
            &serde_json("de.rs"),
            0x5100,
        ),
        dwarf("myapp::import_catalog", "/srv/myapp/src/import.rs", 0x6042),
        inlined(
            "myapp::handle::{async_fn#0}",
            "/srv/myapp/src/handler.rs",
            0x6100,
        ),
        dwarf(
            "myapp::handle::{{closure}}",
            "/srv/myapp/src/handler.rs",
            0x6100,
        ),
        dwarf(
            LONG,
            &registry("hyper-1.6.0", "server/conn/http1.rs"),
            0x6200,
        ),
    ];
    for i in 0..30 {
        frames.push(dwarf(
            &format!("std::panicking::try::do_call<{LONG}>"),
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/std/src/panicking.rs",
            0x7000 + i,
        ));
    }
    frames.extend(task_poll_and_main());
    let mut t = thread(LOOP, facts(LOOP, 'R', None, Duration::from_secs(2)), frames);
    t.stack_bytes = 128 * 1024;
    t
}

fn report() -> StallReport {
    let first = vec![
        stack(0x5010),
        thread(
            7,
            facts(7, 'S', Some("futex"), Duration::ZERO),
            vec![libc("syscall", 0x3000)],
        ),
    ];
    let second = vec![stack(0x5018)];
    let own = {
        let mut o = OwnCode::new(&[], Some("myapp"));
        o.learn(&first);
        o
    };
    let e = Evidence {
        first: &first,
        second: Some(&second),
        cpu_used: HashMap::from([(LOOP, Duration::from_millis(980))]),
        sample_gap: Duration::from_secs(1),
        loop_tids: vec![LOOP],
        lag: Duration::from_millis(1200),
        own: own.clone(),
        max_stack_bytes: Some(128 * 1024),
        ..Evidence::default()
    };
    let (verdict, culprit) = decide(&e);
    StallReport {
        id: "20261124T215722Z-main-4242-0001".into(),
        format_version: REPORT_FORMAT_VERSION,
        loopwatch_version: "0.1.0".into(),
        runtime: "main".into(),
        recovered: false,
        duration_seconds: None,
        stalled_for_seconds: 2.2,
        lag_at_detection_seconds: 1.2,
        times: ReportTimes {
            stall_start: "2026-11-24T21:57:21.246Z".into(),
            detected: "2026-11-24T21:57:22.250Z".into(),
            deadline: None,
            end: None,
            written: "2026-11-24T21:57:23.250Z".into(),
        },
        thresholds: Thresholds {
            stall_threshold_seconds: 1.0,
            probe_interval_seconds: 0.1,
            watchdog_seconds: None,
            deadline_margin_seconds: 0.1,
        },
        verdict,
        culprit,
        stuck_workers: Vec::new(),
        timeline: (0..300)
            .map(|i| crate::report::LagSample {
                at_seconds: -30.0 + i as f64 * 0.1,
                lag_seconds: (i % 7) as f64 * 0.001,
            })
            .collect(),
        captures: vec![CaptureInfo {
            reason: "detection".into(),
            at: "2026-11-24T21:57:22.251Z".into(),
            threads: 2,
            unresponsive: 0,
            signal_seconds: 0.0001,
            unwind_symbolize_seconds: 0.002,
        }],
        threads: group_threads(
            &first,
            Some(&second),
            &[LOOP],
            &HashMap::new(),
            &own,
            Some(128 * 1024),
        ),
        runtime_metrics: None,
        metrics: format!("loopwatch_x{{runtime=\"{}\"}} 1\n", "r".repeat(300)),
        process: ProcessFacts {
            pid: 4242,
            rss_bytes: 1 << 24,
            threads: 2,
            uptime: Duration::from_secs(60),
            build_id: Some("0123456789abcdef0123456789abcdef01234567".into()),
            executable: Some(format!("/opt/{}/bin/myapp", "long/".repeat(40))),
            host: None,
        },
        notes: vec!["a note ".repeat(40)],
        ..StallReport::blank()
    }
}

fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

fn widest_line(text: &str) -> &str {
    text.lines()
        .max_by_key(|l| l.chars().count())
        .unwrap_or_default()
}

#[test]
fn every_line_of_the_full_text_fits_160_columns() {
    let r = report();
    let text = r.to_text();
    assert!(
        widest(&text) <= 160,
        "a line is {} wide: {:?}\n{text}",
        widest(&text),
        widest_line(&text)
    );
    // Generic arguments are elided in text but kept in JSON.
    assert!(
        text.contains("Connection<…> as core::future::future::Future>::poll"),
        "{text}"
    );
    assert!(r
        .to_json()
        .contains("hyper::proto::h1::dispatch::Dispatcher<"));
}

#[test]
fn the_full_text_marks_own_code_folds_the_runtime_and_says_where_the_stack_was_cut() {
    let text = report().to_text();
    assert!(
        text.contains("culprit: myapp::import_catalog at src/import.rs:"),
        "{text}"
    );
    assert!(
        text.contains("stuck in (a dependency): serde_json::de::Deserializer<…>::parse_any at <cargo>/serde_json-1.0.140/src/de.rs:"),
        "{text}"
    );
    assert!(text.contains("paths relative to /srv/myapp"), "{text}");
    assert!(
        text.contains(">   2: myapp::import_catalog at src/import.rs:"),
        "{text}"
    );
    assert!(
        text.contains("… 37 frames of std and tokio (6–42)"),
        "{text}"
    );
    assert!(
        text.contains("… 7 frames of std, the C runtime and libc (44–50)"),
        "{text}"
    );
    assert!(
        text.contains("stack cut at 128 KiB (max_stack_bytes): the outer frames are missing"),
        "{text}"
    );
    // The loop thread's group: under 40 lines for 51 frames.
    let group = text
        .split("[event loop]")
        .nth(1)
        .and_then(|g| g.split("\n\n").next())
        .unwrap();
    assert!(group.lines().count() < 25, "{group}");
}

#[test]
fn the_compact_form_is_one_screen() {
    let r = report();
    let compact = r.to_compact_text();
    let lines = compact.lines().count();
    assert!(lines <= 25, "{lines} lines:\n{compact}");
    assert!(widest(&compact) <= 160, "{compact}");
    assert!(compact.contains("verdict: cpu-bound"), "{compact}");
    assert!(
        compact.contains("culprit: myapp::import_catalog at src/import.rs:"),
        "{compact}"
    );
    assert!(
        compact.contains("stuck in (a dependency): serde_json::de::"),
        "{compact}"
    );
    assert!(
        compact.contains(">   3: (inlined) myapp::handle::{async_fn#0}")
            || compact.contains(">   3: myapp::handle"),
        "{compact}"
    );
    assert!(
        compact.contains("full report: not written (no report directory"),
        "{compact}"
    );
    let failed = r.to_compact_text_for(Some(Path::new("/var/lib/app/loopwatch")));
    assert!(
        failed.contains("full report: could not be written to /var/lib/app/loopwatch"),
        "{failed}"
    );
    // The one-line summary names the dependency too.
    assert!(
        r.summary().contains(
            "culprit myapp::import_catalog (stuck in serde_json::de::Deserializer<…>::parse_any)"
        ),
        "{}",
        r.summary()
    );
}

#[test]
fn the_text_renders_the_same_from_the_json() {
    let r = report();
    let back: StallReport = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(back.to_text(), r.to_text());
    assert_eq!(back.to_compact_text(), r.to_compact_text());
}

#[test]
fn sparkline_scales_to_the_max_and_fits() {
    assert_eq!(sparkline(&[0.0, 1.0, 0.5]), "▁█▅");
    assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    assert!(sparkline(&vec![1.0; 1000]).chars().count() <= WIDTH - 4);
}

#[test]
fn a_frame_without_names_shows_module_and_offset() {
    let f = bare(0x6010);
    assert_eq!(super::super::layout::frame_name(&f), "myapp+0x5010");
    let none = Frame::default();
    assert_eq!(super::super::layout::frame_name(&none), "0x0");
}

#[test]
fn the_compact_form_stays_one_screen_at_its_longest() {
    let mut r = report();
    r.verdict.summary = "a very long summary ".repeat(60);
    r.verdict.evidence = (0..20)
        .map(|i| format!("evidence {i} {}", "x".repeat(400)))
        .collect();
    let own = r.threads[0].frames[2].clone();
    r.threads[0]
        .frames
        .splice(2..2, std::iter::repeat_n(own, 30));
    if let Some(c) = &mut r.culprit {
        c.frames = vec![c.frames[0].clone(); 8];
    }
    let compact = r.to_compact_text();
    assert!(
        compact.lines().count() <= 25,
        "{} lines:\n{compact}",
        compact.lines().count()
    );
    assert!(widest(&compact) <= 160, "{compact}");
    assert!(compact.contains("… 14 more"), "{compact}");
    assert!(
        compact.ends_with("StateDirectory= under systemd)\n"),
        "{compact}"
    );
}

#[test]
fn the_text_lists_the_hiccups_before_the_stall_and_the_top_blockers() {
    use crate::hiccups::{Blocker, Hiccup, HiccupCause};
    let hiccup = |i: usize, culprit: Option<String>, grew: bool| Hiccup {
        runtime: "main".into(),
        start: format!("2026-11-24T21:57:{:02}.{:03}Z", 10 + i, i),
        duration_seconds: 0.087,
        cause: HiccupCause::OnCpu,
        culprit,
        stack: Vec::new(),
        caught_live: true,
        grew_into_stall: grew,
    };
    let mut r = report();
    r.hiccups = (0..10)
        .map(|i| hiccup(i, Some(format!("myapp::render{i}")), false))
        .chain([hiccup(
            10,
            Some(format!("myapp::{}::f<T>", "deep".repeat(60))),
            true,
        )])
        .collect();
    r.top_blockers = vec![
        Blocker {
            culprit: "myapp::render3".into(),
            count: 54,
            seconds: 8.2,
        },
        Blocker {
            culprit: "unknown".into(),
            count: 3,
            seconds: 0.4,
        },
    ];
    let text = r.to_text();
    assert!(widest(&text) <= 160, "{:?}", widest_line(&text));
    assert!(
        text.contains("hiccups before the stall (11, last 8 shown, oldest first):"),
        "{text}"
    );
    assert!(
        !text.contains("myapp::render2\n"),
        "older ones left out: {text}"
    );
    assert!(
        text.contains("  21:57:17.007    87.0 ms  on CPU in myapp::render7\n"),
        "{text}"
    );
    assert!(
        text.contains("  21:57:20.010    87.0 ms  (grew into this stall) on CPU in myapp::deep"),
        "{text}"
    );
    assert!(
        text.contains("top blockers since start, by blocked time:"),
        "{text}"
    );
    assert!(
        text.contains("      54      8.2 s  myapp::render3"),
        "{text}"
    );
}

#[test]
fn a_long_executable_path_never_cuts_the_build_id() {
    let text = report().to_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("executable "))
        .unwrap_or_else(|| panic!("no executable line:\n{text}"));
    assert!(
        line.ends_with(", build id 0123456789abcdef0123456789abcdef01234567"),
        "{line}"
    );
    assert!(line.contains('…') && line.chars().count() <= 160, "{line}");
}
