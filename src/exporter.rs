//! The HTTP exporter: `/metrics` and `/healthz` from a thread of its own.
//!
//! This module owns the `loopwatch-exporter` OS thread, its private tokio
//! `current_thread` runtime, the listening socket and the connections. It
//! never touches a watched runtime, so both endpoints answer while the
//! application's event loop is stuck: a Prometheus scrape still sees
//! `loopwatch_stalled 1`, and a Kubernetes liveness probe on `/healthz` gets
//! its 503, which is the liveness-probe analogue of a suppressed
//! `WATCHDOG=1`.
//!
//! HTTP parsing is hyper's. No client can wedge the exporter: the request
//! head is bounded ([`ExporterLimits::max_head_bytes`], 431 beyond it), a
//! client that does not send a complete head in time is dropped (hyper's
//! header read timeout, which also bounds idle keep-alive connections), a
//! connection is wound down gracefully after [`ExporterLimits::timeout`] and
//! dropped after twice that, and connections beyond
//! [`ExporterLimits::max_connections`] are closed as soon as they are
//! accepted.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Registry;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::metrics::Metrics;

/// The `Content-Type` of `/metrics`: Prometheus' text format 0.0.4.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// hyper's smallest read buffer; a smaller head limit is raised to it.
const MIN_HEAD_BYTES: usize = 8192;

/// How often at most a refused connection or a failing `accept` is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Longest health reason sent, in bytes.
const MAX_REASON: usize = 512;

/// What `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// 200 `ok`.
    Healthy,
    /// 503 with this one-line reason, e.g. `event loop "main" stalled for 2.1 s`.
    Unhealthy(String),
}

/// Asked on every `/healthz` request, from the exporter's thread. Must not
/// block (it typically copies the monitor's last status).
pub(crate) type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// Bounds that keep a misbehaving client from wedging the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExporterLimits {
    /// Largest request head (request line and headers), in bytes; a larger
    /// one gets 431 and the connection is closed. At least 8 KiB.
    pub max_head_bytes: usize,
    /// Time a client has to send a complete request head (also the idle
    /// time allowed between keep-alive requests), and the life of a
    /// connection before it is wound down (then dropped after as long again).
    pub timeout: Duration,
    /// Connections served at once; more are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for ExporterLimits {
    fn default() -> Self {
        ExporterLimits {
            max_head_bytes: 16 * 1024,
            timeout: Duration::from_secs(5),
            max_connections: 64,
        }
    }
}

/// What every connection needs.
struct State {
    registry: Registry,
    health: HealthFn,
}

/// A running exporter. Dropping it (or [`shutdown`](Exporter::shutdown))
/// stops the thread and closes the socket.
pub(crate) struct Exporter {
    local_addr: SocketAddr,
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
    /// `/healthz` from `health` on a new `loopwatch-exporter` thread.
    ///
    /// Returns once the socket listens. An address that does not resolve or
    /// cannot be bound is [`Error::ExporterBind`]; a thread or runtime that
    /// cannot be created is [`Error::SpawnThread`]; a zero timeout or
    /// connection limit is [`Error::InvalidSetting`]. May be called from
    /// inside a tokio runtime, and the exporter dropped there too.
    pub(crate) fn start(
        addr: &str,
        registry: Registry,
        health: HealthFn,
        limits: ExporterLimits,
    ) -> Result<Exporter, Error> {
        if limits.timeout.is_zero() || limits.max_connections == 0 {
            return Err(Error::InvalidSetting {
                setting: "serve_metrics",
                reason: format!(
                    "the exporter needs a positive timeout and at least one connection, got {limits:?}"
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
        let state = Arc::new(State { registry, health });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("loopwatch-exporter".into())
            .spawn(move || run(listener, state, limits, stop_rx, ready_tx))
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
        tracing::info!(addr = %local_addr, "loopwatch exporter serving /metrics and /healthz");
        Ok(Exporter {
            local_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound (useful with port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves `addr` and binds the first of its addresses that can be bound.
fn bind(addr: &str) -> io::Result<StdListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match StdListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// The exporter thread's body.
fn run(
    listener: StdListener,
    state: Arc<State>,
    limits: ExporterLimits,
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
        accept_loop(listener, state, limits, stop).await;
    });
    // Dropping the runtime drops every connection still open.
    tracing::debug!("loopwatch exporter stopped");
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    limits: ExporterLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut refused: u64 = 0;
    let mut refusal_logged: Option<Instant> = None;
    let mut accept_error_logged: Option<Instant> = None;
    loop {
        // The next connection, or the order to stop (a send or a dropped
        // sender both mean stop).
        let accepted = std::future::poll_fn(|cx| {
            if Pin::new(&mut stop).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            listener.poll_accept(cx).map(Some)
        })
        .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                // Typically EMFILE: back off instead of spinning.
                if due(&mut accept_error_logged) {
                    tracing::warn!(error = %e, "loopwatch exporter cannot accept connections");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peer, state.clone(), limits, permit));
            }
            Err(_) => {
                refused += 1;
                if due(&mut refusal_logged) {
                    tracing::warn!(
                        %peer,
                        refused,
                        max_connections = limits.max_connections,
                        "loopwatch exporter at its connection limit: closing new connections"
                    );
                }
                drop(stream);
            }
        }
    }
}

/// True when a rate-limited log line may be written now.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    match last {
        Some(t) if now.duration_since(*t) < LOG_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// Serves one connection until it closes or its time is up.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    limits: ExporterLimits,
    _permit: OwnedSemaphorePermit,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES))
        .keep_alive(true);
    let service = service_fn(move |req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(respond(&state, &req)))
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = match tokio::time::timeout(limits.timeout, conn.as_mut()).await {
        Ok(r) => r,
        Err(_) => {
            // Finish the request in flight, if any, then close.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.timeout, conn).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(%peer, "loopwatch exporter dropped a connection that outlived its time");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "loopwatch exporter connection ended with an error");
    }
}

/// The response to one request.
fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/metrics" if readable => response(
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            Metrics::encode(&state.registry),
        ),
        "/healthz" if readable => match catch_unwind(AssertUnwindSafe(|| (state.health)())) {
            Ok(Health::Healthy) => text(StatusCode::OK, "ok\n".into()),
            Ok(Health::Unhealthy(reason)) => {
                text(StatusCode::SERVICE_UNAVAILABLE, one_line(&reason))
            }
            Err(_) => {
                tracing::error!("loopwatch health check panicked");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "health check failed\n".into(),
                )
            }
        },
        "/metrics" | "/healthz" => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use GET or HEAD\n".into(),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: loopwatch serves /metrics and /healthz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The first line of `reason`, bounded, with a newline.
fn one_line(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").trim();
    let line = if line.is_empty() { "unhealthy" } else { line };
    let mut end = line.len().min(MAX_REASON);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// One parsed response.
    #[derive(Debug)]
    struct Resp {
        status: u16,
        head: String,
        body: String,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Reads one response (Content-Length framed) from a keep-alive stream.
    fn read_response(s: &mut StdStream, head_only: bool) -> io::Result<Resp> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte)? == 0 {
                return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed"));
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let status = head[9..12].parse().unwrap();
        let mut r = Resp {
            status,
            head,
            body: String::new(),
        };
        let len: usize = r.header("content-length").unwrap().parse().unwrap();
        if !head_only {
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            r.body = String::from_utf8(body).unwrap();
        }
        Ok(r)
    }

    fn request(addr: SocketAddr, method: &str, path: &str) -> Resp {
        let mut s = connect(addr);
        write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        read_response(&mut s, method == "HEAD").unwrap()
    }

    fn get(addr: SocketAddr, path: &str) -> Resp {
        request(addr, "GET", path)
    }

    /// True when the server closed `s` (EOF or reset) rather than answering.
    fn closed_by_server(s: &mut StdStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    )
                }
            }
        }
    }

    fn registry() -> Registry {
        let r = Registry::new();
        let g = prometheus::IntGauge::new("app_things", "Things of the application.").unwrap();
        g.set(7);
        r.register(Box::new(g)).unwrap();
        r
    }

    fn healthy() -> HealthFn {
        Arc::new(|| Health::Healthy)
    }

    fn start(limits: ExporterLimits) -> Exporter {
        Exporter::start("127.0.0.1:0", registry(), healthy(), limits).unwrap()
    }

    #[test]
    fn serves_metrics_healthz_and_refuses_the_rest() {
        let exporter = start(ExporterLimits::default());
        let addr = exporter.local_addr();
        assert!(addr.ip().is_loopback());
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(r.body.contains("app_things 7\n"), "{r:?}");
        let r = get(addr, "/healthz");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
        let r = request(addr, "HEAD", "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(get(addr, "/").status, 404);
        assert_eq!(get(addr, "/metrics/x").status, 404);
        let r = request(addr, "POST", "/metrics");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        assert_eq!(request(addr, "DELETE", "/healthz").status, 405);
        exporter.shutdown();
        // The socket is closed with the thread.
        assert!(StdStream::connect(addr).is_err());
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let exporter = start(ExporterLimits::default());
        let mut s = connect(exporter.local_addr());
        // A HEAD response carries no body: the next response follows at once.
        for (method, path) in [
            ("GET", "/metrics"),
            ("HEAD", "/metrics"),
            ("GET", "/healthz"),
            ("HEAD", "/healthz"),
            ("GET", "/metrics"),
        ] {
            write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
            let r = read_response(&mut s, method == "HEAD").unwrap();
            assert_eq!(r.status, 200, "{method} {path}: {r:?}");
            if method == "GET" {
                assert!(!r.body.is_empty());
            }
        }
    }

    #[test]
    fn a_large_scrape_is_sent_whole() {
        let registry = registry();
        for i in 0..3000 {
            let g = prometheus::IntGauge::new(format!("app_gauge_{i}"), "A gauge of the test.")
                .unwrap();
            registry.register(Box::new(g)).unwrap();
        }
        let exporter = Exporter::start(
            "127.0.0.1:0",
            registry,
            healthy(),
            ExporterLimits::default(),
        )
        .unwrap();
        let r = get(exporter.local_addr(), "/metrics");
        assert_eq!(r.status, 200);
        assert!(r.body.len() > 100_000, "{}", r.body.len());
        assert!(r.body.contains("app_gauge_2999 0\n"));
    }

    #[test]
    fn healthz_follows_the_health_closure() {
        let stalled = Arc::new(AtomicBool::new(false));
        let s = stalled.clone();
        let health: HealthFn = Arc::new(move || {
            if s.load(Ordering::SeqCst) {
                Health::Unhealthy("event loop \"main\" stalled for 2.1 s\nsecond line".into())
            } else {
                Health::Healthy
            }
        });
        let exporter =
            Exporter::start("127.0.0.1:0", registry(), health, ExporterLimits::default()).unwrap();
        let addr = exporter.local_addr();
        assert_eq!(get(addr, "/healthz").status, 200);
        stalled.store(true, Ordering::SeqCst);
        let r = get(addr, "/healthz");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "event loop \"main\" stalled for 2.1 s\n");
        stalled.store(false, Ordering::SeqCst);
        assert_eq!(get(addr, "/healthz").status, 200);
    }

    #[test]
    fn a_panicking_health_check_is_a_500_not_a_dead_exporter() {
        let health: HealthFn = Arc::new(|| panic!("health check bug"));
        let exporter =
            Exporter::start("127.0.0.1:0", registry(), health, ExporterLimits::default()).unwrap();
        let addr = exporter.local_addr();
        assert_eq!(get(addr, "/healthz").status, 500);
        assert_eq!(get(addr, "/metrics").status, 200);
    }

    #[test]
    fn an_oversized_head_is_refused_while_others_are_served() {
        let exporter = start(ExporterLimits::default());
        let addr = exporter.local_addr();
        let big = std::thread::spawn(move || {
            let mut s = connect(addr);
            let mut req = String::from("GET /metrics HTTP/1.1\r\nHost: test\r\n");
            while req.len() < 64 * 1024 {
                req.push_str(
                    "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                );
            }
            req.push_str("\r\n");
            // The server may close before it has read everything.
            let _ = s.write_all(req.as_bytes());
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200);
        let answer = big.join().unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "oversized head answered: {answer:?}"
        );
        assert_eq!(get(addr, "/healthz").status, 200);
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_timeout_without_blocking_others() {
        let timeout = Duration::from_secs(1);
        let exporter = start(ExporterLimits {
            timeout,
            ..ExporterLimits::default()
        });
        let addr = exporter.local_addr();
        let t0 = Instant::now();
        let mut silent = connect(addr);
        // Another client is served at once meanwhile.
        assert_eq!(get(addr, "/metrics").status, 200);
        assert!(t0.elapsed() < timeout, "served after {:?}", t0.elapsed());
        assert!(closed_by_server(&mut silent));
        let waited = t0.elapsed();
        assert!(
            waited >= timeout.mul_f32(0.9) && waited < Duration::from_secs(5),
            "silent client dropped after {waited:?}"
        );
    }

    #[test]
    fn a_slow_head_is_cut_off_too() {
        let timeout = Duration::from_millis(400);
        let exporter = start(ExporterLimits {
            timeout,
            ..ExporterLimits::default()
        });
        let mut slow = connect(exporter.local_addr());
        let t0 = Instant::now();
        // Trickle a head that never ends.
        let closed = loop {
            if slow.write_all(b"X").is_err() {
                break true;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(closed, "a trickling client was kept for {:?}", t0.elapsed());
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_at_once() {
        let exporter = start(ExporterLimits {
            max_connections: 2,
            timeout: Duration::from_secs(30),
            ..ExporterLimits::default()
        });
        let addr = exporter.local_addr();
        // Two keep-alive connections, each answered once: both hold a slot.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = connect(addr);
            write!(s, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s, false).unwrap().status, 200);
            held.push(s);
        }
        let mut third = connect(addr);
        let _ = write!(third, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
        let t0 = Instant::now();
        assert!(closed_by_server(&mut third));
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Closing one frees its slot.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut s = connect(addr);
            let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
            match read_response(&mut s, false) {
                Ok(r) => {
                    assert_eq!(r.status, 200);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("no slot freed: {e}"),
            }
        }
    }

    #[test]
    fn answers_while_a_watched_runtime_is_blocked() {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel();
        let blocker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                blocked_tx.send(()).unwrap();
                // The event loop is stuck: nothing else runs on it.
                std::thread::sleep(Duration::from_secs(3));
            });
        });
        let handle = handle_rx.recv().unwrap();
        let registry = Registry::new();
        let metrics = Metrics::new(
            &registry,
            &[("main".to_string(), handle)],
            Duration::from_millis(500),
        )
        .unwrap();
        metrics.stall_started(0);
        let health: HealthFn =
            Arc::new(|| Health::Unhealthy("event loop \"main\" stalled for 1.0 s".into()));
        let exporter =
            Exporter::start("127.0.0.1:0", registry, health, ExporterLimits::default()).unwrap();
        blocked_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let r = get(exporter.local_addr(), "/metrics");
        assert_eq!(r.status, 200);
        assert!(
            r.body.contains("loopwatch_stalled{runtime=\"main\"} 1\n"),
            "{}",
            r.body
        );
        assert!(r
            .body
            .contains("loopwatch_runtime_workers{runtime=\"main\"} 1\n"));
        let h = get(exporter.local_addr(), "/healthz");
        assert_eq!(h.status, 503);
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "answers took {took:?} while the runtime was blocked"
        );
        assert!(
            !blocker.is_finished(),
            "the runtime was not blocked during the scrape"
        );
        blocker.join().unwrap();
    }

    #[test]
    fn bind_failures_are_exporter_bind() {
        let taken = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let r = Exporter::start(&addr, registry(), healthy(), ExporterLimits::default());
        match r {
            Err(Error::ExporterBind { addr: a, .. }) => assert_eq!(a, addr),
            other => panic!("{other:?}"),
        }
        for bad in ["no port", "127.0.0.1:99999", "[::1:80"] {
            let r = Exporter::start(bad, registry(), healthy(), ExporterLimits::default());
            assert!(matches!(r, Err(Error::ExporterBind { .. })), "{bad}: {r:?}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        for limits in [
            ExporterLimits {
                timeout: Duration::ZERO,
                ..ExporterLimits::default()
            },
            ExporterLimits {
                max_connections: 0,
                ..ExporterLimits::default()
            },
        ] {
            let r = Exporter::start("127.0.0.1:0", registry(), healthy(), limits);
            assert!(matches!(r, Err(Error::InvalidSetting { .. })), "{r:?}");
        }
    }

    #[test]
    fn starts_and_stops_inside_an_async_context() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let exporter = start(ExporterLimits::default());
            let addr = exporter.local_addr();
            let r = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            drop(exporter);
        });
    }

    #[test]
    fn localhost_names_are_accepted() {
        let exporter = Exporter::start(
            "localhost:0",
            registry(),
            healthy(),
            ExporterLimits::default(),
        )
        .unwrap();
        assert!(exporter.local_addr().ip().is_loopback());
        assert_eq!(get(exporter.local_addr(), "/healthz").status, 200);
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        assert_eq!(one_line("a\nb"), "a\n");
        assert_eq!(one_line("  \n"), "unhealthy\n");
        let long = "é".repeat(1000);
        let l = one_line(&long);
        assert!(l.len() <= MAX_REASON + 1 && l.ends_with('\n'));
    }
}
