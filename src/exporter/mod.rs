//! The HTTP exporter: `/metrics`, `/healthz` and `/hiccups` from a thread
//! of its own.
//!
//! This module owns the `loopwatch-exporter` OS thread and its private tokio
//! `current_thread` runtime: [`Exporter`] starts them, and stopping or
//! dropping it closes the socket, drops open connections and joins the
//! thread. The exporter never touches a watched runtime, so both endpoints
//! answer while the application's event loop is stuck: a Prometheus scrape
//! still sees `loopwatch_stalled 1`, and a Kubernetes liveness probe on
//! `/healthz` gets its 503, which is the liveness-probe analogue of a
//! suppressed `WATCHDOG=1`.
//!
//! The parts, each depending only on the ones before it:
//!
//! * [`routes`]: what a request gets back (`/metrics`, `/healthz`,
//!   `/hiccups`, 404, 405), and what the endpoints ask ([`Endpoints`]:
//!   [`Health`], [`HealthFn`], [`routes::HiccupsFn`]);
//! * [`counters`]: what the exporter did with its clients, counted
//!   ([`ExporterCounters`], read through [`Exporter::counters`]);
//! * [`admission`]: the table of open connections and who gets a slot at
//!   the cap (the longest idle connection is evicted for a new one);
//! * [`activity`]: the socket and body wrappers that tell a connection's
//!   slot when a request starts and when its response is written;
//! * [`connections`]: the listening socket, the accept loop and the limits
//!   that keep a misbehaving client from wedging the exporter
//!   ([`ExporterLimits`]: connection cap, head size and head timeout,
//!   connection life).
//!
//! It does not define or update metrics (that is [`crate::metrics`]) nor
//! decide health (the closure given to [`Exporter::start`] does), nor
//! record hiccups (it serves what its [`routes::HiccupsFn`] returns).

mod activity;
mod admission;
mod connections;
mod counters;
mod routes;

pub(crate) use connections::ExporterLimits;
pub(crate) use counters::{ExporterCounters, ExporterCounts};
pub(crate) use routes::{Endpoints, Health, HealthFn, HiccupsFn};

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use connections::{accept_loop, bind};

use crate::error::Error;

/// A running exporter. Dropping it (or [`shutdown`](Exporter::shutdown))
/// stops the thread and closes the socket.
pub(crate) struct Exporter {
    local_addr: SocketAddr,
    counters: Arc<ExporterCounters>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Binds `addr` (`"127.0.0.1:9184"`, `"[::1]:9184"`, `"localhost:9184"`;
    /// port 0 picks a free port) and serves `/metrics` from `registry` and
    /// `/healthz` from `health` on a new `loopwatch-exporter` thread
    /// (`/hiccups` is a 404: see [`start_with`](Exporter::start_with)).
    ///
    /// Returns once the socket listens. An address that does not resolve or
    /// cannot be bound is [`Error::ExporterBind`]; a thread or runtime that
    /// cannot be created is [`Error::SpawnThread`]; a zero timeout, head
    /// timeout or connection limit is [`Error::InvalidSetting`]. May be
    /// called from inside a tokio runtime, and the exporter dropped there
    /// too.
    #[cfg(test)]
    pub(crate) fn start(
        addr: &str,
        registry: prometheus::Registry,
        health: HealthFn,
        limits: ExporterLimits,
    ) -> Result<Exporter, Error> {
        let endpoints = Endpoints {
            registry,
            health,
            hiccups: None,
        };
        Exporter::start_with(addr, endpoints, limits)
    }

    /// Like [`start`](Exporter::start), with every endpoint's source given,
    /// `/hiccups` included.
    pub(crate) fn start_with(
        addr: &str,
        endpoints: Endpoints,
        limits: ExporterLimits,
    ) -> Result<Exporter, Error> {
        if limits.timeout.is_zero() || limits.head_timeout.is_zero() || limits.max_connections == 0
        {
            return Err(Error::InvalidSetting {
                setting: "serve_metrics",
                reason: format!(
                    "the exporter needs a positive timeout and head timeout and at least one connection, got {limits:?}"
                ),
            });
        }
        let bind_err = |source| Error::ExporterBind {
            addr: addr.to_string(),
            source,
        };
        let listener = bind(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let endpoints = Arc::new(endpoints);
        let counters = Arc::new(ExporterCounters::default());
        let loop_counters = counters.clone();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loopwatch-exporter".into())
            .spawn(move || {
                run(
                    listener,
                    endpoints,
                    limits,
                    loop_counters,
                    stop_rx,
                    ready_tx,
                )
            })
            .map_err(|source| Error::SpawnThread {
                thread: "loopwatch-exporter",
                source,
            })?;
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the exporter thread ended before it started",
            ))
        });
        if let Err(source) = ready {
            let _ = thread.join();
            return Err(Error::SpawnThread {
                thread: "loopwatch-exporter",
                source,
            });
        }
        tracing::info!(addr = %local_addr, "loopwatch exporter serving /metrics, /healthz and /hiccups");
        Ok(Exporter {
            local_addr,
            counters,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the exporter did with its clients so far (accepted, evicted,
    /// refused, timed out, open now), updated as it happens.
    pub(crate) fn counters(&self) -> Arc<ExporterCounters> {
        self.counters.clone()
    }

    /// Stops serving: closes the socket, drops open connections and joins
    /// the thread.
    pub(crate) fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("loopwatch exporter thread panicked");
            }
            let c: ExporterCounts = self.counters.snapshot();
            tracing::debug!(
                accepted = c.accepted,
                evicted = c.evicted,
                refused = c.refused,
                head_timeouts = c.head_timeouts,
                accept_errors = c.accept_errors,
                open = c.open,
                "loopwatch exporter stopped"
            );
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The exporter thread's body.
fn run(
    listener: StdListener,
    endpoints: Arc<Endpoints>,
    limits: ExporterLimits,
    counters: Arc<ExporterCounters>,
    stop: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // A task, not the `block_on` future: it then queues behind the
        // connections woken by the same I/O events, so they run first.
        let accepting = tokio::spawn(accept_loop(listener, endpoints, limits, counters, stop));
        if accepting.await.is_err() {
            tracing::error!("loopwatch exporter's accept loop panicked");
        }
    });
    // Dropping the runtime drops every connection still open.
}

#[cfg(test)]
mod tests;
