//! Internal pieces exposed for the benchmarks in `benches/` and loopwatch's
//! own integration tests only.
//!
//! Not part of the public API: hidden from the docs, no stability promise.
//! It lets criterion measure the probe and the stack capture on their own,
//! without a monitor thread's scheduling in between, lets
//! `tests/report_store.rs` drive the report store on real directories, and
//! lets the fault tests make the monitor thread panic or hang on purpose
//! (one relaxed atomic load per monitor wake-up when nothing is injected).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock;
use crate::probe::{self, ProbeReading, ProbeShared};
use crate::report::StallReport;
use crate::stacks::{CaptureConfig, CaptureOutcome, NotCaptured, StackSampler};

pub use crate::report_store::{
    Pin, ReportStore, Saved, DEFAULT_MAX_REPORT_BYTES_PER_HOUR, MAX_PINNED, STALE_TEMP_AGE,
};

/// A probe on a runtime, driven by hand.
pub struct ProbeBench(Arc<ProbeShared>);

impl ProbeBench {
    /// Spawns a probe task on `handle` and waits for its first answer.
    pub fn spawn(handle: &tokio::runtime::Handle) -> Self {
        let p = ProbeBench(probe::spawn(handle, clock::now_us()));
        let _ = p.wait_answer(Duration::from_secs(5));
        p
    }

    /// Wakes the probe now (the previous wake must have been answered).
    pub fn wake(&self) {
        self.0.wake(clock::now_us());
    }

    /// Spins until the last wake is answered; returns its lag.
    pub fn wait_answer(&self, timeout: Duration) -> Option<Duration> {
        let end = Instant::now() + timeout;
        loop {
            match self.0.read() {
                r @ ProbeReading::Answered { .. } => {
                    return Some(clock::us(r.lag_us(clock::now_us())))
                }
                ProbeReading::Gone => return None,
                ProbeReading::Waiting { .. } => {}
            }
            if Instant::now() > end {
                return None;
            }
            std::hint::spin_loop();
        }
    }
}

/// What one capture of the whole process cost.
#[derive(Debug, Clone, Copy)]
pub struct CaptureTimes {
    /// Threads in the capture.
    pub threads: usize,
    /// Threads whose stack was captured.
    pub captured: usize,
    /// Signals and stack copies.
    pub signal: Duration,
    /// Unwinding.
    pub unwind: Duration,
    /// Symbolization.
    pub symbolize: Duration,
}

impl CaptureTimes {
    fn of(c: &crate::stacks::Capture) -> Self {
        CaptureTimes {
            threads: c.threads.len(),
            captured: c
                .threads
                .iter()
                .filter(|t| t.outcome == CaptureOutcome::Captured)
                .count(),
            signal: c.signal_duration,
            unwind: c.unwind_duration,
            symbolize: c.symbolize_duration,
        }
    }
}

/// One thread of a capture, as the budget tests and benches see it.
#[derive(Debug, Clone)]
pub struct ThreadOutcome {
    /// Kernel thread id.
    pub tid: i32,
    /// What happened to it.
    pub outcome: CaptureOutcome,
    /// Why it was not captured.
    pub not_captured: Option<NotCaptured>,
    /// Its `/proc` state letter, when read.
    pub state: Option<char>,
    /// Its kernel stack, when read.
    pub kernel_stack: Vec<String>,
    /// Frames captured.
    pub frames: usize,
    /// Read asleep in a system call, without a signal.
    pub read_asleep: bool,
}

/// The stack sampler, on its own.
pub struct CaptureBench(StackSampler);

impl CaptureBench {
    /// A sampler with the default configuration.
    pub fn new() -> crate::Result<Self> {
        Ok(CaptureBench(StackSampler::new(CaptureConfig::default())?))
    }

    /// Captures `tids` within `budget`: the wall time it took and each
    /// thread's outcome.
    pub fn capture_within(&self, tids: &[i32], budget: Duration) -> (Duration, Vec<ThreadOutcome>) {
        let started = Instant::now();
        let c = self.0.capture_within(tids, budget);
        let took = started.elapsed();
        let threads = c
            .threads
            .into_iter()
            .map(|t| ThreadOutcome {
                tid: t.tid,
                outcome: t.outcome,
                not_captured: t.not_captured,
                state: t.facts.as_ref().map(|f| f.state),
                kernel_stack: t.kernel_stack,
                read_asleep: t.read_asleep,
                frames: t.frames.len(),
            })
            .collect();
        (took, threads)
    }

    /// One capture of one thread, as a stall's extra samples take it: the
    /// wall time of the capture (signal, copy, unwind, symbol-table names).
    pub fn capture_one(&self, tid: i32) -> (Duration, CaptureTimes) {
        let started = Instant::now();
        let c = self.0.capture_within(&[tid], Duration::from_millis(50));
        let took = started.elapsed();
        (took, CaptureTimes::of(&c))
    }

    /// Captures every thread of the process, for a symbolization bench.
    pub fn capture_for_symbols(&self) -> Captured {
        Captured(self.0.capture_all())
    }

    /// The DWARF pass over `captured`, as the diagnostics run it after the
    /// first report: its wall time and whether it ran out of `budget`.
    pub fn symbolize(&self, captured: &mut Captured, budget: Duration) -> (Duration, bool) {
        let done = self.0.symbolize(&mut captured.0.threads, budget);
        (done.took, done.ran_out_of_time)
    }

    /// Drops symbolization state and returns the freed heap to the OS.
    pub fn release(&self) {
        self.0.release();
    }

    /// Captures every thread of the process.
    pub fn capture_all(&self) -> CaptureTimes {
        CaptureTimes::of(&self.0.capture_all())
    }
}

/// A capture held for a symbolization bench.
pub struct Captured(crate::stacks::Capture);

impl Captured {
    /// Every frame's address and whether it is a return address (all but
    /// the first of each thread), for another symbolizer to resolve.
    pub fn addresses(&self) -> Vec<(u64, bool)> {
        self.0
            .threads
            .iter()
            .flat_map(|t| {
                t.frames
                    .iter()
                    .filter(|f| !f.inlined)
                    .enumerate()
                    .map(|(i, f)| (f.ip, i > 0))
            })
            .collect()
    }

    /// Physical frames (inlined ones not counted) with a function name.
    pub fn frames_named(&self) -> usize {
        self.0
            .threads
            .iter()
            .flat_map(|t| &t.frames)
            .filter(|f| !f.inlined && f.function.is_some())
            .count()
    }

    /// Frames named from DWARF (files and lines) so far.
    pub fn frames_with_lines(&self) -> usize {
        self.0
            .threads
            .iter()
            .flat_map(|t| &t.frames)
            .filter(|f| f.line.is_some())
            .count()
    }
}

/// Panics still to inject into the monitor thread.
static INJECTED_PANICS: AtomicU32 = AtomicU32::new(0);
/// A hang (ms) to inject into the monitor thread's next wake-up.
static INJECTED_HANG_MS: AtomicU64 = AtomicU64::new(0);

/// Makes the next `n` wake-ups of every monitor thread in this process
/// panic (a simulated loopwatch bug).
pub fn inject_monitor_panics(n: u32) {
    INJECTED_PANICS.store(n, Ordering::Relaxed);
}

/// Makes the next wake-up of a monitor thread in this process hang for
/// `d` (a simulated frozen monitor).
pub fn inject_monitor_hang(d: Duration) {
    INJECTED_HANG_MS.store(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Called by the monitor at each wake-up: carries out an injected fault.
pub(crate) fn injected_fault() {
    let hang = INJECTED_HANG_MS.swap(0, Ordering::Relaxed);
    if hang > 0 {
        std::thread::sleep(Duration::from_millis(hang));
    }
    if INJECTED_PANICS.load(Ordering::Relaxed) > 0
        && INJECTED_PANICS
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    {
        panic!("fault injected by loopwatch's tests");
    }
}

/// A small report with id `id` (it decides the file names) whose JSON
/// carries `json_padding` more bytes than its text (comment lines in the
/// metrics text, which the text form leaves out).
pub fn sample_report(id: &str, json_padding: usize) -> StallReport {
    let mut metrics = String::new();
    while metrics.len() < json_padding {
        metrics.push_str("# padding padding padding padding padding padding padding pad\n");
    }
    StallReport {
        id: id.to_string(),
        stalled_for_seconds: 1.0,
        lag_at_detection_seconds: 1.0,
        verdict: crate::verdict::Verdict {
            kind: crate::verdict::VerdictKind::Unknown,
            summary: "a sample report".into(),
            evidence: Vec::new(),
        },
        metrics,
        ..StallReport::blank()
    }
}
