//! End to end under a real systemd user manager (issue 5).
//!
//! Every test starts its own `systemd --user` (see `support/systemd.rs`),
//! installs a `Type=notify` unit with `WatchdogSec=3` for the demo daemon
//! (`examples/demo.rs`), and asserts what systemd itself reports through
//! `systemctl --user show`. The tests need root, `unshare`/`nsenter`/
//! `setpriv` (util-linux) and systemd; without them they fail, saying what
//! is missing. They never skip.
//!
//! The demo is the example binary next to this test binary
//! (`target/<profile>/examples/demo`): plain `cargo test` builds it; with
//! `cargo test --test systemd` build it first (`cargo build --example demo`).
//! `LOOPWATCH_DEMO=/path/to/demo` overrides the location.

#[path = "support/systemd.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use harness::{secs_between, Manager, UnitState, CLD_DUMPED, CLD_EXITED, CLD_KILLED};
use serde_json::Value;

/// `WatchdogSec=` of every unit.
const W: f64 = 3.0;
/// SIGABRT, systemd's watchdog signal.
const SIGABRT: u64 = 6;

// ---------------------------------------------------------------- the demo

/// The demo binary, checked to be newer than its sources.
fn demo_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOPWATCH_DEMO") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LOOPWATCH_DEMO={} is not a file", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("path of this test binary");
    // target/<profile>/deps/systemd-<hash> -> target/<profile>/examples/demo
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let demo = profile_dir.join("examples").join("demo");
    let built = demo
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
            "the demo daemon is not built at {}: run plain `cargo test` (it builds the examples), \
             or `cargo build --example demo` with the same profile and target directory first",
            demo.display()
        )
        });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("Cargo.toml"), root.join("examples/demo.rs")];
    sources.extend(rust_files(&root.join("src")));
    for s in sources {
        if let Ok(t) = s.metadata().and_then(|m| m.modified()) {
            assert!(
                t <= built,
                "the demo at {} is older than {}: rebuild it (`cargo build --example demo`, or plain `cargo test`)",
                demo.display(),
                s.display()
            );
        }
    }
    demo
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The target that keeps `unit` loaded (see [`Service::hold`]).
fn hold_target(unit: &str) -> String {
    unit.replace(".service", "-hold.target")
}

/// One demo unit under its own manager.
struct Service {
    m: Manager,
    unit: String,
    reports: PathBuf,
}

impl Service {
    /// Installs `lw-<label>.service` running the demo with `args`
    /// (and `--report-dir`), without starting it.
    fn install(label: &str, notify_access: &str, args: &[&str]) -> Service {
        let demo = demo_binary();
        let m = Manager::start(label);
        let unit = format!("lw-{label}.service");
        let reports = m.dir().join("reports");
        fs::create_dir_all(&reports).expect("create the report directory");
        let out = m.dir().join(format!("{unit}.out"));
        let mut exec = vec![
            demo.display().to_string(),
            "--report-dir".into(),
            reports.display().to_string(),
        ];
        exec.extend(args.iter().map(|s| s.to_string()));
        let exec_start = exec
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(" ");
        let text = format!(
            "[Unit]\n\
             Description=loopwatch end-to-end test: {label}\n\
             \n\
             [Service]\n\
             Type=notify\n\
             NotifyAccess={notify_access}\n\
             WatchdogSec={W}\n\
             Restart=no\n\
             ExecStart={exec_start}\n\
             StandardOutput=append:{out}\n\
             StandardError=append:{out}\n\
             Environment=RUST_BACKTRACE=1\n\
             LimitCORE=0\n\
             TimeoutStartSec=30\n\
             TimeoutStopSec=10\n",
            out = out.display()
        );
        m.write_unit(&unit, &text);
        m.install_unit(
            &hold_target(&unit),
            &format!("[Unit]\nDescription=keeps {unit} loaded once stopped\nWants={unit}\n"),
        );
        Service { m, unit, reports }
    }

    /// Starts the unit without waiting for the start job.
    fn start_no_block(&self) {
        self.m.systemctl_ok(&["start", "--no-block", &self.unit]);
    }

    /// Starts the unit and waits until systemd calls it active.
    fn start_active(&self) -> UnitState {
        self.start_no_block();
        self.wait_for(Duration::from_secs(30), "ActiveState=active", |s| {
            s.get("ActiveState") == "active"
        })
    }

    fn show(&self) -> UnitState {
        self.m.show(&self.unit)
    }

    /// Keeps the unit loaded after it stops, so that `show` still reports
    /// how its process ended: systemd unloads ("garbage-collects") an
    /// inactive, unreferenced unit, and a reloaded one shows defaults
    /// (Result=success, ExecMainStatus=0, ExecMainPID=0). An active target
    /// that wants the (already active) unit references it.
    fn hold(&self) {
        self.m.systemctl_ok(&["start", &hold_target(&self.unit)]);
    }

    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl FnMut(&UnitState) -> bool,
    ) -> UnitState {
        self.m.wait_for(&self.unit, timeout, what, pred)
    }

    /// Fails the test with `msg` and everything known about the unit.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n{}",
            self.unit,
            self.m.diagnostics(Some(&self.unit))
        )
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// What the demo printed so far.
    fn output(&self) -> String {
        fs::read_to_string(self.m.dir().join(format!("{}.out", self.unit))).unwrap_or_default()
    }
}

// ------------------------------------------------------------- the reports
//
// Small helpers, so that the report format can change in one place.

/// The JSON reports in `dir`, newest last, with their mtimes.
fn json_reports(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let mut v: Vec<(PathBuf, SystemTime)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| Some((p.clone(), p.metadata().ok()?.modified().ok()?)))
        .collect();
    v.sort_by_key(|(_, t)| *t);
    v
}

/// The text reports in `dir`.
fn text_reports(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect()
}

/// `verdict.kind`, e.g. "blocked-syscall".
fn report_verdict(r: &Value) -> Option<&str> {
    r.pointer("/verdict/kind").and_then(Value::as_str)
}

/// The function the report blames: `culprit.function` (e.g.
/// "demo::stall_mutex"); if the report has no such field, the whole culprit
/// as JSON text.
fn report_culprit(r: &Value) -> String {
    match r.pointer("/culprit/function").and_then(Value::as_str) {
        Some(f) => f.to_string(),
        None => r.get("culprit").map(Value::to_string).unwrap_or_default(),
    }
}

fn report_recovered(r: &Value) -> Option<bool> {
    r.get("recovered").and_then(Value::as_bool)
}

fn report_duration(r: &Value) -> Option<f64> {
    r.get("duration_seconds").and_then(Value::as_f64)
}

/// The newest JSON report: path, parsed content, mtime. Fails the test if
/// there is none, if it is not complete valid JSON, or not mode 0600.
fn newest_report(svc: &Service) -> (PathBuf, Value, SystemTime) {
    let all = json_reports(&svc.reports);
    let Some((path, mtime)) = all.last().cloned() else {
        svc.fail(&format!(
            "no stall report (*.json) in {}",
            svc.reports.display()
        ));
    };
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| svc.fail(&format!("cannot read {}: {e}", path.display())));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        svc.fail(&format!(
            "{} is not complete valid JSON ({e}); {} bytes",
            path.display(),
            text.len()
        ))
    });
    let mode = path
        .metadata()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    svc.check(mode == 0o600, || {
        format!("{} has mode {mode:o}, expected 600", path.display())
    });
    svc.check(!text_reports(&svc.reports).is_empty(), || {
        format!("no text report (*.txt) next to {}", path.display())
    });
    (path, value, mtime)
}

/// Polls `cond` every 100 ms; `Err` names `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ----------------------------------------------------------- the scenarios

/// Healthy under load for 5 × WatchdogSec: still running, and the watchdog
/// timestamp systemd records keeps advancing.
#[test]
fn healthy_under_load_keeps_pinging() {
    let svc = Service::install("healthy", "main", &["--load"]);
    let first = svc.start_active();
    let pid = first.get("MainPID").to_string();
    let start = first
        .time("ExecMainStartTimestamp")
        .unwrap_or_else(|| svc.fail("no ExecMainStartTimestamp"));

    let mut pings: Vec<u64> = Vec::new();
    let mut samples = 0;
    loop {
        let s = svc.show();
        samples += 1;
        svc.check(s.state() == "active/running", || {
            format!("left active/running while healthy: {}", s.summary())
        });
        svc.check(s.get("MainPID") == pid, || {
            format!("MainPID changed from {pid}: {}", s.summary())
        });
        if let Some(t) = s.num("WatchdogTimestampMonotonic").filter(|&t| t > 0) {
            if pings.last() != Some(&t) {
                pings.push(t);
            }
        }
        if secs_between(s.at.expect("sample time"), start) > 5.0 * W {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] as f64 - w[0] as f64) / 1e6)
        .collect();
    let max_gap = gaps.iter().cloned().fold(0.0, f64::max);
    svc.check(pings.len() >= 10, || {
        format!(
            "WatchdogTimestampMonotonic advanced only {} times in {samples} samples over {} s: {pings:?}",
            pings.len(),
            5.0 * W
        )
    });
    svc.check(pings.windows(2).all(|w| w[1] > w[0]), || {
        format!("WatchdogTimestampMonotonic went backwards: {pings:?}")
    });
    svc.check(max_gap <= 0.75 * W, || {
        format!("a gap of {max_gap:.2} s between pings systemd saw (W = {W} s): {gaps:?}")
    });
    let end = svc.show();
    svc.check(
        end.state() == "active/running" && end.num("NRestarts") == Some(0),
        || format!("not healthy at the end: {}", end.summary()),
    );
    svc.check(end.get("WatchdogUSec") == "3s", || {
        format!("WatchdogUSec={} (expected 3s)", end.get("WatchdogUSec"))
    });
}

/// `--stall-after 1 --stall-for forever`: systemd's watchdog kills the unit
/// with SIGABRT, and the report was on disk, complete, before that.
fn stall_forever(kind: &str, verdict: &str, culprit: &str) {
    let svc = Service::install(
        &format!("stall-{kind}"),
        "main",
        &[
            "--stall-kind",
            kind,
            "--stall-after",
            "1",
            "--stall-for",
            "forever",
        ],
    );
    let first = svc.start_active();
    let pid = first.get("MainPID").to_string();

    // Follow the unit to its end, remembering the last ping systemd saw.
    let mut last_ping: Option<SystemTime> = None;
    let end = svc.wait_for(
        Duration::from_secs(25),
        "the watchdog to kill the unit",
        |s| {
            if s.get("ActiveState") == "active" {
                if let Some(t) = s.time("WatchdogTimestamp") {
                    last_ping = Some(last_ping.map_or(t, |p| p.max(t)));
                }
            }
            matches!(s.get("ActiveState"), "failed" | "inactive")
        },
    );

    // What systemd says.
    svc.check(end.get("Result") == "watchdog", || {
        format!("expected Result=watchdog: {}", end.summary())
    });
    let code = end.num("ExecMainCode");
    svc.check(code == Some(CLD_KILLED) || code == Some(CLD_DUMPED), || {
        format!(
            "expected the main process killed by a signal: {}",
            end.summary()
        )
    });
    svc.check(end.num("ExecMainStatus") == Some(SIGABRT), || {
        format!("expected SIGABRT (6): {}", end.summary())
    });
    svc.check(end.get("ExecMainPID") == pid, || {
        format!(
            "the killed process is not the one that started ({pid}): {}",
            end.summary()
        )
    });
    let started = end.time("ExecMainStartTimestamp");
    let exited = end.time("ExecMainExitTimestamp");
    let (Some(started), Some(exited)) = (started, exited) else {
        svc.fail(&format!("missing start/exit timestamps: {:?}", end.props))
    };
    let lifetime = secs_between(exited, started);
    svc.check(lifetime >= 1.0 + W - 0.5, || {
        format!("lived only {lifetime:.2} s; expected 1 s of health, then {W} s of silence")
    });
    let Some(last_ping) = last_ping else {
        svc.fail("systemd never recorded a watchdog ping while the unit was active")
    };
    // Killed by the watchdog timer: W after the last ping systemd saw.
    let silence = secs_between(exited, last_ping);
    svc.check((W - 0.2..W + 1.5).contains(&silence), || {
        format!("the process died {silence:.2} s after the last ping; expected about {W} s")
    });
    let deadline = last_ping + Duration::from_secs_f64(W);

    // The report (needs loopwatch's report writer).
    let (path, report, mtime) = newest_report(&svc);
    svc.check(mtime <= exited, || {
        format!(
            "{} modified {:.3} s after the process died",
            path.display(),
            secs_between(mtime, exited)
        )
    });
    svc.check(secs_between(mtime, deadline) <= 0.01, || {
        format!(
            "{} modified {:.3} s after systemd's watchdog deadline (last ping + {W} s)",
            path.display(),
            secs_between(mtime, deadline)
        )
    });
    svc.check(secs_between(mtime, started) >= 1.0, || {
        format!("{} was written before the stall began", path.display())
    });
    svc.check(report_verdict(&report) == Some(verdict), || {
        format!(
            "verdict {:?}, expected {verdict:?} in {}",
            report_verdict(&report),
            path.display()
        )
    });
    let c = report_culprit(&report);
    svc.check(c.contains(culprit), || {
        format!("culprit {c} does not name {culprit} ({})", path.display())
    });
    svc.check(report_recovered(&report) == Some(false), || {
        format!(
            "recovered = {:?} for a stall that never ended ({})",
            report_recovered(&report),
            path.display()
        )
    });
    eprintln!(
        "{}: report {} written {:.3} s before the watchdog deadline",
        svc.unit,
        path.display(),
        secs_between(deadline, mtime)
    );
}

#[test]
fn stall_forever_sleep_is_killed_after_report() {
    stall_forever("sleep", "blocked-syscall", "stall_sleep");
}

#[test]
fn stall_forever_spin_is_killed_after_report() {
    stall_forever("spin", "cpu-bound", "stall_spin");
}

#[test]
fn stall_forever_mutex_is_killed_after_report() {
    stall_forever("mutex", "lock-wait", "stall_mutex");
}

#[test]
fn stall_forever_deadlock_is_killed_after_report() {
    stall_forever("deadlock", "lock-wait", "stall_deadlock");
}

#[test]
fn stall_forever_parking_lot_deadlock_is_killed_after_report() {
    stall_forever(
        "parking-lot-deadlock",
        "lock-wait",
        "stall_parking_lot_deadlock",
    );
}

/// A 1 s stall with W = 3 s and T = 0.5 s: systemd never kills the unit,
/// pings resume, and the report says recovered after about 1 s.
#[test]
fn short_stall_recovers_without_kill() {
    let svc = Service::install(
        "recover",
        "main",
        &[
            "--stall-kind",
            "sleep",
            "--stall-after",
            "1",
            "--stall-for",
            "1",
            "--threshold-ms",
            "500",
        ],
    );
    let first = svc.start_active();
    let pid = first.get("MainPID").to_string();
    let start = first
        .time("ExecMainStartTimestamp")
        .unwrap_or_else(|| svc.fail("no ExecMainStartTimestamp"));
    let mut last = first;
    while secs_between(last.at.expect("sample time"), start) < 1.0 + 1.0 + 5.0 {
        std::thread::sleep(Duration::from_millis(250));
        last = svc.show();
        svc.check(last.state() == "active/running", || {
            format!("left active/running around a 1 s stall: {}", last.summary())
        });
        svc.check(last.get("MainPID") == pid, || {
            format!("MainPID changed from {pid}: {}", last.summary())
        });
    }
    // Pings resumed after the stall: the last one is recent.
    let ping_age = last
        .time("WatchdogTimestamp")
        .map(|t| secs_between(last.at.expect("sample time"), t));
    svc.check(ping_age.is_some_and(|a| a < 0.75 * W), || {
        format!(
            "no recent ping after the stall (age {ping_age:?} s): {}",
            last.summary()
        )
    });
    svc.check(svc.output().contains("stall over"), || {
        "the demo never said its stall was over".to_string()
    });

    let (path, report, _) = newest_report(&svc);
    svc.check(report_recovered(&report) == Some(true), || {
        format!(
            "recovered = {:?} in {}",
            report_recovered(&report),
            path.display()
        )
    });
    let d = report_duration(&report);
    svc.check(d.is_some_and(|d| (0.7..=1.8).contains(&d)), || {
        format!(
            "duration_seconds = {d:?}, expected about 1 s, in {}",
            path.display()
        )
    });
}

/// A child that inherits NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID never
/// pings: with NotifyAccess=all systemd would accept its pings, yet the unit
/// is killed when the parent stalls while the healthy child lives on, and
/// systemd's own log shows no WATCHDOG=1 from any PID but the main one.
#[test]
fn forked_child_never_pings() {
    let svc = Service::install(
        "child",
        "all",
        &[
            "--spawn-child",
            "--stall-kind",
            "sleep",
            "--stall-after",
            "1",
            "--stall-for",
            "forever",
        ],
    );
    // Notification messages are logged at debug level only, and systemd
    // 252 drops kmsg lines past 200 per 5 s: no `systemctl` polling from
    // here until the unit is dead (each call logs ~25 debug lines).
    svc.m.set_log_level("debug");
    svc.m.systemctl_ok(&["start", &svc.unit]); // returns after READY=1
    let active = svc.show();
    svc.check(active.state() == "active/running", || {
        format!("not running after start: {}", active.summary())
    });
    let main_pid: u32 = active.get("MainPID").parse().unwrap_or(0);
    let cgroup = active.get("ControlGroup").to_string();

    wait_until(
        Duration::from_secs(15),
        "the demo to inject its stall",
        || svc.output().contains("injecting a stall"),
    )
    .unwrap_or_else(|e| svc.fail(&e));
    let injected = std::time::Instant::now();
    // The unit's processes, from its cgroup, until the watchdog kills them.
    let mut procs_during_stall = 0;
    wait_until(
        Duration::from_secs(25),
        "the unit's cgroup to empty",
        || {
            let n = svc.m.cgroup_process_count(&cgroup).unwrap_or(0);
            if injected.elapsed() > Duration::from_secs(1) {
                procs_during_stall = procs_during_stall.max(n);
            }
            n == 0
        },
    )
    .unwrap_or_else(|e| svc.fail(&e));
    let end = svc.wait_for(Duration::from_secs(10), "the unit to fail", |s| {
        matches!(s.get("ActiveState"), "failed" | "inactive")
    });

    svc.check(procs_during_stall >= 2, || {
        format!(
            "the child was not running during the parent's stall (at most {procs_during_stall} process(es) in the unit's cgroup)"
        )
    });
    svc.check(end.get("NotifyAccess") == "all", || {
        format!("NotifyAccess={}", end.get("NotifyAccess"))
    });
    svc.check(end.get("Result") == "watchdog", || {
        format!(
            "expected Result=watchdog (someone kept pinging for the stalled parent): {}",
            end.summary()
        )
    });
    svc.check(end.num("ExecMainStatus") == Some(SIGABRT), || {
        format!("expected SIGABRT (6): {}", end.summary())
    });

    // systemd's log of the datagrams it received.
    let notes = svc.m.notifications(&svc.unit);
    svc.check(
        notes
            .iter()
            .any(|(p, n)| *p == main_pid && n.contains("WATCHDOG=1")),
        || format!("systemd logged no WATCHDOG=1 from the main PID {main_pid}, so its log cannot show who pinged: {notes:?}"),
    );
    let foreign: Vec<&(u32, String)> = notes.iter().filter(|(p, _)| *p != main_pid).collect();
    svc.check(!foreign.iter().any(|(_, n)| n.contains("WATCHDOG=1")), || {
        format!("systemd received WATCHDOG=1 from a process other than the main PID {main_pid}: {foreign:?}")
    });
    if !foreign.is_empty() {
        eprintln!(
            "{}: notifications from other processes: {foreign:?}",
            svc.unit
        );
    }

    // The demo's own account: the child ran loopwatch, which knew it was
    // not the main process.
    let out = svc.output();
    let child_pid = out
        .lines()
        .find_map(|l| l.split("spawned child pid ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| svc.fail("the demo never said it spawned a child"))
        .to_string();
    let child_line = out
        .lines()
        .find(|l| l.starts_with(&format!("demo: pid {child_pid}:")))
        .unwrap_or_else(|| svc.fail(&format!("child {child_pid} never started loopwatch")));
    svc.check(!child_line.contains("pings on"), || {
        format!("the child thinks it may ping: {child_line}")
    });
}

/// `--ready-after 3`: systemd keeps the unit activating until READY=1.
#[test]
fn active_only_after_ready() {
    let svc = Service::install("ready", "main", &["--ready-after", "3"]);
    svc.start_no_block();
    let begun = svc.wait_for(Duration::from_secs(10), "the main process to start", |s| {
        s.time("ExecMainStartTimestamp").is_some()
    });
    let start = begun.time("ExecMainStartTimestamp").expect("checked above");
    let wait = 1.0 - secs_between(SystemTime::now(), start);
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    let early = svc.show();
    svc.check(early.state() == "activating/start", || {
        format!(
            "{:.2} s after start, before READY=1: {}",
            secs_between(early.at.expect("sample time"), start),
            early.summary()
        )
    });
    let active = svc.wait_for(Duration::from_secs(20), "ActiveState=active", |s| {
        s.get("ActiveState") == "active"
    });
    let (Some(t0), Some(t1)) = (
        active.num("ExecMainStartTimestampMonotonic"),
        active.num("ActiveEnterTimestampMonotonic"),
    ) else {
        svc.fail(&format!("missing timestamps: {:?}", active.props))
    };
    let delay = (t1 as f64 - t0 as f64) / 1e6;
    svc.check(delay >= 2.9, || {
        format!("active {delay:.2} s after start, before READY=1 (--ready-after 3)")
    });
}

/// The unit ended cleanly: inactive, Result=success, exit status 0 of the
/// same main PID.
fn assert_clean_exit(svc: &Service, end: &UnitState, pid: u32) {
    svc.check(end.get("ActiveState") == "inactive", || {
        format!("expected inactive: {}", end.summary())
    });
    svc.check(end.get("Result") == "success", || {
        format!("expected Result=success: {}", end.summary())
    });
    svc.check(
        end.num("ExecMainCode") == Some(CLD_EXITED) && end.num("ExecMainStatus") == Some(0),
        || format!("expected exit status 0: {}", end.summary()),
    );
    svc.check(end.get("ExecMainPID") == pid.to_string(), || {
        format!(
            "systemd no longer reports main PID {pid}'s exit: {}",
            end.summary()
        )
    });
}

/// Asserts the manager saw STOPPING=1 from the main process.
fn assert_stopping_sent(svc: &Service, pid: u32) {
    let notes = svc.m.notifications(&svc.unit);
    svc.check(
        notes
            .iter()
            .any(|(p, payload)| *p == pid && payload.contains("STOPPING=1")),
        || {
            format!(
                "systemd logged no STOPPING=1 from PID {pid}; notifications it logged: {notes:?}"
            )
        },
    );
    eprintln!(
        "{}: systemd logged from the main PID {pid}: {:?}",
        svc.unit,
        notes
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, n)| n)
            .collect::<Vec<_>>()
    );
}

/// `systemctl stop` (SIGTERM): STOPPING=1, exit 0, Result=success.
#[test]
fn stop_is_clean() {
    let svc = Service::install("stop", "main", &[]);
    let active = svc.start_active();
    svc.hold();
    let pid: u32 = active.get("MainPID").parse().unwrap_or(0);
    svc.check(pid != 0, || {
        format!("no main PID while active: {}", active.summary())
    });
    std::thread::sleep(Duration::from_secs(1));
    // Notification messages are logged at debug level only.
    svc.m.set_log_level("debug");
    svc.m.systemctl_ok(&["stop", &svc.unit]);
    let end = svc.show();
    assert_clean_exit(&svc, &end, pid);
    assert_stopping_sent(&svc, pid);
}

/// `--exit-after 3` with Restart=no: STOPPING=1, exit 0, inactive, success.
#[test]
fn exit_after_is_clean() {
    let svc = Service::install("exit", "main", &["--exit-after", "3"]);
    svc.m.set_log_level("debug");
    // Block until active without polling: polls add debug lines, and
    // systemd 252 drops kmsg lines past 200 per 5 s.
    svc.m.systemctl_ok(&["start", &svc.unit]);
    svc.hold();
    let active = svc.show();
    let pid: u32 = active.get("MainPID").parse().unwrap_or(0);
    svc.check(pid != 0, || {
        format!("no main PID while active: {}", active.summary())
    });
    svc.check(active.get("ActiveState") == "active", || {
        format!("not active after start: {}", active.summary())
    });
    std::thread::sleep(Duration::from_secs(4));
    let end = svc.wait_for(Duration::from_secs(10), "the unit to stop", |s| {
        matches!(s.get("ActiveState"), "inactive" | "failed")
    });
    assert_clean_exit(&svc, &end, pid);
    let lifetime = match (
        end.time("ExecMainStartTimestamp"),
        end.time("ExecMainExitTimestamp"),
    ) {
        (Some(a), Some(b)) => secs_between(b, a),
        _ => f64::NAN,
    };
    svc.check((2.9..15.0).contains(&lifetime), || {
        format!("ran {lifetime:.2} s; expected about 3 s (--exit-after 3)")
    });
    assert_stopping_sent(&svc, pid);
}
