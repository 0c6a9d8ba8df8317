//! The raw evidence the diagnostics gather besides stacks: CPU time per
//! thread over a stretch of the stall, and parking_lot's lock cycles.
//!
//! Reading CPU time costs one `/proc` read per thread, so a caller that
//! knows which threads matter (the loop's) asks for those only. This
//! module decides nothing; the verdict does.

use std::collections::HashMap;
use std::time::Duration;

use crate::procfs;
use crate::stacks::ThreadStack;

/// CPU time per thread id.
pub(super) type CpuTimes = HashMap<i32, Duration>;

/// The CPU time of `tids`, or of every thread of the process when `None`.
pub(super) fn cpu_sample(tids: Option<&[i32]>) -> CpuTimes {
    let read = |tid: i32| Some((tid, procfs::read_thread(tid)?.cpu_time));
    match tids {
        Some(tids) => tids.iter().filter_map(|t| read(*t)).collect(),
        None => procfs::list_threads()
            .into_iter()
            .filter_map(read)
            .collect(),
    }
}

/// CPU used by each thread of `after` since `before`.
pub(super) fn cpu_delta_from(before: &CpuTimes, after: &[ThreadStack]) -> CpuTimes {
    after
        .iter()
        .filter_map(|t| {
            let now = t.facts.as_ref()?.cpu_time;
            Some((t.tid, now.saturating_sub(*before.get(&t.tid)?)))
        })
        .collect()
}

/// CPU used by each thread between two captures.
pub(super) fn cpu_delta(first: &[ThreadStack], second: &[ThreadStack]) -> CpuTimes {
    let before: CpuTimes = first
        .iter()
        .filter_map(|t| Some((t.tid, t.facts.as_ref()?.cpu_time)))
        .collect();
    cpu_delta_from(&before, second)
}

/// Threads in a parking_lot lock cycle, with the `deadlock-detection`
/// feature. parking_lot reports each cycle once, so callers keep them.
#[cfg(feature = "deadlock-detection")]
pub(super) fn deadlock_cycles() -> Vec<String> {
    parking_lot::deadlock::check_deadlock()
        .iter()
        .enumerate()
        .map(|(i, cycle)| {
            let threads: Vec<String> = cycle
                .iter()
                .map(|t| {
                    let waiting_in = t
                        .backtrace()
                        .frames()
                        .iter()
                        .flat_map(|f| f.symbols())
                        .filter_map(|s| s.name().map(|n| format!("{n:#}")))
                        .find(|n| {
                            ![
                                "parking_lot",
                                "lock_api",
                                "std::",
                                "core::",
                                "backtrace",
                                "loopwatch",
                                "<",
                            ]
                            .iter()
                            .any(|p| n.starts_with(p))
                        })
                        .map(|n| crate::origin::names::enclosing_function(&n))
                        .unwrap_or_else(|| "?".into());
                    format!("{:?} waiting in {waiting_in}", t.thread_id())
                })
                .collect();
            format!("cycle {}: {}", i + 1, threads.join(" <-> "))
        })
        .collect()
}

/// Without the `deadlock-detection` feature there is no checker to ask.
#[cfg(not(feature = "deadlock-detection"))]
pub(super) fn deadlock_cycles() -> Vec<String> {
    Vec::new()
}
