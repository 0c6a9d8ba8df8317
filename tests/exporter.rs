//! The exporter under hostile clients, through the public API and real TCP
//! sockets (issue 11 item 6): a liveness probe on `/healthz` is answered
//! while 500 idle sockets and 64 clients trickling a never-ending head are
//! held open, each reopened as soon as the exporter closes it; a silent
//! client is closed after about a second; `/hiccups` says why it is empty.
//!
//! Bounds here are generous; the timing target (every probe within 1 s)
//! is measured in `benches/exporter.rs`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopwatch::Watchdog;

/// Idle sockets held open by the attacker.
const IDLE_SOCKETS: usize = 500;
/// Clients trickling a head that never ends.
const TRICKLERS: usize = 64;

/// Raises the soft limit on open files to the hard limit when it is below
/// `needed`; fails the test with a clear message when even the hard limit
/// is too low.
fn ensure_open_files(needed: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return;
    }
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= needed,
        "this test holds {needed} sockets but RLIMIT_NOFILE's hard limit is {hard}: \
         raise it (ulimit -Hn) to run it"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard.min(needed * 4)),
            maximum: lim.maximum,
        },
    )
    .expect("raise RLIMIT_NOFILE to its hard limit");
}

/// A watchdog on a small runtime of its own, serving the exporter on a
/// free loopback port with its default limits.
fn watchdog() -> (tokio::runtime::Runtime, Watchdog, SocketAddr) {
    let rt = common::multi_thread(1);
    let wd = Watchdog::builder()
        .watch("main", rt.handle().clone())
        .no_report_files()
        .no_stack_capture()
        .serve_metrics("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = wd.metrics_addr().unwrap();
    (rt, wd, addr)
}

/// What the attacker's sockets went through.
#[derive(Default)]
struct AttackCounts {
    /// Sockets connected now.
    held: AtomicU64,
    /// Sockets the exporter closed (each reopened at once).
    closed_by_server: AtomicU64,
    /// Head bytes trickled.
    trickled: AtomicU64,
}

/// Connects, sends nothing, and reconnects when the exporter closes it.
async fn idle_client(addr: SocketAddr, c: Arc<AttackCounts>) {
    use tokio::io::AsyncReadExt;
    loop {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        c.held.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 256];
        // Ends on EOF or reset: the exporter closed it.
        while let Ok(1..) = s.read(&mut buf).await {}
        c.held.fetch_sub(1, Ordering::Relaxed);
        c.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connects and sends a head one byte every 100–300 ms, never its end;
/// reconnects when the exporter closes it.
async fn trickler(addr: SocketAddr, c: Arc<AttackCounts>, seed: u64) {
    use tokio::io::AsyncWriteExt;
    let head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        c.held.fetch_add(1, Ordering::Relaxed);
        for i in 0.. {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            tokio::time::sleep(Duration::from_millis(100 + rng % 201)).await;
            let mut peek = [0u8; 64];
            let closed = match s.try_read(&mut peek) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != ErrorKind::WouldBlock,
            };
            if closed || s.write_all(&head[i % head.len()..][..1]).await.is_err() {
                break;
            }
            c.trickled.fetch_add(1, Ordering::Relaxed);
        }
        c.held.fetch_sub(1, Ordering::Relaxed);
        c.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// The attacker: its own thread and runtime; dropping it closes every
/// socket.
struct Attack {
    counts: Arc<AttackCounts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    fn start(addr: SocketAddr) -> Attack {
        let counts = Arc::new(AttackCounts::default());
        let c = counts.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for _ in 0..IDLE_SOCKETS {
                    tokio::spawn(idle_client(addr, c.clone()));
                }
                for i in 0..TRICKLERS {
                    tokio::spawn(trickler(addr, c.clone(), i as u64 + 1));
                }
                let _ = stopped.await;
            });
        });
        Attack {
            counts,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh client's `GET path`: the status line and body, or what failed.
fn fresh_get(addr: SocketAddr, path: &str, limit: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e} after {out:?}"))?;
    Ok(out)
}

#[test]
fn healthz_answers_every_fresh_probe_through_idle_and_trickling_floods() {
    ensure_open_files(2 * (IDLE_SOCKETS + TRICKLERS) as u64 + 256);
    let (_rt, wd, addr) = watchdog();
    let attack = Attack::start(addr);
    // Wait until the exporter is at its cap and closing attackers' sockets.
    let t0 = Instant::now();
    while attack.counts.closed_by_server.load(Ordering::Relaxed) < 2 * IDLE_SOCKETS as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the attack never got going: {} sockets held, {} closed",
            attack.counts.held.load(Ordering::Relaxed),
            attack.counts.closed_by_server.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let r = fresh_get(addr, "/healthz", Duration::from_secs(5));
        let took = t.elapsed();
        match r {
            Ok(out) => assert!(out.starts_with("HTTP/1.1 200 "), "probe {i}: {out:?}"),
            Err(e) => panic!(
                "probe {i} failed after {took:?}: {e} ({} attacker sockets held)",
                attack.counts.held.load(Ordering::Relaxed)
            ),
        }
        assert!(took < Duration::from_secs(3), "probe {i} took {took:?}");
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_millis(25));
    }
    // The attack was on all along: its sockets kept being closed, and the
    // attacker held far more than the exporter's cap of 64.
    let closed = attack.counts.closed_by_server.load(Ordering::Relaxed);
    assert!(closed > 4 * IDLE_SOCKETS as u64, "{closed} closed");
    drop(attack);
    // The watched loop stayed healthy throughout.
    assert!(wd.status().healthy, "{:?}", wd.status());
    eprintln!("40 probes through the flood, slowest {slowest:?}; {closed} attacker sockets closed");
    wd.shutdown();
}

#[test]
fn a_silent_client_is_closed_after_about_a_second_by_default() {
    let (_rt, wd, addr) = watchdog();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("a silent client got an answer: {:?}", &buf[..n]),
        Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset),
    };
    let waited = t0.elapsed();
    assert!(closed, "not closed after {waited:?}");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(3),
        "silent client closed after {waited:?}"
    );
    wd.shutdown();
}

#[test]
fn the_watchdog_serves_its_hiccups_as_json() {
    let (_rt, wd, addr) = watchdog();
    let out = fresh_get(addr, "/hiccups", Duration::from_secs(5)).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 "), "{out:?}");
    assert!(
        out.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{out:?}"
    );
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    let doc: serde_json::Value = serde_json::from_str(body).expect("a JSON document");
    assert!(doc["hiccups"].is_array(), "{doc}");
    assert_eq!(doc["top_blockers"][0]["runtime"], "main", "{doc}");
    wd.shutdown();
}
