//! Target 7: resident memory of the monitor watching 2 runtimes.
//!
//! Each measurement runs in a fresh child process (this binary re-run with
//! `LOOPWATCH_BENCH_CHILD=<mode>`), so that nothing else the bench did is
//! resident. The child builds two runtimes (a 2-worker multi_thread one and
//! a current_thread one driven by its own thread), runs some work on both,
//! then reads its RSS (`/proc/self/statm`) before and after starting the
//! watched thing, and again after it has run for a few seconds:
//!
//! * `monitor`: a Watchdog watching both runtimes, stack capture off, no
//!   report files: the monitor thread, the probes, the state and metrics;
//! * `capture`: the same with stack capture on (the default): adds the
//!   signal handler, the module list, the stack arena and the symbolizer
//!   warmed at start (debug info loaded, first capture cached), then one
//!   real stall (a capture, a report to stderr): the symbolizer cache;
//! * `exporter`: `monitor` plus the `/metrics` exporter thread and one scrape;
//! * `backtrace`: no loopwatch at all, only `backtrace::resolve` of the
//!   calling thread's stack, for scale: the part of the symbolizer cache
//!   that is backtrace's own (its gimli/addr2line caches);
//! * `seed`: the seed's heartbeat task in the current_thread runtime.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

const SETTLE: Duration = Duration::from_secs(3);

fn warm_runtime(handle: &tokio::runtime::Handle) {
    let (tx, rx) = std::sync::mpsc::channel();
    handle.spawn(async move {
        let mut hs = Vec::new();
        for _ in 0..32 {
            hs.push(tokio::spawn(async {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
        }
        for h in hs {
            let _ = h.await;
        }
        let _ = tx.send(());
    });
    rx.recv().unwrap();
}

fn scrape(addr: std::net::SocketAddr) -> usize {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    body.len()
}

fn child(mode: &str) {
    let mt = multi_thread(2);
    let ct = DrivenRuntime::current_thread("bench-ct");
    warm_runtime(mt.handle());
    warm_runtime(&ct.handle);
    std::thread::sleep(Duration::from_millis(300));
    let (before, before_file) = rss_split_kib();
    let builder = || {
        loopwatch::Watchdog::builder()
            .stall_threshold(Duration::from_millis(200))
            .probe_interval(Duration::from_millis(50))
            .watch("mt", mt.handle().clone())
            .watch("ct", ct.handle.clone())
            .no_report_files()
    };
    let mut wd = None;
    let mut seed = None;
    let sink_dir = tempfile::tempdir().unwrap();
    let _sink;
    match mode {
        "monitor" => wd = Some(builder().no_stack_capture().start().unwrap()),
        "capture" => wd = Some(builder().start().unwrap()),
        "exporter" => {
            wd = Some(
                builder()
                    .no_stack_capture()
                    .serve_metrics("127.0.0.1:0")
                    .start()
                    .unwrap(),
            )
        }
        "backtrace" => {
            // For scale: what backtrace's own symbolizer keeps after
            // resolving this thread's stack (what the warm-up does first).
            backtrace::trace(|frame| {
                backtrace::resolve_frame(frame, |sym| {
                    std::hint::black_box(sym.name());
                });
                true
            });
        }
        "seed" => {
            let path = sink_dir.path().join("seed.sock");
            _sink = NotifySink::bind(&path);
            seed = Some(spawn_seed_pinger(
                &ct.handle,
                path,
                Duration::from_millis(250),
            ));
        }
        _ => panic!("unknown mode {mode}"),
    }
    let started = rss_kib();
    if let Some(addr) = wd.as_ref().and_then(|w| w.metrics_addr()) {
        scrape(addr);
    }
    std::thread::sleep(SETTLE);
    let settled = rss_kib();
    std::thread::sleep(SETTLE);
    let (settled2, settled2_file) = rss_split_kib();
    let mut after_stall = (settled2, settled2_file);
    if mode == "capture" {
        let _quiet = QuietStderr::to(&scratch_dir().join("memory-stderr.log"));
        let times = spawn_block(&ct.handle, Duration::from_millis(600), BlockKind::Sleep);
        times.wait_ended();
        std::thread::sleep(Duration::from_millis(500));
        after_stall = rss_split_kib();
    }
    println!(
        "RSS {before} {started} {settled} {settled2} {} {before_file} {settled2_file} {}",
        after_stall.0, after_stall.1
    );
    if let Some(w) = wd {
        w.shutdown();
    }
    if let Some(s) = seed {
        s.abort();
    }
}

fn main() {
    if let Ok(mode) = std::env::var("LOOPWATCH_BENCH_CHILD") {
        child(&mode);
        return;
    }
    heading("resident memory (target 7)");
    let exe = std::env::current_exe().unwrap();
    let runs = pick(3, 1);
    let mut t = Table::new(
        "RSS growth (KiB) over a process with 2 runtimes; median of fresh child processes; \
         target: monitor <= 2048 KiB",
        &[
            "mode",
            "runs",
            "baseline RSS",
            "+ at start",
            "+ after 3 s",
            "+ after 6 s",
            "+ after a stall",
            "of which file-backed (after 6 s / after stall)",
            "target",
        ],
    );
    for mode in ["monitor", "capture", "backtrace", "exporter", "seed"] {
        let mut v: Vec<Vec<f64>> = Vec::new();
        for _ in 0..runs {
            let out = Command::new(&exe)
                .env("LOOPWATCH_BENCH_CHILD", mode)
                .output()
                .expect("child");
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().find(|l| l.starts_with("RSS ")) {
                Some(line) => v.push(
                    line[4..]
                        .split_whitespace()
                        .map(|x| x.parse::<f64>().unwrap())
                        .collect(),
                ),
                None => eprintln!(
                    "{mode} child failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        let col = |i: usize| median(&v.iter().map(|r| r[i] - r[0]).collect::<Vec<_>>());
        let base = median(&v.iter().map(|r| r[0]).collect::<Vec<_>>());
        let growth = col(3).max(col(2));
        t.row(vec![
            mode.into(),
            v.len().to_string(),
            f(base, 0),
            f(col(1), 0),
            f(col(2), 0),
            f(col(3), 0),
            if mode == "capture" {
                f(col(4), 0)
            } else {
                "-".into()
            },
            {
                let file = |i: usize| median(&v.iter().map(|r| r[i] - r[5]).collect::<Vec<_>>());
                if mode == "capture" {
                    format!("{} / {}", f(file(6), 0), f(file(7), 0))
                } else {
                    f(file(6), 0)
                }
            },
            if mode == "monitor" {
                verdict(growth <= 2048.0)
            } else {
                "(reported)".into()
            },
        ]);
    }
    t.print();
}
