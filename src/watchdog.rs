//! The [`Watchdog`] handle the application keeps.
//!
//! It owns the monitor thread: [`Watchdog::ready`] tells systemd the daemon
//! is up, [`Watchdog::status`] returns the monitor's latest view, and
//! [`Watchdog::shutdown`] sends `STOPPING=1` and joins the thread. Dropping
//! the handle stops the monitor too, without `STOPPING=1`.
//!
//! Only one watchdog per process talks to systemd: the first one started
//! while a notify socket is configured. Others still detect stalls and say so
//! in the log, but send nothing, so two monitors can never ping for a loop
//! that only one of them watches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::diagnostics::Diagnostics;
use crate::error::{Error, Result};
use crate::exporter::{Endpoints, Exporter, ExporterLimits, Health, HealthFn, HiccupsFn};
use crate::hiccups::HiccupLog;
use crate::hooks::RuntimeHooks;
use crate::metrics::Metrics;
use crate::monitor::{initial_status, Monitor, Shared};
use crate::notify::{Notifier, NotifyState};
use crate::settings::Settings;
use crate::status::{StallCallback, Status};

/// True while some watchdog in this process owns systemd's notify socket.
static NOTIFY_OWNED: AtomicBool = AtomicBool::new(false);

/// What [`Builder::start`](crate::Builder::start) hands over to start a
/// watchdog: the validated settings and the parts that are not settings.
pub(crate) struct Launch {
    pub settings: Arc<Settings>,
    pub runtimes: Vec<(String, tokio::runtime::Handle)>,
    /// Per runtime (same order): its hooks, if it is watched with them.
    pub hooks: Vec<Option<RuntimeHooks>>,
    pub on_stall: Option<StallCallback>,
    /// The application's registry, if it gave one.
    pub registry: Option<prometheus::Registry>,
}

/// A running stall detector. See the [crate docs](crate) for a tour.
///
/// ```no_run
/// # async fn run() -> Result<(), loopwatch::Error> {
/// let watchdog = loopwatch::Watchdog::builder()
///     .watch("main", tokio::runtime::Handle::current())
///     .start()?;
/// watchdog.ready()?;
/// println!("healthy: {}", watchdog.status().healthy);
/// watchdog.shutdown();
/// # Ok(()) }
/// ```
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    owns_notify: bool,
    exporter: Option<Exporter>,
    registry: prometheus::Registry,
    /// Held here too, so that loopwatch's collectors stay registered until
    /// shutdown even if the monitor thread dies.
    _metrics: Arc<Metrics>,
    /// The record of hiccups the monitor keeps.
    hiccup_log: Arc<Mutex<HiccupLog>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("status", &*self.shared.status.lock())
            .finish()
    }
}

impl Watchdog {
    /// Starts the monitor (and the exporter, when asked for) with
    /// validated settings.
    pub(crate) fn launch(launch: Launch) -> Result<Watchdog> {
        let Launch {
            settings,
            runtimes,
            hooks,
            on_stall,
            registry,
        } = launch;
        let mut diag = Diagnostics::new(
            settings.clone(),
            settings.diagnostics.clone(),
            // One diagnostics slot per runtime for probe stalls, one for worker stalls.
            runtimes.len() * 2,
        )?;
        if settings.diagnostics.capture.is_some() {
            // One line on what reports will name (section headers only).
            crate::stacks::log_executable_coverage();
        }
        let registry = registry.unwrap_or_default();
        let metrics = Arc::new(Metrics::new(&registry, &runtimes, settings.threshold)?);
        diag.metrics = Some(metrics.clone());
        let metrics_kept = metrics.clone();
        diag.registry = Some(registry.clone());
        let (notifier, owns_notify) = claim_notifier(&settings);
        let names: Vec<String> = runtimes.iter().map(|(n, _)| n.clone()).collect();
        let hiccup_log = Arc::new(Mutex::new(HiccupLog::new(
            settings.keep_hiccups,
            runtimes.len(),
        )));
        let shared = Arc::new(Shared {
            status: Mutex::new(initial_status(&settings, &names, notifier.is_some())),
            stop: AtomicBool::new(false),
            notifier,
            stale_after: stale_after(&settings),
            settings: settings.clone(),
        });
        let report_dir = diag.report_dir().map(|p| p.display().to_string());
        let exporter = match &settings.metrics_addr {
            Some(addr) => {
                let status = shared.clone();
                let stale_after = shared.stale_after;
                let health: HealthFn =
                    Arc::new(
                        move || match status.status.lock().is_healthy_now(stale_after) {
                            Ok(()) => Health::Healthy,
                            Err(reason) => Health::Unhealthy(reason),
                        },
                    );
                let hiccups: HiccupsFn = {
                    let log = hiccup_log.clone();
                    let names = names.clone();
                    Arc::new(move || log.lock().document_json(&names))
                };
                let endpoints = Endpoints {
                    registry: registry.clone(),
                    health,
                    hiccups: Some(hiccups),
                };
                let started = Exporter::start_with(addr, endpoints, ExporterLimits::default());
                if let Ok(e) = &started {
                    let counters = e.counters();
                    metrics.set_exporter_source(Box::new(move || {
                        let c = counters.snapshot();
                        [
                            c.accepted,
                            c.evicted,
                            c.refused,
                            c.head_timeouts,
                            c.accept_errors,
                            c.panics,
                        ]
                    }));
                }
                match started {
                    Ok(e) => Some(e),
                    Err(e) => {
                        if owns_notify {
                            NOTIFY_OWNED.store(false, Ordering::Release);
                        }
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        metrics.set_warn_threshold(settings.warn_threshold);
        let monitor = Monitor::new(
            shared.clone(),
            runtimes,
            hooks,
            on_stall,
            diag,
            metrics,
            hiccup_log.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("loopwatch-monitor".into())
            .spawn(move || monitor.run())
            .map_err(|source| {
                if owns_notify {
                    NOTIFY_OWNED.store(false, Ordering::Release);
                }
                Error::SpawnThread {
                    thread: "loopwatch-monitor",
                    source,
                }
            })?;
        tracing::info!(
            runtimes = ?names,
            threshold = ?settings.threshold,
            probe_interval = ?settings.probe_interval,
            watchdog = ?settings.watchdog,
            report_dir = report_dir.as_deref().unwrap_or("(none: stderr)"),
            pings = shared.notifier.is_some() && settings.watchdog.is_some(),
            "loopwatch started"
        );
        Ok(Watchdog {
            shared,
            thread: Some(thread),
            owns_notify,
            exporter,
            registry,
            _metrics: metrics_kept,
            hiccup_log,
        })
    }

    /// Tells systemd the daemon is ready (`READY=1`). Call it once the
    /// daemon serves. Without a notify socket it does nothing.
    ///
    /// # Errors
    /// [`Error::Notify`] when the socket exists but the message could not be sent.
    pub fn ready(&self) -> Result<()> {
        let line = format!(
            "ready; watching {} event loop(s)",
            self.shared.status.lock().runtimes.len()
        );
        match self
            .shared
            .notify(&[NotifyState::Ready, NotifyState::Status(&line)])
        {
            Ok(sent) => {
                tracing::debug!(sent, "loopwatch: READY=1");
                Ok(())
            }
            Err(e) => Err(Error::Notify(e)),
        }
    }

    /// The registry holding loopwatch's metrics (the one given to
    /// [`Builder::registry`](crate::Builder::registry), or loopwatch's own).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The address `/metrics` and `/healthz` are served on, when
    /// [`Builder::serve_metrics`](crate::Builder::serve_metrics) was used (the bound port, if 0 was asked).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.exporter.as_ref().map(Exporter::local_addr)
    }

    /// The last hiccups (blocks of an event loop above the warn threshold,
    /// see [`Builder::warn_threshold`](crate::Builder::warn_threshold)),
    /// oldest first, with their duration, cause and culprit; at most
    /// [`Builder::keep_hiccups`](crate::Builder::keep_hiccups) of them.
    ///
    /// ```no_run
    /// # fn f(watchdog: &loopwatch::Watchdog) {
    /// for h in watchdog.hiccups() {
    ///     println!("{} blocked {:.0} ms in {:?} ({})",
    ///         h.runtime, h.duration_seconds * 1e3, h.culprit, h.cause);
    /// }
    /// # }
    /// ```
    pub fn hiccups(&self) -> Vec<crate::hiccups::Hiccup> {
        self.hiccup_log.lock().recent()
    }

    /// The monitor's view as of its last tick.
    pub fn status(&self) -> Status {
        self.shared.status.lock().clone()
    }

    /// Sends `STOPPING=1` and stops the monitor thread.
    ///
    /// The monitor takes a last look first: a stall whose block ended just
    /// before this call is reported recovered (its report rewritten, its
    /// `Ended` event sent). If a loop is stalled at that moment it waits at
    /// most 100 ms for it to answer; a step of diagnostics in progress
    /// finishes first (bounded by the capture and symbolization budgets).
    pub fn shutdown(mut self) {
        if let Err(e) = self
            .shared
            .notify(&[NotifyState::Stopping, NotifyState::Status("stopping")])
        {
            tracing::warn!(error = %e, "loopwatch could not send STOPPING=1");
        }
        self.stop();
        tracing::info!("loopwatch shut down");
    }

    fn stop(&mut self) {
        if let Some(e) = self.exporter.take() {
            e.shutdown();
        }
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                tracing::error!("loopwatch monitor thread panicked");
            }
        }
        if self.owns_notify {
            self.owns_notify = false;
            NOTIFY_OWNED.store(false, Ordering::Release);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How old the monitor's last snapshot may be before `/healthz` calls the
/// monitor frozen: three probe intervals (the monitor wakes at least once
/// per interval), plus the longest one step of a stall's diagnostics may
/// keep it busy (the capture budget, or the symbolization budget), plus a
/// second of slack for a loaded host: 0.3 + 1 + 1 = 2.3 s with the
/// defaults (100 ms interval, 1 s symbolization budget).
fn stale_after(settings: &Settings) -> std::time::Duration {
    let busy = settings
        .diagnostics
        .capture
        .as_ref()
        .map_or(std::time::Duration::ZERO, |c| {
            c.budget.max(c.symbolize_budget)
        });
    settings.probe_interval * 3 + busy + std::time::Duration::from_secs(1)
}

/// Decides whether this watchdog talks to systemd, and claims the right.
fn claim_notifier(settings: &Settings) -> (Option<Notifier>, bool) {
    let env = &settings.env;
    let Some(socket) = &env.socket else {
        tracing::info!(
            "no NOTIFY_SOCKET: loopwatch detects stalls but sends no watchdog pings (not under systemd)"
        );
        return (None, false);
    };
    if env.is_foreign(settings.pid) {
        tracing::info!(
            watchdog_pid = ?env.watchdog_pid,
            pid = settings.pid,
            "WATCHDOG_PID names another process: this one is not the service's main process, \
             so loopwatch sends systemd nothing"
        );
        return (None, false);
    }
    if NOTIFY_OWNED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        tracing::warn!(
            "another loopwatch Watchdog already talks to systemd in this process; \
             this one detects stalls but sends no notifications"
        );
        return (None, false);
    }
    match Notifier::new(socket) {
        Ok(n) => (Some(n), true),
        Err(e) => {
            NOTIFY_OWNED.store(false, Ordering::Release);
            tracing::error!(error = %e, socket = ?socket, "unusable NOTIFY_SOCKET; loopwatch sends no notifications");
            (None, false)
        }
    }
}
