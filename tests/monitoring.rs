//! Monitoring end to end: live scrapes of the demo pass `promtool check
//! metrics`, every metric the dashboard and the alert rules use exists, a
//! real Prometheus server scrapes the demo through a stall, and `/healthz`
//! and `/metrics` answer while the event loop is stuck.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{demo_with_metrics, http_get, wait_for, KillOnDrop, NotifyListener};

fn need(tool: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    assert!(
        found.status.success(),
        "`{tool}` is missing: install Debian's prometheus package (apt-get install prometheus); \
         .ci/run does this"
    );
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics", Duration::from_secs(5)).expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// Metric names used by an expression, reduced to their family names.
fn families_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("loopwatch_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/loopwatch.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if (k == "expr" || k == "query") && v.is_string() {
                        out.push(v.as_str().unwrap().to_string());
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&d, &mut exprs);
    exprs
}

#[test]
fn every_metric_of_the_dashboard_and_rules_is_in_a_live_scrape_that_promtool_accepts() {
    let promtool = need("promtool");
    // Under a (fake) systemd watchdog, so that the deadline gauge exists too.
    let l = NotifyListener::new();
    let (_demo, addr) = demo_with_metrics(
        &[
            "--stall-after",
            "0.5",
            "--stall-for",
            "0.6",
            "--threshold-ms",
            "200",
        ],
        &[l.env(), ("WATCHDOG_USEC", "2000000".into())],
    );
    std::thread::sleep(Duration::from_millis(1800));
    let text = scrape(&addr);

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool: {findings}"
    );

    let present: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/alerts.yml"
    ))
    .unwrap();
    let mut used = families_in(&rules);
    for e in dashboard_exprs() {
        used.extend(families_in(&e));
    }
    assert!(
        used.len() >= 10,
        "too few metrics found in the dashboard and rules: {used:?}"
    );
    let missing: Vec<_> = used.iter().filter(|m| !present.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "used but not in a live scrape: {missing:?}\n{text}"
    );
    // The stall was counted by verdict.
    assert!(
        text.contains(
            "loopwatch_stalls_by_verdict_total{runtime=\"main\",verdict=\"blocked-syscall\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn healthz_and_metrics_answer_during_a_stall() {
    let (_demo, addr) = demo_with_metrics(
        &[
            "--stall-after",
            "1",
            "--stall-for",
            "3",
            "--threshold-ms",
            "200",
        ],
        &[],
    );
    let (code, body) = http_get(&addr, "/healthz", Duration::from_secs(2)).unwrap();
    assert_eq!(code, 200, "healthy before the stall: {body}");
    let reason = wait_for(Duration::from_secs(5), || {
        let (code, body) = http_get(&addr, "/healthz", Duration::from_secs(2)).ok()?;
        (code == 503).then_some(body)
    })
    .expect("/healthz turns 503 during the stall");
    assert!(
        reason.contains("stalled for"),
        "one-line reason: {reason:?}"
    );
    let t0 = Instant::now();
    let text = scrape(&addr);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/metrics took {:?} during a stall",
        t0.elapsed()
    );
    assert!(text.contains("loopwatch_stalled{runtime=\"main\"} 1"));
    let back = wait_for(Duration::from_secs(8), || {
        let (code, _) = http_get(&addr, "/healthz", Duration::from_secs(2)).ok()?;
        (code == 200).then_some(())
    });
    assert!(back.is_some(), "/healthz turns 200 after the stall");
}

/// A Prometheus server on loopback with its own storage, scraping `target`
/// every second.
struct Prometheus {
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = need("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            _child: KillOnDrop(child),
            _dir: dir,
            addr,
        };
        wait_for(Duration::from_secs(30), || {
            let (code, _) = http_get(&p.addr, "/-/ready", Duration::from_secs(2)).ok()?;
            (code == 200).then_some(())
        })
        .expect("prometheus becomes ready");
        p
    }

    fn query(&self, q: &str) -> serde_json::Value {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={enc}"),
            Duration::from_secs(5),
        )
        .expect("query prometheus");
        assert_eq!(code, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].clone()
    }

    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        r.get(0)?["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn a_real_prometheus_sees_the_stall_and_the_dashboard_query_has_data() {
    let (_demo, addr) = demo_with_metrics(
        &[
            "--stall-after",
            "8",
            "--stall-for",
            "4",
            "--threshold-ms",
            "200",
        ],
        &[],
    );
    let prom = Prometheus::start(&addr);
    // Rates need Prometheus to see the hiccup counter at 0 before the
    // stall's hiccup makes it 1.
    let before = wait_for(Duration::from_secs(8), || {
        prom.scalar("loopwatch_hiccups_total{runtime=\"main\"}")
    });
    assert_eq!(
        before,
        Some(0.0),
        "Prometheus did not scrape the demo before its stall (8 s after start)"
    );
    let during = wait_for(Duration::from_secs(20), || {
        (prom.scalar("loopwatch_stalled{runtime=\"main\"}")? == 1.0).then_some(())
    });
    assert!(
        during.is_some(),
        "loopwatch_stalled was never 1 in Prometheus"
    );
    let after = wait_for(Duration::from_secs(20), || {
        (prom.scalar("loopwatch_stalled{runtime=\"main\"}")? == 0.0
            && prom.scalar("loopwatch_stalls_total{runtime=\"main\"}")? >= 1.0)
            .then_some(())
    });
    assert!(
        after.is_some(),
        "loopwatch_stalled back to 0 after the stall"
    );
    // The dashboard's lag panel query, with its variables filled in.
    let lag = dashboard_exprs()
        .into_iter()
        .find(|e| {
            e.contains("histogram_quantile(0.99")
                && e.contains("loopwatch_probe_lag_seconds_bucket")
        })
        .expect("the dashboard has a lag p99 query");
    let q = lag
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$runtime", ".*")
        .replace("$__rate_interval", "30s")
        .replace("$__range", "5m");
    let data = wait_for(Duration::from_secs(10), || {
        let r = prom.query(&q);
        (!r.as_array()?.is_empty()).then_some(r)
    });
    assert!(
        data.is_some(),
        "the dashboard's lag query returns no data: {q}"
    );

    // The stall began as a hiccup: the hiccups-per-minute and top-blockers
    // panels show it, the latter with the demo's blocking function and
    // the blocked time of its series' first (and only) value.
    let fill = |e: String| {
        e.replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$runtime", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
    };
    let exprs = dashboard_exprs();
    let per_minute = fill(
        exprs
            .iter()
            .find(|e| e.contains("rate(loopwatch_hiccups_total"))
            .expect("the dashboard has a hiccups-per-minute query")
            .clone(),
    );
    let hiccups = wait_for(Duration::from_secs(10), || {
        prom.scalar(&per_minute).filter(|v| *v > 0.0)
    });
    assert!(
        hiccups.is_some(),
        "the dashboard's hiccups-per-minute query shows no hiccup: {per_minute}"
    );
    let top = fill(
        exprs
            .iter()
            .find(|e| e.starts_with("topk(") && e.contains("loopwatch_hiccup_seconds_total"))
            .expect("the dashboard has a top-blockers query")
            .clone(),
    );
    let rows = prom.query(&top);
    let blocked: Vec<(String, f64)> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let culprit = r["metric"]["culprit"].as_str()?.to_string();
            Some((culprit, r["value"][1].as_str()?.parse().ok()?))
        })
        .collect();
    assert!(
        blocked
            .iter()
            .any(|(culprit, secs)| culprit == "demo::stall_sleep" && *secs >= 0.1),
        "the top-blockers query does not show demo::stall_sleep blocking >= 0.1 s \
         (the warn threshold is 50 ms, the stall 200 ms): {blocked:?} from {top}"
    );
}
