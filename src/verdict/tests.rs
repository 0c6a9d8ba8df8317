//! Verdicts on constructed stacks: a dependency called from own code,
//! blocking inside an async fn, a saturated loop, a stripped binary, and
//! the runtime's idle and park states.

use std::collections::HashMap;
use std::time::Duration;

use super::fixtures::*;
use super::*;
use crate::origin::OwnCode;
use crate::stacks::{Frame, Origin};

fn own() -> OwnCode {
    OwnCode::new(&[], Some("myapp"))
}

/// Evidence with the loop thread on CPU for the whole gap.
fn busy(first: Vec<ThreadStack>, second: Option<Vec<ThreadStack>>) -> Evidence<'static> {
    let first: &'static [ThreadStack] = Box::leak(first.into_boxed_slice());
    let second: Option<&'static [ThreadStack]> = second.map(|s| &*Box::leak(s.into_boxed_slice()));
    Evidence {
        first,
        second,
        cpu_used: HashMap::from([(LOOP, Duration::from_millis(990))]),
        sample_gap: Duration::from_secs(1),
        loop_tids: vec![LOOP],
        lag: Duration::from_secs(1),
        own: own(),
        max_stack_bytes: Some(128 * 1024),
        ..Evidence::default()
    }
}

fn running(frames: Vec<Frame>) -> ThreadStack {
    thread(LOOP, facts(LOOP, 'R', None, Duration::from_secs(3)), frames)
}

/// The loop thread asleep in `syscall` (state `S`, no CPU time).
fn asleep(syscall: &str, frames: Vec<Frame>) -> ThreadStack {
    thread(
        LOOP,
        facts(LOOP, 'S', Some(syscall), Duration::ZERO),
        frames,
    )
}

/// Evidence with the loop thread off CPU for the whole gap.
fn off_cpu(first: Vec<ThreadStack>, second: Option<Vec<ThreadStack>>) -> Evidence<'static> {
    Evidence {
        cpu_used: HashMap::from([(LOOP, Duration::ZERO)]),
        ..busy(first, second)
    }
}

fn serde_frames(innermost: Vec<Frame>) -> Vec<Frame> {
    let serde_json = |f: &str| registry("serde_json-1.0.140", f);
    let mut frames = innermost;
    frames.extend([
        dwarf("serde_json::de::from_str<myapp::catalog::Catalog<alloc::string::String, alloc::vec::Vec<myapp::catalog::Item>>>", &serde_json("de.rs"), 0x5100),
        dwarf("myapp::import_catalog", "/srv/myapp/src/import.rs", 0x6042),
        inlined("myapp::handle::{async_fn#0}", "/srv/myapp/src/handler.rs", 0x6100),
        dwarf("myapp::handle::{{closure}}", "/srv/myapp/src/handler.rs", 0x6100),
    ]);
    on_loop(frames)
}

#[test]
fn a_dependency_churning_under_one_own_call_is_cpu_bound_in_that_call() {
    let serde_json = |f: &str| registry("serde_json-1.0.140", f);
    let first = running(serde_frames(vec![dwarf(
        "serde_json::de::Deserializer<R>::parse_whitespace",
        &serde_json("de.rs"),
        0x5010,
    )]));
    // The second capture finds it in other library functions.
    let second = running(serde_frames(vec![
        dwarf(
            "indexmap::map::IndexMap<K,V,S>::insert_full",
            &registry("indexmap-2.9.0", "map.rs"),
            0x9010,
        ),
        dwarf(
            "serde_json::de::Deserializer<R>::parse_object",
            &serde_json("de.rs"),
            0x5200,
        ),
    ]));
    let e = busy(vec![first], Some(vec![second]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
    let c = c.expect("a culprit");
    assert_eq!(c.function, "myapp::import_catalog");
    assert_eq!(c.file.as_deref(), Some("/srv/myapp/src/import.rs"));
    assert!(c.line.is_some());
    let stuck_in = c.stuck_in.expect("stuck in a dependency");
    assert_eq!(
        stuck_in.function.as_deref(),
        Some("serde_json::de::Deserializer<R>::parse_whitespace")
    );
    assert_eq!(stuck_in.origin, Some(Origin::Dependency));
    assert!(
        v.summary.contains("stuck in serde_json::de::Deserializer<R>::parse_whitespace, called from myapp::import_catalog"),
        "{}",
        v.summary
    );
    // Own frames only, innermost first, closures folded in the function name.
    let own_names: Vec<_> = c
        .frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    assert_eq!(
        own_names,
        [
            "myapp::import_catalog",
            "myapp::handle::{async_fn#0}",
            "myapp::handle::{{closure}}"
        ]
    );
    assert!(c.frames.iter().all(|f| f.origin == Some(Origin::Own)));
    let evidence = v.evidence.join("\n");
    assert!(
        evidence.contains("entered through serde_json::de::from_str"),
        "{evidence}"
    );
    assert!(
        evidence.contains("still inside myapp::import_catalog"),
        "{evidence}"
    );
}

#[test]
fn leaving_the_own_call_between_looks_is_overload_naming_the_shares() {
    let a = running(on_loop(vec![dwarf(
        "myapp::render_page",
        "/srv/myapp/src/render.rs",
        0x6010,
    )]));
    let b = running(on_loop(vec![
        dwarf("myapp::compress", "/srv/myapp/src/zip.rs", 0x7010),
        dwarf("myapp::send_reply", "/srv/myapp/src/reply.rs", 0x7110),
    ]));
    let e = busy(vec![a.clone()], Some(vec![b.clone()]));
    let samples = [
        LoopSample {
            at: 1,
            stack: b.clone(),
        },
        LoopSample {
            at: 2,
            stack: a.clone(),
        },
    ];
    let e = Evidence {
        samples: &samples,
        ..e
    };
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::Overload, "{v:#?}");
    assert_eq!(c.expect("last seen in").function, "myapp::render_page");
    let evidence = v.evidence.join("\n");
    assert!(evidence.contains("2 of 3 later looks"), "{evidence}");
    assert!(
        evidence.contains(
            "where the 4 looks found it: myapp::compress 2 of 4, myapp::render_page 2 of 4"
        ),
        "{evidence}"
    );
}

#[test]
fn a_blocking_call_in_an_async_fn_names_the_async_fn() {
    let frames = on_loop(vec![
        libc("clock_nanosleep", 0x3010),
        dwarf(
            "std::thread::sleep",
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/std/src/thread/functions.rs",
            0x4010,
        ),
        inlined(
            "myapp::fetch_prices::{async_fn#0}",
            "/srv/myapp/src/prices.rs",
            0x6010,
        ),
        dwarf(
            "myapp::serve::{{closure}}::{{closure}}",
            "/srv/myapp/src/main.rs",
            0x6010,
        ),
    ]);
    let t = asleep("clock_nanosleep", frames);
    let e = off_cpu(vec![t.clone()], Some(vec![t]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::BlockedSyscall, "{v:#?}");
    let c = c.unwrap();
    assert_eq!(c.function, "myapp::fetch_prices");
    assert_eq!(c.file.as_deref(), Some("/srv/myapp/src/prices.rs"));
    assert!(c.line.is_some());
    assert_eq!(
        c.stuck_in.and_then(|f| f.function).as_deref(),
        Some("std::thread::sleep"),
        "the call the culprit made"
    );
    assert!(
        v.summary
            .contains("blocked in clock_nanosleep called from myapp::fetch_prices"),
        "{}",
        v.summary
    );
}

#[test]
fn many_polls_during_the_stall_are_overload_even_with_identical_stacks() {
    let t = running(on_loop(vec![dwarf(
        "myapp::score_item",
        "/srv/myapp/src/score.rs",
        0x6010,
    )]));
    let e = Evidence {
        polls_during_stall: Some(48),
        ..busy(vec![t.clone()], Some(vec![t.clone()]))
    };
    let (v, _) = decide(&e);
    assert_eq!(v.kind, VerdictKind::Overload, "{v:#?}");
    let evidence = v.evidence.join("\n");
    assert!(evidence.contains("48 completed poll(s)"), "{evidence}");
    assert!(evidence.contains("myapp::score_item 2 of 2"), "{evidence}");
    // One poll: cpu-bound even from a single look.
    let e = Evidence {
        polls_during_stall: Some(0),
        ..busy(vec![t.clone()], None)
    };
    assert_eq!(decide(&e).0.kind, VerdictKind::CpuBound);
}

#[test]
fn one_look_is_never_cpu_bound_but_an_extra_sample_in_the_same_call_is() {
    let t = running(on_loop(vec![dwarf(
        "myapp::score_item",
        "/srv/myapp/src/score.rs",
        0x6010,
    )]));
    let e = busy(vec![t.clone()], None);
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::Unknown, "{v:#?}");
    assert_eq!(
        c.unwrap().function,
        "myapp::score_item",
        "the culprit is still named"
    );
    assert!(v.evidence.join("\n").contains("only one look"), "{v:#?}");
    // The spinning frame's address moves; its callers do not.
    let mut later = t.clone();
    later.frames[0].ip = 0x6020;
    let samples = [LoopSample {
        at: 5,
        stack: later,
    }];
    let e = Evidence {
        samples: &samples,
        ..busy(vec![t], None)
    };
    let (v, _) = decide(&e);
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
}

#[test]
fn a_stripped_binary_on_cpu_at_the_same_addresses_is_cpu_bound_with_a_note() {
    let stack = |top: u64| {
        running(vec![
            bare(top),
            bare(0x6200),
            bare(0x6300),
            bare(0xa000),
            bare(0xa100),
            libc("__libc_start_call_main", 0xac00),
        ])
    };
    let e = busy(vec![stack(0x6010)], Some(vec![stack(0x6044)]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
    assert!(c.is_none(), "nothing can be named");
    assert!(v.summary.contains("no symbols"), "{}", v.summary);
    let evidence = v.evidence.join("\n");
    assert!(evidence.contains("myapp+0x5010"), "{evidence}");
    assert!(
        evidence.contains("symbols are missing: 5 of 6 frames"),
        "{evidence}"
    );
    assert!(evidence.contains("loopwatch symbolize"), "{evidence}");
    assert!(evidence.contains("line-tables-only"), "{evidence}");
    // Inner frames changed: without names one poll whose inner calls change
    // cannot be told from many polls, so neither is claimed.
    let mut moved = stack(0x6010);
    moved.frames[1].ip = 0x7200;
    let e = busy(vec![stack(0x6010)], Some(vec![moved.clone()]));
    let (v, _) = decide(&e);
    assert_eq!(v.kind, VerdictKind::Unknown, "{v:#?}");
    assert!(
        v.evidence
            .join("\n")
            .contains("share only their outer 4 of 6 frames"),
        "{v:#?}"
    );
    // The poll hooks settle it either way.
    let e = Evidence {
        polls_during_stall: Some(30),
        ..busy(vec![stack(0x6010)], Some(vec![moved.clone()]))
    };
    assert_eq!(decide(&e).0.kind, VerdictKind::Overload);
    let e = Evidence {
        polls_during_stall: Some(0),
        ..busy(vec![stack(0x6010)], Some(vec![moved]))
    };
    assert_eq!(decide(&e).0.kind, VerdictKind::CpuBound);
}

#[test]
fn a_stripped_binary_asleep_in_a_system_call_is_blocked() {
    let t = asleep(
        "clock_nanosleep",
        vec![
            libc("clock_nanosleep", 0x3010),
            bare(0x6200),
            bare(0x6300),
            bare(0xa000),
        ],
    );
    let e = off_cpu(vec![t.clone()], Some(vec![t]));
    let (v, _) = decide(&e);
    assert_eq!(v.kind, VerdictKind::BlockedSyscall, "{v:#?}");
    assert_eq!(
        v.summary,
        "the event loop thread is blocked in clock_nanosleep (no symbols to name the caller)"
    );
}

#[test]
fn symbol_table_names_decide_by_crate_and_say_what_is_missing() {
    let frames = vec![
        sym("hashbrown::raw::RawTable<T,A>::reserve_rehash", 0x5010),
        sym("myapp::index::rebuild", 0x6010),
        sym("tokio::runtime::task::raw::poll", 0xa200),
        sym("myapp::main", 0xa700),
        sym("std::rt::lang_start_internal", 0xaa00),
    ];
    let e = busy(vec![running(frames.clone())], Some(vec![running(frames)]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
    let c = c.unwrap();
    assert_eq!(c.function, "myapp::index::rebuild");
    assert_eq!(c.file, None);
    assert!(
        v.evidence.join("\n").contains("symbol table only"),
        "{v:#?}"
    );
    // Before a DWARF pass that will name files and lines, no such advice.
    let frames = e.first[0].frames.clone();
    let pending = Evidence {
        dwarf_pending: true,
        ..busy(vec![running(frames.clone())], Some(vec![running(frames)]))
    };
    let (v, _) = decide(&pending);
    assert!(
        !v.evidence.join("\n").contains("symbol table only"),
        "{v:#?}"
    );
}

#[test]
fn an_idle_loop_in_the_runtimes_event_wait_is_not_blamed_on_main() {
    let tokio = |f: &str| registry("tokio-1.54.1", f);
    let mut frames = vec![
        libc("epoll_wait", 0x3010),
        dwarf(
            "mio::poll::Poll::poll",
            &registry("mio-1.0.4", "poll.rs"),
            0x3100,
        ),
        dwarf(
            "tokio::runtime::io::driver::Driver::turn",
            &tokio("runtime/io/driver.rs"),
            0x3200,
        ),
        dwarf(
            "tokio::runtime::scheduler::current_thread::Context::park",
            &tokio("runtime/scheduler/current_thread/mod.rs"),
            0x3300,
        ),
    ];
    frames.extend(block_on_and_main());
    let t = asleep("epoll_wait", frames);
    let e = off_cpu(vec![t], None);
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::Unknown, "{v:#?}");
    assert!(c.is_none());
}

#[test]
fn a_blocking_lock_of_tokio_inside_a_task_is_a_lock_wait_in_the_caller() {
    let tokio = |f: &str| registry("tokio-1.54.1", f);
    let frames = on_loop(vec![
        libc("syscall", 0x3010),
        dwarf(
            "tokio::runtime::park::Inner::park",
            &tokio("runtime/park.rs"),
            0x3100,
        ),
        dwarf(
            "tokio::runtime::park::CachedParkThread::block_on",
            &tokio("runtime/park.rs"),
            0x3200,
        ),
        dwarf(
            "tokio::sync::mutex::Mutex<T>::blocking_lock",
            &tokio("sync/mutex.rs"),
            0x3300,
        ),
        dwarf("myapp::update_cache", "/srv/myapp/src/cache.rs", 0x6010),
    ]);
    let t = asleep("futex", frames);
    let e = off_cpu(vec![t], None);
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::LockWait, "{v:#?}");
    let c = c.unwrap();
    assert_eq!(c.function, "myapp::update_cache");
    assert_eq!(
        c.stuck_in.and_then(|f| f.function).as_deref(),
        Some("tokio::sync::mutex::Mutex<T>::blocking_lock")
    );
}

#[test]
fn a_cut_stack_is_still_compared_from_the_culprit_outwards() {
    // Deep recursion: the copy ends at max_stack_bytes, at different depths.
    let rec = |depth: usize, top: u64| {
        let mut frames = vec![dwarf("myapp::walk", "/srv/myapp/src/tree.rs", top)];
        frames.extend((0..depth).map(|_| dwarf("myapp::walk", "/srv/myapp/src/tree.rs", 0x6200)));
        let mut t = running(frames);
        t.stack_bytes = 128 * 1024;
        t
    };
    let e = busy(vec![rec(300, 0x6010)], Some(vec![rec(280, 0x6030)]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
    assert_eq!(c.unwrap().function, "myapp::walk");
}

#[test]
fn the_users_crates_are_own_code() {
    // A workspace library published to a private registry.
    let frames = on_loop(vec![
        dwarf(
            "pricing::recompute",
            &registry("pricing-3.2.0", "lib.rs"),
            0x5010,
        ),
        dwarf("myapp::tick", "/srv/myapp/src/tick.rs", 0x6010),
    ]);
    let e = busy(
        vec![running(frames.clone())],
        Some(vec![running(frames.clone())]),
    );
    assert_eq!(decide(&e).1.unwrap().function, "myapp::tick");
    let e = Evidence {
        own: OwnCode::new(&["pricing".into()], Some("myapp")),
        ..busy(vec![running(frames.clone())], Some(vec![running(frames)]))
    };
    assert_eq!(decide(&e).1.unwrap().function, "pricing::recompute");
}

#[test]
fn a_paused_process_is_never_blamed_on_code() {
    let e = Evidence {
        lag: Duration::from_secs(2),
        monitor_gap: Duration::from_millis(1900),
        ..Evidence::default()
    };
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::ProcessPaused);
    assert!(c.is_none());
}

#[test]
fn code_in_a_crate_not_known_as_own_is_a_dependency_and_the_report_says_how_to_fix_it() {
    // Symbol-table names only, and the binary is named unlike its crates.
    let frames = vec![
        sym("catalog_core::rebuild_index", 0x6010),
        sym("tokio::runtime::task::raw::poll", 0xa200),
    ];
    let e = Evidence {
        own: OwnCode::new(&[], Some("server")),
        ..busy(vec![running(frames.clone())], Some(vec![running(frames)]))
    };
    let (v, c) = decide(&e);
    assert!(c.is_none(), "no own code is known");
    assert_eq!(v.kind, VerdictKind::CpuBound, "{v:#?}");
    assert!(
        v.summary
            .contains("catalog_core::rebuild_index, a dependency"),
        "{}",
        v.summary
    );
    let evidence = v.evidence.join("\n");
    assert!(evidence.contains("Builder::own_crates"), "{evidence}");
    assert!(
        evidence.contains("server (the executable's name)"),
        "{evidence}"
    );
}

#[test]
fn bare_inlined_names_of_line_tables_builds_are_placed_by_their_paths() {
    // debug = "line-tables-only": inlined frames carry bare names; the
    // symbolizer could not qualify this async fn body.
    let tokio = |f: &str| registry("tokio-1.54.1", f);
    let frames = vec![
        libc("read", 0x3010),
        dwarf(
            "std::io::Read::read",
            "/rustc/1159e78c4747b02ef996e55082b704c09b970588/library/std/src/io/mod.rs",
            0x4010,
        ),
        inlined("{async_fn#0}", "/srv/myapp/src/prices.rs", 0x6010),
        inlined("poll<T,S>", &tokio("runtime/task/core.rs"), 0x6010),
        dwarf(
            "tokio::runtime::task::raw::poll",
            &tokio("runtime/task/raw.rs"),
            0x6010,
        ),
        dwarf("myapp::main", "/srv/myapp/src/main.rs", 0xa700),
    ];
    let t = asleep("read", frames);
    let e = off_cpu(vec![t.clone()], Some(vec![t]));
    let (v, c) = decide(&e);
    assert_eq!(v.kind, VerdictKind::BlockedSyscall, "{v:#?}");
    let c = c.unwrap();
    assert_eq!(c.function, "{async_fn#0}", "a bare name stays as it is");
    assert_eq!(c.file.as_deref(), Some("/srv/myapp/src/prices.rs"));
    assert_eq!(
        c.frames.len(),
        1,
        "main is outside the poll: {:?}",
        c.frames
    );
}
