//! Target 8: the exporter. Scrape latency (HTTP GET on loopback, from the
//! bench thread to loopwatch's exporter thread and back) and encode time
//! (`prometheus::TextEncoder` over `watchdog.registry().gather()`).
//!
//! The Watchdog watches two runtimes (a 2-worker multi_thread one and a
//! current_thread one), so the per-runtime and per-worker series exist.
//!
//! Issue 11 item 6, the exporter under hostile clients: `/healthz` from a
//! fresh client must answer within 1 s in 100 % of tries while 500 idle
//! sockets and 64 clients trickling a never-ending head (a byte every
//! 100–300 ms) are held open, each reopened as soon as the exporter closes
//! it; and the watched loops' lag must not change. The attacker is a child
//! process at nice 19 (as if on another machine: its CPU should not be
//! what the loops feel, the exporter's is). Four windows: without and with
//! the attack, probes back to back (under criterion: many samples, and the
//! prober's own connections add to the churn) and one every 10 ms (the
//! windows whose loop lag is compared). Lag comes from loopwatch's own
//! `loopwatch_probe_lag_seconds` histogram over each window.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use criterion::Criterion;
use prometheus::Encoder;

/// One GET on a fresh connection (`Connection: close`); returns the body size.
fn get_fresh(addr: SocketAddr, path: &str) -> usize {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::with_capacity(64 * 1024);
    s.read_to_end(&mut out).unwrap();
    assert!(out.starts_with(b"HTTP/1.1 "), "bad response");
    out.len()
}

/// One GET on a kept-alive connection; returns the body size.
fn get_keepalive(r: &mut BufReader<TcpStream>, path: &str) -> usize {
    write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
    let mut len = None;
    let mut chunked = false;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
    }
    if let Some(n) = len {
        let mut body = vec![0u8; n];
        r.read_exact(&mut body).unwrap();
        return n;
    }
    assert!(chunked, "response without length");
    let mut total = 0;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let n = usize::from_str_radix(line.trim(), 16).unwrap();
        let mut chunk = vec![0u8; n + 2];
        r.read_exact(&mut chunk).unwrap();
        total += n;
        if n == 0 {
            return total;
        }
    }
}

fn main() {
    if let Ok(addr) = std::env::var(ATTACKER_ROLE) {
        return attacker_main(&addr);
    }
    heading("exporter: scrape latency and encode time (target 8)");
    let mt = multi_thread(2);
    let ct = DrivenRuntime::current_thread("bench-ct");
    let wd = loopwatch::Watchdog::builder()
        .stall_threshold(Duration::from_millis(200))
        .probe_interval(Duration::from_millis(50))
        .watch("mt", mt.handle().clone())
        .watch("ct", ct.handle.clone())
        .no_report_files()
        .no_stack_capture()
        .serve_metrics("127.0.0.1:0")
        .start()
        .expect("start watchdog");
    let addr = wd.metrics_addr().expect("exporter address");
    std::thread::sleep(Duration::from_millis(500));
    let reg = wd.registry().clone();
    let families = reg.gather();
    let series: usize = families.iter().map(|f| f.get_metric().len()).sum();
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&families, &mut text)
        .unwrap();
    let response = get_fresh(addr, "/metrics");
    println!(
        "registry: {} families, {} series, {} bytes of text; /metrics response {} bytes",
        families.len(),
        series,
        text.len(),
        response
    );

    let mut c = Criterion::default()
        .sample_size(pick(30, 10))
        .warm_up_time(Duration::from_millis(pick(300, 20)))
        .measurement_time(Duration::from_millis(pick(2000, 100)))
        .configure_from_args();
    let mut rec: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut g = c.benchmark_group("exporter");
    {
        let mut v = Vec::new();
        g.bench_function("encode (gather + TextEncoder)", |b| {
            let enc = prometheus::TextEncoder::new();
            let mut buf = Vec::with_capacity(64 * 1024);
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    buf.clear();
                    enc.encode(&reg.gather(), &mut buf).unwrap();
                    v.push(us(t.elapsed()));
                }
                t0.elapsed()
            })
        });
        rec.push(("encode (gather + TextEncoder)", v));
    }
    {
        let mut v = Vec::new();
        g.bench_function("gather only", |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(reg.gather());
                    v.push(us(t.elapsed()));
                }
                t0.elapsed()
            })
        });
        rec.push(("gather only", v));
    }
    for (name, path) in [
        ("GET /metrics, new connection", "/metrics"),
        ("GET /healthz, new connection", "/healthz"),
    ] {
        let mut v = Vec::new();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(get_fresh(addr, path));
                    v.push(us(t.elapsed()));
                }
                t0.elapsed()
            })
        });
        rec.push((name, v));
    }
    {
        let mut v = Vec::new();
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = BufReader::new(s);
        g.bench_function("GET /metrics, kept-alive connection", |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    let t = Instant::now();
                    std::hint::black_box(get_keepalive(&mut r, "/metrics"));
                    v.push(us(t.elapsed()));
                }
                t0.elapsed()
            })
        });
        rec.push(("GET /metrics, kept-alive connection", v));
    }
    g.finish();
    let hostile = hostile_clients(&mut c, &wd, addr);
    c.final_summary();

    let mut t = Table::new(
        "exporter, µs per operation (all iterations criterion ran, warm-up included)",
        &["operation", "iterations", "median", "p99", "max"],
    );
    for (name, v) in &rec {
        let s = stats(v);
        t.row(vec![
            name.to_string(),
            s.n.to_string(),
            f(s.median, 1),
            f(s.p99, 1),
            f(s.max, 1),
        ]);
    }
    t.print();
    hostile.print();
    wd.shutdown();
}

// ------------------------------------------------------- hostile clients

/// Idle sockets held open by the attacker.
const IDLE_SOCKETS: usize = 500;
/// Clients trickling a head that never ends.
const TRICKLERS: usize = 64;
/// A fresh probe must be answered within this.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// The environment variable that makes this bench binary play the
/// attacker, against the address it holds.
const ATTACKER_ROLE: &str = "LOOPWATCH_BENCH_ATTACK";

/// What the attacker did, counted by its tasks.
#[derive(Default)]
struct AttackCounts {
    /// Sockets connected now.
    held: AtomicU64,
    /// Sockets the exporter closed (each reopened at once).
    closed_by_server: AtomicU64,
    /// Failed connects.
    connect_errors: AtomicU64,
    /// Head bytes trickled.
    trickled: AtomicU64,
}

impl AttackCounts {
    fn line(&self) -> String {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} {} {} {}",
            r(&self.held),
            r(&self.closed_by_server),
            r(&self.connect_errors),
            r(&self.trickled)
        )
    }

    fn set_from(&self, line: &str) {
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [held, closed, errors, trickled] = v[..] {
            self.held.store(held, Ordering::Relaxed);
            self.closed_by_server.store(closed, Ordering::Relaxed);
            self.connect_errors.store(errors, Ordering::Relaxed);
            self.trickled.store(trickled, Ordering::Relaxed);
        }
    }
}

/// The attacker's side, run in a child process at nice 19 (as if it came
/// from another machine: its CPU does not compete with the watched loops,
/// the exporter's does): 500 idle sockets and 64 tricklers, each reopened
/// as soon as the exporter closes it. Prints its counts every 20 ms and
/// ends when its stdin closes.
fn attacker_main(addr: &str) {
    rustix::process::setpriority_process(None, 19).expect("setpriority");
    let addr: SocketAddr = addr.parse().expect("attacker address");
    let c = Arc::new(AttackCounts::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("attacker runtime");
    let report = c.clone();
    std::thread::spawn(move || loop {
        println!("{}", report.line());
        std::thread::sleep(Duration::from_millis(20));
    });
    rt.block_on(async move {
        for _ in 0..IDLE_SOCKETS {
            tokio::spawn(idle_client(addr, c.clone()));
        }
        for i in 0..TRICKLERS {
            tokio::spawn(trickler(addr, c.clone(), i as u64 + 1));
        }
        // Until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
    });
    std::process::exit(0);
}

/// The attacker child process, seen from the bench.
struct Attack {
    counts: Arc<AttackCounts>,
    child: std::process::Child,
}

impl Attack {
    fn start(addr: SocketAddr) -> Attack {
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env(ATTACKER_ROLE, addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the attacker");
        let counts = Arc::new(AttackCounts::default());
        let c = counts.clone();
        let out = child.stdout.take().expect("attacker stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                c.set_from(&line);
            }
        });
        Attack { counts, child }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Connects, sends nothing, and reconnects when the exporter closes it.
async fn idle_client(addr: SocketAddr, c: Arc<AttackCounts>) {
    use tokio::io::AsyncReadExt;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                c.held.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 256];
                // Returns on EOF or reset: the exporter closed it.
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    let _ = n;
                }
                c.held.fetch_sub(1, Ordering::Relaxed);
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Connects and sends a head one byte every 100–300 ms, never its end;
/// reconnects when the exporter closes it.
async fn trickler(addr: SocketAddr, c: Arc<AttackCounts>, seed: u64) {
    use tokio::io::AsyncWriteExt;
    let head = b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Trickle: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                c.held.fetch_add(1, Ordering::Relaxed);
                for i in 0.. {
                    // xorshift64: a pause of 100–300 ms.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    tokio::time::sleep(Duration::from_millis(100 + rng % 201)).await;
                    let mut probe = [0u8; 64];
                    let closed = match s.try_read(&mut probe) {
                        Ok(n) => n == 0,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    if closed || s.write_all(&head[i % head.len()..][..1]).await.is_err() {
                        break;
                    }
                    c.trickled.fetch_add(1, Ordering::Relaxed);
                }
                c.held.fetch_sub(1, Ordering::Relaxed);
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One fresh `/healthz` probe, as the client saw it.
struct Probe {
    /// From `connect` to the end of the answer (or the failure).
    took: Duration,
    /// `connect` alone.
    connect: Duration,
    /// From `connect` returning to the request written: a client that
    /// waits long here looks idle to the exporter.
    write_gap: Duration,
    /// `None` for a 200; else what went wrong.
    failure: Option<String>,
}

/// One fresh `/healthz` probe: connect, ask, read to the end (5 s hard
/// limit).
fn probe_healthz(addr: SocketAddr) -> Probe {
    let t0 = Instant::now();
    let limit = Duration::from_secs(5);
    let mut write_gap = Duration::ZERO;
    let mut connect = Duration::ZERO;
    let failure = (|| -> Result<(), String> {
        let mut s =
            TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        let connected = Instant::now();
        connect = t0.elapsed();
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        write_gap = connected.elapsed();
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .map_err(|e| format!("read: {:?}", e.kind()))?;
        if out.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else if out.is_empty() {
            Err("closed without an answer".into())
        } else {
            Err(format!(
                "answered {:?}",
                String::from_utf8_lossy(&out[..out.len().min(12)])
            ))
        }
    })()
    .err();
    Probe {
        took: t0.elapsed(),
        connect,
        write_gap,
        failure,
    }
}

/// One runtime's probe lag histogram, as gathered.
#[derive(Clone, Default)]
struct LagHistogram {
    count: u64,
    sum: f64,
    /// (upper bound in s, cumulative count)
    buckets: Vec<(f64, u64)>,
}

/// The series of metric family `family` in the watchdog's registry, each
/// with the value of its label `label`.
fn series_of(
    wd: &loopwatch::Watchdog,
    family: &str,
    label: &str,
) -> Vec<(String, prometheus::proto::Metric)> {
    wd.registry()
        .gather()
        .iter()
        .filter(|f| f.name() == family)
        .flat_map(|f| f.get_metric().to_vec())
        .map(|m| {
            let value = m
                .get_label()
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            (value, m)
        })
        .collect()
}

fn lag_histograms(wd: &loopwatch::Watchdog) -> Vec<(String, LagHistogram)> {
    series_of(wd, "loopwatch_probe_lag_seconds", "runtime")
        .into_iter()
        .map(|(rt, m)| {
            let h = m.get_histogram();
            let lag = LagHistogram {
                count: h.get_sample_count(),
                sum: h.get_sample_sum(),
                buckets: h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect(),
            };
            (rt, lag)
        })
        .collect()
}

/// Lag over a window: probes, mean (µs), share above 1 ms, and the bucket
/// bound under which 99 % of probes fell (ms).
struct LagWindow {
    probes: u64,
    mean_us: f64,
    over_1ms: f64,
    p99_bound_ms: f64,
}

fn lag_window(before: &LagHistogram, after: &LagHistogram) -> LagWindow {
    let probes = after.count - before.count;
    let n = probes.max(1) as f64;
    let delta: Vec<(f64, u64)> = after
        .buckets
        .iter()
        .zip(&before.buckets)
        .map(|(a, b)| (a.0, a.1 - b.1))
        .collect();
    let under_1ms = delta
        .iter()
        .find(|(le, _)| (*le - 0.001).abs() < 1e-9)
        .map_or(0, |d| d.1);
    let p99_bound = delta
        .iter()
        .find(|(_, c)| *c as f64 >= 0.99 * n)
        .map_or(f64::INFINITY, |d| d.0);
    LagWindow {
        probes,
        mean_us: (after.sum - before.sum) / n * 1e6,
        over_1ms: (probes - under_1ms) as f64 / n,
        p99_bound_ms: p99_bound * 1e3,
    }
}

/// Lag of every watched runtime over `window`, while `during` runs.
fn measure_lag(
    wd: &loopwatch::Watchdog,
    window: Duration,
    during: impl FnOnce(),
) -> Vec<(String, LagWindow)> {
    let before = lag_histograms(wd);
    let t0 = Instant::now();
    during();
    if let Some(rest) = window.checked_sub(t0.elapsed()) {
        std::thread::sleep(rest);
    }
    let after = lag_histograms(wd);
    before
        .iter()
        .filter_map(|(rt, b)| {
            let a = &after.iter().find(|(r, _)| r == rt)?.1;
            Some((rt.clone(), lag_window(b, a)))
        })
        .collect()
}

/// One window of the hostile-clients group: fresh probes and lag.
struct Phase {
    name: &'static str,
    probes: Vec<Probe>,
    lag: Vec<(String, LagWindow)>,
    /// Exporter thread CPU, share of one core.
    exporter_cpu: f64,
    /// What the attacker saw, if it ran.
    attack: Vec<String>,
}

/// `loopwatch_exporter_connections_total` by result, from the watchdog's
/// registry.
fn connection_counts(wd: &loopwatch::Watchdog) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> =
        series_of(wd, "loopwatch_exporter_connections_total", "result")
            .into_iter()
            .map(|(result, m)| (result, m.get_counter().get_value() as u64))
            .collect();
    counts.sort();
    counts
}

/// What the hostile-clients group measured.
struct Hostile {
    phases: Vec<Phase>,
}

/// Period of the paced probes: a probe every 10 ms (a kubelet probes every
/// few seconds; this is many times that, yet leaves the CPU to the loops).
const PACED_EVERY: Duration = Duration::from_millis(10);

fn hostile_clients(c: &mut Criterion, wd: &loopwatch::Watchdog, addr: SocketAddr) -> Hostile {
    let mut phases = vec![
        phase(c, wd, addr, "quiet, back-to-back", None, false),
        phase(c, wd, addr, "quiet, every 10 ms", None, true),
    ];
    let attack = Attack::start(addr);
    // Let the attacker fill the exporter and its accept queue.
    std::thread::sleep(Duration::from_millis(1500));
    phases.push(phase(
        c,
        wd,
        addr,
        "attack, every 10 ms",
        Some(&attack),
        true,
    ));
    phases.push(phase(
        c,
        wd,
        addr,
        "attack, back-to-back",
        Some(&attack),
        false,
    ));
    drop(attack);
    Hostile { phases }
}

/// Fresh `/healthz` probes, back to back under criterion or one every
/// [`PACED_EVERY`], with the watched loops' lag over the same time.
fn phase(
    c: &mut Criterion,
    wd: &loopwatch::Watchdog,
    addr: SocketAddr,
    name: &'static str,
    attack: Option<&Attack>,
    paced: bool,
) -> Phase {
    let closed0 = attack.map_or(0, |a| a.counts.closed_by_server.load(Ordering::Relaxed));
    let conn0 = connection_counts(wd);
    let cpu0 = threads_cpu_ns("loopwatch-expo");
    let wall0 = Instant::now();
    let mut probes = Vec::new();
    let mut held = Vec::new();
    let mut one = |probes: &mut Vec<Probe>| {
        probes.push(probe_healthz(addr));
        if let Some(a) = attack {
            held.push(a.counts.held.load(Ordering::Relaxed));
        }
    };
    let lag = measure_lag(wd, Duration::ZERO, || {
        if paced {
            let window = Duration::from_millis(pick(8000, 1000));
            let mut next = Instant::now();
            while wall0.elapsed() < window {
                one(&mut probes);
                next += PACED_EVERY;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            return;
        }
        let mut g = c.benchmark_group("exporter under hostile clients");
        g.sample_size(pick(20, 10))
            .warm_up_time(Duration::from_millis(pick(300, 20)))
            .measurement_time(Duration::from_millis(pick(6000, 300)));
        let bench_name = if attack.is_some() {
            "GET /healthz, new connection, 500 idle + 64 trickling sockets held"
        } else {
            "GET /healthz, new connection, no attack"
        };
        g.bench_function(bench_name, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for _ in 0..iters {
                    one(&mut probes);
                }
                t0.elapsed()
            })
        });
        g.finish();
    });
    let wall = wall0.elapsed();
    let exporter_cpu = (threads_cpu_ns("loopwatch-expo") - cpu0) as f64 / wall.as_nanos() as f64;
    let mut lines = Vec::new();
    let conn1 = connection_counts(wd);
    lines.push(format!(
        "{name}: exporter connections: {}",
        conn1
            .iter()
            .zip(&conn0)
            .map(|((result, after), (_, before))| format!("{result} {}", after - before))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(a) = attack {
        let closed = a.counts.closed_by_server.load(Ordering::Relaxed) - closed0;
        held.sort_unstable();
        lines.push(format!(
            "{name}: attacker sockets connected at each probe: min {}, median {}, max {} (of {} wanted)",
            held.first().copied().unwrap_or(0),
            held.get(held.len() / 2).copied().unwrap_or(0),
            held.last().copied().unwrap_or(0),
            IDLE_SOCKETS + TRICKLERS
        ));
        lines.push(format!(
            "{name}: attacker sockets closed by the exporter and reopened: {closed} in {:.1} s ({:.0}/s); connect errors {}; head bytes trickled {}",
            wall.as_secs_f64(),
            closed as f64 / wall.as_secs_f64(),
            a.counts.connect_errors.load(Ordering::Relaxed),
            a.counts.trickled.load(Ordering::Relaxed),
        ));
    }
    Phase {
        name,
        probes,
        lag,
        exporter_cpu,
        attack: lines,
    }
}

impl Hostile {
    fn print(&self) {
        let mut t = Table::new(
            "exporter under hostile clients: fresh GET /healthz (all iterations, warm-up included)",
            &[
                "window",
                "probes",
                "200 within 1 s",
                "median ms",
                "p99 ms",
                "max ms",
                "exporter CPU",
                "target",
            ],
        );
        for p in &self.phases {
            let ms_of: Vec<f64> = p.probes.iter().map(|x| ms(x.took)).collect();
            let s = stats(&ms_of);
            let in_time = p
                .probes
                .iter()
                .filter(|x| x.failure.is_none() && x.took <= PROBE_DEADLINE)
                .count();
            let share = in_time as f64 / p.probes.len().max(1) as f64;
            t.row(vec![
                p.name.to_string(),
                p.probes.len().to_string(),
                format!("{in_time} ({:.2} %)", share * 100.0),
                f(s.median, 2),
                f(s.p99, 2),
                f(s.max, 2),
                format!("{:.1} %", p.exporter_cpu * 100.0),
                verdict(in_time == p.probes.len() && !p.probes.is_empty()),
            ]);
        }
        t.print();
        for p in &self.phases {
            for line in &p.attack {
                println!("{line}");
            }
            let gaps: Vec<f64> = p.probes.iter().map(|x| us(x.write_gap)).collect();
            let g = stats(&gaps);
            println!(
                "{}: probe connect-to-request gap median {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                p.name, g.median, g.p99, g.max
            );
            for x in p.probes.iter().filter(|x| x.failure.is_some()).take(20) {
                println!(
                    "{}: failed probe after {:.2} ms (connect {:.2} ms, then request written in {:.2} ms): {}",
                    p.name,
                    ms(x.took),
                    ms(x.connect),
                    ms(x.write_gap),
                    x.failure.as_deref().unwrap_or("")
                );
            }
        }
        let mut t = Table::new(
            "watched loops' probe lag while probing, without and with the attack",
            &[
                "runtime",
                "window",
                "probes",
                "mean µs",
                "> 1 ms",
                "p99 ≤ (bucket) ms",
            ],
        );
        for p in &self.phases {
            for (rt, w) in &p.lag {
                t.row(vec![
                    rt.clone(),
                    p.name.to_string(),
                    w.probes.to_string(),
                    f(w.mean_us, 1),
                    format!("{:.1} %", w.over_1ms * 100.0),
                    f(w.p99_bound_ms, 2),
                ]);
            }
        }
        t.print();
    }
}
