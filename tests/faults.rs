//! Faults and bad input outside systemd: a notify socket that is missing, a
//! regular file, abstract, or vanishes mid-run; a report directory deleted
//! while running; two monitors; shutdown during a stall. None of them may
//! lose a report, ping wrongly or take the daemon down.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{assert_child_ok, block_for, mark, newest_report, role, run_child, NotifyListener};
use loopwatch::Watchdog;

const PROBE: Duration = Duration::from_millis(20);

/// A watchdog on `rt` probing every 20 ms, with no report files.
fn quiet(rt: &tokio::runtime::Runtime) -> loopwatch::Builder {
    Watchdog::builder()
        .probe_interval(PROBE)
        .no_report_files()
        .watch("main", rt.handle().clone())
}

/// Child side: a healthy loop for `healthy`, then a 400 ms stall, then a bit
/// more; asserts the monitor lived through it and reports its counters.
fn run_loop_with_stall(healthy: Duration) -> loopwatch::Status {
    let rt = common::current_thread();
    let wd = quiet(&rt)
        .stall_threshold(Duration::from_millis(100))
        .start()
        .expect("a bad notify socket must not stop start()");
    rt.block_on(async {
        tokio::time::sleep(healthy).await;
        block_for(Duration::from_millis(400));
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let st = wd.status();
    wd.shutdown();
    assert_eq!(
        st.runtime("main").unwrap().stalls,
        1,
        "stall still detected: {st:?}"
    );
    assert!(st.healthy, "{st:?}");
    st
}

#[test]
fn a_missing_or_bogus_notify_socket_is_counted_not_fatal() {
    if role().as_deref() == Some("bad-socket") {
        let st = run_loop_with_stall(Duration::from_millis(600));
        assert_eq!(st.pings_sent, 0, "{st:?}");
        assert!(st.pings_failed >= 2, "failed pings are counted: {st:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("regular-file");
    std::fs::write(&file, b"not a socket").unwrap();
    for socket in [
        dir.path().join("missing/notify.sock").display().to_string(),
        file.display().to_string(),
        "@loopwatch-nobody-listens-here".to_string(),
    ] {
        let out = run_child(
            "a_missing_or_bogus_notify_socket_is_counted_not_fatal",
            "bad-socket",
            &[
                ("NOTIFY_SOCKET", socket.clone()),
                ("WATCHDOG_USEC", "400000".into()),
            ],
        );
        assert_child_ok(&out);
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket", "{socket}");
    }
}

#[test]
fn an_abstract_notify_socket_receives_pings() {
    if role().as_deref() == Some("abstract") {
        let st = run_loop_with_stall(Duration::from_millis(600));
        assert!(st.pings_sent >= 3, "{st:?}");
        assert_eq!(st.pings_failed, 0, "{st:?}");
        return;
    }
    use std::os::linux::net::SocketAddrExt;
    let name = format!("loopwatch-test-abstract-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let rx = UnixDatagram::bind_addr(&addr).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            run_child(
                "an_abstract_notify_socket_receives_pings",
                "abstract",
                &[
                    ("NOTIFY_SOCKET", format!("@{name}")),
                    ("WATCHDOG_USEC", "400000".into()),
                ],
            )
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !h.is_finished() {
            if let Ok(n) = rx.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        (h.join().unwrap(), got)
    });
    assert_child_ok(&out.0);
    let pings = out.1.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 3, "pings over the abstract socket: {:?}", out.1);
}

#[test]
fn pings_resume_when_the_socket_comes_back() {
    if role().as_deref() == Some("vanish") {
        let rt = common::current_thread();
        let wd = quiet(&rt).start().unwrap();
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(2500)).await });
        let st = wd.status();
        wd.shutdown();
        assert!(st.pings_failed >= 1, "{st:?}");
        assert!(st.healthy);
        return;
    }
    let l = NotifyListener::new();
    let path = l.path.clone();
    let env = [l.env(), ("WATCHDOG_USEC", "400000".to_string())];
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "pings_resume_when_the_socket_comes_back",
            "--exact",
            "--nocapture",
        ])
        .env("LOOPWATCH_TEST_ROLE", "vanish")
        .envs(env.iter().map(|(k, v)| (*k, v.clone())))
        .spawn()
        .unwrap();
    let recv_for = |sock: &UnixDatagram, d: Duration| {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let end = Instant::now() + d;
        let mut n = 0;
        let mut buf = [0u8; 1024];
        while Instant::now() < end {
            if let Ok(len) = sock.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..len]).contains("WATCHDOG=1") {
                    n += 1;
                }
            }
        }
        n
    };
    // Let it ping, then take the socket away, then bring a new one back.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let again = UnixDatagram::bind(&path).unwrap();
    let resumed = recv_for(&again, Duration::from_millis(900));
    let status = child.wait().unwrap();
    assert!(status.success(), "child failed");
    assert!(resumed >= 2, "pings resumed on the new socket: {resumed}");
    drop(l);
}

#[test]
fn a_deleted_report_directory_is_recreated() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let rt = common::current_thread();
    let wd = Watchdog::builder()
        .probe_interval(Duration::from_millis(10))
        .stall_threshold(Duration::from_millis(80))
        .report_dir(&dir)
        .watch("main", rt.handle().clone())
        .start()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        block_for(Duration::from_millis(250));
        tokio::time::sleep(Duration::from_millis(80)).await;
    });
    let st = wd.status();
    wd.shutdown();
    assert_eq!(st.reports_failed, 0, "{st:?}");
    let r = newest_report(&dir).expect("report written into the recreated directory");
    assert_eq!(r["recovered"], true);
}

#[test]
fn two_monitors_only_one_talks_to_systemd() {
    if role().as_deref() == Some("two-monitors") {
        let rt = common::current_thread();
        let a = quiet(&rt).start().unwrap();
        let b = quiet(&rt).start().expect("a second monitor starts too");
        assert!(a.status().pings_enabled);
        assert!(!b.status().pings_enabled, "only one monitor pings");
        rt.block_on(async {
            mark("start");
            tokio::time::sleep(Duration::from_millis(1000)).await;
            mark("stop");
            block_for(Duration::from_millis(300));
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        // At least the injected stall (a loaded machine may add a pause).
        assert!(a.status().runtime("main").unwrap().stalls >= 1);
        assert!(
            b.status().runtime("main").unwrap().stalls >= 1,
            "both detect"
        );
        b.shutdown();
        a.shutdown();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "two_monitors_only_one_talks_to_systemd",
        "two-monitors",
        &[("WATCHDOG_USEC", "400000".into())],
    );
    assert_child_ok(&out);
    let start = d.iter().find(|g| g.marker() == Some("start")).unwrap().at;
    let stop = d.iter().find(|g| g.marker() == Some("stop")).unwrap().at;
    let pings = d
        .iter()
        .filter(|g| g.has("WATCHDOG=1") && g.at > start && g.at < stop)
        .count();
    // One second at W/4 = 100 ms: about 10 pings, not 20.
    assert!((6..=14).contains(&pings), "{pings} pings in one second");
    let stopping = d.iter().filter(|g| g.has("STOPPING=1")).count();
    assert_eq!(
        stopping, 1,
        "only the monitor that talks to systemd says STOPPING=1"
    );
}

#[test]
fn shutdown_during_a_stall_returns_promptly() {
    if role().as_deref() == Some("shutdown-stalled") {
        let rt = common::current_thread();
        let wd = quiet(&rt)
            .stall_threshold(Duration::from_millis(100))
            .start()
            .unwrap();
        let stuck = std::thread::spawn(move || {
            rt.block_on(async { block_for(Duration::from_millis(2000)) });
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(!wd.status().healthy, "the loop is stalled");
        let t0 = Instant::now();
        mark("shutdown");
        wd.shutdown();
        let took = t0.elapsed();
        mark("shutdown-done");
        assert!(
            took < Duration::from_secs(1),
            "shutdown waited {took:?} for a stuck runtime"
        );
        stuck.join().unwrap();
        return;
    }
    let l = NotifyListener::new();
    let (out, d) = l.run_child(
        "shutdown_during_a_stall_returns_promptly",
        "shutdown-stalled",
        &[("WATCHDOG_USEC", "400000".into())],
    );
    assert_child_ok(&out);
    let at = d
        .iter()
        .find(|g| g.marker() == Some("shutdown"))
        .unwrap()
        .at;
    assert!(
        d.iter().any(|g| g.has("STOPPING=1") && g.at >= at),
        "STOPPING=1 during the stall: {d:#?}"
    );
}
