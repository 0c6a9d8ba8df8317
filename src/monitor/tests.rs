//! The monitor under a long soak: a million probe cycles.

use std::time::Duration;

use super::*;
use crate::builder::Builder;
use crate::diagnostics::Diagnostics;
use crate::notify::SystemdEnv;

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// A million probe cycles through the real monitor and a real runtime,
/// with the clock running as fast as the probe answers: resident memory
/// stays flat. Runs in a child process so other tests' allocations do
/// not disturb the measurement.
#[test]
fn a_million_probe_cycles_keep_memory_flat() {
    if std::env::var("LOOPWATCH_TEST_ROLE").as_deref() != Ok("soak") {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "monitor::tests::a_million_probe_cycles_keep_memory_flat",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LOOPWATCH_TEST_ROLE", "soak")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "soak child failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let b = Builder::new()
        .watch("main", rt.handle().clone())
        .stall_threshold(Duration::from_secs(5))
        .probe_interval(Duration::from_micros(1))
        .no_stack_capture()
        .no_report_files();
    let settings = b.resolve(SystemdEnv::default()).unwrap();
    let diag = Diagnostics::new(settings.clone(), settings.diagnostics.clone(), 1).unwrap();
    let names = vec!["main".to_string()];
    let shared = Arc::new(Shared {
        status: Mutex::new(initial_status(&settings, &names, false)),
        stop: AtomicBool::new(false),
        notifier: None,
        stale_after: Duration::from_secs(3),
        settings,
    });
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Metrics::new(&registry, &b.runtimes, Duration::from_secs(5)).unwrap());
    let log = Arc::new(Mutex::new(HiccupLog::new(64, 1)));
    let mut m = Monitor::new(shared, b.runtimes, b.hooks, None, diag, metrics, log);
    let cycles = |m: &Monitor| m.loops[0].probe.wakes();
    let t0 = std::time::Instant::now();
    while cycles(&m) < 100_000 {
        m.tick(clock::now_us());
    }
    let warm = rss_kib();
    while cycles(&m) < 1_000_000 {
        m.tick(clock::now_us());
        assert!(t0.elapsed() < Duration::from_secs(240), "soak too slow");
    }
    let end = rss_kib();
    println!(
        "soak: {} cycles in {:?}, RSS {warm} KiB -> {end} KiB",
        cycles(&m),
        t0.elapsed()
    );
    assert!(
        end <= warm + 1024,
        "resident memory grew from {warm} KiB to {end} KiB over 900k probe cycles"
    );
    assert_eq!(m.loops[0].tracker.stalls, 0);
}
