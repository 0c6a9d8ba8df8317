//! The verdict: what kind of stall this is, from evidence, and who did it.
//!
//! [`decide`] looks at the threads that run the watched event loop (the
//! thread that last polled the probe, registered and recognised runtime
//! workers) in the captures taken during the stall and picks one of:
//!
//! * `process-paused` — the monitor thread itself was not scheduled for most
//!   of the stall (SIGSTOP, a frozen VM or container, CPU throttling). Checked
//!   first and never blamed on application code;
//! * `cpu-bound` — a loop thread on CPU in application code throughout;
//! * `lock-wait` — a loop thread waiting on a futex below application code;
//! * `blocked-syscall` — a loop thread in another blocking syscall (sleep,
//!   read, connect, ...) below application code;
//! * `overload` — no single stuck thread: loop threads busy, their stacks
//!   moving between captures, queues deep;
//! * `unknown` — nothing conclusive; the evidence says what was seen.
//!
//! The culprit is the innermost application frame (not std, tokio, libc or
//! loopwatch) of the stuck thread, found above any runtime frame: a thread
//! idling in tokio's park code is not in application code even though
//! `main` is on its stack.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stacks::{CaptureOutcome, Frame, ThreadStack};
use crate::status::human;

/// The kind of stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    /// A loop thread spent the stall on CPU in application code.
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

/// The code that blocked the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Culprit {
    /// The stuck thread's id.
    pub tid: i32,
    /// The stuck thread's name.
    pub thread: String,
    /// The innermost application function.
    pub function: String,
    /// Its source file, when known.
    pub file: Option<String>,
    /// Its line, when known.
    pub line: Option<u32>,
    /// The innermost application frames, innermost first (at most 8).
    pub frames: Vec<Frame>,
}

/// What [`decide`] looks at.
#[derive(Debug, Default)]
pub(crate) struct Evidence<'a> {
    /// Threads at the first capture (at detection).
    pub first: &'a [ThreadStack],
    /// Threads at the second capture, taken while still stalled.
    pub second: Option<&'a [ThreadStack]>,
    /// CPU time each thread used over `sample_gap` during the stall.
    pub cpu_used: HashMap<i32, Duration>,
    /// The wall time over which `cpu_used` was measured.
    pub sample_gap: Duration,
    /// Threads that run the watched loop (probe poller, workers).
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
}

/// True for frames of the tokio runtime: the search for application code
/// stops there (code outside the current poll is not the culprit).
pub(crate) fn is_runtime_frame(f: &Frame) -> bool {
    let by_name = f
        .function
        .as_deref()
        .is_some_and(|n| n.trim_start_matches('<').starts_with("tokio::"));
    // Inlined frames of binaries built with line tables only carry bare
    // names; their source path still says where they come from.
    let by_file = f
        .file
        .as_deref()
        .is_some_and(|p| p.contains("/tokio-1.") || p.contains("/vendor/tokio/"));
    by_name || by_file
}

/// The innermost application frames of a stack, if the thread is in
/// application code (an application frame inner to any tokio frame).
pub(crate) fn application_frames(frames: &[Frame]) -> Vec<Frame> {
    let mut out = Vec::new();
    for f in frames {
        if is_runtime_frame(f) {
            break;
        }
        if f.is_application() {
            out.push(f.clone());
            if out.len() == 8 {
                break;
            }
        }
    }
    out
}

/// CPU used by `tid` as a fraction of one CPU over the sample gap.
fn cpu_ratio(e: &Evidence<'_>, tid: i32) -> Option<f64> {
    let used = e.cpu_used.get(&tid)?;
    (!e.sample_gap.is_zero()).then(|| used.as_secs_f64() / e.sample_gap.as_secs_f64())
}

fn first_app_function(t: &ThreadStack) -> Option<String> {
    application_frames(&t.frames)
        .first()
        .and_then(|f| f.function.as_deref().map(enclosing_function))
}

/// A closure's (or async block's) enclosing named function:
/// `demo::stall_spin::{{closure}}` is `demo::stall_spin`.
pub(crate) fn enclosing_function(name: &str) -> String {
    let mut n = name;
    while let Some(stripped) = n.strip_suffix("::{{closure}}") {
        n = stripped;
    }
    n.to_string()
}

fn thread_name(t: &ThreadStack) -> String {
    t.facts
        .as_ref()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| format!("tid {}", t.tid))
}

/// Decides the verdict and the culprit.
pub(crate) fn decide(e: &Evidence<'_>) -> (Verdict, Option<Culprit>) {
    let (mut verdict, culprit) = decide_loop(e);
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
                w.tids
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
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

/// The verdict for the threads that run the loop.
fn decide_loop(e: &Evidence<'_>) -> (Verdict, Option<Culprit>) {
    let mut evidence = Vec::new();
    if !e.lag.is_zero() && e.monitor_gap * 2 >= e.lag {
        evidence.push(format!(
            "the monitor thread itself was not scheduled for {} of the {} lag: the process was stopped, \
             frozen or throttled",
            human(e.monitor_gap),
            human(e.lag)
        ));
        return (
            Verdict {
                kind: VerdictKind::ProcessPaused,
                summary: "the whole process was paused (SIGSTOP, frozen VM/container or CPU throttling); \
                          not an application bug"
                    .into(),
                evidence,
            },
            None,
        );
    }

    let loop_threads: Vec<&ThreadStack> = e
        .first
        .iter()
        .filter(|t| e.loop_tids.contains(&t.tid))
        .collect();
    if loop_threads.is_empty() {
        evidence.push("no event-loop thread could be identified in the capture".into());
    }
    // The suspects: loop threads inside application code.
    let suspects: Vec<(&ThreadStack, Vec<Frame>)> = loop_threads
        .iter()
        .filter(|t| t.outcome == CaptureOutcome::Captured)
        .map(|t| (*t, application_frames(&t.frames)))
        .filter(|(_, f)| !f.is_empty())
        .collect();
    for t in &loop_threads {
        if t.outcome == CaptureOutcome::Unresponsive {
            let f = t.facts.as_ref();
            evidence.push(format!(
                "loop thread {} ({}) did not answer the capture signal; state {}, wait channel {}",
                t.tid,
                thread_name(t),
                f.map_or("?".into(), |f| format!("{} ({})", f.state, f.state_name)),
                f.and_then(|f| f.wchan.clone())
                    .unwrap_or_else(|| "-".into()),
            ));
        }
    }

    let Some((stuck, frames)) = suspects.first() else {
        return overload_or_unknown(e, &loop_threads, evidence);
    };
    let facts = stuck.facts.as_ref();
    let state = facts.map(|f| f.state).unwrap_or('?');
    let syscall = facts.and_then(|f| f.syscall.as_ref()).map(|s| {
        s.name
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| format!("syscall {}", s.number))
    });
    let cpu = cpu_ratio(e, stuck.tid);
    let name = thread_name(stuck);
    let culprit_fn = frames[0]
        .function
        .as_deref()
        .map(enclosing_function)
        .unwrap_or_else(|| "?".into());
    evidence.push(format!(
        "loop thread {} ({name}) is in application code: {culprit_fn}",
        stuck.tid
    ));
    evidence.push(format!(
        "its state: {state} ({}){}",
        facts.map_or("unknown", |f| f.state_name.as_ref()),
        syscall
            .as_ref()
            .map(|s| format!(", in system call {s}"))
            .unwrap_or_default()
    ));
    if let Some(c) = cpu {
        evidence.push(format!(
            "it used {:.0}% of one CPU over {} sampled during the stall",
            (c * 100.0).min(999.0),
            human(e.sample_gap)
        ));
    }
    // Still inside the culprit (it may have called deeper, e.g. a closure
    // of its own) at the second capture, or gone elsewhere?
    let moved = e.second.and_then(|second| {
        let later = second.iter().find(|t| t.tid == stuck.tid)?;
        let frames = application_frames(&later.frames);
        Some(!frames.iter().any(|f| {
            f.function.as_deref().map(enclosing_function).as_deref() == Some(culprit_fn.as_str())
        }))
    });
    match moved {
        Some(false) => evidence.push(format!(
            "the second capture finds it still inside {culprit_fn}: stuck"
        )),
        Some(true) => {
            evidence.push("the second capture finds it elsewhere: its stack moved".into())
        }
        None => {}
    }

    let on_cpu = state == 'R' || cpu.is_some_and(|c| c >= 0.5);
    let futex = syscall.as_deref() == Some("futex");
    let kind = if futex && !on_cpu {
        VerdictKind::LockWait
    } else if on_cpu && moved == Some(true) {
        VerdictKind::Overload
    } else if on_cpu {
        VerdictKind::CpuBound
    } else if syscall.is_some() || matches!(state, 'S' | 'D') {
        VerdictKind::BlockedSyscall
    } else {
        VerdictKind::Unknown
    };
    if kind == VerdictKind::LockWait {
        let others: Vec<String> = e
            .first
            .iter()
            .filter(|t| t.tid != stuck.tid)
            .filter(|t| {
                t.facts
                    .as_ref()
                    .and_then(|f| f.syscall.as_ref())
                    .is_some_and(|s| s.name.as_deref() == Some("futex"))
            })
            .filter_map(|t| {
                first_app_function(t).map(|f| format!("{} ({}) in {f}", t.tid, thread_name(t)))
            })
            .collect();
        if !others.is_empty() {
            evidence.push(format!(
                "other threads waiting on locks in application code: {}",
                others.join(", ")
            ));
        }
        for d in &e.deadlock {
            evidence.push(format!("parking_lot deadlock checker: {d}"));
        }
    }
    let summary = match kind {
        VerdictKind::CpuBound => format!("the event loop thread is busy on CPU in {culprit_fn}"),
        VerdictKind::LockWait => format!("the event loop thread waits for a lock in {culprit_fn}"),
        VerdictKind::BlockedSyscall => format!(
            "the event loop thread is blocked in {} called from {culprit_fn}",
            syscall.as_deref().unwrap_or("a system call")
        ),
        VerdictKind::Overload => format!(
            "the event loop thread is busy but not stuck in one place (last seen in {culprit_fn})"
        ),
        _ => format!("the event loop thread is in {culprit_fn}; the kind of stall is unclear"),
    };
    let culprit = Culprit {
        tid: stuck.tid,
        thread: name,
        function: culprit_fn,
        file: frames[0].file.clone(),
        line: frames[0].line,
        frames: frames.clone(),
    };
    (
        Verdict {
            kind,
            summary,
            evidence,
        },
        Some(culprit),
    )
}

fn overload_or_unknown(
    e: &Evidence<'_>,
    loop_threads: &[&ThreadStack],
    mut evidence: Vec<String>,
) -> (Verdict, Option<Culprit>) {
    let busy = loop_threads
        .iter()
        .filter(|t| {
            t.facts.as_ref().is_some_and(|f| f.state == 'R')
                || cpu_ratio(e, t.tid).is_some_and(|c| c >= 0.5)
        })
        .count();
    if let Some(q) = e.queue_depth {
        evidence.push(format!("global queue depth {q}"));
    }
    if busy > 0 {
        evidence.push(format!(
            "{busy} of {} loop thread(s) busy on CPU, none stuck in one application function",
            loop_threads.len()
        ));
        return (
            Verdict {
                kind: VerdictKind::Overload,
                summary: "the event loop is overloaded: busy with many polls, no single stuck task"
                    .into(),
                evidence,
            },
            None,
        );
    }
    evidence.push("no loop thread was found in application code".into());
    (
        Verdict {
            kind: VerdictKind::Unknown,
            summary: "the loop did not answer, but no thread was caught in application code".into(),
            evidence,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> Frame {
        Frame {
            ip: 1,
            function: Some(name.into()),
            file: Some("/src/app/main.rs".into()),
            line: Some(1),
            inlined: false,
            module: Some("app".into()),
            ..Frame::default()
        }
    }

    #[test]
    fn closures_belong_to_their_function() {
        assert_eq!(
            enclosing_function("demo::stall_spin::{{closure}}"),
            "demo::stall_spin"
        );
        assert_eq!(
            enclosing_function("demo::run::{{closure}}::{{closure}}"),
            "demo::run"
        );
        assert_eq!(enclosing_function("demo::run"), "demo::run");
    }

    #[test]
    fn application_frames_stop_at_the_runtime() {
        let idle = vec![
            f("epoll_wait"),
            f("tokio::runtime::park::Inner::park"),
            f("app::main"),
        ];
        // `epoll_wait` is not in a system module here, so it counts; but the
        // search stops at tokio: `app::main` outside the poll is not blamed.
        assert_eq!(application_frames(&idle).len(), 1);
        let busy = vec![
            f("<u64>::unchecked_add"),
            f("app::spin"),
            f("app::handler"),
            f("tokio::runtime::task::raw::poll"),
            f("app::main"),
        ];
        let names: Vec<_> = application_frames(&busy)
            .into_iter()
            .map(|f| f.function.unwrap())
            .collect();
        assert_eq!(names, vec!["app::spin", "app::handler"]);
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
}
