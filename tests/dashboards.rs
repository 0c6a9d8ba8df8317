//! Static checks of `dashboards/`: the Prometheus alert rules and their unit
//! tests (through `promtool`), and the Grafana dashboard (JSON shape,
//! variables, PromQL that parses and names only metrics loopwatch exports).
//!
//! These tests need `promtool`. When it is missing they fail, loudly: install
//! Debian's `prometheus` package (`apt-get install prometheus`).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Every metric family loopwatch exports, with its type
/// (`families_match_the_exporter_source` keeps it in step with
/// `src/metrics/families.rs`).
const FAMILIES: &[(&str, Kind)] = &[
    ("loopwatch_probe_lag_seconds", Kind::Histogram),
    ("loopwatch_lag_seconds", Kind::Gauge),
    ("loopwatch_stall_threshold_seconds", Kind::Gauge),
    ("loopwatch_stalled", Kind::Gauge),
    ("loopwatch_stalls_total", Kind::Counter),
    ("loopwatch_stalls_coalesced_total", Kind::Counter),
    ("loopwatch_stall_duration_seconds", Kind::Histogram),
    ("loopwatch_stalls_by_verdict_total", Kind::Counter),
    ("loopwatch_watchdog_pings_total", Kind::Counter),
    ("loopwatch_watchdog_deadline_seconds", Kind::Gauge),
    ("loopwatch_reports_total", Kind::Counter),
    ("loopwatch_journal_entries_total", Kind::Counter),
    ("loopwatch_capture_duration_seconds", Kind::Histogram),
    ("loopwatch_worker_stuck", Kind::Gauge),
    ("loopwatch_internal_errors_total", Kind::Counter),
    ("loopwatch_hiccups_total", Kind::Counter),
    ("loopwatch_hiccup_duration_seconds", Kind::Histogram),
    ("loopwatch_hiccup_seconds_total", Kind::Counter),
    ("loopwatch_hiccup_captures_skipped_total", Kind::Counter),
    ("loopwatch_warn_threshold_seconds", Kind::Gauge),
    ("loopwatch_exporter_connections_total", Kind::Counter),
    ("loopwatch_runtime_workers", Kind::Gauge),
    ("loopwatch_runtime_alive_tasks", Kind::Gauge),
    ("loopwatch_runtime_global_queue_depth", Kind::Gauge),
    ("loopwatch_runtime_worker_busy_seconds_total", Kind::Counter),
    ("loopwatch_runtime_worker_park_total", Kind::Counter),
    ("loopwatch_runtime_worker_park_unpark_total", Kind::Counter),
];

/// Series Prometheus adds itself, which the alert rules may use.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// The alerts the on-call relies on.
const REQUIRED_ALERTS: &[&str] = &[
    "LoopwatchEventLoopStalled",
    "LoopwatchWorkerStuck",
    "LoopwatchLagHigh",
    "LoopwatchHiccupsSustained",
    "LoopwatchStallsRecurring",
    "LoopwatchWatchdogPingsSuppressed",
    "LoopwatchReportsFailing",
    "LoopwatchReportsDropped",
    "LoopwatchInternalError",
    "LoopwatchMonitorFailing",
    "LoopwatchTargetDown",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every sample name a scrape of loopwatch can contain.
fn known_series() -> HashSet<String> {
    let mut names = HashSet::new();
    for (name, kind) in FAMILIES {
        if *kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The families `src/metrics/families.rs` defines: each `"loopwatch_..."`
/// name literal, with the kind of the constructor it is passed to.
fn families_in_source() -> Vec<(String, Kind)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics/families.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut kind = None;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    loop {
        let ctor = rest
            .find("::new(")
            .into_iter()
            .chain(rest.find("::with_opts("));
        let name = rest.find("\"loopwatch_");
        let Some(next) = ctor.chain(name).min() else {
            break;
        };
        if Some(next) == name {
            let lit = &rest[next + 1..];
            let end = lit.find('"').expect("a closed string literal");
            let literal = &lit[..end];
            // Help texts mention family names inside sentences; a name
            // literal is the name alone.
            if literal.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                let kind = kind.unwrap_or_else(|| panic!("{literal}: no constructor before it"));
                out.push((literal.to_string(), kind));
            }
            rest = &lit[end + 1..];
        } else {
            let ident_start = rest[..next]
                .rfind(|c: char| !c.is_ascii_alphanumeric())
                .map_or(0, |i| i + 1);
            let ctor = &rest[ident_start..next];
            kind = if ctor.starts_with("Histogram") {
                Some(Kind::Histogram)
            } else if ctor.contains("Counter") {
                Some(Kind::Counter)
            } else if ctor.contains("Gauge") {
                Some(Kind::Gauge)
            } else {
                kind
            };
            rest = &rest[next + 2..];
        }
    }
    out
}

#[test]
fn families_match_the_exporter_source() {
    let source = families_in_source();
    assert!(
        source.len() >= 20,
        "too few families found in src/metrics/families.rs: {source:?}"
    );
    let listed: Vec<(String, Kind)> = FAMILIES.iter().map(|(n, k)| (n.to_string(), *k)).collect();
    let not_listed: Vec<_> = source.iter().filter(|f| !listed.contains(f)).collect();
    let not_defined: Vec<_> = listed.iter().filter(|f| !source.contains(f)).collect();
    assert!(
        not_listed.is_empty() && not_defined.is_empty() && listed.len() == source.len(),
        "FAMILIES is out of step with src/metrics/families.rs: defined there but not \
         listed (or with another type): {not_listed:?}; listed but not defined there: \
         {not_defined:?}"
    );
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Runs promtool with `args`; a missing promtool is a failure, not a skip.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run `promtool {}`: {e}. These tests need promtool: \
             install Debian's prometheus package: apt-get install prometheus",
            args.join(" ")
        ),
    }
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("the repository path is UTF-8")
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let rules = dir().join("alerts.yml");
    let out = promtool(&["check", "rules", path_str(&rules)]);
    assert_success(&out, "promtool check rules dashboards/alerts.yml");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let tests = dir().join("alerts.test.yml");
    let out = promtool(&["test", "rules", path_str(&tests)]);
    assert_success(&out, "promtool test rules dashboards/alerts.test.yml");
}

/// The alert rules as (name, rule text); the file keeps one `- alert:` per rule.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dir().join("alerts.yml")).unwrap();
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            rules.push((name.trim().to_string(), String::new()));
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

/// The `expr:` of one rule, single-line or block.
fn rule_expr(body: &str) -> String {
    let mut lines = body.lines();
    let mut expr = String::new();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" && rest != ">" && rest != "|-" && rest != ">-" {
            return rest.to_string();
        }
        let indent = line.len() - line.trim_start().len();
        for l in lines.by_ref() {
            if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
                break;
            }
            expr.push_str(l.trim());
            expr.push(' ');
        }
        return expr;
    }
    panic!("rule without expr:\n{body}");
}

#[test]
fn alert_rules_are_complete_and_name_only_known_metrics() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(
            names.contains(required),
            "alert {required} missing: {names:?}"
        );
    }
    let mut known = known_series();
    known.extend(PROMETHEUS_SERIES.iter().map(|s| s.to_string()));
    for (name, body) in &rules {
        for key in ["severity:", "summary:", "description:"] {
            assert!(body.contains(key), "alert {name} has no {key}");
        }
        let expr = rule_expr(body);
        let metrics = metric_names(&expr);
        assert!(!metrics.is_empty(), "alert {name}: no metric in {expr}");
        for m in metrics {
            assert!(
                known.contains(&m),
                "alert {name} uses unknown metric {m} in {expr}"
            );
        }
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dir().join("loopwatch.json")).unwrap();
    serde_json::from_str(&text).expect("dashboards/loopwatch.json is not valid JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every PromQL expression of the dashboard: (where, expression).
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {:?} target {}", p["title"], t["refId"]),
                expr.to_string(),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), expr.to_string()));
        }
    }
    out
}

fn variable<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("dashboard has no template variable {name:?}"))
}

/// A query variable's query, in either of Grafana's two forms.
fn variable_query(v: &Value) -> &str {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["query"].as_str())
        .expect("variable query")
}

#[test]
fn dashboard_is_importable_grafana_json() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(d["uid"], "loopwatch");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["id"].is_null(), "an exported dashboard has id null");

    let ds = variable(&d, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for (name, label) in [
        ("job", "job"),
        ("instance", "instance"),
        ("runtime", "runtime"),
    ] {
        let v = variable(&d, name);
        assert_eq!(v["type"], "query", "variable {name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}");
        let q = variable_query(v);
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(['{', ',']).next())
            .unwrap_or_else(|| panic!("variable {name}: {q}"));
        assert!(
            known_series().contains(metric.trim()),
            "variable {name}: {q}"
        );
        assert!(
            q.trim_end().ends_with(&format!(", {label})")),
            "variable {name}: {q}"
        );
    }

    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for p in panels(&d) {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id in {title}"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "panel {title} gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panel {title} overlaps another");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}"));
        assert!(!targets.is_empty(), "panel {title} has no query");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "panel {title}");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
        }
    }
}

#[test]
fn dashboard_names_only_metrics_loopwatch_exports() {
    let d = dashboard();
    let known = known_series();
    let mut used = BTreeSet::new();
    for (place, expr) in dashboard_exprs(&d) {
        let metrics = metric_names(&expr);
        assert!(!metrics.is_empty(), "{place}: no metric in {expr}");
        for m in metrics {
            assert!(
                known.contains(&m),
                "{place} uses unknown metric {m}: {expr}"
            );
            used.insert(m);
        }
    }
    // The panels the issue asks for.
    for needed in [
        "loopwatch_probe_lag_seconds_bucket",
        "loopwatch_lag_seconds",
        "loopwatch_stall_threshold_seconds",
        "loopwatch_stalled",
        "loopwatch_stalls_by_verdict_total",
        "loopwatch_stall_duration_seconds_bucket",
        "loopwatch_watchdog_pings_total",
        "loopwatch_watchdog_deadline_seconds",
        "loopwatch_runtime_worker_busy_seconds_total",
        "loopwatch_runtime_alive_tasks",
        "loopwatch_runtime_global_queue_depth",
        // Issues 11, 13 and 14: stuck workers, storms, loopwatch's own
        // failures, dropped reports, hiccups and their top blockers.
        "loopwatch_worker_stuck",
        "loopwatch_stalls_coalesced_total",
        "loopwatch_internal_errors_total",
        "loopwatch_reports_total",
        "loopwatch_hiccups_total",
        "loopwatch_hiccup_duration_seconds_bucket",
        "loopwatch_hiccup_seconds_total",
        "loopwatch_hiccup_captures_skipped_total",
        "loopwatch_warn_threshold_seconds",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
    // Every selector filters on the dashboard's variables.
    for (place, expr) in dashboard_exprs(&d) {
        assert!(
            expr.contains(r#"job=~"$job""#) && expr.contains(r#"instance=~"$instance""#),
            "{place} ignores the job/instance variables: {expr}"
        );
    }
}

#[test]
fn dashboard_promql_parses() {
    // Every expression, Grafana's variables replaced, becomes a recording
    // rule; `promtool check rules` then parses it with Prometheus' parser.
    let d = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let exprs = dashboard_exprs(&d);
    for (i, (place, expr)) in exprs.iter().enumerate() {
        let concrete = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "3h")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$runtime", ".*");
        assert!(
            !concrete.contains('$'),
            "{place}: unknown variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_expr_{i}\n        expr: {}\n",
            serde_json::to_string(&concrete).unwrap()
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool(&["check", "rules", path_str(&file)]);
    assert_success(&out, &format!("parsing the dashboard's PromQL:\n{rules}"));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{said}"
    );
}

/// PromQL keywords and aggregation operators: never metric names.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "inf",
    "nan",
    "atan2",
];

/// Keywords whose parenthesised list holds label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: identifiers that are not
/// keywords, function calls, label names (in `{}` or a `by (...)` list),
/// strings, numbers or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let skip_to = |mut j: usize, close: char| {
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' || chars[j] == '\'' || chars[j] == '`' {
                let q = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != q {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' {
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            let call = after < chars.len() && chars[after] == '(';
            if LABEL_LISTS.contains(&word.as_str()) {
                if call {
                    i = skip_to(after + 1, ')');
                }
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_name_extraction_understands_promql() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{x="{b}", y=~"$y"}[5m])))
           > on (job) group_left () (0.5 * max by (job) (c)) and ignoring(le) d offset 5m
           or sum without (z) (e) unless f{le="1e3"} > bool 1e3"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "c", "d", "e", "f"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}
