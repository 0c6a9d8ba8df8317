//! Stall diagnostics end to end: the demo's stall kinds give the right
//! verdict and culprit, reports are atomic, private and bounded, failures
//! fall back to stderr, and a paused process is not blamed on the code.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    block_for, block_until, demo_bin, has_two_captures, newest_report, text_report, wait_for,
    DemoStall, KillOnDrop, SmallTmpfs,
};
use loopwatch::Watchdog;
use serde_json::Value;

/// Runs the demo with a stall of `kind` and returns its first report whose
/// second capture has been taken (or that is final).
fn demo_report(kind: &str, stall_for: &str) -> Value {
    let demo = DemoStall::start(kind, stall_for);
    // Without systemd the second capture comes one second after detection.
    // Its report is written once with symbol-table names (in case the
    // process dies meanwhile) and again after its DWARF pass: wait for the
    // latter, whose culprit has a source file.
    let named = |r: &Value| has_two_captures(r) && r["culprit"]["file"].is_string();
    let r = demo
        .report_when(Duration::from_secs(20), named)
        .unwrap_or_else(|| {
            panic!(
                "no report with two captures and a culprit with a file for --stall-kind {kind} \
                 in 20 s; newest: {:?}",
                demo.newest_report()
            )
        });
    // The thread groups show the same names as the culprit: files and
    // lines too, whichever capture's DWARF pass found them.
    let culprit = &r["culprit"]["function"];
    let frame = r["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["loop_thread"] == true)
        .flat_map(|g| g["frames"].as_array().into_iter().flatten())
        .find(|f| &f["function"] == culprit);
    assert!(
        frame.is_some_and(|f| f["file"].is_string()),
        "the loop thread's frame of culprit {culprit} has no file: {frame:?}"
    );
    r
}

fn assert_verdict(r: &Value, kind: &str, culprit: &str) {
    let text = serde_json::to_string_pretty(r).unwrap();
    assert_eq!(r["verdict"]["kind"], kind, "wrong verdict:\n{text}");
    let f = r["culprit"]["function"]
        .as_str()
        .unwrap_or_else(|| panic!("no culprit:\n{text}"));
    assert!(
        f.ends_with(culprit),
        "culprit {f:?} is not the demo's {culprit}:\n{}",
        r["verdict"]
    );
    assert!(
        r["culprit"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("demo.rs")),
        "culprit has no source file:\n{}",
        r["culprit"]
    );
    // The stuck thread's frames did not move between the two captures.
    let loop_group = r["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["loop_thread"] == true)
        .expect("a loop thread group");
    assert!(
        loop_group["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["stuck"] == true
                && f["function"].as_str().is_some_and(|n| n.ends_with(culprit))),
        "the culprit's frame is not marked stuck:\n{loop_group}"
    );
}

#[test]
fn sleep_is_a_blocked_syscall_in_stall_sleep() {
    let r = demo_report("sleep", "forever");
    assert_verdict(&r, "blocked-syscall", "demo::stall_sleep");
}

#[test]
fn spin_is_cpu_bound_in_stall_spin() {
    let r = demo_report("spin", "forever");
    assert_verdict(&r, "cpu-bound", "demo::stall_spin");
}

#[test]
fn a_held_mutex_is_a_lock_wait_in_stall_mutex() {
    let r = demo_report("mutex", "forever");
    assert_verdict(&r, "lock-wait", "demo::stall_mutex");
}

#[test]
fn a_std_deadlock_is_a_lock_wait_in_stall_deadlock() {
    let r = demo_report("deadlock", "forever");
    assert_verdict(&r, "lock-wait", "demo::stall_deadlock");
    let evidence = r["verdict"]["evidence"].to_string();
    assert!(
        evidence.contains("demo-worker"),
        "the other thread of the cycle is named in the evidence: {evidence}"
    );
}

#[cfg(feature = "deadlock-detection")]
#[test]
fn a_parking_lot_deadlock_is_named_by_the_checker() {
    let r = demo_report("parking-lot-deadlock", "forever");
    assert_verdict(&r, "lock-wait", "demo::stall_parking_lot_deadlock");
    let evidence = r["verdict"]["evidence"].to_string();
    assert!(
        evidence.contains("parking_lot deadlock checker"),
        "parking_lot's checker names the cycle: {evidence}"
    );
}

/// Runs the demo to its exit after `exit_after` seconds, with one stall of
/// `stall_for` seconds 0.3 s in (200 ms threshold, reports in `dir`), and
/// checks it exited cleanly.
fn demo_stalling_once(stall_for: &str, exit_after: &str, dir: &Path) -> Output {
    let out = Command::new(demo_bin())
        .args([
            "--stall-after",
            "0.3",
            "--stall-for",
            stall_for,
            "--threshold-ms",
            "200",
            "--exit-after",
            exit_after,
            "--report-dir",
        ])
        .arg(dir)
        .output()
        .expect("run demo");
    assert!(out.status.success(), "demo failed: {out:?}");
    out
}

#[test]
fn a_recovered_stall_leaves_a_report_with_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let out = demo_stalling_once("0.8", "2", dir.path());
    let r = newest_report(dir.path()).expect("a report");
    assert_eq!(r["recovered"], true, "{r}");
    let d = r["duration_seconds"].as_f64().unwrap();
    assert!((0.6..=1.0).contains(&d), "0.8 s stall measured as {d} s");
    assert_eq!(r["verdict"]["kind"], "blocked-syscall");
    let txt = text_report(dir.path());
    assert!(
        txt.contains("RECOVERED") && txt.contains("demo::stall_sleep"),
        "{txt}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("STALLED") && stdout.contains("RECOVERED"),
        "{stdout}"
    );
}

/// A current_thread runtime on this thread, watched, with reports in `dir`.
fn watched(dir: &Path, keep: usize) -> (tokio::runtime::Runtime, Watchdog) {
    let rt = common::current_thread();
    let wd = Watchdog::builder()
        .stall_threshold(Duration::from_millis(80))
        .probe_interval(Duration::from_millis(10))
        .report_dir(dir)
        .keep_reports(keep)
        // Every stall gets a report of its own here: no storm coalescing.
        .storm_cool_down(Duration::ZERO)
        .watch("main", rt.handle().clone())
        .start()
        .expect("start");
    (rt, wd)
}

fn stall_once(rt: &tokio::runtime::Runtime, d: Duration) {
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        block_for(d);
        tokio::time::sleep(Duration::from_millis(60)).await;
    });
}

#[test]
fn reports_are_private_atomic_and_only_the_newest_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let (rt, wd) = watched(&dir, 2);
    for _ in 0..4 {
        stall_once(&rt, Duration::from_millis(200));
    }
    let st = wait_for(Duration::from_secs(10), || {
        let st = wd.status();
        (st.runtime("main").unwrap().stalls == 4 && st.healthy && st.reports_written >= 8)
            .then_some(st)
    })
    .unwrap_or_else(|| wd.status());
    wd.shutdown();
    assert_eq!(st.runtime("main").unwrap().stalls, 4);
    assert!(st.reports_written >= 4, "{st:?}");
    assert_eq!(st.reports_failed, 0);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "report directory mode");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "two reports, json and txt each: {names:?}");
    for n in &names {
        assert!(n.starts_with("stall-") && !n.ends_with(".tmp"), "{n}");
        let mode = std::fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{n}");
    }
    let r = newest_report(&dir).unwrap();
    assert_eq!(r["recovered"], true);
    assert!(r["id"].as_str().unwrap().ends_with("0004"), "{}", r["id"]);
}

#[test]
fn an_unwritable_directory_falls_back_to_stderr_and_counts() {
    if common::role().as_deref() == Some("unwritable") {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        // A directory under a regular file cannot exist, even for root.
        let (rt, wd) = watched(&file.join("reports"), 5);
        stall_once(&rt, Duration::from_millis(200));
        // The first capture may still be symbolizing: wait for the monitor.
        let st = wait_for(Duration::from_secs(10), || {
            let st = wd.status();
            (st.reports_failed >= 1).then_some(st)
        })
        .unwrap_or_else(|| wd.status());
        wd.shutdown();
        assert_eq!(st.reports_written, 0, "{st:?}");
        assert!(st.reports_failed >= 1, "{st:?}");
        return;
    }
    let out = common::run_child(
        "an_unwritable_directory_falls_back_to_stderr_and_counts",
        "unwritable",
        &[],
    );
    common::assert_child_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("could not write stall report")
            && stderr.contains("loopwatch stall report"),
        "the compact report goes to stderr:\n{stderr}"
    );
    // The test binary has DWARF: the compact report, printed before the
    // DWARF pass, must not advise adding debug info.
    assert!(
        !stderr.contains("symbol table only"),
        "no symbol-table advice for a binary with DWARF:\n{stderr}"
    );
}

#[test]
fn a_full_disk_leaves_no_partial_file() {
    if common::role().as_deref() == Some("full") {
        let dir = std::path::PathBuf::from(std::env::var("FULL_DIR").unwrap());
        let (rt, wd) = watched(&dir, 5);
        stall_once(&rt, Duration::from_millis(200));
        let st = wait_for(Duration::from_secs(10), || {
            let st = wd.status();
            (st.reports_failed >= 1).then_some(st)
        })
        .unwrap_or_else(|| wd.status());
        wd.shutdown();
        assert!(st.reports_failed >= 1, "{st:?}");
        assert_eq!(st.reports_written, 0, "{st:?}");
        return;
    }
    let fs = SmallTmpfs::new("64k");
    let dir = fs.0.path();
    // Fill it up.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    use std::io::Write;
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    let out = common::run_child(
        "a_full_disk_leaves_no_partial_file",
        "full",
        &[("FULL_DIR", dir.display().to_string())],
    );
    common::assert_child_ok(&out);
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["filler".to_string()],
        "partial files left behind"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopwatch stall report"), "{stderr}");
}

#[test]
fn a_thread_that_blocks_the_signal_is_reported_unresponsive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let root = tempfile::tempdir().unwrap();
    let (rt, wd) = watched(root.path(), 5);
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let masked = std::thread::Builder::new()
        .name("masked-thread".into())
        .spawn(move || {
            // SAFETY: blocks every signal for this thread only; the set is
            // initialised by sigfillset before use.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut set);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            tx.send(()).unwrap();
            // Runnable, not asleep: a thread asleep in a system call is
            // read without a signal, whatever its mask.
            while !stop2.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        })
        .unwrap();
    rx.recv().unwrap();
    // The loop stays stuck until the report is on disk.
    let release = Arc::new(AtomicBool::new(false));
    let release2 = release.clone();
    let loop_thread = std::thread::spawn(move || {
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            block_until(&release2);
        })
    });
    let t0 = std::time::Instant::now();
    let r = wait_for(Duration::from_secs(20), || newest_report(root.path()));
    release.store(true, Ordering::Release);
    stop.store(true, Ordering::Release);
    loop_thread.join().unwrap();
    masked.join().unwrap();
    wd.shutdown();
    let r = r.expect("a report while the loop is stuck");
    assert!(t0.elapsed() < Duration::from_secs(20));
    let groups = r["threads"].as_array().unwrap();
    let g = groups
        .iter()
        .find(|g| g["names"].to_string().contains("masked-thread"))
        .unwrap_or_else(|| panic!("masked thread missing: {r}"));
    assert_eq!(g["outcome"], "unresponsive", "{g}");
    assert!(
        g["state"].as_str().is_some(),
        "its /proc state is shown: {g}"
    );
    // The rest of the report is complete.
    assert_eq!(r["verdict"]["kind"], "blocked-syscall", "{}", r["verdict"]);
    assert!(
        r["culprit"]["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("block_until")),
        "{}",
        r["culprit"]
    );
}

#[test]
fn sigstop_of_the_whole_process_is_process_paused() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(demo_bin())
        .args(["--threshold-ms", "300", "--report-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child);
    // Stop it only once loopwatch watches (the demo says "ready").
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.starts_with("demo: ready"))),
            "the demo never became ready"
        );
        std::thread::spawn(move || lines.for_each(drop));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) of our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let r = wait_for(Duration::from_secs(10), || newest_report(dir.path()))
        .expect("a report after SIGSTOP/SIGCONT");
    assert_eq!(r["verdict"]["kind"], "process-paused", "{}", r["verdict"]);
    assert!(
        r["culprit"].is_null(),
        "never blamed on application code: {}",
        r["culprit"]
    );
}

#[test]
fn a_report_reads_back_into_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    demo_stalling_once("0.5", "1.5", dir.path());
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let text = std::fs::read_to_string(json.with_extension("txt")).unwrap();
    let report: loopwatch::StallReport =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap())
            .expect("the JSON reads back as a StallReport");
    assert_eq!(report.format_version, loopwatch::REPORT_FORMAT_VERSION);
    assert_eq!(
        report.to_text(),
        text,
        "the text rendered from the JSON is the text file"
    );
}
