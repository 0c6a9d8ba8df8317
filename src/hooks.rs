//! Runtime-thread hooks and the per-worker stuck detector.
//!
//! This module owns two things:
//!
//! * [`RuntimeHooks`], the helper a user installs on (or calls from) their
//!   `tokio::runtime::Builder` hooks. It keeps one small slot of atomics per
//!   runtime thread: the OS thread id, the thread's name, whether it is
//!   parked, and with `--cfg tokio_unstable` which task it is polling.
//! * [`WorkerWatch`], which the monitor thread samples on its tick to find a
//!   worker of a multi-thread runtime that is stuck while the others still
//!   answer the probe (tokio issue 4730), and to say which thread (so its
//!   stack is captured first) and, with `tokio_unstable`, which task.
//!
//! # How a stuck worker is recognised
//!
//! tokio publishes each worker's `worker_park_unpark_count` and
//! `worker_total_busy_duration` when it parks, right after it wakes, and at
//! its maintenance, every `event_interval` (61) scheduler ticks. An even
//! park/unpark count means the worker is awake. A worker that keeps polling
//! short tasks republishes its busy duration every 61 polls; a worker stuck
//! inside one poll never republishes anything. So, on stable tokio, worker
//! `i` is stuck when its count is even and neither value has changed for
//! longer than the threshold `T`.
//!
//! With `--cfg tokio_unstable` the before/after-poll hooks keep, per thread,
//! a sequence number that is odd while a poll runs, plus the polled task's
//! id and spawn location. A worker thread that is awake and whose sequence
//! has not moved for longer than `T` is stuck: inside one poll (odd; the
//! task is named) or outside any (even; then its metrics must be frozen
//! too). The hot path is three relaxed stores, two fences that are free on
//! x86, and no clock read: the monitor does the timing when it samples.
//!
//! # Which thread is it
//!
//! With `tokio_unstable`, `RuntimeMetrics::worker_thread_id(i)` names the
//! thread, and the slot with that `ThreadId` gives its OS tid. On stable
//! tokio there is no such accessor, so each worker thread learns its index
//! from its own park/unpark hooks: the park hook snapshots every worker's
//! published park/unpark count; between the two hooks the thread's own
//! worker publishes an odd count (before sleeping) and then an even one
//! (right after waking), so at the unpark hook its index is among those
//! whose count rose to an even value. Successive cycles are intersected
//! (and must chain: while awake a worker's count does not move), which
//! narrows the candidates to the thread's own index; the thread starts
//! over only when two cycles in a row disagree with what it learned (it
//! now runs another worker, after `block_in_place`). The monitor keeps, per
//! thread, the learned indices that the current counts agree with (an
//! awake thread's worker still shows the count of its unpark snapshot),
//! removes from each thread the indices another thread alone claims, and
//! attributes a stuck index to the awake threads left with it. When more
//! than one remains, all are reported (`tids`), the most likely first.
//!
//! # Limits
//!
//! * On stable tokio a worker publishes only every 61 polls: a worker whose
//!   61 consecutive polls together take longer than `T` is reported stuck
//!   although each poll returned. With `tokio_unstable` the poll sequence
//!   rules that out.
//! * On stable tokio a worker thread is known from its first park/unpark
//!   cycle; a worker stuck before it ever parked (right at start-up) is not
//!   attributed to a thread and therefore not reported.
//! * A worker thread that the OS does not run for longer than `T`
//!   (descheduled on an overloaded machine, waiting on a page fault) is
//!   reported too: the tasks queued on it did wait that long.
//! * One `RuntimeHooks` serves one runtime.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::{Handle, RuntimeFlavor};

#[cfg(tokio_unstable)]
use std::cell::Cell;
#[cfg(tokio_unstable)]
use std::collections::HashMap;
#[cfg(tokio_unstable)]
use std::panic::Location;
#[cfg(tokio_unstable)]
use std::sync::atomic::AtomicU32;
#[cfg(tokio_unstable)]
use std::sync::OnceLock;
#[cfg(tokio_unstable)]
use tokio::runtime::TaskMeta;

#[cfg(not(tokio_unstable))]
use tokio::runtime::RuntimeMetrics;

/// Distinguishes `RuntimeHooks` instances, so a hook only touches the slot
/// its own instance registered.
static NEXT_HOOKS_ID: AtomicU64 = AtomicU64::new(1);

// ---------------------------------------------------------------------------
// RuntimeHooks
// ---------------------------------------------------------------------------

/// Hooks for a `tokio::runtime::Builder` that let loopwatch tell which
/// worker thread of a multi-thread runtime is stuck, and with
/// `--cfg tokio_unstable` in which task.
///
/// A worker stuck in a poll (a blocking call inside an async task) starves
/// the tasks queued behind it, while the other workers may well keep
/// answering loopwatch's probe (tokio issue 4730). With these hooks
/// installed, loopwatch records, per runtime thread, its OS thread id and
/// whether it is parked; with `--cfg tokio_unstable` also the task it is
/// polling (id and spawn location). The cost per poll is a few relaxed
/// atomic stores and no clock read.
///
/// `RuntimeHooks` is cheap to clone (an `Arc` inside). Use one per runtime.
///
/// # Examples
///
/// Install every hook loopwatch needs:
///
/// ```
/// let hooks = loopwatch::RuntimeHooks::new();
/// let runtime = hooks
///     .install(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all())
///     .build()
///     .unwrap();
/// runtime.block_on(async { /* the daemon */ });
/// ```
///
/// A `Builder` keeps one callback per hook, so if you already set hooks of
/// your own, call loopwatch's from them instead of using
/// [`install`](Self::install) (which would replace yours):
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// let hooks = loopwatch::RuntimeHooks::new();
/// let started = Arc::new(AtomicUsize::new(0));
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// builder.worker_threads(2).enable_all();
/// builder.on_thread_start({
///     let (hooks, started) = (hooks.clone(), started.clone());
///     move || {
///         hooks.on_thread_start();
///         started.fetch_add(1, Ordering::Relaxed); // your own work
///     }
/// });
/// builder.on_thread_stop({
///     let hooks = hooks.clone();
///     move || hooks.on_thread_stop()
/// });
/// builder.on_thread_park({
///     let hooks = hooks.clone();
///     move || hooks.on_thread_park()
/// });
/// builder.on_thread_unpark({
///     let hooks = hooks.clone();
///     move || hooks.on_thread_unpark()
/// });
/// // With RUSTFLAGS="--cfg tokio_unstable", the poll hooks as well:
/// #[cfg(tokio_unstable)]
/// {
///     builder.on_before_task_poll({
///         let hooks = hooks.clone();
///         move |meta| hooks.on_before_task_poll(meta)
///     });
///     builder.on_after_task_poll({
///         let hooks = hooks.clone();
///         move |meta| hooks.on_after_task_poll(meta)
///     });
/// }
/// let runtime = builder.build().unwrap();
/// assert_eq!(runtime.block_on(async { 40 + 2 }), 42);
/// drop(runtime);
/// assert!(started.load(Ordering::Relaxed) >= 2);
/// ```
#[derive(Clone)]
pub struct RuntimeHooks {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    /// Every registered runtime thread. Locked at thread start and stop and
    /// by the monitor when [`Inner::generation`] moved; never on a hot path.
    threads: Mutex<Vec<Arc<Slot>>>,
    /// Bumped whenever `threads` changes.
    generation: AtomicU64,
}

impl Default for RuntimeHooks {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RuntimeHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let threads = self.inner.threads.lock();
        let workers = threads.iter().filter(|s| s.is_known_worker()).count();
        f.debug_struct("RuntimeHooks")
            .field("threads", &threads.len())
            .field("workers", &workers)
            .finish()
    }
}

impl RuntimeHooks {
    /// Creates hooks that no runtime uses yet.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// assert!(hooks.threads().is_empty());
    /// ```
    pub fn new() -> Self {
        RuntimeHooks {
            inner: Arc::new(Inner {
                id: NEXT_HOOKS_ID.fetch_add(1, Ordering::Relaxed),
                threads: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Sets every hook loopwatch needs on `builder`: thread start, stop,
    /// park and unpark, and with `--cfg tokio_unstable` before and after
    /// each task poll. It replaces hooks set earlier on the same builder;
    /// to keep your own, call loopwatch's from them (see the
    /// [type's documentation](Self)).
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let runtime = hooks
    ///     .install(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all())
    ///     .build()
    ///     .unwrap();
    /// runtime.block_on(async {});
    /// ```
    pub fn install<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        let h = self.clone();
        builder.on_thread_start(move || h.on_thread_start());
        let h = self.clone();
        builder.on_thread_stop(move || h.on_thread_stop());
        let h = self.clone();
        builder.on_thread_park(move || h.on_thread_park());
        let h = self.clone();
        builder.on_thread_unpark(move || h.on_thread_unpark());
        #[cfg(tokio_unstable)]
        {
            let h = self.clone();
            builder.on_before_task_poll(move |meta| h.on_before_task_poll(meta));
            let h = self.clone();
            builder.on_after_task_poll(move |meta| h.on_after_task_poll(meta));
        }
        builder
    }

    /// Registers the calling runtime thread: its OS thread id, `ThreadId`
    /// and name. Call it from `Builder::on_thread_start`. tokio runs that
    /// hook on worker threads and on blocking-pool threads alike; both are
    /// registered, and only threads that park as workers do are ever
    /// reported stuck. Calling it twice on one thread is harmless.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_thread_start({
    ///     let hooks = hooks.clone();
    ///     move || hooks.on_thread_start()
    /// });
    /// ```
    pub fn on_thread_start(&self) {
        let _ = LOCAL.try_with(|local| {
            let Ok(mut slot) = local.slot.try_borrow_mut() else {
                return;
            };
            if slot.is_some() {
                return;
            }
            let thread = std::thread::current();
            #[cfg(not(tokio_unstable))]
            let metrics = Handle::try_current().ok().map(|h| h.metrics());
            #[cfg(not(tokio_unstable))]
            let workers = metrics.as_ref().map_or(0, |m| m.num_workers());
            let new = Arc::new(Slot {
                owner: self.inner.id,
                tid: crate::stacks::current_tid(),
                thread_id: thread.id(),
                name: thread.name().map(str::to_owned),
                park_seq: AtomicU64::new(0),
                #[cfg(not(tokio_unstable))]
                learned: Learned::new(workers),
                #[cfg(tokio_unstable)]
                poll: PollState::default(),
            });
            #[cfg(not(tokio_unstable))]
            if let (Some(metrics), Ok(mut learn)) = (metrics, local.learn.try_borrow_mut()) {
                *learn = Some(LocalLearn::new(metrics, workers));
            }
            *slot = Some(new.clone());
            self.inner.threads.lock().push(new);
            self.inner.generation.fetch_add(1, Ordering::Release);
        });
    }

    /// Unregisters the calling thread. Call it from
    /// `Builder::on_thread_stop`.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_thread_stop({
    ///     let hooks = hooks.clone();
    ///     move || hooks.on_thread_stop()
    /// });
    /// ```
    pub fn on_thread_stop(&self) {
        let _ = LOCAL.try_with(|local| {
            let Ok(mut slot) = local.slot.try_borrow_mut() else {
                return;
            };
            if slot.as_ref().map(|s| s.owner) != Some(self.inner.id) {
                return;
            }
            let Some(mine) = slot.take() else { return };
            #[cfg(not(tokio_unstable))]
            if let Ok(mut learn) = local.learn.try_borrow_mut() {
                // Drops the runtime handle here, not in a TLS destructor.
                *learn = None;
            }
            self.inner.threads.lock().retain(|s| !Arc::ptr_eq(s, &mine));
            self.inner.generation.fetch_add(1, Ordering::Release);
        });
    }

    /// Records that the calling worker is about to park. Call it from
    /// `Builder::on_thread_park`. On stable tokio this is also where the
    /// thread learns which worker index it runs (a few relaxed loads per
    /// worker, once per park, never per poll).
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_thread_park({
    ///     let hooks = hooks.clone();
    ///     move || hooks.on_thread_park()
    /// });
    /// ```
    pub fn on_thread_park(&self) {
        let _ = LOCAL.try_with(|local| {
            let Ok(slot) = local.slot.try_borrow() else {
                return;
            };
            let Some(slot) = slot.as_deref().filter(|s| s.owner == self.inner.id) else {
                return;
            };
            #[cfg(not(tokio_unstable))]
            if let Ok(mut learn) = local.learn.try_borrow_mut() {
                if let Some(learn) = learn.as_mut() {
                    learn.at_park();
                }
            }
            let seq = slot.park_seq.load(Ordering::Relaxed);
            slot.park_seq.store((seq + 1) | 1, Ordering::Release);
        });
    }

    /// Records that the calling worker woke up. Call it from
    /// `Builder::on_thread_unpark`.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_thread_unpark({
    ///     let hooks = hooks.clone();
    ///     move || hooks.on_thread_unpark()
    /// });
    /// ```
    pub fn on_thread_unpark(&self) {
        let _ = LOCAL.try_with(|local| {
            let Ok(slot) = local.slot.try_borrow() else {
                return;
            };
            let Some(slot) = slot.as_deref().filter(|s| s.owner == self.inner.id) else {
                return;
            };
            let seq = slot.park_seq.load(Ordering::Relaxed);
            if seq & 1 == 0 {
                return; // no park seen
            }
            #[cfg(not(tokio_unstable))]
            if let Ok(mut learn) = local.learn.try_borrow_mut() {
                if let Some(learn) = learn.as_mut() {
                    learn.at_unpark(&slot.learned);
                }
            }
            slot.park_seq.store(seq + 1, Ordering::Release);
        });
    }

    /// Records the start of a task poll on the calling worker: the task's
    /// id and spawn location, and an odd poll sequence number. Call it from
    /// `Builder::on_before_task_poll`. A few relaxed stores; no lock, no
    /// clock read, no allocation (the first poll of a task spawned from a
    /// new source location interns that location once).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(tokio_unstable)]
    /// # {
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_before_task_poll({
    ///     let hooks = hooks.clone();
    ///     move |meta| hooks.on_before_task_poll(meta)
    /// });
    /// # }
    /// ```
    #[cfg(tokio_unstable)]
    #[inline]
    pub fn on_before_task_poll(&self, meta: &TaskMeta<'_>) {
        self.before_poll(task_id_bits(meta.id()), meta.spawned_at());
    }

    /// [`on_before_task_poll`](Self::on_before_task_poll) with the task's
    /// id and spawn location taken out of its `TaskMeta`.
    #[cfg(tokio_unstable)]
    #[inline]
    fn before_poll(&self, task: u64, location: &'static Location<'static>) {
        let _ = LOCAL.try_with(|local| {
            let Ok(slot) = local.slot.try_borrow() else {
                return;
            };
            let Some(slot) = slot.as_deref().filter(|s| s.owner == self.inner.id) else {
                return;
            };
            let location = local.location_index(location);
            slot.poll.begin(task, location);
        });
    }

    /// Records the end of a task poll on the calling worker. Call it from
    /// `Builder::on_after_task_poll`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(tokio_unstable)]
    /// # {
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// builder.on_after_task_poll({
    ///     let hooks = hooks.clone();
    ///     move |meta| hooks.on_after_task_poll(meta)
    /// });
    /// # }
    /// ```
    #[cfg(tokio_unstable)]
    #[inline]
    pub fn on_after_task_poll(&self, _meta: &TaskMeta<'_>) {
        self.after_poll();
    }

    #[cfg(tokio_unstable)]
    #[inline]
    fn after_poll(&self) {
        let _ = LOCAL.try_with(|local| {
            let Ok(slot) = local.slot.try_borrow() else {
                return;
            };
            if let Some(slot) = slot.as_deref().filter(|s| s.owner == self.inner.id) {
                slot.poll.end();
            }
        });
    }

    /// OS thread ids (Linux tids) of every runtime thread registered now:
    /// workers and blocking-pool threads that have started and not stopped.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let runtime = hooks
    ///     .install(tokio::runtime::Builder::new_multi_thread().worker_threads(2))
    ///     .build()
    ///     .unwrap();
    /// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    /// while hooks.threads().len() < 2 && std::time::Instant::now() < deadline {
    ///     std::thread::sleep(std::time::Duration::from_millis(5));
    /// }
    /// assert!(hooks.threads().len() >= 2);
    /// drop(runtime); // joins its threads, which unregister
    /// assert!(hooks.threads().is_empty());
    /// ```
    pub fn threads(&self) -> Vec<i32> {
        self.inner.threads.lock().iter().map(|s| s.tid).collect()
    }

    /// OS thread ids of the registered threads known to be workers: those
    /// that have parked at least once (only workers run the park hooks). An
    /// idle worker parks soon after the runtime starts.
    ///
    /// # Examples
    ///
    /// ```
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let runtime = hooks
    ///     .install(tokio::runtime::Builder::new_multi_thread().worker_threads(2))
    ///     .build()
    ///     .unwrap();
    /// let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    /// while hooks.worker_threads().len() < 2 && std::time::Instant::now() < deadline {
    ///     std::thread::sleep(std::time::Duration::from_millis(5));
    /// }
    /// assert_eq!(hooks.worker_threads().len(), 2);
    /// ```
    pub fn worker_threads(&self) -> Vec<i32> {
        self.inner
            .threads
            .lock()
            .iter()
            .filter(|s| s.is_known_worker())
            .map(|s| s.tid)
            .collect()
    }

    /// The registered slots, with the generation they belong to.
    fn snapshot(&self) -> (u64, Vec<Arc<Slot>>) {
        let threads = self.inner.threads.lock();
        let generation = self.inner.generation.load(Ordering::Acquire);
        (generation, threads.clone())
    }
}

// ---------------------------------------------------------------------------
// Per-thread slots
// ---------------------------------------------------------------------------

/// What the hooks of one runtime thread publish for the monitor.
struct Slot {
    /// The `RuntimeHooks` instance that registered it.
    owner: u64,
    tid: i32,
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    thread_id: ThreadId,
    name: Option<String>,
    /// Park/unpark transitions seen by the hooks; odd while parked. Written
    /// only by the owning thread.
    park_seq: AtomicU64,
    #[cfg(not(tokio_unstable))]
    learned: Learned,
    #[cfg(tokio_unstable)]
    poll: PollState,
}

impl Slot {
    fn is_known_worker(&self) -> bool {
        self.park_seq.load(Ordering::Relaxed) > 0
    }
}

thread_local! {
    static LOCAL: Local = const {
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
struct Local {
    slot: RefCell<Option<Arc<Slot>>>,
    #[cfg(not(tokio_unstable))]
    learn: RefCell<Option<LocalLearn>>,
    /// The last spawn location seen (address) and its interned index.
    #[cfg(tokio_unstable)]
    last_location: Cell<(usize, u32)>,
}

// --- stable: learning the worker index from the park/unpark hooks ----------

/// Published by a worker thread at each unpark: what it has learned about
/// its worker index.
#[cfg(not(tokio_unstable))]
struct Learned {
    /// Every worker's published park/unpark count at this thread's last
    /// unpark hook.
    at_unpark: Box<[AtomicU64]>,
    /// Bit set of the worker indices this thread may be running.
    mask: Box<[AtomicU64]>,
}

#[cfg(not(tokio_unstable))]
impl Learned {
    fn new(workers: usize) -> Self {
        Learned {
            at_unpark: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            mask: (0..workers.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

/// A worker thread's private learning state.
#[cfg(not(tokio_unstable))]
struct LocalLearn {
    metrics: RuntimeMetrics,
    /// Every worker's published park/unpark count at the last park hook.
    at_park: Vec<u64>,
    /// Whether `Learned::at_unpark` holds a previous cycle's snapshot.
    cycled: bool,
    /// Scratch bit sets (no allocation per park).
    cand: Vec<u64>,
    chained: Vec<u64>,
    /// The candidates of the last cycle that disagreed with the mask.
    pending: Option<Vec<u64>>,
}

#[cfg(not(tokio_unstable))]
impl LocalLearn {
    fn new(metrics: RuntimeMetrics, workers: usize) -> Self {
        let words = workers.div_ceil(64);
        LocalLearn {
            metrics,
            at_park: vec![0; workers],
            cycled: false,
            cand: vec![0; words],
            chained: vec![0; words],
            pending: None,
        }
    }

    fn at_park(&mut self) {
        for (i, a) in self.at_park.iter_mut().enumerate() {
            *a = self.metrics.worker_park_unpark_count(i);
        }
    }

    /// Between the park and the unpark hook this thread's worker published
    /// an odd count (before sleeping) and then an even one (right after
    /// waking), so its index is among those whose count rose to an even
    /// value; while awake its count does not move, so it also chains with
    /// the previous cycle.
    fn at_unpark(&mut self, learned: &Learned) {
        // Seqlock writer: the slot's park sequence is odd since the park
        // hook; a monitor that reads these stores will see it changed.
        fence(Ordering::Release);
        self.cand.fill(0);
        self.chained.fill(0);
        let mut any = false;
        for (i, &a) in self.at_park.iter().enumerate() {
            let b = self.metrics.worker_park_unpark_count(i);
            let previous = learned.at_unpark[i].load(Ordering::Relaxed);
            if b % 2 == 0 && b > a {
                any = true;
                self.cand[i / 64] |= 1 << (i % 64);
                if self.cycled && a == previous {
                    self.chained[i / 64] |= 1 << (i % 64);
                }
            }
            learned.at_unpark[i].store(b, Ordering::Relaxed);
        }
        self.cycled = true;
        if !any {
            // The worker did not actually park (tokio found work between
            // the hooks): nothing learned.
            return;
        }
        // Narrow when consistent. When not, the thread may now run another
        // worker (after `block_in_place`), or this cycle was not a real park
        // and only saw other workers move: start over only when two cycles
        // in a row agree with each other and not with the mask.
        let mask = &learned.mask;
        let overlaps = |set: &[u64]| {
            mask.iter()
                .zip(set)
                .any(|(m, s)| m.load(Ordering::Relaxed) & s != 0)
        };
        let narrow = |set: &[u64]| {
            for (m, s) in mask.iter().zip(set) {
                m.store(m.load(Ordering::Relaxed) & s, Ordering::Relaxed);
            }
        };
        let empty = mask.iter().all(|m| m.load(Ordering::Relaxed) == 0);
        if overlaps(&self.chained) {
            narrow(&self.chained);
            self.pending = None;
        } else if overlaps(&self.cand) {
            narrow(&self.cand);
            self.pending = None;
        } else if empty {
            for (m, s) in mask.iter().zip(&self.cand) {
                m.store(*s, Ordering::Relaxed);
            }
        } else {
            let agreed: Option<Vec<u64>> = self.pending.take().and_then(|p| {
                let both: Vec<u64> = p.iter().zip(&self.cand).map(|(p, c)| p & c).collect();
                both.iter().any(|w| *w != 0).then_some(both)
            });
            match agreed {
                Some(both) => {
                    for (m, s) in mask.iter().zip(both) {
                        m.store(s, Ordering::Relaxed);
                    }
                }
                None => self.pending = Some(self.cand.clone()),
            }
        }
    }
}

// --- tokio_unstable: the poll hooks ---------------------------------------

/// The per-poll state, on its own cache line: written by its worker on
/// every poll, read by the monitor on its tick.
#[cfg(tokio_unstable)]
#[derive(Default)]
#[repr(align(128))]
struct PollState {
    /// Odd while a poll runs.
    seq: AtomicU64,
    /// The polled task's id (`tokio::task::Id` as a number).
    task: AtomicU64,
    /// Index into [`LOCATIONS`] plus one; 0 = unknown.
    location: AtomicU32,
}

#[cfg(tokio_unstable)]
impl PollState {
    /// A seqlock writer: the release fence orders the previous sequence
    /// store before the data stores, so a reader that sees new data also
    /// sees a changed sequence.
    #[inline]
    fn begin(&self, task: u64, location: u32) {
        let seq = self.seq.load(Ordering::Relaxed);
        fence(Ordering::Release);
        self.task.store(task, Ordering::Relaxed);
        self.location.store(location, Ordering::Relaxed);
        self.seq.store((seq + 1) | 1, Ordering::Release);
    }

    #[inline]
    fn end(&self) {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            self.seq.store(seq + 1, Ordering::Release);
        }
    }

    /// The sequence, and the task and location if they were read
    /// consistently with it.
    fn read(&self) -> (u64, Option<(u64, u32)>) {
        let s1 = self.seq.load(Ordering::Acquire);
        let task = self.task.load(Ordering::Relaxed);
        let location = self.location.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let s2 = self.seq.load(Ordering::Relaxed);
        (s1, (s1 == s2).then_some((task, location)))
    }
}

#[cfg(tokio_unstable)]
impl Local {
    #[inline]
    fn location_index(&self, location: &'static Location<'static>) -> u32 {
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

/// Size of the spawn-location table (a power of two).
#[cfg(tokio_unstable)]
const LOCATION_SLOTS: usize = 4096;
/// How far [`intern_location`] probes before giving up.
#[cfg(tokio_unstable)]
const LOCATION_PROBES: usize = 64;

/// Spawn locations seen by the poll hooks, interned so that a slot can
/// publish one as a small integer and the monitor can read it back without
/// a lock. Write-once cells; `Location`s are `'static` and few (one per
/// spawn site).
#[cfg(tokio_unstable)]
static LOCATIONS: [OnceLock<&'static Location<'static>>; LOCATION_SLOTS] =
    [const { OnceLock::new() }; LOCATION_SLOTS];

/// The index (plus one) of `location` in [`LOCATIONS`], inserting it the
/// first time; 0 if the table is full around its hash.
#[cfg(tokio_unstable)]
fn intern_location(location: &'static Location<'static>) -> u32 {
    let address = location as *const Location<'static> as usize as u64;
    let hash = (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize;
    for probe in 0..LOCATION_PROBES {
        let i = (hash + probe) % LOCATION_SLOTS;
        let cell = &LOCATIONS[i];
        let stored = match cell.get() {
            Some(stored) => *stored,
            None => *cell.get_or_init(|| location),
        };
        if std::ptr::eq(stored, location) {
            return i as u32 + 1;
        }
    }
    0
}

/// `file:line:col` of an interned location.
#[cfg(tokio_unstable)]
fn location_text(index: u32) -> Option<String> {
    let i = (index as usize).checked_sub(1)?;
    let location = LOCATIONS.get(i)?.get()?;
    Some(location.to_string())
}

/// The number a `tokio::task::Id` displays as, read without formatting: the
/// id is a `NonZeroU64` newtype whose derived `Hash` writes that number,
/// which this hasher captures. (A unit test checks it against `Display`.)
#[cfg(any(test, tokio_unstable))]
#[inline]
fn task_id_bits(id: tokio::task::Id) -> u64 {
    use std::hash::{Hash, Hasher};

    struct Capture(u64);
    impl Hasher for Capture {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            if let Ok(b) = <[u8; 8]>::try_from(bytes) {
                self.0 = u64::from_ne_bytes(b);
            } else {
                for &b in bytes {
                    self.0 = (self.0 << 8) | u64::from(b);
                }
            }
        }
        fn write_u64(&mut self, v: u64) {
            self.0 = v;
        }
    }

    let mut capture = Capture(0);
    id.hash(&mut capture);
    capture.finish()
}

// ---------------------------------------------------------------------------
// Report types
// ---------------------------------------------------------------------------

/// A worker of a multi-thread runtime that has made no progress for longer
/// than the stall threshold while the runtime as a whole may still answer
/// the probe: one section of a stall report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StuckWorker {
    /// The worker's index, as in tokio's `RuntimeMetrics::worker_*`.
    pub worker: usize,
    /// OS thread id(s) of the thread running it. One with
    /// `--cfg tokio_unstable`; on stable tokio usually one, possibly more
    /// when the hooks cannot tell which thread runs the worker (the most
    /// likely first). Their stacks are captured first.
    pub tids: Vec<i32>,
    /// The thread's name, when it has one.
    pub thread: Option<String>,
    /// How long it has shown no progress, in seconds, measured at the
    /// monitor's ticks. With `--cfg tokio_unstable` this is the time in the
    /// current poll (a lower bound, within one tick); on stable tokio it
    /// counts from the worker's last published metrics, which may include
    /// the last few short polls before the stuck one.
    pub stuck_for_seconds: f64,
    /// The task it is stuck polling (with `--cfg tokio_unstable` only).
    pub task: Option<StuckTask>,
}

/// The task a stuck worker is polling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StuckTask {
    /// tokio's task id, as `tokio::task::Id` displays it.
    pub id: String,
    /// Where the task was spawned: `file:line:column`.
    pub spawned_at: String,
}

// ---------------------------------------------------------------------------
// The monitor side
// ---------------------------------------------------------------------------

/// A worker was found stuck.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerStuck {
    /// Worker index.
    pub worker: usize,
    /// OS thread ids, the most likely first (see [`StuckWorker::tids`]).
    pub tids: Vec<i32>,
    /// The first tid's thread name.
    pub thread: Option<String>,
    /// The first tick at which the worker was seen in the state it is
    /// stuck in, µs ([`crate::clock`]).
    pub stuck_since: u64,
    /// When it was declared stuck, µs.
    pub detected_at: u64,
    /// The task it is polling (`tokio_unstable` only).
    pub task: Option<StuckTask>,
}

impl WorkerStuck {
    /// The report section for this worker as of `now`.
    pub(crate) fn to_report(&self, now: u64) -> StuckWorker {
        StuckWorker {
            worker: self.worker,
            tids: self.tids.clone(),
            thread: self.thread.clone(),
            stuck_for_seconds: now.saturating_sub(self.stuck_since) as f64 / 1e6,
            task: self.task.clone(),
        }
    }
}

/// What one [`WorkerWatch::sample`] changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WorkerTransition {
    /// A worker became stuck (reported once).
    Stuck(WorkerStuck),
    /// A stuck worker made progress again (or its thread ended).
    Recovered {
        /// The stuck worker as it was reported.
        stuck: WorkerStuck,
        /// How long it was stuck, µs (from `stuck_since` to the tick that
        /// saw it move).
        stuck_for: u64,
        /// The tick that saw it move, µs.
        ended_at: u64,
    },
}

/// A stuck worker's threads (most likely first), the first one's name, and
/// the task it polls.
type Found = (Vec<i32>, Option<String>, Option<StuckTask>);

/// Stable tokio: one known worker thread as the monitor sees it this tick.
#[cfg(not(tokio_unstable))]
struct WorkerView<'a> {
    slot: &'a Slot,
    parked: bool,
    /// The worker indices it may run now (a bit set).
    mask: Vec<u64>,
}

/// What the monitor tracks per worker index between ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerKey {
    park_unpark: u64,
    busy: Duration,
    /// The holder thread's (slot address, park sequence, poll sequence).
    #[cfg(tokio_unstable)]
    holder: Option<(usize, u64, u64)>,
}

#[derive(Debug)]
struct WorkerTrack {
    key: WorkerKey,
    /// First tick at which `key` was seen.
    since: u64,
    stuck: Option<WorkerStuck>,
}

/// The per-worker stuck detector of one watched runtime, driven by the
/// monitor thread. It never blocks on the runtime: it reads tokio's
/// runtime metrics and the hooks' atomics.
///
/// Call [`sample`](Self::sample) on every monitor tick.
pub(crate) struct WorkerWatch {
    hooks: RuntimeHooks,
    handle: Handle,
    threshold: u64,
    /// When [`WorkerWatch::sample`] last ran, µs.
    last_sample: Option<u64>,
    generation: u64,
    slots: Vec<Arc<Slot>>,
    #[cfg(tokio_unstable)]
    by_thread: HashMap<ThreadId, usize>,
    workers: Vec<WorkerTrack>,
}

impl fmt::Debug for WorkerWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerWatch")
            .field("threshold", &self.threshold)
            .field("threads", &self.slots.len())
            .field("workers", &self.workers)
            .finish()
    }
}

impl WorkerWatch {
    /// Watches the workers of the runtime behind `handle`, which must have
    /// been built with `hooks` installed. `threshold` is in µs. For a
    /// runtime that is not multi-thread, [`sample`](Self::sample) never
    /// reports anything.
    pub(crate) fn new(hooks: RuntimeHooks, handle: Handle, threshold: u64) -> Self {
        WorkerWatch {
            hooks,
            handle,
            threshold,
            last_sample: None,
            generation: u64::MAX,
            slots: Vec::new(),
            #[cfg(tokio_unstable)]
            by_thread: HashMap::new(),
            workers: Vec::new(),
        }
    }

    /// The workers stuck now.
    pub(crate) fn stuck(&self) -> impl Iterator<Item = &WorkerStuck> + '_ {
        self.workers.iter().filter_map(|w| w.stuck.as_ref())
    }

    /// Whether any worker is stuck now.
    pub(crate) fn any_stuck(&self) -> bool {
        self.stuck().next().is_some()
    }

    /// The report sections for the workers stuck now.
    pub(crate) fn stuck_workers(&self, now: u64) -> Vec<StuckWorker> {
        self.stuck().map(|s| s.to_report(now)).collect()
    }

    /// Reads the runtime's metrics and the hooks' state at monitor time
    /// `now` (µs), and returns what changed: each worker that became stuck
    /// and each stuck worker that recovered, once each. Call it on every
    /// monitor tick; if it was not called for longer than the threshold,
    /// that stretch counts as unobserved (a paused process does not make
    /// every busy worker look stuck), so detection takes another threshold.
    pub(crate) fn sample(&mut self, now: u64) -> Vec<WorkerTransition> {
        let mut out = Vec::new();
        if self.handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return out;
        }
        self.refresh_slots();
        // The monitor itself did not run for longer than the threshold (the
        // process was paused, or the machine overloaded): nothing was
        // observed meanwhile, so that stretch is no worker's stuck time.
        let gap = self
            .last_sample
            .is_some_and(|last| now.saturating_sub(last) > self.threshold);
        self.last_sample = Some(now);
        if gap {
            for w in &mut self.workers {
                w.since = now;
            }
        }
        let metrics = self.handle.metrics();
        let n = metrics.num_workers();
        let park_unpark: Vec<u64> = (0..n)
            .map(|i| metrics.worker_park_unpark_count(i))
            .collect();
        #[cfg(tokio_unstable)]
        let holders: Vec<Option<usize>> = (0..n)
            .map(|i| {
                metrics
                    .worker_thread_id(i)
                    .and_then(|t| self.by_thread.get(&t).copied())
            })
            .collect();
        #[cfg(tokio_unstable)]
        let polls: Vec<(u64, Option<(u64, u32)>)> =
            self.slots.iter().map(|s| s.poll.read()).collect();

        if self.workers.len() != n {
            self.workers.clear();
        }
        // Stable tokio: a stuck worker whose threads all stopped is over
        // (with tokio_unstable its key changes instead).
        #[cfg(not(tokio_unstable))]
        for w in &mut self.workers {
            let gone = w
                .stuck
                .as_ref()
                .is_some_and(|stuck| !self.slots.iter().any(|s| stuck.tids.contains(&s.tid)));
            if gone {
                if let Some(stuck) = w.stuck.take() {
                    out.push(WorkerTransition::Recovered {
                        stuck_for: now.saturating_sub(stuck.stuck_since),
                        ended_at: now,
                        stuck,
                    });
                }
            }
        }
        for i in 0..n {
            let key = WorkerKey {
                park_unpark: park_unpark[i],
                busy: metrics.worker_total_busy_duration(i),
                #[cfg(tokio_unstable)]
                holder: holders[i].map(|h| {
                    let slot = &self.slots[h];
                    (
                        Arc::as_ptr(slot) as usize,
                        slot.park_seq.load(Ordering::Acquire),
                        polls[h].0,
                    )
                }),
            };
            if self.workers.len() <= i {
                self.workers.push(WorkerTrack {
                    key,
                    since: now,
                    stuck: None,
                });
                continue;
            }
            let moved = self.workers[i].key != key;
            if moved {
                self.workers[i].key = key;
                self.workers[i].since = now;
                if let Some(stuck) = self.workers[i].stuck.take() {
                    out.push(WorkerTransition::Recovered {
                        stuck_for: now.saturating_sub(stuck.stuck_since),
                        ended_at: now,
                        stuck,
                    });
                }
                continue;
            }
            let since = self.workers[i].since;
            if self.workers[i].stuck.is_some() || now.saturating_sub(since) <= self.threshold {
                continue;
            }
            #[cfg(tokio_unstable)]
            let found = self.judge_unstable(&self.workers[i].key, &polls, holders[i]);
            #[cfg(not(tokio_unstable))]
            let found = self.judge_stable(i, &park_unpark);
            if let Some((tids, thread, task)) = found {
                let stuck = WorkerStuck {
                    worker: i,
                    tids,
                    thread,
                    stuck_since: since,
                    detected_at: now,
                    task,
                };
                self.workers[i].stuck = Some(stuck.clone());
                out.push(WorkerTransition::Stuck(stuck));
            }
        }
        out
    }

    /// Re-reads the registered threads if they changed. A stuck worker
    /// whose thread is gone has, in effect, recovered: its key changes at
    /// the next read (`tokio_unstable`) or its worker publishes again.
    fn refresh_slots(&mut self) {
        let generation = self.hooks.inner.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        let (generation, slots) = self.hooks.snapshot();
        self.generation = generation;
        self.slots = slots;
        #[cfg(tokio_unstable)]
        {
            self.by_thread = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.thread_id, i))
                .collect();
        }
    }

    /// `tokio_unstable`: worker `i`, unchanged for longer than the
    /// threshold, is stuck if its thread is awake, and either inside one
    /// poll or, outside any, its metrics say awake too.
    #[cfg(tokio_unstable)]
    fn judge_unstable(
        &self,
        key: &WorkerKey,
        polls: &[(u64, Option<(u64, u32)>)],
        holder: Option<usize>,
    ) -> Option<Found> {
        let h = holder?;
        let slot = &self.slots[h];
        let (_, park_seq, poll_seq) = key.holder?;
        if park_seq & 1 == 1 {
            return None; // parked
        }
        let task = if poll_seq & 1 == 1 {
            polls[h].1.map(|(task, location)| StuckTask {
                id: task.to_string(),
                spawned_at: location_text(location).unwrap_or_else(|| "unknown".to_owned()),
            })
        } else if key.park_unpark % 2 == 0 {
            None
        } else {
            return None;
        };
        Some((vec![slot.tid], slot.name.clone(), task))
    }

    /// Stable tokio: worker `i`, unchanged for longer than the threshold,
    /// is stuck if its published count says awake. Its thread is an awake
    /// thread that may run `i` (see [`Self::worker_views`]), after removing
    /// from each thread the indices another thread alone claims; the one
    /// with the fewest other candidates first. No such thread: not
    /// reported.
    #[cfg(not(tokio_unstable))]
    fn judge_stable(&self, i: usize, park_unpark: &[u64]) -> Option<Found> {
        if park_unpark[i] % 2 == 1 {
            return None; // parked
        }
        let views = self.worker_views(park_unpark);
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

    /// Stable tokio: each known worker thread, read consistently, with the
    /// worker indices it may run now: those it learned, kept only where the
    /// current counts agree (an awake thread's worker has not published
    /// since its unpark, so its count still equals the unpark snapshot; a
    /// parked thread's worker shows an odd count).
    #[cfg(not(tokio_unstable))]
    fn worker_views(&self, park_unpark: &[u64]) -> Vec<WorkerView<'_>> {
        let n = park_unpark.len();
        let mut views = Vec::new();
        for slot in &self.slots {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_us;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicI32};
    use std::time::Instant;

    /// Threshold and monitor tick used by the detection tests, µs.
    const T: u64 = 300_000;
    const TICK: u64 = 20_000;

    fn runtime(hooks: &RuntimeHooks, workers: usize) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers).enable_all();
        hooks.install(&mut builder).build().expect("runtime")
    }

    /// Waits until `n` workers have parked once (they do when idle).
    fn wait_for_workers(hooks: &RuntimeHooks, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hooks.worker_threads().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {:?} of {n} workers parked within 10 s",
                hooks.worker_threads()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Plays the monitor: samples every tick until `until` (µs).
    fn sample_until(watch: &mut WorkerWatch, until: u64, log: &mut Vec<WorkerTransition>) {
        loop {
            let now = now_us();
            log.extend(watch.sample(now));
            if now >= until {
                return;
            }
            std::thread::sleep(Duration::from_micros(TICK));
        }
    }

    fn stuck_of(log: &[WorkerTransition]) -> Vec<&WorkerStuck> {
        log.iter()
            .filter_map(|t| match t {
                WorkerTransition::Stuck(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn task_ids_are_read_as_the_number_they_display() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..100 {
            let handle = rt.spawn(async {});
            let id = handle.id();
            assert_eq!(task_id_bits(id).to_string(), id.to_string());
        }
    }

    #[test]
    fn threads_register_and_unregister() {
        let hooks = RuntimeHooks::new();
        let rt = runtime(&hooks, 3);
        wait_for_workers(&hooks, 3);
        let workers = hooks.worker_threads();
        assert_eq!(workers.len(), 3, "{workers:?}");
        let threads = hooks.threads();
        assert!(workers.iter().all(|w| threads.contains(w)));
        let tid = rt
            .block_on(rt.spawn(async { crate::stacks::current_tid() }))
            .unwrap();
        if tid != 0 {
            assert!(workers.contains(&tid), "{tid} not in {workers:?}");
        }
        drop(rt);
        assert!(hooks.threads().is_empty(), "{:?}", hooks.threads());
        assert!(format!("{hooks:?}").contains("threads: 0"));
    }

    /// How the blocking task reaches its worker.
    #[derive(Clone, Copy, Debug)]
    enum Spawn {
        /// From outside the runtime: a parked worker is woken for it.
        Outside,
        /// From a task already running on a worker: it lands in that
        /// worker's LIFO slot and runs right after (tokio issue 4730).
        FromWorker,
    }

    /// A task that blocks its worker for `block` while the other workers
    /// keep running a 10 ms timer loop: exactly that worker is flagged
    /// within T plus a tick or two, named by its thread (and, with
    /// tokio_unstable, by its task and spawn location), then reported
    /// recovered once.
    fn blocked_worker(workers: usize, how: Spawn, block: Duration, busy: usize) {
        let hooks = RuntimeHooks::new();
        let rt = runtime(&hooks, workers);
        wait_for_workers(&hooks, workers);
        let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
        let mut log = Vec::new();

        // The probe-like loop: must keep completing while a worker is stuck.
        let stop = Arc::new(AtomicBool::new(false));
        let beats = Arc::new(Mutex::new(Vec::<u64>::new()));
        let probe = rt.spawn({
            let (stop, beats) = (stop.clone(), beats.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    beats.lock().push(now_us());
                }
            }
        });
        // Background load: `busy` tasks that spin ~50 µs and yield.
        let spinners: Vec<_> = (0..busy)
            .map(|_| {
                let stop = stop.clone();
                rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let spin = Instant::now();
                        while spin.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        sample_until(&mut watch, now_us() + 300_000, &mut log);
        assert!(
            stuck_of(&log).is_empty(),
            "flagged before the block: {log:?}"
        );

        let tid = Arc::new(AtomicI32::new(-1));
        let thread = Arc::new(Mutex::new(None));
        let started = Arc::new(AtomicU64::new(0));
        let body = {
            let (tid, thread, started) = (tid.clone(), thread.clone(), started.clone());
            async move {
                tid.store(crate::stacks::current_tid(), Ordering::SeqCst);
                *thread.lock() = Some(std::thread::current().id());
                started.store(now_us(), Ordering::SeqCst);
                std::thread::sleep(block);
            }
        };
        let (blocker, spawn_line) = match how {
            Spawn::Outside => (rt.spawn(body), line!()),
            Spawn::FromWorker => {
                let (handle, line) = rt
                    .block_on(rt.spawn(async move {
                        tokio::task::yield_now().await;
                        (tokio::spawn(body), line!())
                    }))
                    .unwrap();
                (handle, line)
            }
        };
        let blocker_id = blocker.id();
        let begin = now_us();
        while started.load(Ordering::SeqCst) == 0 {
            assert!(now_us() - begin < 1_000_000, "the blocking task never ran");
            log.extend(watch.sample(now_us()));
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = started.load(Ordering::SeqCst);
        let tid = tid.load(Ordering::SeqCst);
        let block_us = block.as_micros() as u64;
        sample_until(&mut watch, started + block_us + 600_000, &mut log);
        stop.store(true, Ordering::Relaxed);
        rt.block_on(probe).unwrap();
        rt.block_on(blocker).unwrap();
        for s in spinners {
            rt.block_on(s).unwrap();
        }

        // The other workers stayed responsive: the timer loop kept beating.
        let beats: Vec<u64> = beats
            .lock()
            .iter()
            .copied()
            .filter(|&b| b > started + 100_000 && b < started + block_us - 100_000)
            .collect();
        let expected = (block_us - 200_000) / 10_000;
        assert!(
            beats.len() as u64 >= expected / 3,
            "only {} beats during the block",
            beats.len()
        );
        let gap = beats.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        assert!(gap < 250_000, "the timer loop paused {gap} µs");

        let stuck = stuck_of(&log);
        assert_eq!(stuck.len(), 1, "{how:?}: {log:#?}");
        let stuck = stuck[0];
        eprintln!("{how:?}, {workers} workers, {busy} busy: blocker tid {tid}: {stuck:?}");
        let after = stuck.detected_at as i64 - started as i64;
        assert!(
            after >= (T - 100_000) as i64 && after <= (T + TICK + 250_000) as i64,
            "{how:?}: flagged {after} µs after the block began (T = {T} µs): {stuck:?}"
        );
        if tid != 0 {
            // The most likely thread first; on stable tokio others may follow
            // when the hooks cannot tell (see the module's documentation).
            assert_eq!(stuck.tids.first(), Some(&tid), "{how:?}: {stuck:?}");
        }
        assert!(stuck.thread.is_some(), "{stuck:?}");
        #[cfg(tokio_unstable)]
        {
            assert_eq!(stuck.tids.len(), 1, "{stuck:?}");
            let thread = thread.lock().expect("thread id");
            assert_eq!(rt.metrics().worker_thread_id(stuck.worker), Some(thread));
            let task = stuck.task.as_ref().expect("the stuck task");
            assert_eq!(task.id, blocker_id.to_string());
            let prefix = format!("{}:{}:", file!(), spawn_line);
            assert!(task.spawned_at.starts_with(&prefix), "{task:?} vs {prefix}");
        }
        #[cfg(not(tokio_unstable))]
        {
            let _ = (thread, blocker_id, spawn_line);
            assert!(stuck.task.is_none());
        }

        let recovered: Vec<_> = log
            .iter()
            .filter_map(|t| match t {
                WorkerTransition::Recovered {
                    stuck,
                    stuck_for,
                    ended_at,
                } => Some((stuck, *stuck_for, *ended_at)),
                _ => None,
            })
            .collect();
        assert_eq!(recovered.len(), 1, "{how:?}: {log:#?}");
        let (was, stuck_for, ended_at) = recovered[0];
        assert_eq!(was.worker, stuck.worker);
        let ended = ended_at as i64 - started as i64;
        assert!(
            (block_us as i64 - 100_000..=block_us as i64 + 500_000).contains(&ended),
            "{how:?}: recovery seen {ended} µs after the block began"
        );
        assert!(
            (block_us - 300_000..=block_us + 600_000).contains(&stuck_for),
            "{how:?}: stuck for {stuck_for} µs"
        );
        assert!(!watch.any_stuck());
    }

    #[test]
    fn a_worker_blocked_in_one_poll_is_flagged_then_recovers() {
        blocked_worker(4, Spawn::Outside, Duration::from_secs(2), 0);
    }

    #[test]
    fn a_task_blocking_the_worker_that_spawned_it_is_flagged() {
        blocked_worker(4, Spawn::FromWorker, Duration::from_millis(1500), 0);
    }

    #[test]
    fn the_stuck_one_of_many_workers_is_named() {
        blocked_worker(8, Spawn::Outside, Duration::from_millis(1500), 0);
    }

    #[test]
    fn a_worker_stuck_among_busy_ones_is_named() {
        blocked_worker(4, Spawn::Outside, Duration::from_millis(1500), 3);
    }

    /// Eight tasks that each spin ~50 µs and yield, for 2 s, on 4 workers:
    /// every worker is busy, none is flagged. The one exception the test
    /// accepts is a worker whose thread really ran none of these polls for
    /// longer than T (the OS did not run it: on a loaded CI machine a
    /// thread can be descheduled or wait on a page fault that long); that
    /// is a true stall of the worker, and reporting it is right.
    #[test]
    fn a_busy_cooperative_workload_is_never_flagged() {
        let hooks = RuntimeHooks::new();
        let rt = runtime(&hooks, 4);
        wait_for_workers(&hooks, 4);
        let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
        let mut log = Vec::new();
        // Per thread: its last poll, its polls, and its gaps between two
        // polls longer than 100 ms (from, to), µs.
        type PerThread = HashMap<i32, (u64, u64, Vec<(u64, u64)>)>;
        let threads = Arc::new(Mutex::new(PerThread::new()));
        let end = now_us() + 2_000_000;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let threads = threads.clone();
                rt.spawn(async move {
                    while now_us() < end {
                        let spin = Instant::now();
                        while spin.elapsed() < Duration::from_micros(50) {
                            std::hint::spin_loop();
                        }
                        let now = now_us();
                        {
                            let mut threads = threads.lock();
                            let t = threads.entry(crate::stacks::current_tid()).or_insert((
                                now,
                                0,
                                Vec::new(),
                            ));
                            if now - t.0 > 100_000 {
                                t.2.push((t.0, now));
                            }
                            t.0 = now;
                            t.1 += 1;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let busy_before: Vec<Duration> = (0..4)
            .map(|i| rt.metrics().worker_total_busy_duration(i))
            .collect();
        sample_until(&mut watch, end + 300_000, &mut log);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
        let threads = threads.lock().clone();
        for stuck in stuck_of(&log) {
            let starved = stuck.tids.iter().any(|tid| {
                threads.get(tid).is_some_and(|t| {
                    t.2.iter().any(|&(from, to)| {
                        to - from >= T - 2 * TICK
                            && from <= stuck.detected_at
                            && to + TICK >= stuck.stuck_since
                    })
                })
            });
            assert!(
                starved,
                "a cooperative worker was flagged: {stuck:?}; per thread \
                 (last poll, polls, gaps > 100 ms): {threads:?}; {log:#?}"
            );
            eprintln!("flagged, but its thread really ran nothing for > T: {stuck:?}");
        }
        // The workload really kept every worker busy.
        let polls: u64 = threads.values().map(|t| t.1).sum();
        assert!(polls > 10_000, "only {polls} polls");
        for (i, before) in busy_before.iter().enumerate() {
            let busy = rt.metrics().worker_total_busy_duration(i) - *before;
            assert!(
                busy > Duration::from_millis(500),
                "worker {i} busy {busy:?}"
            );
        }
    }

    /// `block_in_place` hands the worker to another thread: the thread
    /// blocking in it stalls nobody and is not flagged.
    #[test]
    fn block_in_place_is_not_a_stuck_worker() {
        let hooks = RuntimeHooks::new();
        let rt = runtime(&hooks, 2);
        wait_for_workers(&hooks, 2);
        let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
        let mut log = Vec::new();
        let done = Arc::new(AtomicBool::new(false));
        let task = rt.spawn({
            let done = done.clone();
            async move {
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
                done.store(true, Ordering::SeqCst);
            }
        });
        sample_until(&mut watch, now_us() + 1_300_000, &mut log);
        rt.block_on(task).unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert!(stuck_of(&log).is_empty(), "{log:#?}");
    }

    /// A stretch during which the monitor did not sample (a paused
    /// process) is not counted as stuck time: the worker is flagged only a
    /// threshold after sampling resumed.
    #[test]
    fn a_gap_in_sampling_is_not_stuck_time() {
        let hooks = RuntimeHooks::new();
        let rt = runtime(&hooks, 2);
        wait_for_workers(&hooks, 2);
        let mut watch = WorkerWatch::new(hooks.clone(), rt.handle().clone(), T);
        let started = Arc::new(AtomicU64::new(0));
        let blocker = rt.spawn({
            let started = started.clone();
            async move {
                started.store(now_us(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1500));
            }
        });
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut log = watch.sample(now_us());
        std::thread::sleep(Duration::from_micros(2 * T));
        let resumed = now_us();
        log.extend(watch.sample(resumed));
        assert!(stuck_of(&log).is_empty(), "flagged across the gap: {log:?}");
        sample_until(&mut watch, resumed + T + 300_000, &mut log);
        let stuck = stuck_of(&log);
        assert_eq!(stuck.len(), 1, "{log:#?}");
        assert!(
            stuck[0].detected_at > resumed + T,
            "{stuck:?} resumed at {resumed}"
        );
        rt.block_on(blocker).unwrap();
    }

    #[test]
    fn a_current_thread_runtime_reports_nothing() {
        let hooks = RuntimeHooks::new();
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let rt = hooks.install(builder.enable_all()).build().unwrap();
        let mut watch = WorkerWatch::new(hooks, rt.handle().clone(), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(watch.sample(now_us()).is_empty());
        std::thread::sleep(Duration::from_millis(5));
        assert!(watch.sample(now_us()).is_empty());
    }

    #[test]
    fn report_sections_serialize() {
        let stuck = WorkerStuck {
            worker: 2,
            tids: vec![1234],
            thread: Some("tokio-runtime-worker".into()),
            stuck_since: 1_000_000,
            detected_at: 1_400_000,
            task: Some(StuckTask {
                id: "17".into(),
                spawned_at: "src/main.rs:10:5".into(),
            }),
        };
        let report = stuck.to_report(3_500_000);
        assert!((report.stuck_for_seconds - 2.5).abs() < 1e-9);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["worker"], 2);
        assert_eq!(json["tids"][0], 1234);
        assert_eq!(json["task"]["spawned_at"], "src/main.rs:10:5");
    }

    #[cfg(tokio_unstable)]
    #[test]
    fn spawn_locations_intern_once() {
        #[track_caller]
        fn here() -> &'static Location<'static> {
            Location::caller()
        }
        let a = here();
        let b = here();
        let (ia, ib) = (intern_location(a), intern_location(b));
        assert_ne!(ia, 0);
        assert_ne!(ia, ib);
        assert_eq!(intern_location(a), ia);
        assert_eq!(location_text(ia).unwrap(), a.to_string());
        assert_eq!(location_text(0), None);
    }

    #[cfg(tokio_unstable)]
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
