//! loopwatch: a stuck-event-loop detector for tokio daemons.
//!
//! A service that crashes gets restarted. A service whose event loop is
//! stuck — a blocking call inside an async task, a lock-order deadlock, a
//! spin — keeps its process alive, answers nothing, and a heartbeat sent
//! from a timer in another task may even keep systemd believing it is fine.
//! loopwatch watches the loop from a thread of its own:
//!
//! * a **probe** task on each watched runtime is woken by the monitor and
//!   stamps when it was polled; the difference is the loop's lag, in µs;
//! * the **monitor** thread forwards systemd's `WATCHDOG=1` only while
//!   every runtime answers within the stall threshold, and says in the log,
//!   in `STATUS=` and to your callback when a loop stalls and recovers;
//! * on a stall it captures **every thread's stack** (a real-time signal
//!   whose handler only copies registers and stack; unwinding and
//!   symbolization happen afterwards on the monitor thread), decides a
//!   [`Verdict`] and a [`Culprit`], and writes a [`StallReport`] atomically
//!   before systemd's watchdog deadline ([`Builder::report_dir`]);
//! * it exports Prometheus metrics and serves `/metrics` and `/healthz`
//!   from a thread of its own ([`Builder::serve_metrics`]), the liveness
//!   probe's `WATCHDOG=1`;
//! * with [`RuntimeHooks`] installed on a multi-thread runtime it also
//!   catches one worker stuck in a poll while the others still answer the
//!   probe ([`Builder::watch_with_hooks`]).
//!
//! loopwatch never takes the daemon down by itself: a bad setting is a
//! typed [`Error`] from [`Builder::start`], and a failure at run time (a ping
//! that cannot be sent, a report that cannot be written, a panicking
//! callback) is counted, logged and survived.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let watchdog = loopwatch::Watchdog::builder()
//!         .stall_threshold(Duration::from_millis(500))
//!         .watch("main", tokio::runtime::Handle::current())
//!         .on_stall(|event| eprintln!("{event:?}"))
//!         .start()?;
//!     watchdog.ready()?;
//!     // ... run the daemon ...
//!     watchdog.shutdown();
//!     Ok(())
//! }
//! ```
//!
//! Under systemd use `Type=notify`, `NotifyAccess=main` and `WatchdogSec=`;
//! the threshold then defaults to a quarter of `WatchdogSec=`.
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

#[doc(hidden)]
pub mod bench_support;
mod builder;
mod clock;
mod diagnostics;
mod error;
mod exporter;
mod health;
mod hiccups;
pub use hiccups::{Blocker, Hiccup, HiccupCause, DEFAULT_KEEP_HICCUPS};
mod hooks;
pub use hooks::{RuntimeHooks, StuckTask, StuckWorker};
pub mod journal;
mod metrics;
mod monitor;
mod notify;
mod origin;
mod probe;
mod procfs;
mod report;
mod report_store;
mod settings;
mod stacks;
mod status;
mod verdict;
mod watchdog;

pub use builder::Builder;
pub use error::{Error, Result};
pub use procfs::{ProcessFacts, SyscallInfo, ThreadFacts};
pub use report::{
    CaptureInfo, LagSample, ReportFrame, ReportTimes, RuntimeMetricsSnapshot, StallReport,
    ThreadGroup, Thresholds, REPORT_FORMAT_VERSION,
};
pub use report_store::DEFAULT_KEEP_REPORTS;
pub use settings::{
    DEFAULT_PROBE_INTERVAL, DEFAULT_STALL_THRESHOLD, MAX_DURATION_SETTING, MIN_STALL_THRESHOLD,
};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use stacks::symbolize_offset;
pub use stacks::{CaptureOutcome, Frame, NotCaptured, Origin, SymbolSource};
pub use status::{LoopState, RuntimeStatus, StallEvent, Status};
pub use verdict::{Culprit, Verdict, VerdictKind};
pub use watchdog::Watchdog;
