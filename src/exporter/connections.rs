//! Accepting and policing the exporter's connections.
//!
//! This module owns the listening socket and every connection on it, and the
//! limits that keep a misbehaving client from wedging the exporter
//! ([`ExporterLimits`]):
//!
//! * connections beyond [`ExporterLimits::max_connections`] are closed as
//!   soon as they are accepted (a semaphore permit per connection);
//! * the request head is bounded ([`ExporterLimits::max_head_bytes`], 431
//!   beyond it: hyper's read buffer limit);
//! * a client that does not send a complete head in time is dropped
//!   (hyper's header read timeout, which also bounds idle keep-alive
//!   connections);
//! * a connection is wound down gracefully after [`ExporterLimits::timeout`]
//!   and dropped after twice that;
//! * a failing `accept` (typically `EMFILE`) backs off instead of spinning,
//!   and refusals and accept errors are logged at most once a minute.
//!
//! HTTP parsing is hyper's. It does not decide what a request gets back
//! ([`super::routes`] does), nor own the exporter's thread and runtime (the
//! parent module does).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::routes::{respond, State};

/// hyper's smallest read buffer; a smaller head limit is raised to it.
const MIN_HEAD_BYTES: usize = 8192;

/// How often at most a refused connection or a failing `accept` is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

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

/// Resolves `addr` and binds the first of its addresses that can be bound.
pub(super) fn bind(addr: &str) -> io::Result<StdListener> {
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

/// Accepts connections on `listener` and serves each on a task of its own,
/// until `stop` fires or its sender is dropped.
pub(super) async fn accept_loop(
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
