//! `tokio_unstable`: the `'static` [`PollState`] cells the poll hooks
//! write, leased to one runtime thread's slot at a time.
//!
//! The poll hooks find their thread's [`PollState`] through a `const`
//! thread-local holding a plain `&'static PollState` (no destructor to
//! register, no `RefCell`, no reference count: see [`super::slot`]). A
//! `'static` reference needs a cell that is never freed, so cells are
//! leaked on purpose, and the leak is bounded by reuse: a [`PollLease`]
//! returns its cell to a free list when it is dropped, which happens when
//! the last holder of its slot lets go — after the thread unregistered
//! (`on_thread_stop`, or its thread-local destructor at thread exit) and
//! the monitor dropped its copy of the registry at its next refresh. A
//! later thread then reuses the cell. At most as many cells are ever
//! allocated as slots were alive at once: the peak number of registered
//! runtime threads, plus the few the monitor still held at that moment;
//! 128 bytes each.
//!
//! This module owns the pool and the lease. It does not own what a cell
//! holds ([`super::poll`]) nor the thread-local that points at it
//! ([`super::slot`]), which must stop pointing at a cell before its lease
//! is dropped.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::poll::PollState;

/// A free list of leaked cells, and how many it ever leaked.
pub(super) struct PollPool {
    free: Mutex<Vec<&'static PollState>>,
    allocated: AtomicUsize,
}

/// The process's pool.
static POOL: PollPool = PollPool::new();

impl PollPool {
    const fn new() -> Self {
        PollPool {
            free: Mutex::new(Vec::new()),
            allocated: AtomicUsize::new(0),
        }
    }

    /// A cell from the free list, or a newly leaked one, ready for a new
    /// thread: outside any poll.
    fn take(&'static self) -> PollLease {
        let reused = self.free.lock().pop();
        let state = reused.unwrap_or_else(|| {
            self.allocated.fetch_add(1, Ordering::Relaxed);
            Box::leak(Box::default())
        });
        // The previous holder may have stopped inside a poll, and its
        // sequence is not the new thread's.
        state.reset();
        PollLease { state, pool: self }
    }

    /// How many cells this pool has leaked so far.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Relaxed)
    }
}

/// One cell of the pool, held by one slot; back to the pool on drop.
pub(super) struct PollLease {
    state: &'static PollState,
    pool: &'static PollPool,
}

impl PollLease {
    /// A cell of the process's pool.
    pub(super) fn take() -> Self {
        POOL.take()
    }

    /// The cell, for the thread-local the poll hooks read. The thread-local
    /// must be cleared before this lease is dropped.
    pub(super) fn state(&self) -> &'static PollState {
        self.state
    }
}

impl Deref for PollLease {
    type Target = PollState;

    fn deref(&self) -> &PollState {
        self.state
    }
}

impl Drop for PollLease {
    fn drop(&mut self) {
        self.pool.free.lock().push(self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_reused_so_the_leak_is_the_peak_in_use() {
        let pool: &'static PollPool = Box::leak(Box::new(PollPool::new()));
        // Threads come and go, at most 3 registered at a time.
        for _ in 0..1000 {
            let held: Vec<PollLease> = (0..3).map(|_| pool.take()).collect();
            drop(held);
        }
        assert_eq!(pool.allocated(), 3);
        let a = pool.take();
        let b = pool.take();
        assert!(!std::ptr::eq(a.state(), b.state()));
        assert_eq!(pool.allocated(), 3);
    }

    #[test]
    fn a_reused_cell_starts_outside_any_poll() {
        let pool: &'static PollPool = Box::leak(Box::new(PollPool::new()));
        let lease = pool.take();
        lease.begin(7, 1); // its thread stopped inside a poll
        let cell = lease.state();
        drop(lease);
        let again = pool.take();
        assert!(std::ptr::eq(again.state(), cell));
        let (seq, _) = again.read();
        assert_eq!(seq % 2, 0, "sequence {seq} says inside a poll");
    }
}
