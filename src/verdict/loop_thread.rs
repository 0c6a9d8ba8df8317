//! The verdict for the threads that run the loop, from their readings.
//!
//! The steps: a process that was not scheduled is `process-paused`; else
//! the loop thread to blame is picked (the first, in the evidence's order,
//! inside own code; else inside a dependency or code without names, on CPU
//! first); then its state and system call say whether it sleeps (a futex:
//! `lock-wait`; another call: `blocked-syscall`) or runs; a running thread
//! is `cpu-bound` only when a second look (an extra sample or the second
//! capture) finds it inside the same call, or the poll hooks saw a single
//! poll; it is `overload` when it left the call or the hooks counted many
//! polls; with one look only the verdict stays `unknown`. The readings
//! themselves come from [`super::reading`].

use std::collections::BTreeMap;

use super::reading::{location, physical, AnchorKind, Reading};
use super::{Culprit, Evidence, Verdict, VerdictKind};
use crate::origin::{names, whose_code};
use crate::stacks::{CaptureOutcome, Frame, Origin, ThreadStack};
use crate::status::human;

/// Completed polls during a stall from which the loop counts as
/// overloaded rather than stuck in one poll (the stuck poll itself may
/// complete as the stall ends, and one short poll may precede it).
const MANY_POLLS: u64 = 3;

/// System calls in which tokio's drivers wait for events: a loop thread
/// asleep there with nothing else on its stack is idle, not stuck.
const IDLE_WAITS: &[&str] = &["epoll_wait", "epoll_pwait", "epoll_pwait2"];

/// The verdict for the threads that run the loop.
pub(super) fn decide_loop(e: &Evidence<'_>) -> (Verdict, Option<Culprit>) {
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
        .loop_tids
        .iter()
        .filter_map(|tid| e.first.iter().find(|t| t.tid == *tid))
        .collect();
    if loop_threads.is_empty() {
        evidence.push("no event-loop thread could be identified in the capture".into());
    }
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
    let readings: Vec<Reading<'_>> = loop_threads
        .iter()
        .filter(|t| t.outcome == CaptureOutcome::Captured)
        .map(|t| Reading::new(t, &e.own, e.max_stack_bytes))
        .collect();
    let suspect = |r: &&Reading<'_>| r.anchor.is_some() && !idle(r);
    let chosen = readings
        .iter()
        .find(|r| r.culprit.is_some())
        .or_else(|| {
            readings
                .iter()
                .filter(suspect)
                .find(|r| on_cpu(e, r.thread))
        })
        .or_else(|| readings.iter().find(suspect));
    match chosen.and_then(|r| Some((r, r.anchor?.1))) {
        Some((r, anchor)) => judge(e, r, anchor, evidence),
        None => overload_or_unknown(e, &loop_threads, &readings, evidence),
    }
}

/// What the thread's `/proc` facts say.
struct State {
    letter: char,
    name: String,
    syscall: Option<String>,
}

fn state_of(t: &ThreadStack) -> State {
    let f = t.facts.as_ref();
    State {
        letter: f.map(|f| f.state).unwrap_or('?'),
        name: f.map_or("unknown".into(), |f| f.state_name.to_string()),
        syscall: f.and_then(|f| f.syscall.as_ref()).map(|s| {
            s.name
                .as_deref()
                .map(str::to_string)
                .unwrap_or_else(|| format!("syscall {}", s.number))
        }),
    }
}

/// CPU used by `tid` as a fraction of one CPU over the sample gap.
fn cpu_ratio(e: &Evidence<'_>, tid: i32) -> Option<f64> {
    let used = e.cpu_used.get(&tid)?;
    (!e.sample_gap.is_zero()).then(|| used.as_secs_f64() / e.sample_gap.as_secs_f64())
}

fn on_cpu(e: &Evidence<'_>, t: &ThreadStack) -> bool {
    state_of(t).letter == 'R' || cpu_ratio(e, t.tid).is_some_and(|c| c >= 0.5)
}

/// A thread asleep in the runtime's own event wait with no code of the
/// application or a dependency inside the poll.
fn idle(r: &Reading<'_>) -> bool {
    r.culprit.is_none()
        && state_of(r.thread)
            .syscall
            .is_some_and(|s| IDLE_WAITS.contains(&s.as_str()))
}

pub(super) fn thread_name(t: &ThreadStack) -> String {
    t.facts
        .as_ref()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| format!("tid {}", t.tid))
}

/// A frame's name for evidence: the enclosing function, or where it is.
fn frame_name(f: &Frame) -> String {
    f.function
        .as_deref()
        .map(names::enclosing_function)
        .unwrap_or_else(|| location(f))
}

/// The verdict for the loop thread read as `r`.
fn judge(
    e: &Evidence<'_>,
    r: &Reading<'_>,
    anchor_kind: AnchorKind,
    mut evidence: Vec<String>,
) -> (Verdict, Option<Culprit>) {
    let t = r.thread;
    let name = thread_name(t);
    let state = state_of(t);
    let cpu = cpu_ratio(e, t.tid);
    // What the thread is in, for sentences.
    let place = match anchor_kind {
        AnchorKind::Own => r.culprit_function().unwrap_or_else(|| "?".into()),
        AnchorKind::Dependency | AnchorKind::Nameless => r.label(),
    };
    match anchor_kind {
        AnchorKind::Own => {
            evidence.push(format!("loop thread {} ({name}) is in your code: {place}", t.tid));
            if let Some(s) = r.stuck_in() {
                let via = r
                    .entered_through()
                    .filter(|entry| entry.ip != s.ip || entry.function != s.function)
                    .map(|entry| format!(", entered through {}", frame_name(entry)))
                    .unwrap_or_default();
                evidence.push(format!(
                    "below it, the thread was in {} ({}){via}",
                    frame_name(s),
                    whose_code(s.origin)
                ));
            }
        }
        AnchorKind::Dependency => evidence.push(format!(
            "loop thread {} ({name}) runs no code of yours in this poll: it is in {place}, a dependency \
             the runtime polls",
            t.tid
        )),
        AnchorKind::Nameless => evidence.push(format!(
            "loop thread {} ({name}) is in code without symbols, innermost at {place}",
            t.tid
        )),
    }
    evidence.push(format!(
        "its state: {} ({}){}",
        state.letter,
        state.name,
        state
            .syscall
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

    // Later looks at the same thread: extra samples, then the second capture.
    let later_stacks: Vec<&ThreadStack> = e
        .samples
        .iter()
        .map(|s| &s.stack)
        .filter(|s| s.tid == t.tid && s.outcome == CaptureOutcome::Captured)
        .chain(e.second.and_then(|s| {
            s.iter()
                .find(|x| x.tid == t.tid && x.outcome == CaptureOutcome::Captured)
        }))
        .collect();
    let later: Vec<Reading<'_>> = later_stacks
        .iter()
        .map(|s| Reading::new(s, &e.own, e.max_stack_bytes))
        .collect();
    let stayed = later.iter().filter(|l| r.still_there(l)).count();
    let moved = later.len() - stayed;
    let what = match anchor_kind {
        AnchorKind::Own | AnchorKind::Dependency => format!("inside {place}"),
        AnchorKind::Nameless => "at the same stack addresses".to_string(),
    };
    match (later.len(), moved) {
        (0, _) => {}
        (n, 0) => evidence.push(format!(
            "{} later look{} at the thread find{} it still {what}: stuck",
            n,
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" }
        )),
        (n, m) => evidence.push(format!(
            "{m} of {n} later looks at the thread find it elsewhere: its stack moved"
        )),
    }
    if let Some(p) = e.polls_during_stall {
        evidence.push(format!(
            "tokio's poll hooks counted {p} completed poll(s) on the loop thread during the stall"
        ));
    }

    let running = on_cpu(e, t);
    let asleep = !running && (state.syscall.is_some() || matches!(state.letter, 'S' | 'D'));
    let kind = if asleep && state.syscall.as_deref() == Some("futex") {
        VerdictKind::LockWait
    } else if asleep {
        VerdictKind::BlockedSyscall
    } else if running {
        running_kind(e, r, &later, moved, anchor_kind, &mut evidence)
    } else {
        VerdictKind::Unknown
    };
    if kind == VerdictKind::Overload {
        let mut all = vec![r];
        all.extend(later.iter());
        evidence.push(format!(
            "where the {} looks found it: {}",
            all.len(),
            shares(&all)
        ));
    }
    if kind == VerdictKind::LockWait {
        lock_waiters(e, t.tid, &mut evidence);
    }
    symbols_note(r, e, true, &mut evidence);

    let stuck_in = r.stuck_in().cloned();
    let words = Words {
        place: &place,
        stuck_in: stuck_in.as_ref(),
        syscall: state.syscall.as_deref().unwrap_or("a system call"),
        running,
        looks: later.len() + 1,
    };
    let summary = summary(kind, anchor_kind, &words);
    let culprit = r.culprit.map(|c| {
        let f = &r.frames[c];
        Culprit {
            tid: t.tid,
            thread: name.clone(),
            function: place.clone(),
            file: f.file.clone(),
            line: f.line,
            frames: r.own_frames(8),
            stuck_in,
        }
    });
    (
        Verdict {
            kind,
            summary,
            evidence,
        },
        culprit,
    )
}

/// The kind of stall of a thread on CPU: by the poll hooks' count when
/// there is one, else by whether later looks find it in the same call.
fn running_kind(
    e: &Evidence<'_>,
    r: &Reading<'_>,
    later: &[Reading<'_>],
    moved: usize,
    anchor_kind: AnchorKind,
    evidence: &mut Vec<String>,
) -> VerdictKind {
    match e.polls_during_stall {
        Some(p) if p >= MANY_POLLS => VerdictKind::Overload,
        Some(_) => VerdictKind::CpuBound,
        None if later.is_empty() => {
            evidence.push(
                "only one look at the thread was taken before this report: one long poll cannot be \
                 told from many short ones, so this is not called cpu-bound (that needs the thread \
                 on CPU in the same call in two samples)"
                    .into(),
            );
            VerdictKind::Unknown
        }
        None if moved > 0 && anchor_kind == AnchorKind::Nameless => {
            // Without names the poll's frames cannot be told from the
            // churn below them: the same poll (a library working under
            // one call) and many polls both change the inner frames.
            let shared = later
                .iter()
                .map(|l| r.shared_outer_frames(l))
                .min()
                .unwrap_or(0);
            evidence.push(format!(
                "the looks share only their outer {shared} of {} frames; without symbols loopwatch \
                 cannot tell one long poll whose inner calls change (cpu-bound) from many short polls \
                 (overload)",
                physical(&r.frames).len()
            ));
            VerdictKind::Unknown
        }
        None if moved > 0 => VerdictKind::Overload,
        None => VerdictKind::CpuBound,
    }
}

/// What a summary sentence needs.
struct Words<'a> {
    /// The culprit, the dependency or the nameless location.
    place: &'a str,
    stuck_in: Option<&'a Frame>,
    syscall: &'a str,
    running: bool,
    looks: usize,
}

/// The verdict's one sentence.
fn summary(kind: VerdictKind, anchor_kind: AnchorKind, w: &Words<'_>) -> String {
    let place = w.place;
    // " in myapp::f", or ": stuck in serde_json::…, called from myapp::f".
    let in_place = match (w.stuck_in, anchor_kind) {
        (Some(s), AnchorKind::Own) if s.origin == Some(Origin::Dependency) => {
            format!(": stuck in {}, called from {place}", frame_name(s))
        }
        _ => format!(" in {place}"),
    };
    let syscall = w.syscall;
    match (kind, anchor_kind) {
        (VerdictKind::CpuBound, AnchorKind::Nameless) => {
            "the event loop thread is busy on CPU in one poll (no symbols to name the function)".into()
        }
        (VerdictKind::CpuBound, AnchorKind::Dependency) => format!(
            "the event loop thread is busy on CPU in {place}, a dependency the runtime polls (no code of \
             yours on the stack)"
        ),
        (VerdictKind::CpuBound, AnchorKind::Own) => {
            format!("the event loop thread is busy on CPU{in_place}")
        }
        (VerdictKind::LockWait, AnchorKind::Nameless) => {
            "the event loop thread waits for a lock (no symbols to name the caller)".into()
        }
        (VerdictKind::BlockedSyscall, AnchorKind::Nameless) => {
            format!("the event loop thread is blocked in {syscall} (no symbols to name the caller)")
        }
        (VerdictKind::LockWait, _) => format!("the event loop thread waits for a lock in {place}"),
        (VerdictKind::BlockedSyscall, _) => {
            format!("the event loop thread is blocked in {syscall} called from {place}")
        }
        (VerdictKind::Overload, _) => {
            format!("the event loop is busy but not stuck in one poll (last seen in {place})")
        }
        _ if w.running && w.looks == 1 => format!(
            "the event loop thread was on CPU{in_place}; one look cannot tell one long poll from many \
             short ones"
        ),
        _ if w.running => format!(
            "the event loop thread is on CPU{in_place}; without symbols its {} looks cannot tell one \
             long poll from many short ones",
            w.looks
        ),
        _ => format!("the event loop thread is in {place}; the kind of stall is unclear"),
    }
}

/// `demo::handler 3 of 4, the runtime's own code 1 of 4`: the places with
/// the largest share of looks, most first.
fn shares(readings: &[&Reading<'_>]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in readings {
        *counts.entry(r.label()).or_default() += 1;
    }
    let mut by_count: Vec<(String, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let n = readings.len();
    let mut parts: Vec<String> = by_count
        .iter()
        .take(3)
        .map(|(label, c)| format!("{label} {c} of {n}"))
        .collect();
    if by_count.len() > 3 {
        parts.push(format!("{} other places", by_count.len() - 3));
    }
    parts.join(", ")
}

/// Other threads waiting on locks in own code, and parking_lot's cycles.
fn lock_waiters(e: &Evidence<'_>, stuck: i32, evidence: &mut Vec<String>) {
    let others: Vec<String> = e
        .first
        .iter()
        .filter(|t| t.tid != stuck && t.outcome == CaptureOutcome::Captured)
        .filter(|t| state_of(t).syscall.as_deref() == Some("futex"))
        .filter_map(|t| {
            let r = Reading::new(t, &e.own, e.max_stack_bytes);
            let f = r.culprit_function()?;
            Some(format!("{} ({}) in {f}", t.tid, thread_name(t)))
        })
        .collect();
    if !others.is_empty() {
        evidence.push(format!(
            "other threads waiting on locks in your code: {}",
            others.join(", ")
        ));
    }
    for d in &e.deadlock {
        evidence.push(format!("parking_lot deadlock checker: {d}"));
    }
}

/// What the symbols could not say, and how to get more; with `no_culprit`,
/// also that no own code was recognised (when the thread was busy).
fn symbols_note(r: &Reading<'_>, e: &Evidence<'_>, no_culprit: bool, evidence: &mut Vec<String>) {
    let own = &e.own;
    let (nameless, total) = r.nameless();
    if nameless > 0 {
        evidence.push(format!(
            "symbols are missing: {nameless} of {total} frames of this thread have no name (a stripped \
             binary?). Every frame keeps its module's build id and offset: keep a separate debug file \
             (objcopy --only-keep-debug) and run `loopwatch symbolize` on this report, or build without \
             `strip` and with `debug = \"line-tables-only\"` in [profile.release]"
        ));
        return;
    }
    // Names but no files outside the system libraries: the symbol table.
    let named_outside_system = || {
        r.frames
            .iter()
            .filter(|f| f.function.is_some() && !own.is_system(f))
    };
    let symbol_table_only =
        named_outside_system().next().is_some() && named_outside_system().all(|f| f.file.is_none());
    if symbol_table_only && !e.dwarf_pending {
        evidence.push(
            "names come from the symbol table only: no files or lines, and inlined functions (async fn \
             bodies, closures) are invisible; add `debug = \"line-tables-only\"` to [profile.release] \
             for both"
                .into(),
        );
    }
    if no_culprit && r.culprit.is_none() && own.only_guessed() {
        evidence.push(format!(
            "no code of yours was recognised ({}); if your crates are missing, name them with \
             Builder::own_crates",
            own.describe()
        ));
    }
}

/// No loop thread inside own code, a dependency or nameless code.
fn overload_or_unknown(
    e: &Evidence<'_>,
    loop_threads: &[&ThreadStack],
    readings: &[Reading<'_>],
    mut evidence: Vec<String>,
) -> (Verdict, Option<Culprit>) {
    let busy = loop_threads.iter().filter(|t| on_cpu(e, t)).count();
    if let Some(q) = e.queue_depth {
        evidence.push(format!("global queue depth {q}"));
    }
    if let Some(p) = e.polls_during_stall {
        evidence.push(format!(
            "tokio's poll hooks counted {p} completed poll(s) on the loop thread during the stall"
        ));
    }
    if let Some(r) = readings.first() {
        symbols_note(r, e, busy > 0, &mut evidence);
    }
    if busy > 0 {
        evidence.push(format!(
            "{busy} of {} loop thread(s) busy on CPU in the runtime's own code, none stuck in a call of yours",
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
    if readings.iter().any(idle) {
        evidence.push(
            "the loop thread sleeps in the runtime's event wait: it looked idle when captured"
                .into(),
        );
    } else {
        evidence.push("no loop thread was found in your code or a dependency".into());
    }
    (
        Verdict {
            kind: VerdictKind::Unknown,
            summary: "the loop did not answer, but no thread was caught in application code".into(),
            evidence,
        },
        None,
    )
}
