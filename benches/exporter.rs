//! Target 8: the exporter. Scrape latency (HTTP GET on loopback, from the
//! bench thread to loopwatch's exporter thread and back) and encode time
//! (`prometheus::TextEncoder` over `watchdog.registry().gather()`).
//!
//! The Watchdog watches two runtimes (a 2-worker multi_thread one and a
//! current_thread one), so the per-runtime and per-worker series exist.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    wd.shutdown();
}
