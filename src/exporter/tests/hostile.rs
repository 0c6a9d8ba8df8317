//! Tests of the exporter against hostile or sloppy clients over real
//! sockets: the head timeout (first head, keep-alive idle time, trickling),
//! eviction of idle connections under a flood, the counters, and the
//! `/hiccups` route.

use super::*;

use super::super::routes::JSON_CONTENT_TYPE;
use super::super::Endpoints;

#[test]
fn a_keep_alive_connection_idle_past_the_head_timeout_is_closed() {
    let head_timeout = Duration::from_millis(300);
    let exporter = start(ExporterLimits {
        head_timeout,
        timeout: Duration::from_secs(30),
        ..ExporterLimits::default()
    });
    let mut s = connect(exporter.local_addr());
    // Answered twice, each head well within the timeout...
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(150));
        write!(s, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    }
    // ...then closed once idle for longer, counted from the last response.
    let t0 = Instant::now();
    assert!(closed_by_server(&mut s));
    let waited = t0.elapsed();
    assert!(
        waited >= head_timeout.mul_f32(0.8) && waited < Duration::from_secs(5),
        "idle keep-alive connection closed after {waited:?}"
    );
    let counts = exporter.counters().snapshot();
    assert_eq!(counts.head_timeouts, 1, "{counts:?}");
    // The task ends (and uncounts itself) just after closing the socket.
    assert!(
        eventually(|| exporter.counters().snapshot().open == 0),
        "{:?}",
        exporter.counters().snapshot()
    );
}

/// True when `cond` holds within a second.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn a_trickled_head_is_cut_at_the_head_timeout_although_bytes_keep_coming() {
    let head_timeout = Duration::from_millis(500);
    let exporter = start(ExporterLimits {
        head_timeout,
        timeout: Duration::from_secs(30),
        ..ExporterLimits::default()
    });
    let mut slow = connect(exporter.local_addr());
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = 0;
    // One byte every 100 ms (the read doubles as the pause), never the end.
    let closed_after = loop {
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(0) => break t0.elapsed(),
            Ok(_) => panic!("a head that never ended was answered"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break t0.elapsed(),
        }
        if slow.write_all(&head[sent % head.len()..][..1]).is_err() {
            break t0.elapsed();
        }
        sent += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a trickling client was kept for {:?}",
            t0.elapsed()
        );
    };
    assert!(
        closed_after >= head_timeout.mul_f32(0.8) && closed_after < Duration::from_secs(3),
        "trickling client closed after {closed_after:?} ({sent} bytes sent)"
    );
    assert!(sent >= 3, "only {sent} bytes were sent before the close");
    assert!(eventually(
        || exporter.counters().snapshot().head_timeouts == 1
    ));
}

/// Opens `n` connections to `addr` that never send anything.
fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<StdStream> {
    (0..n).map(|_| connect(addr)).collect()
}

#[test]
fn fresh_probes_are_served_through_a_flood_of_idle_and_trickling_sockets() {
    let max = 8;
    let exporter = start(ExporterLimits {
        max_connections: max,
        timeout: Duration::from_secs(30),
        head_timeout: Duration::from_secs(30),
        ..ExporterLimits::default()
    });
    let addr = exporter.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let tricklers: Vec<_> = (0..max)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut closed = 0;
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(b"X").is_err() {
                        closed += 1;
                        s = connect(addr);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                closed
            })
        })
        .collect();
    let _idle = idle_sockets(addr, 5 * max);
    for i in 0..20 {
        let _more_idle = idle_sockets(addr, 2);
        let t0 = Instant::now();
        let r = get(addr, "/healthz");
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "probe {i}: {r:?}");
        assert!(took < Duration::from_secs(3), "probe {i} took {took:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in tricklers {
        t.join().unwrap();
    }
    let counts = exporter.counters().snapshot();
    assert!(counts.evicted >= 5 * max as u64, "{counts:?}");
    assert_eq!(counts.refused, 0, "{counts:?}");
    assert!(counts.open <= max as u64, "{counts:?}");
}

#[test]
fn a_zero_head_timeout_is_refused() {
    let r = Exporter::start(
        "127.0.0.1:0",
        registry(),
        healthy(),
        ExporterLimits {
            head_timeout: Duration::ZERO,
            ..ExporterLimits::default()
        },
    );
    assert!(matches!(r, Err(Error::InvalidSetting { .. })), "{r:?}");
}

fn start_with_hiccups(source: Option<super::super::routes::HiccupsFn>) -> Exporter {
    let endpoints = Endpoints {
        registry: registry(),
        health: healthy(),
        hiccups: source,
    };
    Exporter::start_with("127.0.0.1:0", endpoints, ExporterLimits::default()).unwrap()
}

#[test]
fn hiccups_are_served_as_json_from_their_source() {
    let exporter = start_with_hiccups(Some(Arc::new(|| {
        r#"{"hiccups":[{"runtime":"main","duration_ms":87}]}"#.to_string()
    })));
    let addr = exporter.local_addr();
    let r = get(addr, "/hiccups");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some(JSON_CONTENT_TYPE));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["hiccups"][0]["duration_ms"], 87);
    assert_eq!(request(addr, "HEAD", "/hiccups").status, 200);
    let r = request(addr, "POST", "/hiccups");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn hiccups_without_a_source_are_a_404_that_says_why() {
    let exporter = start_with_hiccups(None);
    let r = get(exporter.local_addr(), "/hiccups");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no hiccup"), "{r:?}");
    assert_eq!(r.body.lines().count(), 1, "{r:?}");
}

#[test]
fn a_panicking_hiccup_source_is_a_500_not_a_dead_exporter() {
    let exporter = start_with_hiccups(Some(Arc::new(|| panic!("hiccup source bug"))));
    let addr = exporter.local_addr();
    assert_eq!(get(addr, "/hiccups").status, 500);
    assert_eq!(get(addr, "/healthz").status, 200);
}
