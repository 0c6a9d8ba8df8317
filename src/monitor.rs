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

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::runtime::Handle;

use crate::builder::{Settings, StallCallback};
use crate::clock::{self, micros, us};
use crate::diagnostics::{Diagnostics, Outcome, StallContext};
use crate::health::{LoopTracker, StallTrack, Transition};
use crate::hooks::{RuntimeHooks, WorkerTransition, WorkerWatch};
use crate::metrics::{Metrics, PingResult};
use crate::notify::{Notifier, NotifyState};
use crate::probe::{self, ProbeReading, ProbeShared};
use crate::status::{human, LoopState, RuntimeStatus, StallEvent, Status};

/// How many of its own scheduling gaps the monitor remembers.
const GAPS_KEPT: usize = 32;

/// State shared between the monitor thread and the [`Watchdog`](crate::Watchdog) handle.
pub(crate) struct Shared {
    pub settings: Arc<Settings>,
    pub status: Mutex<Status>,
    pub stop: AtomicBool,
    /// Where notify messages go, when this watchdog talks to systemd.
    pub notifier: Option<Notifier>,
}

impl Shared {
    /// Sends `states` to systemd when this watchdog talks to it.
    pub(crate) fn notify(&self, states: &[NotifyState<'_>]) -> std::io::Result<bool> {
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
    /// Since when some worker has been stuck (a worker stall in progress).
    pub worker_stall: Option<u64>,
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
                worker_stall: None,
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
            shared,
        }
    }

    /// The thread's body: tick until asked to stop.
    pub(crate) fn run(mut self) {
        self.diag.warm_up();
        let mut planned = clock::now_us();
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = clock::now_us();
            let paused = self.note_gap(planned, now);
            if let Some(gap) = paused.filter(|g| g.to - g.from > self.threshold) {
                self.process_paused(gap);
            }
            self.tick(now);
            // Plan from the time the work ended, so that a long tick (a
            // capture, a report) is not later mistaken for a pause.
            let now = clock::now_us();
            planned = self.next_wake(now).max(now);
            if planned > now {
                std::thread::park_timeout(us(planned - now));
            }
        }
        tracing::debug!("loopwatch monitor stopped");
    }

    /// Remembers a wake-up much later than planned: the monitor itself was
    /// not running.
    fn note_gap(&mut self, planned: u64, now: u64) -> Option<MonitorGap> {
        let slack = (self.threshold / 2).max(20_000);
        if now <= planned + slack {
            return None;
        }
        if self.gaps.len() == GAPS_KEPT {
            self.gaps.pop_front();
        }
        let gap = MonitorGap {
            from: planned,
            to: now,
        };
        self.gaps.push_back(gap);
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

    /// One pass: read probes, decide, ping, publish the status.
    pub(crate) fn tick(&mut self, now: u64) {
        let mut events = Vec::new();
        for (i, w) in self.loops.iter_mut().enumerate() {
            let reading = w.probe.read();
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
                    self.diag.presample(i, woken_at, now)
                }
                _ => {}
            }
        }
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
        for outcome in self.diag.tick(now) {
            self.after_report(&outcome);
        }
        self.maybe_ping(now);
        self.metrics
            .set_deadline_left(self.deadline().map(|d| us(d.saturating_sub(now))));
        self.publish(now);
    }

    fn on_transition(&mut self, i: usize, t: Transition, now: u64) {
        let name = self.loops[i].name.clone();
        match t {
            Transition::StallStarted(track) => {
                let lag = us(now.saturating_sub(track.started_at).max(track.max_lag));
                tracing::warn!(
                    runtime = %name,
                    lag = %human(lag),
                    threshold = %human(us(self.threshold)),
                    "event loop {name:?} stalled: probe unanswered for {}",
                    human(lag)
                );
                self.send_status(now);
                self.metrics.stall_started(i);
                let outcome = self.diagnose(i, i, track, now);
                if let Some(kind) = outcome.verdict {
                    self.metrics.stall_classified(i, kind.as_str());
                }
                self.after_report(&outcome);
                self.callback(StallEvent::Started {
                    runtime: name,
                    lag,
                    threshold: us(self.threshold),
                    detected_at: SystemTime::now() - us(clock::now_us().saturating_sub(now)),
                    report: outcome.report,
                });
            }
            Transition::StallEnded {
                duration, ended_at, ..
            } => {
                self.metrics.stall_ended(i, us(duration));
                let outcome = self.diag.stall_ended(i, duration, ended_at);
                tracing::warn!(
                    runtime = %name,
                    duration = %human(us(duration)),
                    "event loop {name:?} recovered after {}",
                    human(us(duration))
                );
                self.callback(StallEvent::Ended {
                    runtime: name,
                    duration: us(duration),
                    report: outcome.report,
                });
            }
            Transition::Gone => {
                self.metrics.set_stalled(i, false);
                if !self.shared.stop.load(Ordering::Acquire) {
                    tracing::warn!(
                        runtime = %name,
                        "watched runtime {name:?} was shut down while loopwatch still watches it; \
                         watchdog pings stop"
                    );
                    let _ = self.shared.notify(&[NotifyState::Status(&format!(
                        "event loop {name:?} is gone (runtime shut down)"
                    ))]);
                }
            }
        }
    }

    /// A worker of runtime `i` got stuck or moved again.
    fn on_worker_transition(&mut self, i: usize, t: WorkerTransition, now: u64) {
        let n = self.loops.len();
        let name = self.loops[i].name.clone();
        let counts = self.shared.settings.worker_stuck_is_stall;
        match t {
            WorkerTransition::Stuck(stuck) => {
                self.metrics.set_worker_stuck(i, stuck.worker, true);
                let stuck_for = us(now.saturating_sub(stuck.stuck_since));
                let task = stuck
                    .task
                    .as_ref()
                    .map(|t| format!(" polling task {} spawned at {}", t.id, t.spawned_at))
                    .unwrap_or_default();
                tracing::warn!(
                    runtime = %name,
                    worker = stuck.worker,
                    tids = ?stuck.tids,
                    "worker {} of event loop {name:?} stuck for {}{task}",
                    stuck.worker,
                    human(stuck_for)
                );
                let mut report = None;
                if counts && self.loops[i].worker_stall.is_none() {
                    self.loops[i].worker_stall = Some(stuck.stuck_since);
                    self.metrics.stall_started(i);
                    let track = StallTrack {
                        started_at: stuck.stuck_since,
                        detected_at: now,
                        max_lag: now.saturating_sub(stuck.stuck_since),
                    };
                    let outcome = self.diagnose(n + i, i, track, now);
                    if let Some(kind) = outcome.verdict {
                        self.metrics.stall_classified(i, kind.as_str());
                    }
                    self.after_report(&outcome);
                    report = outcome.report;
                    self.send_status(now);
                }
                self.callback(StallEvent::WorkerStuck {
                    runtime: name,
                    worker: stuck.worker,
                    stuck_for,
                    task: stuck.task.clone(),
                    report,
                });
            }
            WorkerTransition::Recovered {
                stuck,
                stuck_for,
                ended_at,
            } => {
                self.metrics.set_worker_stuck(i, stuck.worker, false);
                tracing::warn!(
                    runtime = %name,
                    worker = stuck.worker,
                    "worker {} of event loop {name:?} moves again after {}",
                    stuck.worker,
                    human(us(stuck_for))
                );
                let still_stuck = self.loops[i]
                    .workers
                    .as_ref()
                    .is_some_and(WorkerWatch::any_stuck);
                let mut report = None;
                if let (Some(since), false) = (self.loops[i].worker_stall, still_stuck) {
                    self.loops[i].worker_stall = None;
                    let duration = ended_at.saturating_sub(since);
                    self.metrics.stall_ended(i, us(duration));
                    report = self.diag.stall_ended(n + i, duration, ended_at).report;
                }
                self.callback(StallEvent::WorkerRecovered {
                    runtime: name,
                    worker: stuck.worker,
                    stuck_for: us(stuck_for),
                    report,
                });
            }
        }
    }

    /// Hands a new stall to the diagnostics.
    /// `slot` is the diagnostics slot: `i` for a probe stall, runtimes + `i`
    /// for a worker stall of runtime `i`.
    fn diagnose(&mut self, slot: usize, i: usize, track: StallTrack, now: u64) -> Outcome {
        let w = &self.loops[i];
        let worker_stall = slot != i;
        let stuck_workers = match (&w.workers, worker_stall) {
            (Some(ww), true) => ww.stuck_workers(now),
            _ => Vec::new(),
        };
        // The stuck workers' threads first: their stacks are captured first.
        let mut loop_tids: Vec<i32> = stuck_workers.iter().flat_map(|s| s.tids.clone()).collect();
        if !worker_stall {
            loop_tids.extend(w.probe.poller_tid());
        }
        if !worker_stall {
            // Threads that run the runtime: registered by the hooks, or
            // recognised by tokio's default worker name.
            if let Some(h) = &w.hooks {
                loop_tids.extend(h.worker_threads());
            }
            for tid in crate::procfs::list_threads() {
                if !loop_tids.contains(&tid)
                    && crate::procfs::read_thread(tid)
                        .is_some_and(|f| f.name.starts_with("tokio-runtime-w"))
                {
                    loop_tids.push(tid);
                }
            }
            loop_tids.dedup();
        }
        let monitor_gap: u64 = self
            .gaps
            .iter()
            .map(|g| {
                let from = g.from.max(track.started_at);
                g.to.min(now).saturating_sub(from)
            })
            .sum();
        let deadline = self.deadline();
        let ctx = StallContext {
            idx: slot,
            stuck_workers,
            runtime: &w.name,
            track,
            now,
            timeline: &w.tracker.timeline,
            loop_tids,
            monitor_gap: us(monitor_gap),
            handle: &w.handle,
            deadline,
        };
        self.diag.stall_started(ctx)
    }

    /// Acts on what a diagnostics step asks for.
    fn after_report(&mut self, outcome: &Outcome) {
        if outcome.trigger_watchdog {
            tracing::warn!(
                "loopwatch: report written; asking systemd to act now (WATCHDOG=trigger)"
            );
            if let Err(e) = self.shared.notify(&[NotifyState::WatchdogTrigger]) {
                self.notify_failed(&e);
            }
        }
    }

    fn callback(&mut self, event: StallEvent) {
        let Some(cb) = &self.on_stall else { return };
        if catch_unwind(AssertUnwindSafe(|| cb(&event))).is_err() {
            self.callback_panics += 1;
            tracing::error!(
                panics = self.callback_panics,
                "the on_stall callback panicked; loopwatch caught it and keeps watching"
            );
        }
    }

    fn all_healthy(&self) -> bool {
        let counts = self.shared.settings.worker_stuck_is_stall;
        self.loops
            .iter()
            .all(|w| w.tracker.state.is_healthy() && !(counts && w.worker_stall.is_some()))
    }

    /// The `STATUS=` text for the current state.
    pub(crate) fn status_line(&self, now: u64) -> String {
        let stalled: Vec<String> = self
            .loops
            .iter()
            .filter_map(|w| {
                let s = w.tracker.stall?;
                Some(format!(
                    "event loop {:?} stalled for {}",
                    w.name,
                    human(us(now.saturating_sub(s.started_at)))
                ))
            })
            .collect();
        let mut stalled = stalled;
        for w in &self.loops {
            let Some(ww) = &w.workers else { continue };
            for s in ww.stuck() {
                stalled.push(format!(
                    "worker {} of event loop {:?} stuck for {}",
                    s.worker,
                    w.name,
                    human(us(now.saturating_sub(s.stuck_since)))
                ));
            }
        }
        if !stalled.is_empty() {
            return stalled.join("; ");
        }
        let gone: Vec<String> = self
            .loops
            .iter()
            .filter(|w| w.tracker.state == LoopState::Gone)
            .map(|w| format!("event loop {:?} is gone", w.name))
            .collect();
        if !gone.is_empty() {
            return gone.join("; ");
        }
        let lag = self.loops.iter().map(|w| w.tracker.lag).max().unwrap_or(0);
        if self.loops.len() == 1 {
            format!("event loop healthy, lag {}", human(us(lag)))
        } else {
            format!("event loops healthy, max lag {}", human(us(lag)))
        }
    }

    fn send_status(&mut self, now: u64) {
        let line = self.status_line(now);
        if let Err(e) = self.shared.notify(&[NotifyState::Status(&line)]) {
            self.notify_failed(&e);
        }
    }

    fn notify_failed(&mut self, e: &std::io::Error) {
        if !self.notify_failure_logged {
            self.notify_failure_logged = true;
            tracing::error!(error = %e, "loopwatch cannot reach systemd's notify socket; will keep trying");
        }
    }

    fn maybe_ping(&mut self, now: u64) {
        let Some(every) = self.ping_every else { return };
        let due = |last: Option<u64>| last.is_none_or(|t| now >= t + every);
        if self.all_healthy() {
            if !due(self.last_ping) && self.last_suppressed.is_none() {
                return;
            }
            let line = self.status_line(now);
            match self
                .shared
                .notify(&[NotifyState::Watchdog, NotifyState::Status(&line)])
            {
                Ok(_) => {
                    self.pings_sent += 1;
                    self.metrics.ping(PingResult::Sent);
                    if self.notify_failure_logged {
                        tracing::info!("loopwatch reaches systemd's notify socket again");
                        self.notify_failure_logged = false;
                    }
                }
                Err(e) => {
                    self.pings_failed += 1;
                    self.metrics.ping(PingResult::Failed);
                    self.notify_failed(&e);
                }
            }
            // A failed ping is retried on the next period, not every tick.
            self.last_ping = Some(now);
            self.last_suppressed = None;
        } else if due(self.last_ping) && due(self.last_suppressed) {
            self.pings_suppressed += 1;
            self.metrics.ping(PingResult::Suppressed);
            self.last_suppressed = Some(now);
            self.send_status(now);
        }
    }

    /// systemd's earliest possible deadline (µs clock): the last ping plus
    /// WatchdogSec, while this monitor pings.
    fn deadline(&self) -> Option<u64> {
        self.ping_every?;
        Some(self.last_ping? + micros(self.shared.settings.watchdog?))
    }

    /// When the monitor next has something to do.
    fn next_wake(&self, now: u64) -> u64 {
        let mut next = now + self.interval;
        for (i, w) in self.loops.iter().enumerate() {
            let at = match w.probe.read() {
                ProbeReading::Answered { woken_at, .. } => woken_at + self.interval,
                // Late: presample at T/2 (once), then check at T.
                ProbeReading::Waiting { woken_at } if w.tracker.stall.is_none() => {
                    if self.diag.presampled(i, woken_at) {
                        woken_at + self.threshold + 1
                    } else {
                        woken_at + self.threshold / 2
                    }
                }
                _ => continue,
            };
            next = next.min(at);
        }
        if let (Some(every), Some(last)) = (self.ping_every, self.last_ping) {
            next = next.min(last + every);
        }
        if let Some(due) = self.diag.next_due() {
            next = next.min(due);
        }
        next.max(now + 100)
    }

    fn publish(&self, now: u64) {
        let summary = self.status_line(now);
        let runtimes = self
            .loops
            .iter()
            .map(|w| RuntimeStatus {
                name: w.name.clone(),
                state: w.tracker.state,
                lag: us(w.tracker.lag),
                stalled_for: w
                    .tracker
                    .stall
                    .map(|s| us(now.saturating_sub(s.started_at))),
                stalls: w.tracker.stalls,
                stuck_workers: w
                    .workers
                    .as_ref()
                    .map(|ww| ww.stuck().map(|s| s.worker).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let mut st = self.shared.status.lock();
        st.runtimes = runtimes;
        st.healthy = self.all_healthy();
        st.summary = summary;
        st.last_ping = self.last_ping.map(clock::instant_of);
        st.pings_sent = self.pings_sent;
        st.pings_suppressed = self.pings_suppressed;
        st.pings_failed = self.pings_failed;
        st.callback_panics = self.callback_panics;
        st.reports_written = self.diag.counters.reports_written.load(Ordering::Relaxed);
        st.reports_failed = self.diag.counters.reports_failed.load(Ordering::Relaxed);
    }
}

/// The initial status, before the first tick.
pub(crate) fn initial_status(settings: &Settings, names: &[String], pings: bool) -> Status {
    Status {
        runtimes: names
            .iter()
            .map(|n| RuntimeStatus {
                name: n.clone(),
                state: LoopState::Healthy,
                lag: Duration::ZERO,
                stalled_for: None,
                stalls: 0,
                stuck_workers: Vec::new(),
            })
            .collect(),
        healthy: true,
        summary: "starting".to_string(),
        watchdog_interval: settings.watchdog,
        stall_threshold: settings.threshold,
        pings_enabled: pings && settings.watchdog.is_some(),
        last_ping: None,
        pings_sent: 0,
        pings_suppressed: 0,
        pings_failed: 0,
        callback_panics: 0,
        reports_written: 0,
        reports_failed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::Builder;
    use crate::diagnostics::Diagnostics;
    use crate::notify::SystemdEnv;

    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }

    /// A million probe cycles through the real monitor and a real runtime,
    /// with the clock running as fast as the probe answers: resident memory
    /// stays flat. Runs in a child process so other tests' allocations do
    /// not disturb the measurement.
    #[test]
    fn a_million_probe_cycles_keep_memory_flat() {
        if std::env::var("LOOPWATCH_TEST_ROLE").as_deref() != Ok("soak") {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "monitor::tests::a_million_probe_cycles_keep_memory_flat",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("LOOPWATCH_TEST_ROLE", "soak")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "soak child failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let b = Builder::new()
            .watch("main", rt.handle().clone())
            .stall_threshold(Duration::from_secs(5))
            .probe_interval(Duration::from_micros(1))
            .no_stack_capture()
            .no_report_files();
        let settings = Settings::resolve(&b, SystemdEnv::default()).unwrap();
        let diag = Diagnostics::new(settings.clone(), settings.diagnostics.clone(), 1).unwrap();
        let names = vec!["main".to_string()];
        let shared = Arc::new(Shared {
            status: Mutex::new(initial_status(&settings, &names, false)),
            stop: AtomicBool::new(false),
            notifier: None,
            settings,
        });
        let registry = prometheus::Registry::new();
        let metrics =
            Arc::new(Metrics::new(&registry, &b.runtimes, Duration::from_secs(5)).unwrap());
        let mut m = Monitor::new(shared, b.runtimes, b.hooks, None, diag, metrics);
        let cycles = |m: &Monitor| m.loops[0].probe.wakes();
        let t0 = std::time::Instant::now();
        while cycles(&m) < 100_000 {
            m.tick(clock::now_us());
        }
        let warm = rss_kib();
        while cycles(&m) < 1_000_000 {
            m.tick(clock::now_us());
            assert!(t0.elapsed() < Duration::from_secs(240), "soak too slow");
        }
        let end = rss_kib();
        println!(
            "soak: {} cycles in {:?}, RSS {warm} KiB -> {end} KiB",
            cycles(&m),
            t0.elapsed()
        );
        assert!(
            end <= warm + 1024,
            "resident memory grew from {warm} KiB to {end} KiB over 900k probe cycles"
        );
        assert_eq!(m.loops[0].tracker.stalls, 0);
    }
}
