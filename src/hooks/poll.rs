//! `tokio_unstable`: the per-poll state a worker thread publishes from the
//! before/after-poll hooks.
//!
//! [`PollState`] is a seqlock on its own cache line with one writer, its
//! thread. The before-poll hook ([`PollState::begin`]) is one relaxed load
//! of the sequence, a release fence, two relaxed stores (the polled task's
//! id and its interned spawn location) and a release store of the next odd
//! sequence number; the after-poll hook ([`PollState::end`]) is one relaxed
//! load and, if the sequence is odd, a release store of the next even one.
//! On x86-64 none of these is a fence instruction or a locked one: each is
//! a plain `mov`. No lock, no clock read: the monitor does the timing when
//! it samples ([`PollState::read`]). A read whose sequence is odd and the
//! same before and after is the data of that poll; with an even sequence
//! the data may be the previous poll's or the next one's.
//!
//! This module owns that cell. It does not own where cells come from
//! ([`super::poll_pool`]), the thread-local through which the hooks find
//! theirs ([`super::slot`]), the spawn-location table
//! ([`super::spawn_location`]), nor what a sequence that stopped moving
//! means ([`WorkerWatch`](super::watch::WorkerWatch)).

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
    /// Publishes a poll of `task` (spawned at interned `location`) as
    /// begun: the data first, then the sequence made odd. The release fence
    /// orders the previous sequence store before the data stores, so a
    /// reader that sees this poll's data also sees the sequence move past
    /// the value it read first; the release store of the odd sequence makes
    /// the data visible to a reader that sees that sequence.
    #[inline]
    pub(super) fn begin(&self, task: u64, location: u32) {
        let seq = self.seq.load(Ordering::Relaxed);
        fence(Ordering::Release);
        self.task.store(task, Ordering::Relaxed);
        self.location.store(location, Ordering::Relaxed);
        self.seq.store((seq + 1) | 1, Ordering::Release);
    }

    /// Publishes the poll as ended: the sequence made even, if it was odd
    /// (an unmatched end changes nothing).
    #[inline]
    pub(super) fn end(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            self.seq.store(seq + 1, Ordering::Release);
        }
    }

    /// A cell back in use for a new thread: no poll, sequence from 0 (no
    /// reader holds a cell that is on the pool's free list).
    pub(super) fn reset(&self) {
        self.task.store(0, Ordering::Relaxed);
        self.location.store(0, Ordering::Relaxed);
        self.seq.store(0, Ordering::Release);
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

    /// The monitor's view while a worker polls: every read that claims to
    /// be consistent with an odd sequence holds exactly that poll's task
    /// and location.
    #[test]
    fn a_concurrent_reader_sees_whole_polls_only() {
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};

        // Poll `t` (from 1) has sequence 2t - 1 and location `location(t)`.
        fn location(task: u64) -> u32 {
            (task.wrapping_mul(0x9E37_79B9) >> 7) as u32
        }
        let state: &'static PollState = Box::leak(Box::default());
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let writer = std::thread::spawn(move || {
            let mut task = 0;
            while !stop.load(Ordering::Relaxed) {
                task += 1;
                state.begin(task, location(task));
                for _ in 0..64 {
                    std::hint::spin_loop(); // a short poll
                }
                state.end();
            }
            task
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut inside, mut last_seq) = (0u32, 0);
        while inside < 10_000 && Instant::now() < deadline {
            let (seq, data) = state.read();
            assert!(
                seq >= last_seq,
                "sequence went back from {last_seq} to {seq}"
            );
            last_seq = seq;
            if let (1, Some((task, at))) = (seq % 2, data) {
                assert_eq!(task, seq.div_ceil(2), "task of sequence {seq}");
                assert_eq!(at, location(task), "location of task {task}");
                inside += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let polls = writer.join().unwrap();
        assert!(
            inside >= 100,
            "only {inside} consistent reads inside a poll in {polls} polls"
        );
    }
}
