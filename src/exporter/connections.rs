//! Accepting and policing the exporter's connections.
//!
//! This module owns the listening socket and every connection on it, and the
//! limits that keep a misbehaving client from wedging the exporter
//! ([`ExporterLimits`]):
//!
//! * at most [`ExporterLimits::max_connections`] connections are held; at
//!   the cap a new connection evicts the one idle for longest (waiting for
//!   a request head), and is refused (closed at once) only when every
//!   connection is inside a request ([`super::admission`] decides);
//! * a client that does not send a complete request head within
//!   [`ExporterLimits::head_timeout`] of being accepted, or of its previous
//!   response, is dropped (hyper's header read timeout);
//! * the request head is bounded ([`ExporterLimits::max_head_bytes`], 431
//!   beyond it: hyper's read buffer limit);
//! * a connection is wound down gracefully after [`ExporterLimits::timeout`]
//!   and dropped after twice that;
//! * the kernel queues up to [`LISTEN_BACKLOG`] connections not yet
//!   accepted, so a flood does not make it drop a probe's SYN;
//! * a failing `accept` (typically `EMFILE`) backs off instead of spinning;
//!   refusals, evictions and accept errors are counted
//!   ([`ExporterCounters`]) and logged at most once a minute each.
//!
//! The accept loop runs as a task of the exporter's runtime, like the
//! connections, and at the cap lets them run before choosing whom to evict
//! ([`admit`]): the choice is made on fresh states.
//!
//! HTTP parsing is hyper's. It does not decide what a request gets back
//! ([`super::routes`] does), nor own the exporter's thread and runtime (the
//! parent module does).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::activity::{TrackedBody, TrackedStream};
use super::admission::{ConnectionTable, Room, Slot};
use super::counters::ExporterCounters;
use super::routes::{respond, Endpoints};

/// hyper's smallest read buffer; a smaller head limit is raised to it.
const MIN_HEAD_BYTES: usize = 8192;

/// How often at most a refused connection, an eviction or a failing
/// `accept` is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How many times at most the accept loop, at the cap, lets the other
/// connections run before deciding on a new one (see [`admit`]).
const MAX_ADMISSION_YIELDS: usize = 16;

/// Bounds that keep a misbehaving client from wedging the exporter.
///
/// The defaults let a liveness probe through 500 idle sockets and 64
/// clients trickling a head that never ends (measured in
/// `benches/exporter.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExporterLimits {
    /// Largest request head (request line and headers), in bytes; a larger
    /// one gets 431 and the connection is closed. At least 8 KiB. Default
    /// 16 KiB.
    pub max_head_bytes: usize,
    /// The life of a connection: after it the connection is wound down
    /// gracefully (a request in flight is finished, keep-alive ends) and
    /// dropped after as long again. Also caps [`head_timeout`]. Default 5 s.
    ///
    /// [`head_timeout`]: ExporterLimits::head_timeout
    pub timeout: Duration,
    /// Time a client has to send a complete request head, counted from its
    /// connection being accepted or, on keep-alive, from its previous
    /// response being written; then the connection is closed. The deadline
    /// does not move while bytes trickle in. The smaller of this and
    /// [`timeout`](ExporterLimits::timeout) applies. Default 1 s: a probe
    /// or a scrape sends its head within milliseconds.
    pub head_timeout: Duration,
    /// Connections held at once. At the cap a new connection evicts the
    /// one idle for longest (waiting for a request head); only when every
    /// connection is inside a request is it refused (closed at once).
    /// Default 64.
    pub max_connections: usize,
}

impl Default for ExporterLimits {
    fn default() -> Self {
        ExporterLimits {
            max_head_bytes: 16 * 1024,
            timeout: Duration::from_secs(5),
            head_timeout: Duration::from_secs(1),
            max_connections: 64,
        }
    }
}

/// Connections the kernel may queue before the exporter accepts them.
///
/// `std`'s listener asks for 128. Under a flood of reconnecting clients a
/// full queue makes the kernel drop a new client's SYN, and the client then
/// waits for its retransmission (1 s, then 3 s): a liveness probe would
/// time out although the exporter evicts idle connections at once. 1024
/// covers the 564 sockets of the hostile-clients bench; Linux caps it at
/// `net.core.somaxconn` (4096 by default since 5.4).
const LISTEN_BACKLOG: i32 = 1024;

/// Resolves `addr` and binds the first of its addresses that can be bound,
/// listening with a queue of [`LISTEN_BACKLOG`] connections.
pub(super) fn bind(addr: &str) -> io::Result<StdListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match listen(a) {
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

/// A listening socket on `addr`, made the way `std` makes one
/// (`SO_REUSEADDR`, close-on-exec) but with a longer queue.
fn listen(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Accepts connections on `listener` and serves each on a task of its own,
/// until `stop` fires or its sender is dropped.
pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Endpoints>,
    limits: ExporterLimits,
    counters: Arc<ExporterCounters>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut table: ConnectionTable<AbortHandle> = ConnectionTable::new(limits.max_connections);
    let mut refusal_logged: Option<Instant> = None;
    let mut eviction_logged: Option<Instant> = None;
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
                let failed = ExporterCounters::bump(&counters.accept_errors);
                // Typically EMFILE: back off instead of spinning.
                if due(&mut accept_error_logged) {
                    tracing::warn!(error = %e, failed, "loopwatch exporter cannot accept connections");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ExporterCounters::bump(&counters.accepted);
        if admit(&mut table, &counters).await {
            let _ = stream.set_nodelay(true);
            let slot = Slot::new();
            let task = tokio::spawn(serve(
                stream,
                peer,
                endpoints.clone(),
                limits,
                slot.clone(),
                counters.clone(),
            ));
            table.insert(slot, task.abort_handle());
            // An eviction made room: say so, rarely.
            let evicted = counters.evicted.load(Ordering::Relaxed);
            if evicted > 0 && due(&mut eviction_logged) {
                tracing::info!(
                    evicted,
                    max_connections = limits.max_connections,
                    "loopwatch exporter at its connection limit: closing the longest idle connections to serve new ones"
                );
            }
        } else {
            let refused = ExporterCounters::bump(&counters.refused);
            if due(&mut refusal_logged) {
                tracing::warn!(
                    %peer,
                    refused,
                    max_connections = limits.max_connections,
                    "loopwatch exporter at its connection limit with every connection inside a request: closing new connections"
                );
            }
            drop(stream);
        }
    }
}

/// Makes room in `table` for one more connection: false when it must be
/// refused. An evicted connection's task is aborted (its socket closed).
///
/// At the cap it first yields: the accept loop is a task like the
/// connections', so every connection whose socket became readable runs
/// (and reads the head waiting there, which makes it busy) before the
/// longest idle one is chosen. Without it a burst of accepts decides on
/// stale states and can evict a probe whose request has already arrived.
async fn admit(table: &mut ConnectionTable<AbortHandle>, counters: &ExporterCounters) -> bool {
    let mut yields = 0;
    while table.is_full() && yields < MAX_ADMISSION_YIELDS {
        yields += 1;
        tokio::task::yield_now().await;
        match table.make_room() {
            Room::Free => return true,
            Room::Evicted(task) => {
                task.abort();
                ExporterCounters::bump(&counters.evicted);
                return true;
            }
            Room::Full => return false,
            // Connections accepted last have not read what their clients
            // sent yet: let them run, then decide.
            Room::NotYet => {}
        }
    }
    !table.is_full()
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

/// Marks a connection's slot closed and uncounts it when its task ends,
/// however it ends (served, timed out, evicted, exporter stopped).
struct OpenConnection {
    slot: Arc<Slot>,
    counters: Arc<ExporterCounters>,
}

impl OpenConnection {
    fn new(slot: Arc<Slot>, counters: Arc<ExporterCounters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection { slot, counters }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.slot.closed();
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until it closes or its time is up.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    endpoints: Arc<Endpoints>,
    limits: ExporterLimits,
    slot: Arc<Slot>,
    counters: Arc<ExporterCounters>,
) {
    let _open = OpenConnection::new(slot.clone(), counters.clone());
    let mut builder = http1::Builder::new();
    // hyper starts this timer when it first reads a connection and again
    // when a keep-alive connection goes idle after a response; it is reset
    // only by a complete head, not by bytes trickling in.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout.min(limits.timeout))
        .max_buf_size(limits.max_head_bytes.max(MIN_HEAD_BYTES))
        .keep_alive(true);
    let service_slot = slot.clone();
    let service_counters = counters.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        // hyper calls the service once a complete head is read.
        service_slot.request_started();
        let response = respond(&endpoints, &req);
        // A 500 is a source that panicked: a failure of loopwatch itself.
        if response.status() == hyper::StatusCode::INTERNAL_SERVER_ERROR {
            ExporterCounters::bump(&service_counters.panics);
        }
        let response = response.map(|body| TrackedBody::new(body, service_slot.clone()));
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let io = TokioIo::new(TrackedStream::new(stream, slot));
    let conn = builder.serve_connection(io, service);
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
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            ExporterCounters::bump(&counters.head_timeouts);
            tracing::debug!(%peer, "loopwatch exporter closed a connection that sent no complete request head in time");
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "loopwatch exporter connection ended with an error");
        }
    }
}
