//! The verdict: what kind of stall this is, from evidence, and who did it.
//!
//! [`decide`] looks at the threads that run the watched event loop (stuck
//! workers, the thread that last polled the probe, registered and
//! recognised runtime workers) in the captures and extra samples taken
//! during the stall and picks one of:
//!
//! * `process-paused` — the monitor thread itself was not scheduled for most
//!   of the stall (SIGSTOP, a frozen VM or container, CPU throttling). Checked
//!   first and never blamed on application code;
//! * `cpu-bound` — a loop thread on CPU inside the same call in at least two
//!   samples, or (with tokio's poll hooks) within one poll;
//! * `lock-wait` — a loop thread asleep in a futex wait;
//! * `blocked-syscall` — a loop thread asleep in another system call (sleep,
//!   read, connect, ...);
//! * `overload` — no single stuck poll: the loop thread busy, but its stack
//!   left the call between samples, or the poll hooks counted many polls;
//! * `worker-stuck` — one worker of a multi-thread runtime stuck in a poll;
//! * `unknown` — nothing conclusive (one sample only, say); the evidence
//!   says what was seen.
//!
//! None of these needs symbols: states, system calls, CPU time and stack
//! addresses decide. Names only pick the **culprit**, the innermost frame
//! of the application's own code inside the current poll (see
//! [`crate::origin`] for what counts as own code), and the frame it was
//! **stuck in** below it (a dependency, or the runtime call it made).
//!
//! Files: [`reading`] reads one thread's stack (classification, poll
//! boundary, culprit, "still there"); [`loop_thread`] decides from the
//! readings of the loop threads; this file holds the public types and the
//! worker-stuck wrapper.

#[cfg(test)]
pub(crate) mod fixtures;
mod loop_thread;
mod reading;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::origin::OwnCode;
use crate::stacks::{Frame, ThreadStack};
use crate::status::human;

pub(crate) use reading::{physical, Physical, Reading};

/// The kind of stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    /// A loop thread spent the stall on CPU inside one call.
    CpuBound,
    /// A loop thread sat in a blocking system call.
    BlockedSyscall,
    /// A loop thread waited for a lock.
    LockWait,
    /// The whole process (or at least the monitor) was not running.
    ProcessPaused,
    /// The loop was busy with many short polls rather than stuck in one.
    Overload,
    /// One worker of a multi-thread runtime was stuck in a poll.
    WorkerStuck,
    /// The evidence does not support any of the above.
    Unknown,
}

impl VerdictKind {
    /// The kebab-case name used in reports and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::CpuBound => "cpu-bound",
            VerdictKind::BlockedSyscall => "blocked-syscall",
            VerdictKind::LockWait => "lock-wait",
            VerdictKind::ProcessPaused => "process-paused",
            VerdictKind::Overload => "overload",
            VerdictKind::WorkerStuck => "worker-stuck",
            VerdictKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verdict with the evidence that supports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The kind of stall.
    pub kind: VerdictKind,
    /// One sentence for humans.
    pub summary: String,
    /// The observations behind it.
    pub evidence: Vec<String>,
}

/// The code that blocked the loop: the innermost frame of the
/// application's own code inside the stuck poll, and where below it the
/// thread really was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Culprit {
    /// The stuck thread's id.
    pub tid: i32,
    /// The stuck thread's name.
    pub thread: String,
    /// The innermost own-code function, as its enclosing named function:
    /// closures and async bodies (`{{closure}}`, `{closure#0}`,
    /// `{async_fn#0}`, `{async_block#0}`) are folded into the function
    /// they belong to.
    pub function: String,
    /// Its source file, when known.
    pub file: Option<String>,
    /// Its line, when known.
    pub line: Option<u32>,
    /// The own-code frames inside the stuck poll, innermost first (at most 8).
    pub frames: Vec<Frame>,
    /// Where the thread really was below the culprit: the innermost
    /// dependency frame (`serde_json::de::…`), else the call the culprit
    /// made into the runtime (`std::thread::sleep`). `None` when the
    /// culprit itself was running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_in: Option<Frame>,
}

/// A stack of one loop thread taken during the stall, besides the two
/// captures of every thread.
#[derive(Debug, Clone)]
pub(crate) struct LoopSample {
    /// When it was taken (µs, [`crate::clock`]).
    #[allow(dead_code)] // ordering is the caller's; kept for reports
    pub at: u64,
    /// The thread's stack and `/proc` facts.
    pub stack: ThreadStack,
}

/// What [`decide`] looks at.
#[derive(Debug, Default)]
pub(crate) struct Evidence<'a> {
    /// Threads at the first capture (at detection).
    pub first: &'a [ThreadStack],
    /// Threads at the second capture, taken while still stalled.
    pub second: Option<&'a [ThreadStack]>,
    /// Stacks of loop threads sampled between and after the captures while
    /// the stall lasted, oldest first.
    pub samples: &'a [LoopSample],
    /// With tokio's poll hooks (`tokio_unstable`): how many polls the loop
    /// thread completed during the stall.
    pub polls_during_stall: Option<u64>,
    /// CPU time each thread used over `sample_gap` during the stall.
    pub cpu_used: HashMap<i32, Duration>,
    /// The wall time over which `cpu_used` was measured.
    pub sample_gap: Duration,
    /// Threads that run the watched loop (stuck workers, probe poller,
    /// workers), the most likely culprit first.
    pub loop_tids: Vec<i32>,
    /// How long the monitor itself was not scheduled during the stall.
    pub monitor_gap: Duration,
    /// Lag when the stall was declared.
    pub lag: Duration,
    /// The runtime's global queue depth, if known.
    pub queue_depth: Option<usize>,
    /// Threads named by parking_lot's deadlock checker, if enabled.
    pub deadlock: Vec<String>,
    /// For a worker stall: the stuck workers (their threads are `loop_tids`).
    pub stuck_workers: Vec<crate::hooks::StuckWorker>,
    /// What is known about the application's own code.
    pub own: OwnCode,
    /// The stack copy limit in force (`max_stack_bytes`), to tell a cut stack.
    pub max_stack_bytes: Option<usize>,
    /// Names are still the symbol table's, but a DWARF pass that can name
    /// files, lines and inlined functions is still to come for this
    /// capture: no "symbol table only" advice yet.
    pub dwarf_pending: bool,
}

/// Decides the verdict and the culprit.
pub(crate) fn decide(e: &Evidence<'_>) -> (Verdict, Option<Culprit>) {
    let (mut verdict, culprit) = loop_thread::decide_loop(e);
    if e.stuck_workers.is_empty() || verdict.kind == VerdictKind::ProcessPaused {
        return (verdict, culprit);
    }
    // One worker stuck while the runtime may still answer the probe.
    let mut evidence: Vec<String> = e
        .stuck_workers
        .iter()
        .map(|w| {
            format!(
                "worker {} (thread {}) made no progress for {}{}",
                w.worker,
                w.tids_label(),
                human(Duration::from_secs_f64(w.stuck_for_seconds.max(0.0))),
                w.task
                    .as_ref()
                    .map(|t| format!(", stuck polling task {} spawned at {}", t.id, t.spawned_at))
                    .unwrap_or_default()
            )
        })
        .collect();
    evidence.push(format!(
        "what the stuck thread does: {} ({})",
        verdict.kind, verdict.summary
    ));
    evidence.append(&mut verdict.evidence);
    let first = &e.stuck_workers[0];
    let task = first
        .task
        .as_ref()
        .map(|t| format!(" polling task {} spawned at {}", t.id, t.spawned_at))
        .unwrap_or_default();
    let summary = match &culprit {
        Some(c) => format!(
            "worker {} is stuck in one poll{task}, in {} ({})",
            first.worker, c.function, verdict.kind
        ),
        None => format!("worker {} is stuck in one poll{task}", first.worker),
    };
    (
        Verdict {
            kind: VerdictKind::WorkerStuck,
            summary,
            evidence,
        },
        culprit,
    )
}
