//! loopwatch demo: a small loopback echo service whose event loop you can
//! break on purpose, to watch loopwatch notice.
//!
//! The service runs on a **current_thread** tokio runtime: one thread runs
//! every task, so a blocking call inside any task stops the whole loop and
//! the probe sees it. (One blocked worker of a multi_thread runtime, while
//! the others still answer the probe, is the per-worker detector's job.)
//!
//! ```text
//! cargo run --example demo -- --stall-after 2 --stall-kind sleep --stall-for 3
//! ```
//!
//! Stall kinds, each a named function so a stack points at it:
//! `sleep` (`stall_sleep`: std::thread::sleep inside a task), `spin`
//! (`stall_spin`: a CPU loop), `mutex` (`stall_mutex`: waiting for a
//! std::sync::Mutex another thread holds), `deadlock` (`stall_deadlock`: a
//! real lock-order deadlock between the loop and a worker thread; lasts
//! forever), `parking-lot-deadlock` (`stall_parking_lot_deadlock`: the same
//! with parking_lot mutexes), `dependency-cpu` (`stall_import_catalog`:
//! serde_json parsing a large document over and over, so the CPU is spent
//! inside a dependency called from the demo), `async-blocking`
//! (`fetch_prices`: a blocking read inside an `async fn` awaited from a
//! spawned task) and `saturated` (`saturate`: 40 tasks whose every poll
//! spins ~20 ms in one of three handlers, so the loop is busy with many
//! short polls and never stuck in one).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use loopwatch::{StallEvent, Watchdog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StallKind {
    /// std::thread::sleep inside an async task.
    Sleep,
    /// A busy CPU loop inside an async task.
    Spin,
    /// Waiting inside a task for a std Mutex that another thread holds.
    Mutex,
    /// A lock-order deadlock between the loop and a worker thread (forever).
    Deadlock,
    /// The same deadlock with parking_lot mutexes (forever).
    ParkingLotDeadlock,
    /// CPU spent inside a dependency (serde_json) called from the demo.
    DependencyCpu,
    /// A blocking read inside an async fn awaited from a spawned task.
    AsyncBlocking,
    /// Many tasks whose every poll takes ~20 ms: no single stuck poll.
    Saturated,
}

/// How long a stall lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StallFor {
    Secs(f64),
    Forever,
}

fn parse_stall_for(s: &str) -> Result<StallFor, String> {
    if s == "forever" {
        return Ok(StallFor::Forever);
    }
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(StallFor::Secs(v)),
        _ => Err(format!(
            "{s:?} is neither a number of seconds nor \"forever\""
        )),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// A loopback echo service with loopwatch watching its event loop.
#[derive(Debug, Parser)]
#[command(name = "demo", version, about)]
struct Args {
    /// Inject a stall this many seconds after start.
    #[arg(long, value_parser = parse_secs)]
    stall_after: Option<f64>,
    /// What the stalling task does.
    #[arg(long, value_enum, default_value = "sleep")]
    stall_kind: StallKind,
    /// How long the stall lasts: seconds, or "forever".
    #[arg(long, value_parser = parse_stall_for, default_value = "5")]
    stall_for: StallFor,
    /// Write stall reports to this directory.
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Serve /metrics and /healthz on this address (e.g. 127.0.0.1:9184).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Stall threshold in milliseconds (default: WatchdogSec/4 under systemd, else 1000).
    #[arg(long)]
    threshold_ms: Option<u64>,
    /// Probe interval in milliseconds (default: threshold/4, at most 100).
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Address of the echo service.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Send READY=1 only after this many seconds.
    #[arg(long, value_parser = parse_secs, default_value = "0")]
    ready_after: f64,
    /// Shut down cleanly (STOPPING=1, exit 0) after this many seconds.
    #[arg(long, value_parser = parse_secs)]
    exit_after: Option<f64>,
    /// Run client tasks that keep the echo service busy.
    #[arg(long)]
    load: bool,
    /// Start a copy of this program as a child that inherits the environment.
    #[arg(long)]
    spawn_child: bool,
    /// Internal: run as the child started by --spawn-child.
    #[arg(long, hide = true)]
    child: bool,
}

/// Whether loopwatch sends systemd watchdog pings in this process.
static PINGS_ON: AtomicBool = AtomicBool::new(false);

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "demo: {}", line.as_ref());
    let _ = out.flush();
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(format!("cannot build the tokio runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            say(format!("error: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let role = if args.child { "child" } else { "main" };
    let mut builder = Watchdog::builder()
        .watch(role, tokio::runtime::Handle::current())
        .on_stall(print_event);
    if let Some(ms) = args.threshold_ms {
        builder = builder.stall_threshold(Duration::from_millis(ms));
    }
    if let Some(ms) = args.probe_interval_ms {
        builder = builder.probe_interval(Duration::from_millis(ms));
    }
    builder = configure_outputs(builder, &args);
    let watchdog = builder.start()?;
    let st = watchdog.status();
    PINGS_ON.store(st.pings_enabled, Ordering::Relaxed);
    say(format!(
        "pid {}: loopwatch watches this current_thread runtime; stall threshold {:?}, systemd watchdog {}",
        std::process::id(),
        st.stall_threshold,
        match (st.watchdog_interval, st.pings_enabled) {
            (Some(w), true) => format!("{w:?} (pings on)"),
            (Some(w), false) => format!("{w:?} (pings off: not the main process)"),
            (None, _) => "off".to_string(),
        }
    ));

    if let Some(addr) = watchdog.metrics_addr() {
        say(format!(
            "metrics on http://{addr}/metrics, liveness on http://{addr}/healthz (served by loopwatch's own thread)"
        ));
    }

    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    say(format!("echo service listening on {addr}"));
    tokio::spawn(serve(listener));
    tokio::spawn(housekeeping());
    if args.load {
        for i in 0..4 {
            tokio::spawn(client_load(addr, i));
        }
        say("4 load clients running against the echo service");
    }
    let _child = if args.spawn_child {
        Some(spawn_child()?)
    } else {
        None
    };
    if args.child {
        tokio::spawn(exit_when_orphaned());
    }

    if args.ready_after > 0.0 {
        say(format!("READY=1 in {} s", args.ready_after));
        tokio::time::sleep(Duration::from_secs_f64(args.ready_after)).await;
    }
    watchdog.ready()?;
    say("ready");

    if let Some(after) = args.stall_after {
        let (kind, dur) = (args.stall_kind, args.stall_for);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(after)).await;
            match kind {
                StallKind::AsyncBlocking => serve_prices(dur).await,
                StallKind::Saturated => saturate(dur),
                _ => handle_request_with_bug(kind, dur),
            }
        });
    }

    let exit_after = async {
        match args.exit_after {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = exit_after => say("exit-after reached"),
        _ = shutdown_signal() => say("signal received"),
    }
    say("shutting down (STOPPING=1)");
    watchdog.shutdown();
    Ok(())
}

/// Report directory and metrics address.
fn configure_outputs(mut builder: loopwatch::Builder, args: &Args) -> loopwatch::Builder {
    if let Some(dir) = &args.report_dir {
        builder = builder.report_dir(dir);
    }
    if let Some(addr) = &args.metrics_addr {
        builder = builder.serve_metrics(addr.clone());
    }
    builder
}

fn print_event(event: &StallEvent) {
    match event {
        StallEvent::Started {
            runtime,
            lag,
            threshold,
            report,
            ..
        } => {
            say(format!(
                "loopwatch: event loop {runtime:?} STALLED: probe unanswered for {} ms (threshold {} ms){}",
                lag.as_millis(),
                threshold.as_millis(),
                if PINGS_ON.load(Ordering::Relaxed) {
                    "; systemd watchdog pings held back"
                } else {
                    ""
                }
            ));
            if let Some(p) = report {
                say(format!(
                    "loopwatch: stall report written to {}",
                    p.display()
                ));
            }
        }
        StallEvent::Ended {
            runtime,
            duration,
            report,
            ..
        } => {
            say(format!(
                "loopwatch: event loop {runtime:?} RECOVERED after {:.2} s{}",
                duration.as_secs_f64(),
                if PINGS_ON.load(Ordering::Relaxed) {
                    "; watchdog pings resume"
                } else {
                    ""
                }
            ));
            if let Some(p) = report {
                say(format!(
                    "loopwatch: stall report completed at {}",
                    p.display()
                ));
            }
        }
        other => say(format!("loopwatch: {other:?}")),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(e) => {
                say(format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn client_load(addr: SocketAddr, id: usize) {
    let msg = format!("hello from client {id}\n");
    loop {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut buf = vec![0u8; msg.len()];
        for _ in 0..100 {
            if s.write_all(msg.as_bytes()).await.is_err() || s.read_exact(&mut buf).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

async fn housekeeping() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut cache: Vec<u64> = Vec::new();
    loop {
        tick.tick().await;
        cache.push(cache.len() as u64);
        cache.truncate(64);
    }
}

async fn exit_when_orphaned() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if std::os::unix::process::parent_id() != parent {
            say("parent gone; child exits");
            std::process::exit(0);
        }
    }
}

fn spawn_child() -> std::io::Result<std::process::Child> {
    let exe = std::env::current_exe()?;
    let child = std::process::Command::new(exe)
        .arg("--child")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .spawn()?;
    say(format!(
        "spawned child pid {} with the same environment (it must never ping: WATCHDOG_PID is ours)",
        child.id()
    ));
    Ok(child)
}

/// The bug: blocking code inside an async task.
fn handle_request_with_bug(kind: StallKind, dur: StallFor) {
    say(format!(
        "injecting a stall: {kind:?} for {}",
        match dur {
            StallFor::Secs(s) => format!("{s} s"),
            StallFor::Forever => "ever".into(),
        }
    ));
    let d = match dur {
        StallFor::Secs(s) => Some(Duration::from_secs_f64(s)),
        StallFor::Forever => None,
    };
    match kind {
        StallKind::Sleep => stall_sleep(d),
        StallKind::Spin => stall_spin(d),
        StallKind::Mutex => stall_mutex(d),
        StallKind::Deadlock => stall_deadlock(),
        StallKind::ParkingLotDeadlock => stall_parking_lot_deadlock(),
        StallKind::DependencyCpu => stall_import_catalog(d),
        // Run from the task itself (they need the runtime).
        StallKind::AsyncBlocking | StallKind::Saturated => {}
    }
    say("stall over: the event loop runs again");
}

/// Sleeps the event loop's thread: a blocking syscall inside a task.
#[inline(never)]
fn stall_sleep(d: Option<Duration>) {
    match d {
        Some(d) => std::thread::sleep(d),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

/// Spins on the CPU inside a task.
#[inline(never)]
fn stall_spin(d: Option<Duration>) {
    let start = Instant::now();
    let mut x: u64 = 0;
    while d.is_none_or(|d| start.elapsed() < d) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

/// Waits inside a task for a std Mutex that another thread holds.
#[inline(never)]
fn stall_mutex(d: Option<Duration>) {
    let lock = Arc::new(Mutex::new(0u64));
    let held = Arc::new(Barrier::new(2));
    let (l2, h2) = (lock.clone(), held.clone());
    std::thread::Builder::new()
        .name("demo-lock-holder".into())
        .spawn(move || {
            let _g = l2.lock().unwrap_or_else(|e| e.into_inner());
            h2.wait();
            match d {
                Some(d) => std::thread::sleep(d),
                None => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
        })
        .expect("spawn lock holder");
    held.wait();
    let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
    *g += 1;
}

/// A lock-order deadlock: the loop takes A then B, a worker thread B then A.
#[inline(never)]
fn stall_deadlock() {
    let a = Arc::new(Mutex::new(()));
    let b = Arc::new(Mutex::new(()));
    let both = Arc::new(Barrier::new(2));
    let (a2, b2, both2) = (a.clone(), b.clone(), both.clone());
    std::thread::Builder::new()
        .name("demo-worker".into())
        .spawn(move || {
            let _b = b2.lock().unwrap_or_else(|e| e.into_inner());
            both2.wait();
            let _a = a2.lock().unwrap_or_else(|e| e.into_inner());
        })
        .expect("spawn worker");
    let _a = a.lock().unwrap_or_else(|e| e.into_inner());
    both.wait();
    let _b = b.lock().unwrap_or_else(|e| e.into_inner());
}

/// The same lock-order deadlock with parking_lot mutexes.
#[inline(never)]
fn stall_parking_lot_deadlock() {
    let a = Arc::new(parking_lot::Mutex::new(()));
    let b = Arc::new(parking_lot::Mutex::new(()));
    let both = Arc::new(Barrier::new(2));
    let (a2, b2, both2) = (a.clone(), b.clone(), both.clone());
    std::thread::Builder::new()
        .name("demo-pl-worker".into())
        .spawn(move || {
            let _b = b2.lock();
            both2.wait();
            let _a = a2.lock();
        })
        .expect("spawn worker");
    let _a = a.lock();
    both.wait();
    let _b = b.lock();
}

/// Parses a large JSON catalog with serde_json over and over: the CPU is
/// spent inside the dependency, under this one call.
#[inline(never)]
fn stall_import_catalog(d: Option<Duration>) {
    let mut doc = String::from("[");
    for i in 0..20_000 {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            r#"{{"sku":"item-{i}","name":"catalog entry {i}","price":{}.{:02},"tags":["a","b","c"],"stock":{{"here":{i},"there":{}}}}}"#,
            i % 500,
            i % 100,
            i * 3
        ));
    }
    doc.push(']');
    let start = Instant::now();
    let mut items = 0usize;
    while d.is_none_or(|d| start.elapsed() < d) {
        match serde_json::from_str::<serde_json::Value>(&doc) {
            Ok(v) => items += v.as_array().map_or(0, Vec::len),
            Err(e) => say(format!("catalog does not parse: {e}")),
        }
    }
    std::hint::black_box(items);
}

/// The spawned task that awaits an async fn with a blocking call inside.
async fn serve_prices(dur: StallFor) {
    let d = match dur {
        StallFor::Secs(s) => Some(Duration::from_secs_f64(s)),
        StallFor::Forever => None,
    };
    say(format!("injecting a stall: AsyncBlocking for {d:?}"));
    let prices = fetch_prices(d).await;
    say(format!(
        "stall over ({prices} bytes of prices): the event loop runs again"
    ));
}

/// An async fn that reads a socket with a blocking read: nobody writes to
/// it, so the read waits (until the timeout) with the event loop's thread.
async fn fetch_prices(d: Option<Duration>) -> usize {
    use std::io::Read;
    let Ok((mut ours, _theirs)) = std::os::unix::net::UnixStream::pair() else {
        return 0;
    };
    let _ = ours.set_read_timeout(d.filter(|d| !d.is_zero()));
    let mut buf = [0u8; 64];
    ours.read(&mut buf).unwrap_or(0)
}

/// Saturates the loop: 40 tasks whose every poll spins ~20 ms in one of
/// three handlers, until `dur` is over. No poll is long; together they
/// keep the probe waiting.
fn saturate(dur: StallFor) {
    say(format!("injecting a stall: Saturated for {dur:?}"));
    let until = match dur {
        StallFor::Secs(s) => Some(Instant::now() + Duration::from_secs_f64(s)),
        StallFor::Forever => None,
    };
    for i in 0..40 {
        tokio::spawn(async move {
            while until.is_none_or(|u| Instant::now() < u) {
                match i % 3 {
                    0 => score_items(Duration::from_millis(20)),
                    1 => render_page(Duration::from_millis(20)),
                    _ => compress_reply(Duration::from_millis(20)),
                }
                tokio::task::yield_now().await;
            }
        });
    }
}

/// One short poll's worth of CPU (three names, as three handlers would be).
#[inline(never)]
fn score_items(d: Duration) {
    spin_for(d)
}

#[inline(never)]
fn render_page(d: Duration) {
    spin_for(d)
}

#[inline(never)]
fn compress_reply(d: Duration) {
    spin_for(d)
}

#[inline(never)]
fn spin_for(d: Duration) {
    let start = Instant::now();
    let mut x: u64 = 1;
    while start.elapsed() < d {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(x);
}
