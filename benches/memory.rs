//! Target 7 and issue 12: resident memory of the monitor watching 2
//! runtimes, and of stack capture while idle, during a report and after.
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
//!   signal handler and nothing else while idle (target: ≤ 2 MiB over
//!   `monitor`); then one real stall (captures, the DWARF pass, a report
//!   to stderr): its peak (`VmHWM`, reset through `/proc/self/clear_refs`
//!   just before) and what stays a second after it ended (the module list
//!   and unwinder, the bounded DWARF answers, the allocator's leftovers);
//! * `exporter`: `monitor` plus the `/metrics` exporter thread and one scrape;
//! * `backtrace`: no loopwatch at all, only `backtrace::resolve` of the
//!   calling thread's stack, for scale: the part of the symbolizer cache
//!   that is backtrace's own (its gimli/addr2line caches);
//! * `seed`: the seed's heartbeat task in the current_thread runtime.
//!
//! A second table runs the demo as a user would ship it, as a separate
//! process sampled from outside: the release build of this repository
//! (`debug = "line-tables-only"`) and the same demo built with Cargo's
//! default release profile (no debug info, symbol table kept), each with a
//! 2 s blocking stall: idle RSS, the peak during the report above idle
//! (target ≤ 20 MiB for the demo), and RSS a second after the report
//! (target: within 2 MiB of idle). The default-profile build is made once
//! with `cargo build --release --example demo --config profile.release.debug=0`
//! into `$CARGO_TARGET_DIR/default-profile` (or taken from
//! `LOOPWATCH_BENCH_DEFAULT_DEMO`). Whether Debian's `libc6-dbg` is
//! installed is printed: run the bench with and without it.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    if let Ok(filter) = std::env::var("LOOPWATCH_BENCH_TRACE") {
        // What loopwatch logs, to stderr (e.g. LOOPWATCH_BENCH_TRACE=loopwatch=debug).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
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
    let mut peak = 0;
    if mode == "capture" {
        let _quiet = QuietStderr::to(&scratch_dir().join("memory-stderr.log"));
        reset_peak("self");
        let times = spawn_block(&ct.handle, Duration::from_millis(1500), BlockKind::Sleep);
        times.wait_ended();
        std::thread::sleep(Duration::from_secs(1));
        after_stall = rss_split_kib();
        peak = status_kib("self", "VmHWM:").unwrap_or(0);
    }
    println!(
        "RSS {before} {started} {settled} {settled2} {} {before_file} {settled2_file} {} {peak}",
        after_stall.0, after_stall.1
    );
    if let Some(w) = wd {
        w.shutdown();
    }
    if let Some(s) = seed {
        s.abort();
    }
}

/// A field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resets the peak RSS (`VmHWM`) of a process (Linux ≥ 4.0).
fn reset_peak(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The target directory this bench runs from (target/release/deps/<bench>).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// Builds the demo with `cargo build --release --example demo` and extra
/// arguments into `target`; returns its path.
fn build_demo(target: &Path, extra: &[&str]) -> Option<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--example", "demo", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .args(extra)
        .env("CARGO_TARGET_DIR", target)
        .stdout(Stdio::null())
        .status()
        .ok()?;
    let demo = target.join("release/examples/demo");
    (status.success() && demo.is_file()).then_some(demo)
}

/// (idle, peak, one second after the report) RSS in KiB of the demo at
/// `bin` with a 2 s blocking stall.
fn demo_run(bin: &Path) -> Option<(u64, u64, u64)> {
    let dir = tempfile::tempdir().ok()?;
    let mut child = Command::new(bin)
        .args([
            "--stall-after",
            "3",
            "--stall-kind",
            "sleep",
            "--stall-for",
            "2",
            "--threshold-ms",
            "300",
            "--exit-after",
            "8",
            "--report-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id().to_string();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let idle = status_kib(&pid, "VmRSS:")?;
    reset_peak(&pid);
    // Stall at 3 s, 2 s long: over at ~5 s; the report's last write follows.
    while t0.elapsed() < Duration::from_millis(6000) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = status_kib(&pid, "VmRSS:")?;
    let peak = status_kib(&pid, "VmHWM:")?;
    let _ = child.wait();
    let reports = std::fs::read_dir(dir.path()).ok()?.count();
    (reports >= 2).then_some((idle, peak, after))
}

fn demo_table(runs: usize) {
    let target = target_dir();
    let mut binaries: Vec<(String, Option<PathBuf>)> = Vec::new();
    binaries.push((
        "demo, release profile of this repo (line tables)".into(),
        build_demo(&target, &[]),
    ));
    let default_demo = std::env::var_os("LOOPWATCH_BENCH_DEFAULT_DEMO")
        .map(PathBuf::from)
        .or_else(|| {
            build_demo(
                &target.join("default-profile"),
                &["--config", "profile.release.debug=0"],
            )
        });
    binaries.push((
        "demo, Cargo's default release profile (symbol table only)".into(),
        default_demo,
    ));
    let mut t = Table::new(
        &format!(
            "the demo as shipped, sampled from outside (KiB, median of {runs} runs); libc6-dbg              installed: {}; targets: peak <= idle + 20 MiB, after <= idle + 2 MiB",
            if libc_debug_installed() { "yes" } else { "no" }
        ),
        &[
            "binary",
            "size (MiB)",
            "runs",
            "idle RSS",
            "peak during the report",
            "peak - idle",
            "1 s after the report",
            "after - idle",
            "target",
        ],
    );
    for (name, bin) in binaries {
        let Some(bin) = bin else {
            eprintln!("{name}: could not build it; row skipped");
            continue;
        };
        let v: Vec<(u64, u64, u64)> = (0..runs).filter_map(|_| demo_run(&bin)).collect();
        if v.is_empty() {
            eprintln!("{name}: no run produced a report");
            continue;
        }
        let col =
            |f: &dyn Fn(&(u64, u64, u64)) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let idle = col(&|r| r.0 as f64);
        let peak = col(&|r| r.1 as f64);
        let after = col(&|r| r.2 as f64);
        let up = col(&|r| r.1 as f64 - r.0 as f64);
        let left = col(&|r| r.2 as f64 - r.0 as f64);
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
        t.row(vec![
            name,
            f(size, 1),
            v.len().to_string(),
            f(idle, 0),
            f(peak, 0),
            f(up, 0),
            f(after, 0),
            f(left, 0),
            verdict(up <= 20.0 * 1024.0 && left <= 2048.0),
        ]);
    }
    t.print();
}

fn main() {
    if let Ok(mode) = std::env::var("LOOPWATCH_BENCH_CHILD") {
        child(&mode);
        return;
    }
    heading("resident memory (target 7, issue 12)");
    let exe = std::env::current_exe().unwrap();
    let runs = pick(3, 1);
    let mut t = Table::new(
        "RSS growth (KiB) over a process with 2 runtimes; median of fresh child processes; \
         targets: monitor <= 2048 KiB; capture <= 2048 KiB while idle, <= 2048 KiB over that 1 s \
         after a stall",
        &[
            "mode",
            "runs",
            "baseline RSS",
            "+ at start",
            "+ after 3 s",
            "+ after 6 s",
            "peak during the stall's report (above baseline)",
            "+ 1 s after a stall",
            "of which file-backed (after 6 s / after stall)",
            "target",
        ],
    );
    for mode in ["monitor", "capture", "backtrace", "exporter", "seed"] {
        let mut v: Vec<Vec<f64>> = Vec::new();
        for _ in 0..runs {
            v.extend(child_numbers(&exe, mode, "RSS "));
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
                f(col(8), 0)
            } else {
                "-".into()
            },
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
            match mode {
                "monitor" => verdict(growth <= 2048.0),
                "capture" => verdict(growth <= 2048.0 && col(4) - col(3) <= 2048.0),
                _ => "(reported)".into(),
            },
        ]);
    }
    t.print();
    if full_run() {
        demo_table(3);
    }
}
