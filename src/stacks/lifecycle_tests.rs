//! A sampler's life: nothing loaded at start, captures within their
//! budget, the DWARF pass after a capture, and `release`.

use std::time::{Duration, Instant};

use super::config::CaptureConfig;
use super::tests::{
    blocked_here_for_test, names, position, sampler, sleep_here_for_test, thread,
    wait_until_signal_blocked, TestThread,
};
use super::*;

#[test]
fn a_new_sampler_loads_nothing() {
    let started = Instant::now();
    let sampler = sampler();
    let took = started.elapsed();
    // Generous: the target (<= 5 ms for start()) is measured in
    // benches/capture.rs; this checks that nothing is read up front.
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        !sampler.state.lock().loaded(),
        "modules read before any capture"
    );
    let me = current_tid();
    let _ = sampler.capture(&[me]);
    assert!(
        sampler.state.lock().loaded(),
        "the first capture reads them"
    );
}

#[test]
fn a_capture_stops_signalling_when_its_budget_is_used_up() {
    // Threads that block the signal, with the /proc precheck off: each one
    // would keep a capture waiting for the whole per-thread timeout (1 s).
    let blocked: Vec<TestThread> = (0..5)
        .map(|_| TestThread::spawn("lw-budget", blocked_here_for_test))
        .collect();
    for t in &blocked {
        wait_until_signal_blocked(t.tid);
    }
    let sampler = sampler();
    let tids: Vec<i32> = blocked.iter().map(|t| t.tid).collect();
    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let capture = sampler
        .state
        .lock()
        .capture(&sampler.config, &tids, budget, false);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "a 300 ms budget took {took:?} (one thread alone would take 1 s)"
    );
    let first = thread(&capture, tids[0]);
    assert_eq!(first.not_captured, Some(NotCaptured::NoAnswer), "{first:?}");
    assert_eq!(first.outcome, CaptureOutcome::Unresponsive);
    for tid in &tids[1..] {
        let t = thread(&capture, *tid);
        assert_eq!(t.not_captured, Some(NotCaptured::BudgetUsedUp), "{t:?}");
        assert_eq!(t.outcome, CaptureOutcome::Skipped);
        assert!(t.facts.is_some(), "its /proc facts are still read: {t:?}");
    }
    // With the precheck, none is signalled and the reason says why.
    let capture = sampler.capture_within(&tids, budget);
    for tid in &tids {
        let t = thread(&capture, *tid);
        assert!(
            matches!(
                t.not_captured,
                Some(NotCaptured::SignalBlocked | NotCaptured::SignalPending)
            ),
            "{t:?}"
        );
    }
    let json = serde_json::to_string(&capture).unwrap();
    assert!(
        json.contains("\"not_captured\":\"signal-pending\"")
            || json.contains("\"not_captured\":\"signal-blocked\""),
        "{json}"
    );
    drop(blocked);
}

#[test]
fn symbolize_adds_files_and_lines_and_release_forgets_names() {
    let sampler = sampler();
    let sleeper = TestThread::spawn("lw-symbolize", sleep_here_for_test);
    let mut capture = sampler.capture(&[sleeper.tid]);
    let sleeper_tid = sleeper.tid;
    sleeper.join();
    let t = thread(&capture, sleeper_tid).clone();
    assert_eq!(t.outcome, CaptureOutcome::Captured, "{t:?}");
    // The capture names frames from symbol tables only, and every frame of
    // a known module carries its build id and offset.
    let own = position(&t, "sleep_here_for_test").unwrap_or_else(|| panic!("{:#?}", names(&t)));
    assert_eq!(t.frames[own].symbols, SymbolSource::SymbolTable);
    assert!(t.frames.iter().all(|f| f.file.is_none()), "{:#?}", t.frames);
    for f in t.frames.iter().filter(|f| f.module.is_some()) {
        assert!(f.offset.is_some(), "{f:?}");
        assert!(f.build_id.is_some(), "{f:?}");
    }
    assert!(sampler.state.lock().cached_names() > 0);

    let done = sampler.symbolize(&mut capture.threads, Duration::from_secs(10));
    assert!(!done.ran_out_of_time, "{done:?}");
    assert!(
        done.notes.iter().any(|n| n.contains("DWARF debug info")),
        "{done:?}"
    );
    let t = thread(&capture, sleeper_tid);
    let own = position(t, "sleep_here_for_test").unwrap();
    assert_eq!(t.frames[own].symbols, SymbolSource::DebugInfo);
    assert!(t.frames[own]
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("stacks/tests.rs")));
    // libc keeps its symbol-table names: its DWARF is never read.
    let libc_frame = t
        .frames
        .iter()
        .find(|f| f.module.as_deref().is_some_and(|m| m.starts_with("libc")))
        .expect("a libc frame");
    assert_eq!(
        libc_frame.symbols,
        SymbolSource::SymbolTable,
        "{libc_frame:?}"
    );

    sampler.release();
    assert_eq!(sampler.state.lock().cached_names(), 0);
}

#[test]
fn threads_are_not_signalled_once_the_application_replaced_the_handler() {
    extern "C" fn app_handler(_: libc::c_int) {}
    // A signal no other test uses: its handler stays replaced afterwards.
    let signal = libc::SIGRTMIN() + 9;
    let sampler = StackSampler::new(CaptureConfig {
        signal,
        ..CaptureConfig::default()
    })
    .expect("sampler");
    let sleeper = TestThread::spawn("lw-replaced", sleep_here_for_test);
    // SAFETY: installs a trivial, async-signal-safe handler for a signal
    // only this test uses; nothing sends it (loopwatch must not, now).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = app_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }
    let capture = sampler.capture(&[sleeper.tid, current_tid()]);
    let t = thread(&capture, sleeper.tid);
    assert_eq!(t.not_captured, Some(NotCaptured::HandlerReplaced), "{t:?}");
    assert_eq!(t.outcome, CaptureOutcome::Skipped);
    assert!(t.facts.is_some(), "{t:?}");
    assert_eq!(
        thread(&capture, current_tid()).outcome,
        CaptureOutcome::Monitor
    );
    sleeper.join();
}
