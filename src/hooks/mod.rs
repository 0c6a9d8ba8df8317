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
//! It does not capture stacks, decide verdicts or write reports: the
//! monitor does that with what [`WorkerWatch`] hands it.
//!
//! # Where things are
//!
//! The thread side, run from tokio's hooks on the runtime's own threads:
//!
//! * [`runtime_hooks`]: the public [`RuntimeHooks`], its hook methods and
//!   the registry of runtime threads;
//! * [`slot`]: what one runtime thread publishes for the monitor, and the
//!   thread-locals through which its hooks find it (a `const` one without
//!   a destructor for the per-poll hooks);
//! * `worker_index` (stable tokio only): how a worker thread learns which
//!   worker index it runs, from its park/unpark hooks;
//! * `poll`, `poll_pool`, `spawn_location` (`tokio_unstable` only) and
//!   `task_id`: the per-poll state, the bounded pool of `'static` cells it
//!   lives in, the interned spawn locations, and a task id read as a
//!   number.
//!
//! The monitor side:
//!
//! * [`watch`]: [`WorkerWatch`], the detector; its documentation says how a
//!   stuck worker is recognised, which thread it is, and the limits;
//! * `attribution` (stable tokio only): which thread runs a stuck worker,
//!   from what the worker threads learned;
//! * [`stuck`]: what the detector reports, [`WorkerTransition`] to the
//!   monitor and the public [`StuckWorker`] and [`StuckTask`] report
//!   sections.
//!
//! The tests that run a real runtime with the hooks installed and play the
//! monitor by hand are in `tests.rs`; each file keeps its own unit tests.

#[cfg(not(tokio_unstable))]
mod attribution;
#[cfg(tokio_unstable)]
mod poll;
#[cfg(tokio_unstable)]
mod poll_pool;
mod runtime_hooks;
mod slot;
#[cfg(tokio_unstable)]
mod spawn_location;
mod stuck;
#[cfg(any(test, tokio_unstable))]
mod task_id;
#[cfg(test)]
mod tests;
mod watch;
#[cfg(not(tokio_unstable))]
mod worker_index;

pub use runtime_hooks::RuntimeHooks;
pub(crate) use stuck::WorkerTransition;
pub use stuck::{StuckTask, StuckWorker};
pub(crate) use watch::WorkerWatch;
