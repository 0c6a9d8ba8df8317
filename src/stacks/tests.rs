//! Tests of stack capture against real threads of the test process.
//!
//! `cargo test` runs these concurrently with the rest of the crate's tests,
//! in one process: assertions look only at the threads a test spawned.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::MAX_PER_THREAD_TIMEOUT;
use super::*;
use crate::error::Error;

/// A thread that runs `body` until told to stop, and tells its tid.
pub(super) struct TestThread {
    pub(super) tid: i32,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TestThread {
    pub(super) fn spawn(name: &str, body: fn(&AtomicBool)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let handle = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    tid.store(current_tid(), Ordering::SeqCst);
                    body(&stop);
                })
                .expect("spawn test thread")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tid.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "test thread did not start");
            std::thread::yield_now();
        }
        Self {
            tid: tid.load(Ordering::SeqCst),
            stop,
            handle: Some(handle),
        }
    }

    pub(super) fn join(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("test thread panicked");
        }
    }
}

impl Drop for TestThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[inline(never)]
fn spin_here_for_test(stop: &AtomicBool) {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    std::hint::black_box(x);
}

#[inline(never)]
pub(super) fn sleep_here_for_test(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocks the default capture signal, then yields the CPU in a loop until
/// stopped (runnable, not asleep: a thread asleep in a system call would be
/// read without a signal); unblocks before returning so that a signal left
/// pending is delivered (and ignored by the handler) while the thread still
/// exists.
pub(super) fn blocked_here_for_test(stop: &AtomicBool) {
    let signal = CaptureConfig::default().signal;
    // SAFETY: a zeroed sigset_t is valid input for sigemptyset, which
    // initialises it; pthread_sigmask changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    // SAFETY: as above.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits (at most 5 s) until thread `tid` blocks the capture signal.
pub(super) fn wait_until_signal_blocked(tid: i32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        if precheck::signal_masks(&status, CaptureConfig::default().signal).0 {
            return;
        }
        assert!(Instant::now() < deadline, "signal never blocked");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A sampler with the longest timeout: a loaded CI machine may leave a
/// runnable thread off the CPU for more than the default 50 ms, and these
/// tests are about what is captured, not about scheduling latency.
pub(super) fn sampler() -> StackSampler {
    StackSampler::new(CaptureConfig {
        per_thread_timeout: MAX_PER_THREAD_TIMEOUT,
        ..CaptureConfig::default()
    })
    .expect("sampler")
}

pub(super) fn thread(capture: &Capture, tid: i32) -> &ThreadStack {
    capture
        .threads
        .iter()
        .find(|t| t.tid == tid)
        .unwrap_or_else(|| panic!("tid {tid} not in capture"))
}

pub(super) fn names(t: &ThreadStack) -> Vec<String> {
    t.frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip)))
        .collect()
}

pub(super) fn position(t: &ThreadStack, needle: &str) -> Option<usize> {
    t.frames
        .iter()
        .position(|f| f.function.as_deref().is_some_and(|n| n.contains(needle)))
}

#[test]
fn sampler_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<StackSampler>();
}

#[test]
fn spinning_thread_is_captured_with_file_and_line() {
    let sampler = sampler();
    let spinner = TestThread::spawn("lw-spinner", spin_here_for_test);
    let mut capture = sampler.capture(&[spinner.tid]);
    let spinner_tid = spinner.tid;
    spinner.join();
    // Files and lines come from the DWARF pass, after the capture.
    let done = sampler.symbolize(&mut capture.threads, Duration::from_secs(10));
    assert!(!done.ran_out_of_time, "{done:?}");
    let t = thread(&capture, spinner_tid).clone();

    assert_eq!(t.outcome, CaptureOutcome::Captured, "{t:?}");
    let regs = t.registers.expect("registers");
    assert!(t.stack_bytes > 0 && t.stack_bytes <= 128 * 1024);
    let i = position(&t, "spin_here_for_test").unwrap_or_else(|| panic!("{:#?}", names(&t)));
    let f = &t.frames[i];
    assert!(
        f.file
            .as_deref()
            .is_some_and(|p| p.ends_with("stacks/tests.rs")),
        "{f:?}"
    );
    assert!(f.line.is_some_and(|l| l > 0), "{f:?}");
    assert!(f.module.is_some(), "{f:?}");
    // No handler frames on top: the first frame is the interrupted
    // instruction (the ucontext's rip), inside the spin loop or a callee it
    // makes (black_box / atomic load in a debug build), not the handler or
    // the signal trampoline.
    assert_eq!(t.frames[0].ip, regs.ip);
    assert!(i <= 4, "spin frame is not near the top: {:#?}", names(&t));
    for f in &t.frames[..i] {
        let name = f.function.as_deref().unwrap_or("");
        assert!(
            !name.contains("stacks::sys")
                && !name.contains("restore_rt")
                && !name.contains("sigreturn"),
            "handler frame on top: {:#?}",
            names(&t)
        );
    }
    // The thread's entry closure is below it, and the unwinding reached the
    // root of the thread (glibc's start_thread / clone).
    assert!(
        t.frames[i + 1..].iter().any(|f| f
            .file
            .as_deref()
            .is_some_and(|p| p.ends_with("stacks/tests.rs"))),
        "{:#?}",
        names(&t)
    );
    assert!(
        position(&t, "start_thread").is_some_and(|j| j > i),
        "{:#?}",
        names(&t)
    );
}

/// Captures thread `tid` until `done` holds for its stack (at most 50
/// times, 3 ms apart: a thread that sleeps almost all the time can still
/// be caught in the microseconds between two sleeps); the last capture.
fn capture_until(
    sampler: &StackSampler,
    tid: i32,
    done: impl Fn(&ThreadStack) -> bool,
) -> ThreadStack {
    let mut last = None;
    for _ in 0..50 {
        let capture = sampler.capture(&[tid]);
        let t = thread(&capture, tid).clone();
        let finished = done(&t);
        last = Some(t);
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    last.expect("captured at least once")
}

#[test]
fn sleeping_thread_shows_libc_and_own_frames() {
    let sampler = sampler();
    let sleeper = TestThread::spawn("lw-sleeper", sleep_here_for_test);
    let t = capture_until(&sampler, sleeper.tid, |t| {
        let sleeping = t
            .facts
            .as_ref()
            .is_some_and(|f| f.state == 'S' && f.syscall.is_some());
        sleeping && position(t, "nanosleep").is_some()
    });
    sleeper.join();
    assert_eq!(t.outcome, CaptureOutcome::Captured, "{t:?}");
    let libc_frame = position(&t, "nanosleep").unwrap_or_else(|| panic!("{:#?}", names(&t)));
    let own = position(&t, "sleep_here_for_test").unwrap_or_else(|| panic!("{:#?}", names(&t)));
    assert!(libc_frame < own, "{:#?}", names(&t));
    assert!(
        t.frames[libc_frame]
            .module
            .as_deref()
            .is_some_and(|m| m.starts_with("libc")),
        "{:?}",
        t.frames[libc_frame]
    );
    assert!(!t.frames[libc_frame].is_application());
    let facts = t.facts.expect("facts");
    assert_eq!(facts.state, 'S', "{facts:?}");
    assert_eq!(facts.name, "lw-sleeper");
    let syscall = facts.syscall.expect("in a syscall").name.map(String::from);
    assert!(
        matches!(
            syscall.as_deref(),
            Some("clock_nanosleep") | Some("nanosleep")
        ),
        "{syscall:?}"
    );
    // Everything between the system call and our function is plumbing
    // (libc, std::thread::sleep).
    assert!(
        t.frames[..own].iter().all(|f| !f.is_application()),
        "{:#?}",
        &t.frames[..own]
    );
}

#[test]
fn a_sleeping_thread_whose_stack_needs_the_frame_pointer_is_signalled() {
    // /proc gives no frame pointer, and this test binary's frames (opt-level
    // 0) and the standard library's find their callers through it: a
    // guess could invent a caller, so a thread in ordinary sleep is
    // signalled instead, and its stack is whole.
    let sampler = sampler();
    let sleeper = TestThread::spawn("lw-asleep", sleep_here_for_test);
    let t = capture_until(&sampler, sleeper.tid, |t| {
        t.facts.as_ref().is_some_and(|f| f.state == 'S') && position(t, "nanosleep").is_some()
    });
    sleeper.join();
    assert_eq!(t.outcome, CaptureOutcome::Captured, "{t:?}");
    assert!(
        !t.read_asleep,
        "read asleep with a guessed frame pointer: {t:#?}"
    );
    assert!(t.registers.is_some_and(|r| r.bp != 0), "{t:?}");
    let own = position(&t, "sleep_here_for_test").unwrap_or_else(|| panic!("{:#?}", names(&t)));
    assert!(
        position(&t, "start_thread").is_some_and(|root| root > own),
        "{:#?}",
        names(&t)
    );
}

#[test]
fn thread_blocking_the_signal_is_unresponsive_and_others_still_captured() {
    let timeout = Duration::from_millis(300);
    let sampler = StackSampler::new(CaptureConfig {
        per_thread_timeout: timeout,
        ..CaptureConfig::default()
    })
    .unwrap();
    let blocked = TestThread::spawn("lw-blocked", blocked_here_for_test);
    let spinner = TestThread::spawn("lw-spinner2", spin_here_for_test);
    // Let the blocked thread block the signal (it does so first thing).
    wait_until_signal_blocked(blocked.tid);

    // With the /proc precheck: answered at once, without a signal.
    let started = Instant::now();
    let capture = sampler.capture(&[blocked.tid, spinner.tid]);
    let elapsed = started.elapsed();
    let b = thread(&capture, blocked.tid);
    assert_eq!(b.outcome, CaptureOutcome::Unresponsive, "{b:?}");
    assert!(b.detail.as_deref().unwrap().contains("blocks"), "{b:?}");
    assert_eq!(b.facts.as_ref().unwrap().name, "lw-blocked");
    assert!(b.frames.is_empty());
    let s = thread(&capture, spinner.tid);
    assert_eq!(s.outcome, CaptureOutcome::Captured, "{s:?}");
    assert!(position(s, "spin_here_for_test").is_some());
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // Without it the signal is sent, stays pending, and the wait times out.
    let started = Instant::now();
    let capture = sampler.state.lock().capture(
        &sampler.config,
        &[blocked.tid, spinner.tid],
        Duration::from_secs(5),
        false,
    );
    let elapsed = started.elapsed();
    let b = thread(&capture, blocked.tid);
    assert_eq!(b.outcome, CaptureOutcome::Unresponsive, "{b:?}");
    assert!(b.detail.as_deref().unwrap().contains("no answer"), "{b:?}");
    assert!(b.facts.is_some());
    assert_eq!(
        thread(&capture, spinner.tid).outcome,
        CaptureOutcome::Captured
    );
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The precheck now sees the pending signal.
    let capture = sampler.capture(&[blocked.tid]);
    let b = thread(&capture, blocked.tid);
    assert_eq!(b.outcome, CaptureOutcome::Unresponsive);

    // Unblocking delivers the stale signal; the handler must ignore it (the
    // slot is not armed for that thread) and the thread carries on.
    blocked.join();
    let capture = sampler.capture(&[spinner.tid]);
    assert_eq!(
        thread(&capture, spinner.tid).outcome,
        CaptureOutcome::Captured
    );
    spinner.join();
}

#[test]
fn exited_threads_do_not_break_a_capture() {
    let sampler = sampler();
    // A thread that is gone before the capture.
    let gone = TestThread::spawn("lw-gone", |_| {});
    let gone_tid = gone.tid;
    gone.join();
    let capture = sampler.capture(&[gone_tid]);
    let t = thread(&capture, gone_tid);
    assert_eq!(t.outcome, CaptureOutcome::Exited, "{t:?}");
    assert!(t.facts.is_none());

    // Threads that come and go during captures of the whole process.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::thread::Builder::new()
                    .name("lw-churn".into())
                    .spawn(|| std::hint::black_box(()))
                    .map(|h| h.join());
                n += 1;
            }
            n
        })
    };
    let mut churned = 0;
    for _ in 0..20 {
        let capture = sampler.capture_all();
        for t in &capture.threads {
            if t.facts.as_ref().is_some_and(|f| f.name == "lw-churn") {
                churned += 1;
                assert!(
                    matches!(
                        t.outcome,
                        CaptureOutcome::Captured
                            | CaptureOutcome::Exited
                            | CaptureOutcome::Unresponsive
                    ),
                    "{t:?}"
                );
            }
        }
        assert!(capture
            .threads
            .iter()
            .any(|t| t.outcome == CaptureOutcome::Monitor));
    }
    stop.store(true, Ordering::Relaxed);
    let spawned = churn.join().unwrap();
    assert!(spawned > 0);
    let _ = churned; // how many were caught mid-life depends on scheduling
}

#[test]
fn the_calling_thread_is_the_monitor() {
    let sampler = sampler();
    let me = current_tid();
    let capture = sampler.capture(&[me, me]);
    assert_eq!(capture.threads.len(), 1, "duplicates dropped");
    assert_eq!(capture.threads[0].outcome, CaptureOutcome::Monitor);
    assert!(capture.threads[0].frames.is_empty());
    let all = sampler.capture_all();
    assert_eq!(thread(&all, me).outcome, CaptureOutcome::Monitor);
    // Every thread is accounted for, and JSON serialisation works.
    let json = serde_json::to_string(&all).unwrap();
    assert!(json.contains("\"outcome\":\"monitor\""), "{json}");
}

#[test]
fn refuses_a_signal_the_application_handles() {
    extern "C" fn app_handler(_: libc::c_int) {}
    let signal = libc::SIGRTMIN() + 7;
    // SAFETY: installs a trivial, async-signal-safe handler for a signal
    // nothing sends in this test process.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = app_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signal, &action, std::ptr::null_mut()), 0);
    }
    let err = StackSampler::new(CaptureConfig {
        signal,
        ..CaptureConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::SignalInUse { signal: s } if s == signal),
        "{err:?}"
    );
}

#[test]
fn several_samplers_share_the_handler() {
    let a = sampler();
    let b = sampler();
    let sleeper = TestThread::spawn("lw-shared", sleep_here_for_test);
    let (ca, cb) = std::thread::scope(|s| {
        let ja = s.spawn(|| a.capture(&[sleeper.tid]));
        let jb = s.spawn(|| b.capture(&[sleeper.tid]));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    assert_eq!(thread(&ca, sleeper.tid).outcome, CaptureOutcome::Captured);
    assert_eq!(thread(&cb, sleeper.tid).outcome, CaptureOutcome::Captured);
    sleeper.join();
}

#[test]
fn invalid_settings_are_refused() {
    let bad = [
        CaptureConfig {
            signal: libc::SIGUSR1,
            ..CaptureConfig::default()
        },
        CaptureConfig {
            signal: libc::SIGRTMAX() + 1,
            ..CaptureConfig::default()
        },
        CaptureConfig {
            max_stack_bytes: 4096,
            ..CaptureConfig::default()
        },
        CaptureConfig {
            max_stack_bytes: 2 * 1024 * 1024,
            ..CaptureConfig::default()
        },
        CaptureConfig {
            per_thread_timeout: Duration::ZERO,
            ..CaptureConfig::default()
        },
    ];
    for config in bad {
        let err = StackSampler::new(config.clone()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSetting { .. }),
            "{config:?}: {err:?}"
        );
    }
    assert!(CaptureConfig::default().validate().is_ok());
}

#[test]
fn second_capture_is_served_from_the_symbol_cache() {
    let sampler = sampler();
    let sleeper = TestThread::spawn("lw-cache", sleep_here_for_test);
    // Find a capture with the thread inside its sleep, then repeat it.
    let mut first = None;
    for _ in 0..50 {
        let c = sampler.capture(&[sleeper.tid]);
        if position(thread(&c, sleeper.tid), "nanosleep").is_some() {
            first = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let first = first.expect("sleeping capture");
    let mut second = None;
    for _ in 0..50 {
        let cached = sampler.state.lock().cached_names();
        let c = sampler.capture(&[sleeper.tid]);
        if names(thread(&c, sleeper.tid)) == names(thread(&first, sleeper.tid)) {
            // The same stack needed no new symbolization at all.
            assert_eq!(sampler.state.lock().cached_names(), cached);
            second = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let sleeper_tid = sleeper.tid;
    sleeper.join();
    let second = second.expect("same stack captured again");
    // Timing is not asserted (a loaded machine can preempt either run); the
    // frames are the same and came from the cache.
    assert_eq!(
        thread(&second, sleeper_tid).frames,
        thread(&first, sleeper_tid).frames
    );
}
