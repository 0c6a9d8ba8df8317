//! The monitor thread: probes, decides, pings.
//!
//! One OS thread per [`Watchdog`](crate::Watchdog), independent of every
//! tokio runtime. On each tick it reads every probe (atomics only: it never
//! waits on a runtime), feeds the readings to the per-runtime state machines,
//! sends the next probe wakes, and forwards `WATCHDOG=1` to systemd every
//! quarter of the watchdog interval while, and only while, every runtime is
//! healthy. Transitions are said in the log, in `STATUS=` and to the
//! application's `on_stall` callback.
//!
//! The thread sleeps until the next thing it has to do: the next probe, the
//! moment an outstanding probe would cross the threshold, or the next ping.
//! A wake-up much later than planned means the monitor itself was not
//! scheduled (process stopped, VM frozen, CPU throttled); such gaps are
//! remembered so that they are not blamed on the application.
//!
//! The work is split by what it is about:
//!
//! * this file: the thread's loop, one tick (probes, state machines,
//!   worker detectors), when to wake next, and the monitor's own
//!   scheduling gaps;
//! * [`incidents`]: what happens when a runtime stalls or recovers, or a
//!   worker gets stuck or moves again — log, metrics, diagnostics,
//!   callback;
//! * [`pings`]: systemd's `WATCHDOG=1`, `STATUS=` and `WATCHDOG=trigger`,
//!   and systemd's earliest deadline;
//! * [`snapshot`]: the `STATUS=` line and the [`Status`] the application
//!   reads.
//!
//! It does not capture stacks or write reports (that is
//! [`diagnostics`](crate::diagnostics)) and does not decide health by
//! itself (that is [`health`](crate::health)).

mod hiccup_watch;
mod incidents;
mod pings;
mod snapshot;
#[cfg(test)]
mod tests;

pub(crate) use snapshot::initial_status;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::clock::{self, micros, us};
use crate::diagnostics::Diagnostics;
use crate::health::{LoopTracker, Transition};
use crate::hiccups::HiccupLog;
use crate::hooks::{RuntimeHooks, WorkerWatch};
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifyState};
use crate::probe::{self, ProbeReading, ProbeShared};
use crate::settings::Settings;
use crate::status::{human, StallCallback, Status};

/// How many of its own scheduling gaps the monitor remembers.
const GAPS_KEPT: usize = 32;

/// How long shutdown's last look waits for a stalled loop to answer its
/// probe (a block that ended just before `shutdown()`); a loop still
/// stalled after that is left as it is.
const LAST_LOOK_GRACE: Duration = Duration::from_millis(100);

/// Panics within [`PANIC_WINDOW`] after which the monitor gives up.
pub(crate) const MAX_PANICS: usize = 3;
/// The window over which panics are counted, µs (one minute).
const PANIC_WINDOW: u64 = 60_000_000;

/// Runs one diagnostics step, catching a panic: logged with its message,
/// counted (`loopwatch_internal_errors_total{part="diagnostics"}`), and the
/// step's default result returned, so the rest of the tick (pings, the
/// other runtimes) goes on.
pub(crate) fn guard_diag<T: Default>(
    diag: &mut Diagnostics,
    metrics: &Metrics,
    internal_errors: &mut u64,
    step: impl FnOnce(&mut Diagnostics) -> T,
) -> T {
    match catch_unwind(AssertUnwindSafe(|| step(diag))) {
        Ok(v) => v,
        Err(payload) => {
            *internal_errors += 1;
            metrics.internal_error("diagnostics");
            tracing::error!(
                panic = %panic_message(payload.as_ref()),
                internal_errors = *internal_errors,
                "loopwatch's diagnostics panicked (a loopwatch bug); this report may be \
                 incomplete, watching goes on"
            );
            T::default()
        }
    }
}

/// The message a panic carried, or a placeholder.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// State shared between the monitor thread and the [`Watchdog`](crate::Watchdog) handle.
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    pub status: Mutex<Status>,
    pub stop: AtomicBool,
    /// Where notify messages go, when this watchdog talks to systemd.
    pub notifier: Option<Notifier>,
    /// How old the published status may be before it counts as frozen.
    pub stale_after: std::time::Duration,
}

impl Shared {
    /// Sends `states` to systemd when this watchdog talks to it.
    /// A forked child of the process that started loopwatch sends nothing:
    /// it is not the service's main process, whatever its environment says.
    pub(crate) fn notify(&self, states: &[NotifyState<'_>]) -> std::io::Result<bool> {
        if std::process::id() != self.settings.pid {
            return Ok(false);
        }
        match &self.notifier {
            Some(n) => n.send(states).map(|()| true),
            None => Ok(false),
        }
    }
}

/// One watched runtime.
pub(crate) struct Watched {
    pub name: String,
    pub probe: Arc<ProbeShared>,
    pub tracker: LoopTracker,
    /// Kept for the runtime's metrics; never blocked on.
    pub handle: Handle,
    /// The per-worker detector, for runtimes watched with hooks.
    pub workers: Option<WorkerWatch>,
    /// The hooks, for the list of worker threads.
    pub hooks: Option<RuntimeHooks>,
    /// The runtime's stall in progress, whatever its causes.
    pub incident: Option<incidents::Incident>,
    /// The runtime's hiccup watch.
    hiccups: hiccup_watch::HiccupWatch,
}

/// A stretch of time during which the monitor thread was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MonitorGap {
    pub from: u64,
    pub to: u64,
}

/// The monitor thread's state.
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    loops: Vec<Watched>,
    on_stall: Option<StallCallback>,
    diag: Diagnostics,
    metrics: Arc<Metrics>,
    /// Per runtime: when the last answered probe was answered (metrics dedupe).
    last_answer: Vec<u64>,
    threshold: u64,
    interval: u64,
    ping_every: Option<u64>,
    last_ping: Option<u64>,
    last_suppressed: Option<u64>,
    gaps: VecDeque<MonitorGap>,
    pings_sent: u64,
    pings_suppressed: u64,
    pings_failed: u64,
    notify_failure_logged: bool,
    callback_panics: u64,
    internal_errors: u64,
    /// The warn threshold (µs), when hiccups are on.
    warn: Option<u64>,
    /// The record of hiccups, shared with the watchdog handle.
    hiccup_log: Arc<Mutex<HiccupLog>>,
}

impl Monitor {
    /// Spawns a probe on every runtime and prepares the state.
    pub(crate) fn new(
        shared: Arc<Shared>,
        runtimes: Vec<(String, Handle)>,
        hooks: Vec<Option<RuntimeHooks>>,
        on_stall: Option<StallCallback>,
        diag: Diagnostics,
        metrics: Arc<Metrics>,
        hiccup_log: Arc<Mutex<HiccupLog>>,
    ) -> Monitor {
        let s = shared.settings.clone();
        let now = clock::now_us();
        let threshold = micros(s.threshold);
        let loops: Vec<Watched> = runtimes
            .into_iter()
            .zip(hooks.into_iter().chain(std::iter::repeat(None)))
            .map(|((name, handle), hooks)| Watched {
                probe: probe::spawn(&handle, now),
                name,
                tracker: LoopTracker::default(),
                workers: hooks
                    .clone()
                    .map(|h| WorkerWatch::new(h, handle.clone(), threshold)),
                hooks,
                incident: None,
                hiccups: hiccup_watch::HiccupWatch::default(),
                handle,
            })
            .collect();
        let pings = shared.notifier.is_some();
        Monitor {
            last_answer: vec![u64::MAX; loops.len()],
            loops,
            on_stall,
            diag,
            metrics,
            threshold: micros(s.threshold),
            interval: micros(s.probe_interval),
            ping_every: s.watchdog.filter(|_| pings).map(|w| micros(w / 4)),
            last_ping: None,
            last_suppressed: None,
            gaps: VecDeque::with_capacity(GAPS_KEPT),
            pings_sent: 0,
            pings_suppressed: 0,
            pings_failed: 0,
            notify_failure_logged: false,
            callback_panics: 0,
            internal_errors: 0,
            warn: s.warn_threshold.map(micros),
            hiccup_log,
            shared,
        }
    }

    /// The thread's body: tick until asked to stop, then take a last look
    /// (so that a stall that just ended is reported recovered).
    ///
    /// Every step runs under `catch_unwind`: a panic inside loopwatch is
    /// logged with its message, counted, and the monitor goes on. After
    /// [`MAX_PANICS`] panics within [`PANIC_WINDOW`] it gives up for good
    /// ([`give_up`](Self::give_up)). With `panic = "abort"` there is nothing
    /// to catch: the process ends, which systemd also sees.
    pub(crate) fn run(mut self) {
        let mut planned = clock::now_us();
        let mut panics: VecDeque<u64> = VecDeque::with_capacity(MAX_PANICS);
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = clock::now_us();
            let (cpu, io) = (crate::stacks::thread_cpu_time(), self.diag.io_wait);
            let stepped = self.guarded(|m| m.step(planned, now));
            self.note_busy_gap(now, cpu, io);
            if let Err(message) = stepped {
                while panics
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) > PANIC_WINDOW)
                {
                    panics.pop_front();
                }
                panics.push_back(now);
                if panics.len() >= MAX_PANICS {
                    self.give_up(&message);
                    return;
                }
            }
            // Plan from the time the work ended, so that a long tick (a
            // capture, a report) is not later mistaken for a pause.
            let now = clock::now_us();
            planned = match self.guarded(|m| m.next_wake(now)) {
                Ok(at) => at.max(now),
                Err(_) => now.saturating_add(self.interval),
            };
            if planned > now {
                std::thread::park_timeout(us(planned - now));
            }
        }
        let now = clock::now_us();
        let _ = self.guarded(|m| m.last_look(now));
        tracing::debug!("loopwatch monitor stopped");
    }

    /// One wake-up's work: notice a pause of the monitor itself, then tick.
    fn step(&mut self, planned: u64, now: u64) {
        crate::bench_support::injected_fault();
        let paused = self.note_gap(planned, now);
        if let Some(gap) = paused.filter(|g| g.to - g.from > self.threshold) {
            self.process_paused(gap);
        }
        self.tick(now);
    }

    /// Runs `work` catching a panic: logged with its message and counted
    /// (`loopwatch_internal_errors_total{part="monitor"}`); the message is
    /// returned.
    fn guarded<T>(&mut self, work: impl FnOnce(&mut Self) -> T) -> Result<T, String> {
        match catch_unwind(AssertUnwindSafe(|| work(self))) {
            Ok(v) => Ok(v),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                self.internal_errors += 1;
                self.metrics.internal_error("monitor");
                tracing::error!(
                    panic = %message,
                    internal_errors = self.internal_errors,
                    "loopwatch's monitor panicked (a loopwatch bug); it keeps watching"
                );
                Err(message)
            }
        }
    }

    /// Stops for good after repeated panics, and says so everywhere: no
    /// more pings (systemd then restarts the service, the safe outcome),
    /// `STATUS=`, the log, `status()` and `/healthz` (503 with the reason).
    fn give_up(&mut self, last_panic: &str) {
        let reason = format!(
            "{MAX_PANICS} internal panics within {}; last: {last_panic}",
            human(us(PANIC_WINDOW))
        );
        tracing::error!(
            reason = %reason,
            "loopwatch's monitor gives up: no more watchdog pings (systemd will restart the \
             service if its watchdog is on), /healthz answers 503"
        );
        let line = format!("loopwatch monitor failed: {reason}");
        let _ = self.shared.notify(&[NotifyState::Status(&line)]);
        let mut st = self.shared.status.lock();
        st.healthy = false;
        st.summary = line;
        st.internal_errors = self.internal_errors;
        st.monitor_failure = Some(reason);
        st.updated_at = std::time::Instant::now();
    }

    /// A step that took much longer than the monitor spent on CPU or
    /// waiting for the disk: the monitor was stopped while it worked (a
    /// `SIGSTOP` landing mid-step, a frozen VM). Remembered like a late
    /// wake-up, so that a stall seen right after is not blamed on the
    /// application.
    fn note_busy_gap(&mut self, started: u64, cpu_before: Duration, io_before: Duration) {
        let now = clock::now_us();
        let cpu = micros(crate::stacks::thread_cpu_time().saturating_sub(cpu_before));
        let io = micros(self.diag.io_wait.saturating_sub(io_before));
        let unaccounted = now.saturating_sub(started).saturating_sub(cpu + io);
        if unaccounted <= self.threshold {
            return;
        }
        self.remember_gap(MonitorGap {
            from: started,
            to: now,
        });
        tracing::warn!(
            unaccounted = %human(us(unaccounted)),
            "loopwatch monitor thread was held up while it worked (process stopped, VM paused or \
             CPU starved?)"
        );
    }

    /// Keeps `gap`, dropping the oldest beyond [`GAPS_KEPT`].
    fn remember_gap(&mut self, gap: MonitorGap) {
        if self.gaps.len() == GAPS_KEPT {
            self.gaps.pop_front();
        }
        self.gaps.push_back(gap);
    }

    /// Remembers a wake-up much later than planned: the monitor itself was
    /// not running.
    fn note_gap(&mut self, planned: u64, now: u64) -> Option<MonitorGap> {
        let slack = (self.threshold / 2).max(20_000);
        if now <= planned + slack {
            return None;
        }
        let gap = MonitorGap {
            from: planned,
            to: now,
        };
        self.remember_gap(gap);
        tracing::warn!(
            late = %human(us(now - planned)),
            "loopwatch monitor thread was not scheduled on time (process stopped, VM paused or CPU throttled?)"
        );
        Some(gap)
    }

    /// The monitor was not scheduled for longer than the threshold: every
    /// loop counts as stalled from outside until a fresh probe answers.
    fn process_paused(&mut self, gap: MonitorGap) {
        let mut started = Vec::new();
        for (i, w) in self.loops.iter_mut().enumerate() {
            if let Some(t) = w.tracker.paused(gap.from, gap.to) {
                started.push((i, t));
            }
        }
        for (i, t) in started {
            self.on_transition(i, t, gap.to);
        }
    }

    /// At shutdown: a stall whose probe has been answered since the last
    /// tick is reported recovered. Nothing new is started (no capture, no
    /// second capture), so shutdown never waits for diagnostics; it waits
    /// at most [`LAST_LOOK_GRACE`] for a stalled loop to answer.
    fn last_look(&mut self, now: u64) {
        // A stalled loop whose block has just ended answers its probe
        // within microseconds of getting its thread back: give it that
        // chance, bounded, so the stall is reported recovered rather than
        // cut off by the shutdown.
        let stalled_unanswered = |m: &Self| {
            m.loops.iter().any(|w| {
                w.tracker.stall.is_some()
                    && !matches!(w.probe.read(), ProbeReading::Answered { .. })
            })
        };
        let grace_until = now.saturating_add(micros(LAST_LOOK_GRACE));
        while stalled_unanswered(self) && clock::now_us() < grace_until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let now = clock::now_us();
        let mut ended = Vec::new();
        for (i, w) in self.loops.iter_mut().enumerate() {
            let reading = w.probe.read();
            if w.tracker.stall.is_none() || !matches!(reading, ProbeReading::Answered { .. }) {
                continue;
            }
            ended.extend(
                w.tracker
                    .observe(reading, now, self.threshold)
                    .into_iter()
                    .filter(|t| matches!(t, Transition::StallEnded { .. }))
                    .map(|t| (i, t)),
            );
        }
        for (i, t) in ended {
            self.on_transition(i, t, now);
        }
        guard_diag(
            &mut self.diag,
            &self.metrics,
            &mut self.internal_errors,
            |d| d.flush_storms(now),
        );
        self.publish(now);
    }

    /// One pass: read probes, decide, ping, publish the status.
    pub(crate) fn tick(&mut self, now: u64) {
        let mut events = Vec::new();
        let mut readings = Vec::with_capacity(self.loops.len());
        for (i, w) in self.loops.iter_mut().enumerate() {
            let reading = w.probe.read();
            readings.push(reading);
            for t in w.tracker.observe(reading, now, self.threshold) {
                events.push((i, t));
            }
            if let ProbeReading::Answered { answered_at, .. } = reading {
                if self.last_answer[i] != answered_at {
                    self.last_answer[i] = answered_at;
                    self.metrics.observe_probe(i, us(w.tracker.lag));
                }
            }
            self.metrics.set_lag(i, us(w.tracker.lag));
            match reading {
                ProbeReading::Answered { woken_at, .. } if now >= woken_at + self.interval => {
                    w.probe.wake(now)
                }
                ProbeReading::Waiting { woken_at }
                    if w.tracker.stall.is_none() && now >= woken_at + self.threshold / 2 =>
                {
                    self.diag.presample(i, woken_at, now, w.probe.poller_tid())
                }
                _ => {}
            }
        }
        for (i, reading) in readings.into_iter().enumerate() {
            self.watch_hiccup(i, reading, now);
        }
        self.flush_hiccup_logs(now);
        for (i, t) in events {
            self.on_transition(i, t, now);
        }
        let mut worker_events = Vec::new();
        for (i, w) in self.loops.iter_mut().enumerate() {
            if let Some(ww) = &mut w.workers {
                worker_events.extend(ww.sample(now).into_iter().map(|t| (i, t)));
            }
        }
        for (i, t) in worker_events {
            self.on_worker_transition(i, t, now);
        }
        // A worker may pass the worker-stuck limit between transitions.
        for i in 0..self.loops.len() {
            self.update_withholding(i, now);
        }
        let outcomes = guard_diag(
            &mut self.diag,
            &self.metrics,
            &mut self.internal_errors,
            |d| d.tick(now),
        );
        for outcome in outcomes {
            self.after_report(&outcome);
        }
        self.maybe_ping(now);
        self.metrics
            .set_deadline_left(self.deadline().map(|d| us(d.saturating_sub(now))));
        self.publish(now);
    }

    /// True when no runtime withholds pings: no stalled probe, no worker
    /// stuck beyond the limit.
    fn all_healthy(&self) -> bool {
        self.loops.iter().all(|w| {
            w.tracker.state.is_healthy() && !w.incident.as_ref().is_some_and(|c| c.withholds)
        })
    }

    /// When the monitor next has something to do.
    fn next_wake(&self, now: u64) -> u64 {
        let mut next = now.saturating_add(self.interval);
        for (i, w) in self.loops.iter().enumerate() {
            let reading = w.probe.read();
            if let Some(at) = self.next_hiccup_look(i, reading) {
                next = next.min(at);
            }
            let at = match reading {
                ProbeReading::Answered { woken_at, .. } => woken_at.saturating_add(self.interval),
                // Late: presample at T/2 (once), then check at T.
                ProbeReading::Waiting { woken_at } if w.tracker.stall.is_none() => {
                    if self.diag.presampled(i, woken_at) {
                        woken_at.saturating_add(self.threshold + 1)
                    } else {
                        woken_at.saturating_add(self.threshold / 2)
                    }
                }
                _ => continue,
            };
            next = next.min(at);
        }
        if let Some(due) = self.next_ping_due() {
            next = next.min(due);
        }
        if let Some(due) = self.diag.next_due() {
            next = next.min(due);
        }
        next.max(now.saturating_add(100))
    }
}
