//! [`RuntimeHooks`]: the public helper a user installs on a
//! `tokio::runtime::Builder`, and the hook methods tokio then calls on the
//! runtime's threads.
//!
//! This module owns the registry of one runtime's threads (a [`Slot`] per
//! thread that started and has not stopped, and a generation the monitor
//! checks before re-reading the list) and the hook entry points, each of
//! which finds the calling thread's slot through [`LOCAL`] and updates it.
//! It does not own what a slot holds ([`super::slot`]), how a worker thread
//! learns its worker index (`worker_index`, stable tokio), the poll state
//! (`poll`, `tokio_unstable`), nor any reading of them: that is the
//! monitor's [`WorkerWatch`](super::watch::WorkerWatch).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[cfg(not(tokio_unstable))]
use tokio::runtime::Handle;
#[cfg(tokio_unstable)]
use tokio::runtime::TaskMeta;

#[cfg(tokio_unstable)]
use super::poll_pool::PollLease;
#[cfg(tokio_unstable)]
use super::slot::{Polling, POLLING};
use super::slot::{Slot, LOCAL};
#[cfg(tokio_unstable)]
use super::task_id::task_id_bits;
#[cfg(not(tokio_unstable))]
use super::worker_index::{Learned, LocalLearn};

/// Distinguishes `RuntimeHooks` instances, so a thread start, stop, park or
/// unpark hook only touches the slot its own instance registered.
static NEXT_HOOKS_ID: AtomicU64 = AtomicU64::new(1);

/// Hooks for a `tokio::runtime::Builder` that let loopwatch tell which
/// worker thread of a multi-thread runtime is stuck, and with
/// `--cfg tokio_unstable` in which task.
///
/// A worker stuck in a poll (a blocking call inside an async task) starves
/// the tasks queued behind it, while the other workers may well keep
/// answering loopwatch's probe (tokio issue 4730). With these hooks
/// installed, loopwatch records, per runtime thread, its OS thread id and
/// whether it is parked; with `--cfg tokio_unstable` also the task it is
/// polling (id and spawn location). Per poll that costs, before the poll,
/// a read of a `const` thread-local, two or three comparisons, one load
/// and three stores, and after it the thread-local read, two comparisons,
/// one load and one store: none of them locked or fenced on x86-64, and no
/// clock read (details at `on_before_task_poll`). On stable tokio nothing
/// runs per poll.
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
                poll: PollLease::take(),
            });
            #[cfg(not(tokio_unstable))]
            if let (Some(metrics), Ok(mut learn)) = (metrics, local.learn.try_borrow_mut()) {
                *learn = Some(LocalLearn::new(metrics, workers));
            }
            #[cfg(tokio_unstable)]
            POLLING.with(|polling| polling.set(&new));
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
            // The poll hooks stop using the slot's cell before its last
            // `Arc` can go.
            #[cfg(tokio_unstable)]
            POLLING.with(Polling::clear);
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
    /// `Builder::on_before_task_poll`.
    ///
    /// The poll hooks write to the slot of the calling thread whichever
    /// `RuntimeHooks` registered it (unlike the thread, park and unpark
    /// hooks, they do not check the instance: that check cost more than the
    /// rest of the hook). A slot so describes its thread: if a runtime's
    /// task drives another runtime inside `block_in_place`, the inner
    /// runtime's polls show in the thread's slot too.
    ///
    /// The cost, when the task was spawned at one of the two locations
    /// polled last on this thread: a read of a `const` thread-local (no
    /// lazy initialisation, no destructor check, no `RefCell`), a check that
    /// the thread is registered, one or two address comparisons for the
    /// spawn location, then one relaxed load, two relaxed stores and one
    /// release store, with a release fence; on x86-64 all of them plain
    /// moves. No lock, no clock read, no allocation. A spawn location not
    /// among the last two is looked up, out of line, in a process-wide
    /// table (a hash and a probe; the first poll from a new location ever
    /// inserts it once).
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
        let (task, location) = (task_id_bits(meta.id()), meta.spawned_at());
        POLLING.with(|polling| polling.begin(task, location));
    }

    /// Records the end of a task poll on the calling worker. Call it from
    /// `Builder::on_after_task_poll`. The cost: the thread-local read and
    /// the check that the thread is registered, as before the poll, then
    /// one relaxed load, a check that a poll is open and one release store.
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
        POLLING.with(Polling::end);
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

    /// With `--cfg tokio_unstable`: how many task polls thread `tid` has
    /// begun since it registered (its poll sequence is odd inside a poll).
    /// `None` on stable tokio, or for a thread these hooks do not know.
    pub(crate) fn polls_begun(&self, tid: i32) -> Option<u64> {
        #[cfg(tokio_unstable)]
        {
            let threads = self.inner.threads.lock();
            let slot = threads.iter().find(|s| s.tid == tid)?;
            Some(slot.poll.read().0.div_ceil(2))
        }
        #[cfg(not(tokio_unstable))]
        {
            let _ = tid;
            None
        }
    }

    /// The registry's generation: it changes whenever a thread registers
    /// or unregisters.
    pub(super) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The registered slots, with the generation they belong to.
    pub(super) fn snapshot(&self) -> (u64, Vec<Arc<Slot>>) {
        let threads = self.inner.threads.lock();
        let generation = self.inner.generation.load(Ordering::Acquire);
        (generation, threads.clone())
    }
}
