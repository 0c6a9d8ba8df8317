//! Issue 12, item 4: `backtrace` against loopwatch's own path (symbol
//! tables, then `addr2line` over the compilation units a report needs) on
//! the same stacks of the same binaries.
//!
//! Each measurement is a fresh child process (this binary re-run with
//! `LOOPWATCH_BENCH_CHILD=<symbolizer>`): it starts a 2-worker runtime and
//! a few parked threads, captures every thread once (to have the stacks'
//! addresses and the unwinder loaded) and releases, then, from that
//! baseline and with the peak RSS reset (`/proc/self/clear_refs`):
//!
//! * `backtrace`: `backtrace::resolve` of every frame of that capture
//!   (files, lines, inlined functions), then `backtrace::clear_symbol_cache()`
//!   and `malloc_trim(0)`;
//! * `loopwatch`: a new capture of every thread (its frames named from
//!   symbol tables), `StackSampler::symbolize` (the DWARF pass), then
//!   `release()` (which trims the heap too).
//!
//! It reports the wall time, the peak above the baseline and what is left
//! after the release. The binaries: this bench binary (the `bench` profile:
//! release with `debug = "line-tables-only"`) and a copy of it with
//! `strip --strip-debug` (what Cargo's default release profile gives).
//! `backtrace` also resolves the C library's frames from its separate debug
//! file when one is installed (Debian's `libc6-dbg`); loopwatch names them
//! from symbol tables only. Whether it is installed is printed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use loopwatch::bench_support::CaptureBench;

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn trim() {
    // SAFETY: malloc_trim only releases free memory; no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn child(mode: &str) {
    let rt = multi_thread(2);
    rt.block_on(async {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    });
    let mut idle = IdleThreads::new();
    idle.fill_to(8);
    std::thread::sleep(Duration::from_millis(200));
    let cb = CaptureBench::new().expect("sampler");
    let first = cb.capture_for_symbols();
    let addresses = first.addresses();
    cb.release();
    trim();
    std::thread::sleep(Duration::from_millis(100));
    let baseline = rss_kib();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t0 = Instant::now();
    let (named, with_lines) = match mode {
        "backtrace" => {
            let (mut named, mut lines) = (0, 0);
            for (ip, is_return) in &addresses {
                // backtrace::resolve looks up `addr - 1` (a return address).
                let addr = if *is_return { *ip } else { ip + 1 };
                let mut got_name = false;
                backtrace::resolve(addr as usize as *mut std::ffi::c_void, |s| {
                    got_name |= s.name().is_some();
                    // One call per function, inlined ones included.
                    lines += usize::from(s.lineno().is_some());
                });
                named += usize::from(got_name);
            }
            (named, lines)
        }
        "loopwatch" => {
            let mut again = cb.capture_for_symbols();
            let (_took, _ran_out) = cb.symbolize(&mut again, Duration::from_secs(30));
            (again.frames_named(), again.frames_with_lines())
        }
        other => panic!("unknown symbolizer {other}"),
    };
    let took = t0.elapsed();
    let peak = status_kib("VmHWM:");
    match mode {
        "backtrace" => {
            backtrace::clear_symbol_cache();
            trim();
        }
        _ => cb.release(),
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_kib();
    println!(
        "SYM {} {} {} {} {} {}",
        us(took),
        peak.saturating_sub(baseline),
        after.saturating_sub(baseline),
        addresses.len(),
        named,
        with_lines
    );
    drop(idle);
}

fn main() {
    if let Ok(mode) = std::env::var("LOOPWATCH_BENCH_CHILD") {
        child(&mode);
        return;
    }
    heading("symbolizers: backtrace against loopwatch's path (issue 12, item 4)");
    let exe = std::env::current_exe().unwrap();
    let stripped = scratch_dir().join("symbolizers-symtab-only");
    std::fs::copy(&exe, &stripped).expect("copy bench binary");
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    let runs = pick(5, 1);
    let mut t = Table::new(
        &format!(
            "same stacks, fresh process each (median of {runs}); KiB above the baseline; libc6-dbg \
             installed: {}",
            if libc_debug_installed() { "yes" } else { "no" }
        ),
        &[
            "binary",
            "size (MiB)",
            "symbolizer",
            "frames (physical)",
            "named",
            "functions with file:line (inlined ones included)",
            "time (ms)",
            "peak (KiB)",
            "after release (KiB)",
        ],
    );
    let mut binaries = vec![("bench binary, line tables", exe.clone())];
    if ok {
        binaries.push(("same, strip --strip-debug", stripped.clone()));
    } else {
        eprintln!("strip (binutils) failed: symbol-table-only row skipped");
    }
    for (name, bin) in binaries {
        for mode in ["backtrace", "loopwatch"] {
            let mut v: Vec<Vec<f64>> = Vec::new();
            for _ in 0..runs {
                v.extend(child_numbers(std::path::Path::new(&bin), mode, "SYM "));
            }
            if v.is_empty() {
                continue;
            }
            let col = |i: usize| median(&v.iter().map(|r| r[i]).collect::<Vec<_>>());
            let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
            t.row(vec![
                name.into(),
                f(size, 1),
                mode.into(),
                f(col(3), 0),
                f(col(4), 0),
                f(col(5), 0),
                f(col(0) / 1e3, 1),
                f(col(1), 0),
                f(col(2), 0),
            ]);
        }
    }
    t.print();
    let _ = std::fs::remove_file(&stripped);
}
