//! `tokio_unstable`: the per-poll state a worker thread publishes from the
//! before/after-poll hooks.
//!
//! [`PollState`] is a seqlock on its own cache line: the before-poll hook
//! makes its sequence odd and stores the polled task's id and interned
//! spawn location, the after-poll hook makes the sequence even again, and
//! the monitor reads all three consistently on its tick. No lock, no clock
//! read: the monitor does the timing when it samples.
//!
//! This module owns that cell. It does not own the slot it lives in
//! ([`super::slot`]), the spawn-location table ([`super::spawn_location`]),
//! nor what a sequence that stopped moving means
//! ([`WorkerWatch`](super::watch::WorkerWatch)).

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// The per-poll state, on its own cache line: written by its worker on
/// every poll, read by the monitor on its tick.
#[derive(Default)]
#[repr(align(128))]
pub(super) struct PollState {
    /// Odd while a poll runs.
    seq: AtomicU64,
    /// The polled task's id (`tokio::task::Id` as a number).
    task: AtomicU64,
    /// Index into the spawn-location table ([`super::spawn_location`])
    /// plus one; 0 = unknown.
    location: AtomicU32,
}

impl PollState {
    /// A seqlock writer: the release fence orders the previous sequence
    /// store before the data stores, so a reader that sees new data also
    /// sees a changed sequence.
    #[inline]
    pub(super) fn begin(&self, task: u64, location: u32) {
        let seq = self.seq.load(Ordering::Relaxed);
        fence(Ordering::Release);
        self.task.store(task, Ordering::Relaxed);
        self.location.store(location, Ordering::Relaxed);
        self.seq.store((seq + 1) | 1, Ordering::Release);
    }

    #[inline]
    pub(super) fn end(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            self.seq.store(seq + 1, Ordering::Release);
        }
    }

    /// The sequence, and the task and location if they were read
    /// consistently with it.
    pub(super) fn read(&self) -> (u64, Option<(u64, u32)>) {
        let s1 = self.seq.load(Ordering::Acquire);
        let task = self.task.load(Ordering::Relaxed);
        let location = self.location.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1, (s1 == s2).then_some((task, location)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_state_reads_consistently() {
        let p = PollState::default();
        assert_eq!(p.read(), (0, Some((0, 0))));
        p.begin(7, 3);
        assert_eq!(p.read(), (1, Some((7, 3))));
        p.end();
        p.end(); // an unmatched end changes nothing
        assert_eq!(p.read().0, 2);
        p.begin(8, 4);
        p.begin(9, 5); // a missed end still leaves the sequence odd
        assert_eq!(p.read(), (5, Some((9, 5))));
    }
}
