//! Configuration: the [`Builder`] the application fills in.
//!
//! The builder collects what the application asks for — plain settings
//! ([`Requested`](crate::settings::Requested)), the runtimes to watch, the
//! callback and the registry — and [`Builder::start`] turns them into a
//! running [`Watchdog`]: it reads systemd's environment, has
//! [`settings`](crate::settings) validate everything and fill in defaults,
//! and hands the result to [`Watchdog`]'s launcher. This module decides
//! nothing itself and owns no running state.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::error::Result;
use crate::hooks::RuntimeHooks;
use crate::notify::SystemdEnv;
use crate::report_store::ReportDirSetting;
use crate::settings::{Requested, Settings};
use crate::status::{StallCallback, StallEvent};
use crate::watchdog::{Launch, Watchdog};

/// Builds and starts a [`Watchdog`].
///
/// ```no_run
/// # async fn run() -> Result<(), loopwatch::Error> {
/// use std::time::Duration;
///
/// let watchdog = loopwatch::Watchdog::builder()
///     .stall_threshold(Duration::from_millis(500))
///     .probe_interval(Duration::from_millis(50))
///     .watch("main", tokio::runtime::Handle::current())
///     .on_stall(|event| eprintln!("loopwatch: {event:?}"))
///     .start()?;
/// watchdog.ready()?;
/// // ... serve ...
/// watchdog.shutdown();
/// # Ok(()) }
/// ```
#[must_use = "a Builder does nothing until start() is called"]
pub struct Builder {
    pub(crate) requested: Requested,
    pub(crate) runtimes: Vec<(String, Handle)>,
    /// Per runtime (same order): the hooks installed on its Builder, if any.
    pub(crate) hooks: Vec<Option<RuntimeHooks>>,
    pub(crate) on_stall: Option<StallCallback>,
    pub(crate) registry: Option<prometheus::Registry>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("requested", &self.requested)
            .field(
                "runtimes",
                &self.runtimes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("on_stall", &self.on_stall.is_some())
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with every default.
    pub fn new() -> Self {
        Builder {
            requested: Requested::default(),
            runtimes: Vec::new(),
            hooks: Vec::new(),
            on_stall: None,
            registry: None,
        }
    }

    /// Lag above which a runtime counts as stalled.
    ///
    /// Default: a quarter of systemd's watchdog interval (`WatchdogSec=`)
    /// when it applies, else one second. It must be below the watchdog
    /// interval, or no report could be written before systemd's deadline.
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.requested.stall_threshold = Some(threshold);
        self
    }

    /// How often each runtime is probed.
    ///
    /// Default: a quarter of the stall threshold, at most 100 ms. Must be
    /// above zero and below the threshold. The probe costs one task wake per
    /// interval.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.requested.probe_interval = Some(interval);
        self
    }

    /// Watches the runtime behind `handle` under `name` (a label in logs,
    /// `STATUS=`, metrics and reports). Call once per runtime.
    pub fn watch(mut self, name: impl Into<String>, handle: Handle) -> Self {
        self.runtimes.push((name.into(), handle));
        self.hooks.push(None);
        self
    }

    /// Watches a runtime whose `tokio::runtime::Builder` got `hooks`
    /// installed ([`RuntimeHooks::install`](crate::RuntimeHooks::install)):
    /// besides the probe, each worker is watched on its own, so that one
    /// worker stuck in a poll is caught even while the others still answer
    /// the probe (see [`RuntimeHooks`](crate::RuntimeHooks)).
    ///
    /// ```no_run
    /// let hooks = loopwatch::RuntimeHooks::new();
    /// let mut builder = tokio::runtime::Builder::new_multi_thread();
    /// hooks.install(builder.enable_all());
    /// let rt = builder.build()?;
    /// let watchdog = loopwatch::Watchdog::builder()
    ///     .watch_with_hooks("main", rt.handle().clone(), &hooks)
    ///     .start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn watch_with_hooks(
        mut self,
        name: impl Into<String>,
        handle: Handle,
        hooks: &RuntimeHooks,
    ) -> Self {
        self.runtimes.push((name.into(), handle));
        self.hooks.push(Some(hooks.clone()));
        self
    }

    /// Whether a stuck worker can ever make loopwatch withhold pings
    /// (default: yes, after [`worker_stuck_limit`](Self::worker_stuck_limit)).
    ///
    /// Either way a stuck worker is reported at once: logged ("worker N of
    /// event loop ... stuck"), counted, `loopwatch_worker_stuck` set, a
    /// report written. `false` never withholds pings for it (only a stalled
    /// probe does); `true` restores the default limit.
    pub fn worker_stuck_is_stall(mut self, on: bool) -> Self {
        self.requested.worker_stuck_limit =
            on.then_some(crate::settings::DEFAULT_WORKER_STUCK_LIMIT);
        self
    }

    /// How long one worker of a multi-thread runtime may stay stuck in a
    /// poll, while the other workers still answer the probe, before
    /// loopwatch withholds pings (`/healthz` 503, systemd restarts the
    /// service). Default 30 s: a stuck worker degrades the runtime (tasks
    /// queued behind it wait; the others steal most of its work) but does
    /// not stop it, and a restart drops every in-flight request — so a
    /// slow blocking call rides through, while a worker wedged for good is
    /// restarted within a minute. A stalled probe (the whole loop stuck)
    /// withholds pings at once, whatever this limit.
    pub fn worker_stuck_limit(mut self, limit: Duration) -> Self {
        self.requested.worker_stuck_limit = Some(limit);
        self
    }

    /// Lag above which a block of the event loop is recorded as a
    /// **hiccup** (default: the smaller of 100 ms and a quarter of the
    /// stall threshold; at least 1 ms and below the stall threshold).
    ///
    /// The probe interval stays as it is: with the default 100 ms, every
    /// block longer than the warn threshold plus one interval is still in
    /// progress when the monitor sees its probe late, so the loop thread is
    /// captured live (one signal) and the hiccup names its culprit and
    /// cause; a shorter block is recorded when a probe lands in it, with
    /// its duration but no stack; every block stays in the lag histogram.
    /// Hiccups are counted (`loopwatch_hiccups_total`), logged (aggregated
    /// under load), listed by [`Watchdog::hiccups`](crate::Watchdog::hiccups),
    /// served at `/hiccups` and included in stall reports.
    pub fn warn_threshold(mut self, threshold: Duration) -> Self {
        self.requested.warn_threshold = Some(Some(threshold));
        self
    }

    /// Turns hiccups off: only stalls are reported.
    pub fn no_hiccups(mut self) -> Self {
        self.requested.warn_threshold = Some(None);
        self
    }

    /// Most hiccup captures per runtime per second on average (default 1;
    /// bursts of twice that); hiccups beyond are still recorded and
    /// counted (`loopwatch_hiccup_captures_skipped_total`), without a stack.
    /// 0 records every hiccup without capturing.
    pub fn max_hiccup_captures_per_second(mut self, n: u32) -> Self {
        self.requested.hiccup_captures_per_second = n;
        self
    }

    /// How many hiccups [`Watchdog::hiccups`](crate::Watchdog::hiccups) and
    /// `/hiccups` keep (default 64).
    pub fn keep_hiccups(mut self, n: usize) -> Self {
        self.requested.keep_hiccups = n.min(100_000);
        self
    }

    /// How long after a full stall report a new stall of the same runtime
    /// that looks the same (verdict and culprit, from a cheap capture of the
    /// loop thread alone) is only counted and listed in that report's
    /// occurrences instead of getting a full capture and report of its own
    /// (default 60 s). Every stall is still counted in
    /// `loopwatch_stalls_total`; coalesced ones also in
    /// `loopwatch_stalls_coalesced_total`.
    pub fn storm_cool_down(mut self, cool_down: Duration) -> Self {
        self.requested.storm_cool_down = cool_down;
        self
    }

    /// Most bytes of report files written per hour (default 16 MiB,
    /// counted over a sliding hour); a report version beyond it is not
    /// written, counted in `loopwatch_reports_total{result="dropped"}` and
    /// logged at most once an hour.
    pub fn max_report_bytes_per_hour(mut self, bytes: u64) -> Self {
        self.requested.report_bytes_per_hour = bytes;
        self
    }

    /// Most full stall reports per runtime per hour (default 10); stalls
    /// beyond are counted and listed in the latest report's occurrences.
    pub fn max_reports_per_hour(mut self, n: u32) -> Self {
        self.requested.reports_per_hour = n;
        self
    }

    /// Called on the monitor thread when a runtime stalls and when it
    /// recovers. It must not block for long: the monitor waits for it. A
    /// panic inside it is caught, logged and counted.
    pub fn on_stall<F>(mut self, callback: F) -> Self
    where
        F: Fn(&StallEvent) + Send + 'static,
    {
        self.on_stall = Some(Box::new(callback));
        self
    }

    /// Writes stall reports (`stall-<id>.json` and `.txt`, mode 0600) into
    /// `dir`, created with mode 0700 if missing.
    ///
    /// loopwatch trusts nothing in `dir`: it does not follow a symbolic
    /// link as its last component, tightens a directory of its own user
    /// that grants group or other access to 0700 (logged once), writes the
    /// two files of a report both or neither, and removes only regular
    /// files named like its own reports (keeping the newest
    /// [`keep_reports`](Self::keep_reports)) and temporary files a killed
    /// writer left more than a minute ago. At most 16 MiB of reports are
    /// written per hour; a report past that cap goes to stderr (compact)
    /// and is counted as dropped.
    ///
    /// Default: `$STATE_DIRECTORY/loopwatch` or `$RUNTIME_DIRECTORY/loopwatch`
    /// when systemd provides one (`StateDirectory=` in the unit), else no
    /// files: the compact report goes to stderr (the journal, under systemd).
    ///
    /// # Errors
    ///
    /// [`start`](Self::start) fails with
    /// [`Error::ReportDir`](crate::Error::ReportDir) when `dir` is a
    /// symbolic link, exists and is not a directory, or is owned by another
    /// user than the one loopwatch runs as. These are a wrong setting or a
    /// planted path: they do not fix themselves, and a report directory
    /// that silently holds nothing is found out during the incident it was
    /// meant for. A directory that cannot be created or written *now*
    /// (missing parent, no permission, full disk) is not an error: it is
    /// logged, tried again at each stall, and reports go to stderr
    /// meanwhile.
    ///
    /// ```no_run
    /// # fn run(handle: tokio::runtime::Handle) -> Result<(), loopwatch::Error> {
    /// let builder = || loopwatch::Watchdog::builder().watch("main", handle.clone());
    /// let watchdog = match builder().report_dir("/var/lib/my-daemon/loopwatch").start() {
    ///     Err(loopwatch::Error::ReportDir { path, source }) => {
    ///         eprintln!("no stall report files: {}: {source}", path.display());
    ///         builder().no_report_files().start()?
    ///     }
    ///     other => other?,
    /// };
    /// # watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    pub fn report_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.requested.report_dir = ReportDirSetting::Dir(dir.into());
        self
    }

    /// Writes no report files, whatever the environment says; compact
    /// reports still go to stderr.
    pub fn no_report_files(mut self) -> Self {
        self.requested.report_dir = ReportDirSetting::Disabled;
        self
    }

    /// How many reports to keep in the report directory (default 20).
    pub fn keep_reports(mut self, n: usize) -> Self {
        self.requested.keep_reports = n;
        self
    }

    /// The real-time signal used to capture thread stacks (default
    /// `SIGRTMIN+3`). [`start`](Self::start) refuses a signal the
    /// application already handles.
    pub fn capture_signal(mut self, signal: i32) -> Self {
        if let Some(c) = &mut self.requested.capture {
            c.signal = signal;
        }
        self
    }

    /// How much of each thread's stack is copied (default 128 KiB; 16 KiB
    /// to 1 MiB).
    pub fn max_stack_bytes(mut self, bytes: usize) -> Self {
        if let Some(c) = &mut self.requested.capture {
            c.max_stack_bytes = bytes;
        }
        self
    }

    /// How long to wait for one thread to answer the capture signal before
    /// reporting it unresponsive (default 50 ms).
    pub fn capture_timeout(mut self, timeout: Duration) -> Self {
        if let Some(c) = &mut self.requested.capture {
            c.per_thread_timeout = timeout;
        }
        self
    }

    /// The total wall time one capture of every thread may take (default
    /// 200 ms, at most 10 s; never more than half the time left before
    /// systemd's deadline). Loop threads and stuck workers are captured
    /// first; threads not reached in time are listed with that reason.
    pub fn capture_budget(mut self, budget: Duration) -> Self {
        if let Some(c) = &mut self.requested.capture {
            c.budget = budget;
        }
        self
    }

    /// The wall time the report's second pass may spend reading debug
    /// information for files, lines and inlined functions (default 1 s, at
    /// most 10 s). The first report is already on disk by then; the report
    /// says when this ran out.
    pub fn symbolize_budget(mut self, budget: Duration) -> Self {
        if let Some(c) = &mut self.requested.capture {
            c.symbolize_budget = budget;
        }
        self
    }

    /// Turns stack capture off: reports then show `/proc` facts only and no
    /// signal handler is installed.
    pub fn no_stack_capture(mut self) -> Self {
        self.requested.capture = None;
        self
    }

    /// How long before systemd's earliest deadline (last ping +
    /// WatchdogSec) the final report must be on disk. Default: an eighth of
    /// WatchdogSec, at least 100 ms.
    pub fn deadline_margin(mut self, margin: Duration) -> Self {
        self.requested.deadline_margin = Some(margin);
        self
    }

    /// After the last report before the deadline is written, send
    /// `WATCHDOG=trigger` so systemd acts at once instead of waiting for
    /// the deadline (off by default).
    pub fn trigger_watchdog_after_report(mut self, on: bool) -> Self {
        self.requested.trigger_watchdog = on;
        self
    }

    /// Names crates that are the application's own code, besides those
    /// loopwatch learns from the binary (crates whose sources lie outside
    /// the cargo home and the Rust sources, the crate whose `main` runs,
    /// the executable's name). Stall reports blame the innermost frame of
    /// own code and show dependency frames as where it was stuck.
    ///
    /// Useful when debug info is off (names alone say nothing about paths)
    /// and the code lives in a library crate named unlike the binary, or
    /// for your own crates that come from a registry. Names are crate
    /// names (`-` and `_` are the same); [`start`](Self::start) refuses one
    /// that is not. Calls add up.
    ///
    /// ```no_run
    /// let watchdog = loopwatch::Watchdog::builder()
    ///     .watch("main", tokio::runtime::Handle::current())
    ///     .own_crates(["myapp_core", "myapp-http"])
    ///     .start()?;
    /// # Ok::<(), loopwatch::Error>(())
    /// ```
    pub fn own_crates<I, S>(mut self, crates: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.requested
            .own_crates
            .extend(crates.into_iter().map(Into::into));
        self
    }

    /// Registers loopwatch's metrics (`loopwatch_*`) in `registry` instead
    /// of a fresh one, so one scrape serves the application's metrics too.
    pub fn registry(mut self, registry: prometheus::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Serves `/metrics` and `/healthz` on `addr` (for example
    /// `"127.0.0.1:9184"`) from a thread of loopwatch's own, so both answer
    /// while the event loop is stuck. Bind loopback unless the port must be
    /// reachable from elsewhere. `/healthz` answers 200 while every runtime
    /// is healthy and 503 with a one-line reason while not: point a
    /// Kubernetes liveness probe at it.
    pub fn serve_metrics(mut self, addr: impl Into<String>) -> Self {
        self.requested.metrics_addr = Some(addr.into());
        self
    }

    /// Validates the settings against systemd's environment and starts the
    /// monitor thread.
    ///
    /// # Errors
    /// A typed [`Error`](crate::Error) for a bad `WATCHDOG_USEC`/`WATCHDOG_PID`, a
    /// threshold not below the watchdog interval, a zero or too long probe
    /// interval, no runtime or a repeated runtime name, or a thread that
    /// could not be spawned.
    pub fn start(self) -> Result<Watchdog> {
        let settings = self.resolve(SystemdEnv::from_process()?)?;
        Watchdog::launch(Launch {
            settings,
            runtimes: self.runtimes,
            hooks: self.hooks,
            on_stall: self.on_stall,
            registry: self.registry,
        })
    }

    /// The settings this builder stands for under `env`, validated.
    pub(crate) fn resolve(&self, env: SystemdEnv) -> Result<Arc<Settings>> {
        let names: Vec<&str> = self.runtimes.iter().map(|(n, _)| n.as_str()).collect();
        Settings::resolve(&self.requested, &names, env)
    }
}

impl Watchdog {
    /// A [`Builder`] with every default.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

#[cfg(test)]
mod tests;
