//! Per-thread slots: what the hooks of one runtime thread publish for the
//! monitor, and the thread-local through which a hook finds its own slot.
//!
//! A [`Slot`] is written only by its own thread, from the hooks, and read
//! by the monitor on its tick. [`LOCAL`] holds the calling thread's slot
//! and the scratch state only that thread uses. This module does not own
//! the registry of slots ([`RuntimeHooks`](super::runtime_hooks::RuntimeHooks)),
//! nor what a slot embeds: the learned worker index (`worker_index`, stable
//! tokio) and the poll state (`poll`, `tokio_unstable`).

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
    #[cfg(tokio_unstable)]
    pub(super) poll: PollState,
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
            #[cfg(tokio_unstable)]
            last_location: Cell::new((0, 0)),
        }
    };
}

/// The calling thread's view: its slot (set at thread start, so the hot
/// path borrows it without touching the `Arc`'s count) and scratch state
/// only this thread uses.
pub(super) struct Local {
    pub(super) slot: RefCell<Option<Arc<Slot>>>,
    #[cfg(not(tokio_unstable))]
    pub(super) learn: RefCell<Option<LocalLearn>>,
    /// The last spawn location seen (address) and its interned index.
    #[cfg(tokio_unstable)]
    last_location: Cell<(usize, u32)>,
}

#[cfg(tokio_unstable)]
impl Local {
    #[inline]
    pub(super) fn location_index(&self, location: &'static Location<'static>) -> u32 {
        let address = location as *const Location<'static> as usize;
        let (last, index) = self.last_location.get();
        if last == address {
            return index;
        }
        let index = intern_location(location);
        self.last_location.set((address, index));
        index
    }
}
