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
//! * the **monitor** thread forwards systemd's `WATCHDOG=1` only while no
//!   runtime withholds it, and says in the log, in `STATUS=` and to your
//!   callback ([`Builder::on_stall`]) when a loop stalls and recovers;
//! * on a stall it captures **every thread's stack** (a real-time signal
//!   whose handler only copies registers and stack; a thread asleep in a
//!   system call is read from `/proc` without one), decides a [`Verdict`]
//!   from thread states, system calls, CPU time and stack addresses (no
//!   symbols needed), names the [`Culprit`] — the innermost frame of your
//!   own code in the stuck poll, and the frame it was stuck in below it
//!   ([`Builder::own_crates`]) — and writes a [`StallReport`] atomically
//!   before systemd's watchdog deadline ([`Builder::report_dir`]);
//! * blocks of the loop above a warn threshold but short of a stall are
//!   recorded as [`Hiccup`]s with their culprit
//!   ([`Builder::warn_threshold`], [`Watchdog::hiccups`]);
//! * it exports Prometheus metrics and serves `/metrics`, `/healthz` (the
//!   liveness probe's `WATCHDOG=1`) and `/hiccups` from a thread of its own
//!   ([`Builder::serve_metrics`]);
//! * with [`RuntimeHooks`] installed on a multi-thread runtime it also
//!   catches one worker stuck in a poll while the others still answer the
//!   probe ([`Builder::watch_with_hooks`]).
//!
//! # Incidents
//!
//! A runtime's stall, whatever its causes (its probe, its stuck workers),
//! is one incident: counted once, one report, one [`StallEvent`] pair. It
//! withholds pings while the probe is stalled, or once a worker has been
//! stuck longer than [`Builder::worker_stuck_limit`] (30 s by default: a
//! stuck worker is reported at once, but a restart drops every in-flight
//! request). A stall storm — like stalls within
//! [`Builder::storm_cool_down`] — is coalesced into one report, and full
//! reports and their bytes are capped per hour
//! ([`Builder::max_reports_per_hour`], [`Builder::max_report_bytes_per_hour`]).
//!
//! # Binaries as shipped
//!
//! Nothing about symbols is loaded while the daemon is healthy: at a stall
//! the first report names frames from the symbol table, then a DWARF pass
//! adds files, lines and inlined functions, and everything is released.
//! With Cargo's default release profile reports name functions but not
//! inlined ones; `debug = "line-tables-only"` in `[profile.release]` adds
//! files, lines and inlined functions (disk only); with `strip = true`
//! every frame still carries its module's build id and offset, which
//! [`symbolize_offset`] (or `loopwatch symbolize`) resolves later against
//! the build's debug file; separate debug files under `/usr/lib/debug` or
//! named by `.gnu_debuglink` are found automatically. At start loopwatch
//! logs once what its reports will be able to name and how to get more.
//!
//! # Logs, journal and the `loopwatch` command
//!
//! loopwatch logs through `tracing`: without a subscriber nothing is
//! printed (the compact stall report still goes to stderr when no report
//! file is written). Under systemd each stall, recovery, stuck worker and
//! coalesced storm is also a structured journal entry with a fixed
//! `MESSAGE_ID` (the catalog is in [`journal`]). The `loopwatch` command
//! (feature `cli`) lists, shows, summarises, symbolizes and draws as a
//! flame graph the reports of many hosts; [`StallReport::from_json`] reads
//! them in your own tools.
//!
//! loopwatch never takes the daemon down by itself: a bad setting is a
//! typed [`Error`] from [`Builder::start`]; a failure at run time (a ping
//! that cannot be sent, a report that cannot be written, a panicking
//! callback, a panic inside loopwatch) is counted, logged and survived.
//! After repeated panics the monitor stops for good and says so: no more
//! pings, `/healthz` 503, [`Status::monitor_failure`].
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
//! (A `main` returning `Box<dyn Error>` prints an error's `Debug` form;
//! print `{e}` yourself for the readable message.)
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
pub use stacks::{symbolize_offset, symbolize_offsets};
pub use stacks::{CaptureOutcome, Frame, NotCaptured, Origin, SymbolSource};
pub use status::{LoopState, RuntimeStatus, StallEvent, Status};
pub use verdict::{Culprit, Verdict, VerdictKind};
pub use watchdog::Watchdog;
