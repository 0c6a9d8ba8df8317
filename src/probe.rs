//! The probe: a task on each watched runtime that answers the monitor's wakes.
//!
//! The monitor thread stamps the time, then wakes the probe task through a
//! [`Notify`]. When the runtime polls the task, the task stamps the time it
//! was polled. The difference is the probe lag: how long the runtime took to
//! get to a task that was ready to run. It is measured in microseconds from
//! the monotonic clock, not from tokio's timer wheel, and a wake that is never
//! answered has a lag that keeps growing with the clock.
//!
//! Only one wake is ever outstanding per runtime, so the probe's shared state
//! is a handful of atomics with no lock. The task holds a guard whose drop
//! marks the probe gone: that is how the monitor learns that a runtime was
//! shut down.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::clock;

/// State shared between the monitor thread and one probe task.
#[derive(Debug, Default)]
pub(crate) struct ProbeShared {
    /// Clock reading when the outstanding (or last) wake was sent.
    woken_at: AtomicU64,
    /// Sequence number of the last wake sent.
    wake_seq: AtomicU64,
    /// Clock reading when the task last ran.
    answered_at: AtomicU64,
    /// Sequence number of the last wake answered.
    answer_seq: AtomicU64,
    /// False once the task has been dropped (runtime shut down).
    alive: AtomicBool,
    /// OS thread id of the thread that last polled the probe: a thread that
    /// runs this runtime's tasks.
    poller: AtomicI32,
    notify: Notify,
}

/// What the monitor reads of a probe on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeReading {
    /// The last wake was answered with this lag (µs); `answered_at` is when.
    Answered {
        /// When the wake was sent.
        woken_at: u64,
        /// When the task ran.
        answered_at: u64,
    },
    /// The wake sent at `woken_at` is still unanswered.
    Waiting {
        /// When the wake was sent.
        woken_at: u64,
    },
    /// The probe task no longer exists: its runtime was shut down.
    Gone,
}

impl ProbeReading {
    /// The lag this reading stands for at clock reading `now`.
    pub(crate) fn lag_us(&self, now: u64) -> u64 {
        match *self {
            ProbeReading::Answered {
                woken_at,
                answered_at,
            } => answered_at.saturating_sub(woken_at),
            ProbeReading::Waiting { woken_at } => now.saturating_sub(woken_at),
            ProbeReading::Gone => 0,
        }
    }
}

impl ProbeShared {
    /// Reads the probe without touching the runtime.
    pub(crate) fn read(&self) -> ProbeReading {
        if !self.alive.load(Ordering::Acquire) {
            return ProbeReading::Gone;
        }
        let wake_seq = self.wake_seq.load(Ordering::Acquire);
        let answer_seq = self.answer_seq.load(Ordering::Acquire);
        let woken_at = self.woken_at.load(Ordering::Acquire);
        if answer_seq == wake_seq {
            ProbeReading::Answered {
                woken_at,
                answered_at: self.answered_at.load(Ordering::Acquire),
            }
        } else {
            ProbeReading::Waiting { woken_at }
        }
    }

    /// Sends a new wake stamped `now`. Call only when the last one was answered.
    pub(crate) fn wake(&self, now: u64) {
        self.woken_at.store(now, Ordering::Release);
        self.wake_seq.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// How many wakes have been sent.
    #[cfg(test)]
    pub(crate) fn wakes(&self) -> u64 {
        self.wake_seq.load(Ordering::Acquire)
    }

    /// The OS thread that last polled the probe.
    pub(crate) fn poller_tid(&self) -> Option<i32> {
        Some(self.poller.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Called by the task when it is polled after a wake.
    fn answer(&self) {
        let seq = self.wake_seq.load(Ordering::Acquire);
        let now = clock::now_us();
        self.poller.store(thread_tid(), Ordering::Relaxed);
        self.answered_at.store(now, Ordering::Release);
        self.answer_seq.store(seq, Ordering::Release);
    }
}

/// This thread's OS id, cached per thread (one system call per thread).
fn thread_tid() -> i32 {
    thread_local! {
        static TID: i32 = crate::stacks::current_tid();
    }
    TID.with(|t| *t)
}

/// Marks the probe gone when the task (and so the future holding it) drops.
struct AliveGuard(Arc<ProbeShared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        tracing::trace!("loopwatch probe task dropped");
    }
}

/// Spawns the probe task on `handle` and returns its shared state.
///
/// The first wake is sent at once, stamped `now`: a runtime that never polls
/// its tasks is a stuck runtime.
pub(crate) fn spawn(handle: &Handle, now: u64) -> Arc<ProbeShared> {
    let shared = Arc::new(ProbeShared::default());
    shared.alive.store(true, Ordering::Release);
    shared.woken_at.store(now, Ordering::Release);
    shared.wake_seq.store(1, Ordering::Release);
    shared.notify.notify_one();
    let guard = AliveGuard(shared.clone());
    handle.spawn(async move {
        let guard = guard;
        loop {
            guard.0.notify.notified().await;
            guard.0.answer();
        }
    });
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_answered(p: &ProbeShared) -> ProbeReading {
        for _ in 0..2000 {
            if let r @ ProbeReading::Answered { .. } = p.read() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("probe never answered: {:?}", p.read());
    }

    #[test]
    fn probe_answers_on_a_running_runtime_and_goes_when_it_drops() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let p = spawn(rt.handle(), clock::now_us());
        let first = wait_answered(&p);
        assert!(first.lag_us(clock::now_us()) < 1_000_000);
        p.wake(clock::now_us());
        let second = wait_answered(&p);
        assert_ne!(first, second, "the second wake must be answered anew");
        drop(rt);
        assert_eq!(p.read(), ProbeReading::Gone);
    }

    #[test]
    fn unanswered_lag_grows_with_the_clock() {
        // A current_thread runtime that is never driven never polls the probe.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let t0 = clock::now_us();
        let p = spawn(rt.handle(), t0);
        let r = p.read();
        assert_eq!(r, ProbeReading::Waiting { woken_at: t0 });
        assert_eq!(r.lag_us(t0 + 7_000), 7_000);
        assert_eq!(r.lag_us(t0 + 9_000), 9_000);
    }
}
