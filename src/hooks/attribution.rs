//! Stable tokio: which thread runs a stuck worker, from what the worker
//! threads learned about their indices ([`super::worker_index`]).
//!
//! The monitor keeps, per thread, the learned indices that the current
//! counts agree with (an awake thread's worker still shows the count of its
//! unpark snapshot), removes from each thread the indices another thread
//! alone claims, and attributes a stuck index to the awake threads left
//! with it. When more than one remains, all are reported
//! ([`StuckWorker::tids`](super::stuck::StuckWorker::tids)), the most
//! likely first.
//!
//! This module owns that attribution. It does not decide that a worker is
//! stuck ([`WorkerWatch`](super::watch::WorkerWatch) does, then asks here
//! whose it is), nor how the threads learn their index.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::slot::Slot;
use super::stuck::Found;

/// One known worker thread as the monitor sees it this tick.
struct WorkerView<'a> {
    slot: &'a Slot,
    parked: bool,
    /// The worker indices it may run now (a bit set).
    mask: Vec<u64>,
}

/// Worker `i`, unchanged for longer than the threshold, is stuck if its
/// published count says awake. Its thread is an awake thread of `slots`
/// that may run `i` (see [`worker_views`]), after removing from each thread
/// the indices another thread alone claims; the one with the fewest other
/// candidates first. No such thread: not reported.
pub(super) fn judge_stable(slots: &[Arc<Slot>], i: usize, park_unpark: &[u64]) -> Option<Found> {
    if park_unpark[i] % 2 == 1 {
        return None; // parked
    }
    let views = worker_views(slots, park_unpark);
    let has = |mask: &[u64], j: usize| mask[j / 64] & (1 << (j % 64)) != 0;
    let count = |mask: &[u64]| mask.iter().map(|w| w.count_ones()).sum::<u32>();
    let pick = |masks: &[Vec<u64>]| -> Vec<(u32, &Slot)> {
        let mut out: Vec<(u32, &Slot)> = views
            .iter()
            .zip(masks)
            .filter(|(v, m)| !v.parked && has(m, i))
            .map(|(v, m)| (count(m), v.slot))
            .collect();
        // The thread that learned `i` most precisely first.
        out.sort_by_key(|(count, _)| *count);
        out
    };
    let raw: Vec<Vec<u64>> = views.iter().map(|v| v.mask.clone()).collect();
    // Elimination: an index that another thread alone claims is not
    // this thread's (unless that would leave it nothing).
    let mut masks = raw.clone();
    loop {
        let mut changed = false;
        for a in 0..masks.len() {
            if count(&masks[a]) != 1 {
                continue;
            }
            let single = masks[a].clone();
            for (b, mask) in masks.iter_mut().enumerate() {
                if b == a || count(mask) <= 1 {
                    continue;
                }
                let rest: Vec<u64> = mask.iter().zip(&single).map(|(m, s)| m & !s).collect();
                if rest != *mask && count(&rest) > 0 {
                    *mask = rest;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut candidates = pick(&masks);
    if candidates.is_empty() {
        candidates = pick(&raw);
    }
    let first = candidates.first()?;
    let thread = first.1.name.clone();
    Some((
        candidates.iter().map(|(_, s)| s.tid).collect(),
        thread,
        None,
    ))
}

/// Each known worker thread of `slots`, read consistently, with the
/// worker indices it may run now: those it learned, kept only where the
/// current counts agree (an awake thread's worker has not published
/// since its unpark, so its count still equals the unpark snapshot; a
/// parked thread's worker shows an odd count).
fn worker_views<'a>(slots: &'a [Arc<Slot>], park_unpark: &[u64]) -> Vec<WorkerView<'a>> {
    let n = park_unpark.len();
    let mut views = Vec::new();
    for slot in slots {
        let seq = slot.park_seq.load(Ordering::Acquire);
        let learned = &slot.learned;
        if seq == 0 || learned.at_unpark.len() != n {
            continue; // not a known worker of this runtime
        }
        let parked = seq & 1 == 1;
        let mut mask: Vec<u64> = learned
            .mask
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .collect();
        for (j, &count) in park_unpark.iter().enumerate() {
            let agrees = if parked {
                count % 2 == 1
            } else {
                learned.at_unpark[j].load(Ordering::Relaxed) == count
            };
            if !agrees {
                mask[j / 64] &= !(1 << (j % 64));
            }
        }
        // A thread that moved while we read it is skipped this tick.
        fence(Ordering::Acquire);
        if slot.park_seq.load(Ordering::Relaxed) == seq {
            views.push(WorkerView { slot, parked, mask });
        }
    }
    views
}
