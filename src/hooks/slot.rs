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
//!   destructor registration and no borrow flag. It holds the owning
//!   hooks' id and a `&'static` reference to the slot's [`PollState`]
//!   (leased from [`super::poll_pool`]), set at thread start and cleared
//!   before the slot can be dropped; and the last spawn location seen, so
//!   a poll of a task from the same spawn site as the previous one costs
//!   one comparison.
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
            current: Cell::new((NO_HOOKS, &UNREGISTERED)),
            recent_locations: [const { Cell::new((0, 0)) }; 2],
        }
    };
}

/// No `RuntimeHooks` has id 0 (they count from 1).
#[cfg(tokio_unstable)]
const NO_HOOKS: u64 = 0;

/// The poll state of a thread that no hooks registered: never written, as
/// no hooks' id matches [`NO_HOOKS`]. It spares the hot path a check for
/// "no state" on top of the check of the owner.
#[cfg(tokio_unstable)]
static UNREGISTERED: PollState = PollState::new();

/// `tokio_unstable`: what the per-poll hooks read, in a thread-local that
/// needs no destructor.
#[cfg(tokio_unstable)]
pub(super) struct Polling {
    /// The id of the `RuntimeHooks` that registered this thread, and its
    /// slot's poll state; set only while [`LOCAL`] holds that slot, else
    /// `(NO_HOOKS, &UNREGISTERED)`.
    current: Cell<(u64, &'static PollState)>,
    /// The two spawn locations seen last on this thread (address, interned
    /// index), the newest first; address 0 = none.
    recent_locations: [Cell<(usize, u32)>; 2],
}

#[cfg(tokio_unstable)]
impl Polling {
    /// Points the poll hooks at `slot`, registered by hooks `owner`.
    pub(super) fn set(&self, owner: u64, slot: &Slot) {
        self.current.set((owner, slot.poll.state()));
    }

    /// Stops the poll hooks writing anywhere.
    pub(super) fn clear(&self) {
        self.current.set((NO_HOOKS, &UNREGISTERED));
    }

    /// The before-poll hook of hooks `owner`: when they registered this
    /// thread, publishes a poll of `task`, spawned at `location`, as begun.
    /// A location among the last two seen on this thread costs one or two
    /// comparisons; another one is interned out of line.
    #[inline]
    pub(super) fn begin(&self, owner: u64, task: u64, location: &'static Location<'static>) {
        let Some(state) = self.state(owner) else {
            return;
        };
        let address = location as *const Location<'static> as usize;
        for recent in &self.recent_locations {
            let (seen, index) = recent.get();
            if seen == address {
                state.begin(task, index);
                return;
            }
        }
        self.begin_at_new_location(state, task, location);
    }

    /// The after-poll hook of hooks `owner`.
    #[inline]
    pub(super) fn end(&self, owner: u64) {
        if let Some(state) = self.state(owner) {
            state.end();
        }
    }

    /// This thread's poll state, if hooks `owner` registered it.
    #[inline]
    fn state(&self, owner: u64) -> Option<&'static PollState> {
        let (registered, state) = self.current.get();
        (registered == owner).then_some(state)
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
    use super::super::runtime_hooks::RuntimeHooks;

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

    /// The poll sequence of the one slot `hooks` registered.
    fn poll_seq(hooks: &RuntimeHooks) -> u64 {
        let (_, slots) = hooks.snapshot();
        assert_eq!(slots.len(), 1, "one registered thread expected");
        slots[0].poll.read().0
    }

    #[test]
    fn poll_hooks_write_only_to_their_own_registered_slot() {
        let (mine, other) = (RuntimeHooks::new(), RuntimeHooks::new());
        std::thread::spawn(move || {
            mine.on_thread_start();
            // Another instance's poll hooks on this thread leave it alone.
            poll_tasks_here(&other, 10);
            assert_eq!(poll_seq(&mine), 0);
            // Its own move the sequence, two per poll, ending outside one.
            poll_tasks_here(&mine, 10);
            let seq = poll_seq(&mine);
            assert!(seq >= 40 && seq % 2 == 0, "sequence {seq} after 20 polls");
            // Once unregistered, the thread's poll hooks write nowhere:
            // the slot's cell may already serve another thread.
            let (_, slots) = mine.snapshot();
            mine.on_thread_stop();
            poll_tasks_here(&mine, 10);
            assert_eq!(slots[0].poll.read().0, seq);
            assert!(mine.threads().is_empty());
        })
        .join()
        .unwrap();
    }
}
