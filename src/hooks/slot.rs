//! Per-thread slots: what the hooks of one runtime thread publish for the
//! monitor, and the thread-locals through which a hook finds its own slot.
//!
//! A [`Slot`] is written only by its own thread, from the hooks, and read
//! by the monitor on its tick. Two thread-locals lead a hook to it:
//!
//! * [`LOCAL`], for the rare hooks (thread start and stop, park and
//!   unpark): the slot itself (an `Arc` shared with the registry) and the
//!   scratch state only this thread uses, behind `RefCell`s.
//! * `POLLING` (`tokio_unstable` only), for the per-poll hooks: a `const`
//!   thread-local without a destructor, so reading it is one access
//!   relative to the thread pointer, with no lazy initialisation, no
//!   destructor registration and no borrow flag. It holds a `&'static`
//!   reference to the slot's [`PollState`] (leased from
//!   [`super::poll_pool`]), set at thread start and cleared before the
//!   slot can be dropped; and the last two spawn locations seen, so a poll
//!   of a task from the same spawn site as one of the previous two costs
//!   one or two comparisons. The poll hooks do not check which
//!   `RuntimeHooks` registered the thread (that check needs the hooks' own
//!   id after the thread-local read and cost more than the rest of the
//!   hook): a slot describes its thread, whichever runtime's task the
//!   thread polls.
//!
//! This module does not own the registry of slots
//! ([`RuntimeHooks`](super::runtime_hooks::RuntimeHooks)), nor what a slot
//! embeds: the learned worker index (`worker_index`, stable tokio) and the
//! poll state (`poll`, `tokio_unstable`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

#[cfg(tokio_unstable)]
use std::cell::Cell;
#[cfg(tokio_unstable)]
use std::panic::Location;

#[cfg(tokio_unstable)]
use super::poll::PollState;
#[cfg(tokio_unstable)]
use super::poll_pool::PollLease;
#[cfg(tokio_unstable)]
use super::spawn_location::intern_location;
#[cfg(not(tokio_unstable))]
use super::worker_index::{Learned, LocalLearn};

/// What the hooks of one runtime thread publish for the monitor.
pub(super) struct Slot {
    /// The `RuntimeHooks` instance that registered it.
    pub(super) owner: u64,
    pub(super) tid: i32,
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    pub(super) thread_id: ThreadId,
    pub(super) name: Option<String>,
    /// Park/unpark transitions seen by the hooks; odd while parked. Written
    /// only by the owning thread.
    pub(super) park_seq: AtomicU64,
    #[cfg(not(tokio_unstable))]
    pub(super) learned: Learned,
    /// Its cell goes back to the pool when the slot is dropped.
    #[cfg(tokio_unstable)]
    pub(super) poll: PollLease,
}

impl Slot {
    pub(super) fn is_known_worker(&self) -> bool {
        self.park_seq.load(Ordering::Relaxed) > 0
    }
}

thread_local! {
    pub(super) static LOCAL: Local = const {
        Local {
            slot: RefCell::new(None),
            #[cfg(not(tokio_unstable))]
            learn: RefCell::new(None),
        }
    };
}

/// The calling thread's slot (set at thread start) and scratch state only
/// this thread uses; for the hooks that do not run on every poll.
pub(super) struct Local {
    pub(super) slot: RefCell<Option<Arc<Slot>>>,
    #[cfg(not(tokio_unstable))]
    pub(super) learn: RefCell<Option<LocalLearn>>,
}

#[cfg(tokio_unstable)]
impl Drop for Local {
    /// At thread exit, with the slot still set (no `on_thread_stop`): the
    /// poll hooks must stop writing to the slot's cell before this `Arc`
    /// is dropped, since it may be the last one and free the cell for
    /// another thread.
    fn drop(&mut self) {
        POLLING.with(Polling::clear);
    }
}

#[cfg(tokio_unstable)]
thread_local! {
    pub(super) static POLLING: Polling = const {
        Polling {
            current: Cell::new(None),
            recent_locations: [const { Cell::new((0, 0)) }; 2],
        }
    };
}

/// `tokio_unstable`: what the per-poll hooks read, in a thread-local that
/// needs no destructor.
#[cfg(tokio_unstable)]
pub(super) struct Polling {
    /// The poll state of the slot this thread is registered with; set only
    /// while [`LOCAL`] holds that slot.
    current: Cell<Option<&'static PollState>>,
    /// The two spawn locations seen last on this thread (address, interned
    /// index), the newest first; address 0 = none.
    recent_locations: [Cell<(usize, u32)>; 2],
}

#[cfg(tokio_unstable)]
impl Polling {
    /// Points the poll hooks at `slot`'s poll state.
    pub(super) fn set(&self, slot: &Slot) {
        self.current.set(Some(slot.poll.state()));
    }

    /// Stops the poll hooks writing anywhere.
    pub(super) fn clear(&self) {
        self.current.set(None);
    }

    /// The before-poll hook: if this thread is registered, publishes a poll
    /// of `task`, spawned at `location`, as begun. A location among the
    /// last two seen on this thread costs one or two comparisons; another
    /// one is interned out of line.
    #[inline]
    pub(super) fn begin(&self, task: u64, location: &'static Location<'static>) {
        let Some(state) = self.current.get() else {
            return;
        };
        let address = location as *const Location<'static> as usize;
        let [newest, older] = &self.recent_locations;
        let (seen, index) = newest.get();
        if seen == address {
            return state.begin(task, index);
        }
        let (seen, index) = older.get();
        if seen == address {
            return state.begin(task, index);
        }
        self.begin_at_new_location(state, task, location);
    }

    /// The after-poll hook: if this thread is registered, publishes the
    /// poll as ended.
    #[inline]
    pub(super) fn end(&self) {
        if let Some(state) = self.current.get() {
            state.end();
        }
    }

    #[inline(never)]
    fn begin_at_new_location(
        &self,
        state: &PollState,
        task: u64,
        location: &'static Location<'static>,
    ) {
        let index = intern_location(location);
        let [newest, older] = &self.recent_locations;
        older.set(newest.get());
        newest.set((location as *const Location<'static> as usize, index));
        state.begin(task, index);
    }
}

#[cfg(all(test, tokio_unstable))]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::super::runtime_hooks::RuntimeHooks;
    use super::Slot;

    /// Runs `tasks` tasks, each polled twice, on a current_thread runtime
    /// driven by the calling thread, with `hooks`' poll hooks installed.
    fn poll_tasks_here(hooks: &RuntimeHooks, tasks: usize) {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let rt = hooks.install(&mut builder).build().expect("runtime");
        rt.block_on(async {
            for _ in 0..tasks {
                tokio::spawn(tokio::task::yield_now()).await.unwrap();
            }
        });
    }

    /// The registered slot of the thread with OS thread id `tid`.
    fn slot_of(hooks: &RuntimeHooks, tid: i32) -> Arc<Slot> {
        let (_, slots) = hooks.snapshot();
        slots
            .into_iter()
            .find(|s| s.tid == tid)
            .expect("thread registered")
    }

    #[test]
    fn poll_hooks_publish_only_to_the_calling_threads_slot_while_registered() {
        let hooks = RuntimeHooks::new();
        let registered = Arc::new(Barrier::new(2));
        let done = Arc::new(Barrier::new(2));
        // A registered thread that polls nothing.
        let idle = std::thread::spawn({
            let (hooks, registered, done) = (hooks.clone(), registered.clone(), done.clone());
            move || {
                hooks.on_thread_start();
                registered.wait();
                done.wait();
                crate::stacks::current_tid()
            }
        });
        registered.wait();
        let hooks_here = hooks.clone();
        let polling = std::thread::spawn(move || {
            let hooks = hooks_here;
            // Not registered yet: its polls publish nowhere.
            poll_tasks_here(&hooks, 10);
            hooks.on_thread_start();
            let mine = slot_of(&hooks, crate::stacks::current_tid());
            assert_eq!(mine.poll.read().0, 0);
            // Two sequence steps per poll, ending outside one.
            poll_tasks_here(&hooks, 10);
            let seq = mine.poll.read().0;
            assert!(seq >= 40 && seq % 2 == 0, "sequence {seq} after 20 polls");
            // Once unregistered, its poll hooks write nowhere: the slot's
            // cell may already serve another thread.
            hooks.on_thread_stop();
            poll_tasks_here(&hooks, 10);
            assert_eq!(mine.poll.read().0, seq);
        });
        polling.join().unwrap();
        let idle_tid = {
            let (_, slots) = hooks.snapshot();
            assert_eq!(slots.len(), 1, "only the idle thread is registered now");
            assert_eq!(slots[0].poll.read().0, 0, "the idle thread's slot moved");
            slots[0].tid
        };
        done.wait();
        assert_eq!(idle.join().unwrap(), idle_tid);
    }
}
