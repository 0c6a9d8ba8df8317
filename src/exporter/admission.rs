//! Who gets a connection slot: the exporter's table of open connections.
//!
//! This module owns the bookkeeping behind
//! [`ExporterLimits::max_connections`](super::ExporterLimits): one
//! [`Slot`] per open connection, saying what the connection is doing
//! ([`SlotState`]) and since when it has been idle, and the decision taken
//! for each newly accepted connection ([`ConnectionTable::make_room`]):
//!
//! * below the cap, it is admitted;
//! * at the cap, the connection idle for longest (waiting for a request
//!   head: its first one, or the next one on keep-alive) is evicted to make
//!   room, so a burst of idle or trickling sockets can never lock a liveness
//!   probe out;
//! * a connection accepted but not yet polled is never evicted (its socket
//!   is not even registered with the reactor, so a head its client already
//!   sent cannot have been seen): if only such connections stand in the
//!   way, the caller lets them run and asks again;
//! * only when every connection is inside a request is the new one refused.
//!
//! It does not accept, serve or close sockets (that is
//! [`super::connections`], which aborts the task of an evicted connection),
//! nor observe what a connection does (that is [`super::activity`], which
//! moves a slot between states). Everything here runs on the exporter's one
//! thread; the atomics only make slots shareable with connection tasks.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::clock;

/// What a connection is doing, as far as admission is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum SlotState {
    /// Accepted; its task has not read from the socket yet.
    New = 0,
    /// Waiting for a complete request head (the first, or the next one on
    /// keep-alive). The only state that can be evicted.
    Idle = 1,
    /// A complete head was read; its response is not yet handed over.
    Busy = 2,
    /// The response is handed to hyper but not yet written to the socket.
    Sending = 3,
    /// The connection's task is over.
    Closed = 4,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            0 => SlotState::New,
            1 => SlotState::Idle,
            2 => SlotState::Busy,
            3 => SlotState::Sending,
            _ => SlotState::Closed,
        }
    }
}

/// One open connection's state, shared between the accept loop and the
/// connection's task.
#[derive(Debug)]
pub(super) struct Slot {
    state: AtomicU8,
    /// When the connection last became idle (accepted, or its last response
    /// written), in [`clock`] microseconds.
    idle_since_us: AtomicU64,
}

impl Slot {
    /// A slot for a connection accepted now.
    pub(super) fn new() -> Arc<Slot> {
        Arc::new(Slot {
            state: AtomicU8::new(SlotState::New as u8),
            idle_since_us: AtomicU64::new(clock::now_us()),
        })
    }

    /// What the connection is doing.
    pub(super) fn state(&self) -> SlotState {
        SlotState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// When the connection last became idle, in [`clock`] microseconds.
    pub(super) fn idle_since_us(&self) -> u64 {
        self.idle_since_us.load(Ordering::Acquire)
    }

    /// The task tried to read its socket for the first time: a `New` slot
    /// is now `Idle` (a head read in that same attempt makes it `Busy` at
    /// once; tokio may answer the first attempt without reading, before the
    /// reactor has reported the socket readable).
    pub(super) fn polled(&self) {
        self.swap(SlotState::New, SlotState::Idle);
    }

    /// A complete request head was read.
    pub(super) fn request_started(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != SlotState::Closed as u8).then_some(SlotState::Busy as u8)
            });
    }

    /// The response was handed to hyper in full.
    pub(super) fn response_handed_over(&self) {
        self.swap(SlotState::Busy, SlotState::Sending);
    }

    /// Everything written so far reached the socket: a `Sending` slot is
    /// idle again, from now.
    pub(super) fn flushed(&self) {
        if self.state() == SlotState::Sending {
            self.idle_since_us.store(clock::now_us(), Ordering::Release);
            self.swap(SlotState::Sending, SlotState::Idle);
        }
    }

    /// The connection's task is over (its socket closed).
    pub(super) fn closed(&self) {
        self.state.store(SlotState::Closed as u8, Ordering::Release);
    }

    fn swap(&self, from: SlotState, to: SlotState) {
        let _ =
            self.state
                .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The answer to "may one more connection come in?".
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Room<H> {
    /// Below the cap.
    Free,
    /// At the cap; this connection (its handle) was the one idle for
    /// longest and has been removed from the table: the caller closes it.
    Evicted(H),
    /// At the cap, nothing idle, but some connections have not been polled
    /// yet: let them run, then ask again.
    NotYet,
    /// At the cap and every connection is inside a request.
    Full,
}

/// The open connections, each with a handle `H` the caller uses to close
/// it (a task's abort handle in the exporter).
#[derive(Debug)]
pub(super) struct ConnectionTable<H> {
    max: usize,
    open: Vec<(Arc<Slot>, H)>,
}

impl<H> ConnectionTable<H> {
    /// An empty table holding at most `max` connections (at least one).
    pub(super) fn new(max: usize) -> Self {
        ConnectionTable {
            max: max.max(1),
            open: Vec::new(),
        }
    }

    /// Connections open now (after forgetting those whose task is over).
    #[cfg(test)]
    pub(super) fn len(&mut self) -> usize {
        self.forget_closed();
        self.open.len()
    }

    /// True when the table holds as many connections as allowed (after
    /// forgetting those whose task is over).
    pub(super) fn is_full(&mut self) -> bool {
        self.forget_closed();
        self.open.len() >= self.max
    }

    /// Decides whether one more connection can be admitted; at the cap, the
    /// idle connection with the oldest idle time is removed and returned.
    pub(super) fn make_room(&mut self) -> Room<H> {
        self.forget_closed();
        if self.open.len() < self.max {
            return Room::Free;
        }
        let mut oldest: Option<(usize, u64)> = None;
        let mut unpolled = false;
        for (i, (slot, _)) in self.open.iter().enumerate() {
            match slot.state() {
                SlotState::Idle => {
                    let since = slot.idle_since_us();
                    if oldest.is_none_or(|(_, t)| since < t) {
                        oldest = Some((i, since));
                    }
                }
                SlotState::New => unpolled = true,
                SlotState::Busy | SlotState::Sending | SlotState::Closed => {}
            }
        }
        match oldest {
            Some((i, _)) => {
                let (slot, handle) = self.open.swap_remove(i);
                slot.closed();
                Room::Evicted(handle)
            }
            None if unpolled => Room::NotYet,
            None => Room::Full,
        }
    }

    /// Records an admitted connection.
    pub(super) fn insert(&mut self, slot: Arc<Slot>, handle: H) {
        self.open.push((slot, handle));
    }

    fn forget_closed(&mut self) {
        self.open
            .retain(|(slot, _)| slot.state() != SlotState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_slot() -> Arc<Slot> {
        let s = Slot::new();
        s.polled();
        s
    }

    #[test]
    fn below_the_cap_there_is_room() {
        let mut t = ConnectionTable::new(2);
        assert_eq!(t.make_room(), Room::Free);
        t.insert(idle_slot(), 1);
        assert_eq!(t.make_room(), Room::Free);
        t.insert(idle_slot(), 2);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn at_the_cap_the_longest_idle_is_evicted() {
        let mut t = ConnectionTable::new(3);
        let a = idle_slot();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = idle_slot();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let c = idle_slot();
        // b is older than c, a is busy.
        a.request_started();
        t.insert(c.clone(), "c");
        t.insert(a.clone(), "a");
        t.insert(b.clone(), "b");
        assert_eq!(t.make_room(), Room::Evicted("b"));
        assert_eq!(b.state(), SlotState::Closed);
        assert_eq!(t.len(), 2);
        t.insert(idle_slot(), "d");
        assert_eq!(t.make_room(), Room::Evicted("c"));
    }

    #[test]
    fn a_finished_response_makes_a_connection_idle_from_now() {
        let mut t = ConnectionTable::new(2);
        let first = idle_slot();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = idle_slot();
        t.insert(first.clone(), "first");
        t.insert(second.clone(), "second");
        // The first connection is answered: it becomes idle after the
        // second, which is now the longest idle.
        first.request_started();
        first.response_handed_over();
        assert_eq!(first.state(), SlotState::Sending);
        first.flushed();
        assert_eq!(first.state(), SlotState::Idle);
        assert!(first.idle_since_us() > second.idle_since_us());
        assert_eq!(t.make_room(), Room::Evicted("second"));
    }

    #[test]
    fn unpolled_connections_are_waited_for_and_busy_ones_refuse() {
        let mut t = ConnectionTable::new(2);
        let a = Slot::new();
        let b = Slot::new();
        t.insert(a.clone(), 1);
        t.insert(b.clone(), 2);
        assert_eq!(t.make_room(), Room::NotYet);
        // Both read a head in their first read.
        for s in [&a, &b] {
            s.polled();
            s.request_started();
        }
        assert_eq!(t.make_room(), Room::Full);
        // Sending still counts as inside a request.
        a.response_handed_over();
        assert_eq!(t.make_room(), Room::Full);
        // A closed connection frees its slot.
        b.closed();
        assert_eq!(t.make_room(), Room::Free);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_closed_slot_stays_closed() {
        let s = Slot::new();
        s.closed();
        s.polled();
        s.request_started();
        s.response_handed_over();
        s.flushed();
        assert_eq!(s.state(), SlotState::Closed);
    }
}
