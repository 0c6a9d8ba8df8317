//! The `loopwatch` command, run as a real process on reports written by
//! real stalls of the demo (sleep, spin and mutex), and on every kind of
//! bad input: a truncated file, malformed JSON, JSON that is no report, a
//! report of a future format version, an unreadable file and a stranger in
//! the directory; and on the report of a stall that systemd's watchdog
//! ended, found through the journal entry that names it (a real systemd
//! user manager and journald, as in `tests/systemd.rs`: needs root and
//! util-linux). Needs the `cli` feature (`cargo test --all-features`).
#![cfg(feature = "cli")]

mod common;
#[path = "support/systemd.rs"]
mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{demo_bin, wait_for, KillOnDrop};
use loopwatch::StallReport;

/// The demo's stall kinds, with the verdict and culprit each must get.
const KINDS: [(&str, &str, &str); 3] = [
    ("sleep", "blocked-syscall", "demo::stall_sleep"),
    ("spin", "cpu-bound", "demo::stall_spin"),
    ("mutex", "lock-wait", "demo::stall_mutex"),
];

/// A directory with one report of each of [`KINDS`], written by the demo
/// (run once for all tests of this file, the three stalls at once).
fn fleet() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the target directory, replaced on each run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-fleet");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("fleet directory");
        let children: Vec<KillOnDrop> = KINDS
            .iter()
            .map(|(kind, _, _)| {
                let child = Command::new(demo_bin())
                    .args(["--stall-after", "0.5", "--stall-kind", kind])
                    .args(["--stall-for", "1.5", "--threshold-ms", "300"])
                    .args(["--exit-after", "3", "--report-dir"])
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the demo");
                KillOnDrop(child)
            })
            .collect();
        for mut c in children {
            let status = wait_for(Duration::from_secs(30), || c.0.try_wait().ok().flatten());
            assert!(
                status.is_some_and(|s| s.success()),
                "the demo did not exit cleanly within 30 s: {status:?}"
            );
        }
        let reports = json_reports(&dir);
        assert_eq!(reports.len(), 3, "one report per stall in {dir:?}");
        dir
    })
}

/// The `stall-*.json` files of `dir`, sorted.
fn json_reports(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("report dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn read_report(path: &Path) -> StallReport {
    StallReport::from_json(&fs::read_to_string(path).expect("report")).expect("a good report")
}

/// The fleet's report of the demo's `kind` of stall.
fn report_of(kind: &str) -> PathBuf {
    let culprit = KINDS.iter().find(|k| k.0 == kind).expect("kind").2;
    json_reports(fleet())
        .into_iter()
        .find(|p| {
            read_report(p)
                .culprit
                .is_some_and(|c| c.function == culprit)
        })
        .unwrap_or_else(|| panic!("no report names {culprit}"))
}

fn loopwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loopwatch"))
}

/// Runs `cmd`, expecting exit code `code`; returns (stdout, stderr).
fn expect(cmd: &mut Command, code: i32) -> (String, String) {
    let out: Output = cmd.output().expect("run loopwatch");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?} exited {}, expected {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

/// Checks a listing of the fleet's three reports: a header, then one line
/// per report, oldest first, each with host, runtime, verdict, culprit,
/// duration and ending.
fn assert_lists_fleet(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three reports:\n{stdout}");
    assert!(lines[0].starts_with("DETECTED"), "{stdout}");
    let host = hostname();
    for (_, verdict, culprit) in KINDS {
        let line = lines
            .iter()
            .find(|l| l.contains(culprit))
            .unwrap_or_else(|| panic!("no line names {culprit}:\n{stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], host, "{line}");
        assert_eq!(cols[2], "main", "{line}");
        assert_eq!(cols[3], verdict, "{line}");
        assert_eq!(cols[4], culprit, "{line}");
        assert!(cols[5].ends_with('s'), "a duration: {line}");
        assert_eq!(cols[6], "recovered", "{line}");
    }
    let times: Vec<&str> = lines[1..].iter().map(|l| &l[..20]).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "oldest first:\n{stdout}");
}

#[test]
fn list_shows_one_line_per_report_oldest_first() {
    let (stdout, stderr) = expect(loopwatch().arg("list").arg(fleet()), 0);
    assert_lists_fleet(&stdout);
    assert!(
        stderr.is_empty(),
        "nothing to say about good reports: {stderr}"
    );
    // Without a directory, the current one.
    let (here, _) = expect(loopwatch().arg("list").current_dir(fleet()), 0);
    assert_lists_fleet(&here);
}

#[test]
fn show_renders_the_report_as_its_text_and_colours_only_when_asked() {
    let path = report_of("sleep");
    let (stdout, _) = expect(loopwatch().arg("show").arg(&path), 0);
    assert_eq!(stdout, read_report(&path).to_text(), "the library's text");
    assert!(stdout.contains("verdict: blocked-syscall"), "{stdout}");
    assert!(
        stdout.contains("culprit: demo::stall_sleep at "),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'), "no colour into a pipe");
    let (coloured, _) = expect(
        loopwatch().args(["show", "--color", "always"]).arg(&path),
        0,
    );
    let culprit_line = coloured
        .lines()
        .find(|l| l.contains("culprit: demo::stall_sleep"))
        .expect("culprit line");
    assert!(
        culprit_line.starts_with('\x1b') && culprit_line.ends_with("\x1b[0m"),
        "{culprit_line:?}"
    );
    let frame_line = coloured
        .lines()
        .find(|l| l.contains(": demo::stall_sleep at ") && !l.contains("culprit:"))
        .expect("the culprit's frame in the loop thread's stack");
    assert!(frame_line.starts_with('\x1b'), "{frame_line:?}");
    let verdict_line = coloured.lines().nth(2).expect("verdict line");
    assert!(verdict_line.starts_with('\x1b') && verdict_line.contains("blocked-syscall"));
    let plain: String = coloured
        .lines()
        .map(strip_ansi)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_eq!(plain, stdout, "colour changes nothing but colour");
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn summary_counts_by_verdict_add_up_and_name_the_culprits_and_build() {
    let (stdout, stderr) = expect(loopwatch().arg("summary").arg(fleet()), 0);
    assert!(stderr.is_empty(), "{stderr}");
    let first = stdout.lines().next().expect("a first line");
    assert!(
        first.starts_with("3 stalls in 3 reports from 1 host (0 coalesced"),
        "{stdout}"
    );
    let verdicts = section(&stdout, "by verdict:");
    let mut total = 0;
    for (_, verdict, _) in KINDS {
        let line = verdicts
            .iter()
            .find(|l| l.split_whitespace().next() == Some(verdict))
            .unwrap_or_else(|| panic!("no {verdict} count:\n{stdout}"));
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(n, 1, "{line}");
        total += n;
    }
    assert_eq!(verdicts.len(), 3, "three verdicts:\n{stdout}");
    assert_eq!(total, 3, "the counts add up to the stalls");
    for title in [
        "top culprits by count:",
        "top culprits by total stalled time:",
    ] {
        let rows = section(&stdout, title);
        for (_, _, culprit) in KINDS {
            assert!(
                rows.iter().any(|l| l.trim_end().ends_with(culprit)),
                "{title} lacks {culprit}:\n{stdout}"
            );
        }
    }
    let build_id = read_report(&report_of("spin"))
        .process
        .build_id
        .expect("the demo has a build id");
    let builds = section(&stdout, "by binary build id:");
    assert!(
        builds[0]
            .trim_start()
            .starts_with(&format!("{build_id} (demo): 3 stalls in 3 reports")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("hosts       {}", hostname())),
        "{stdout}"
    );
}

/// The lines after `title` up to the next blank line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.trim_start().starts_with("STALLS"))
        .collect()
}

/// Parses `svg` as XML: balanced, one `svg` root; returns its text.
fn svg_text(svg: &str) -> String {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(svg);
    let (mut depth, mut roots, mut text) = (0usize, Vec::new(), String::new());
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                depth += 1;
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Empty(e)) if depth == 0 => {
                roots.push(String::from_utf8_lossy(e.name().as_ref()).into_owned())
            }
            Ok(Event::Text(t)) => text.push_str(&t.decode().expect("text")),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML at {}: {e}", reader.error_position()),
        }
    }
    assert_eq!(depth, 0, "every element is closed");
    assert_eq!(roots, vec!["svg".to_string()], "one svg root element");
    text
}

#[test]
fn flamegraph_is_one_well_formed_svg_naming_every_culprit() {
    let out = tempfile::tempdir().unwrap();
    let svg_path = out.path().join("stalls.svg");
    let (_, stderr) = expect(
        loopwatch()
            .arg("flamegraph")
            .arg(fleet())
            .arg("-o")
            .arg(&svg_path),
        0,
    );
    assert!(
        stderr.contains("flame graph of 3 reports written"),
        "{stderr}"
    );
    let svg = fs::read_to_string(&svg_path).expect("the SVG is written");
    let text = svg_text(&svg);
    assert!(
        text.contains("3 stalls in 3 reports"),
        "the title counts the stalls"
    );
    for (_, _, culprit) in KINDS {
        assert!(
            text.contains(&format!("{culprit} (1 stalls")),
            "{culprit} drawn once:\n{text}"
        );
    }
    // The stacks stand on the runtime's entry point: tokio's block_on is
    // wider than any one culprit.
    assert!(
        text.contains("block_on (3 stalls"),
        "all three stacks share the runtime"
    );
    // The same graph on standard output, weighted by time.
    let (stdout, _) = expect(
        loopwatch()
            .args(["flamegraph", "--weight", "time", "-o", "-"])
            .arg(fleet()),
        0,
    );
    assert!(svg_text(&stdout).contains("ms stalled"), "weighted by time");
}

/// A directory with the fleet's good reports and every kind of bad input.
/// Returns it and the bad files with the reason each must be given.
fn bad_inputs() -> (tempfile::TempDir, Vec<(PathBuf, &'static str)>) {
    let dir = tempfile::tempdir().unwrap();
    let good = json_reports(fleet());
    for g in &good {
        fs::copy(g, dir.path().join(g.file_name().unwrap())).unwrap();
        let txt = g.with_extension("txt");
        fs::copy(&txt, dir.path().join(txt.file_name().unwrap())).unwrap();
    }
    let text = fs::read_to_string(&good[0]).unwrap();
    let name = |n: u32| {
        dir.path()
            .join(format!("stall-20261201T000000Z-main-{n}-0001.json"))
    };
    let mut bad = Vec::new();
    fs::write(name(1), &text[..text.len() / 2]).unwrap();
    bad.push((name(1), "truncated JSON: the text ends early"));
    fs::write(
        name(2),
        text.replacen("\"runtime\": \"main\"", "\"runtime\": main", 1),
    )
    .unwrap();
    bad.push((name(2), "malformed JSON at line"));
    let mut future: serde_json::Value = serde_json::from_str(&text).unwrap();
    future["format_version"] = (loopwatch::REPORT_FORMAT_VERSION + 1).into();
    fs::write(name(3), future.to_string()).unwrap();
    bad.push((name(3), "is newer than this loopwatch reads"));
    fs::write(name(4), &text).unwrap();
    fs::set_permissions(name(4), fs::Permissions::from_mode(0o000)).unwrap();
    bad.push((name(4), "cannot read: Permission denied"));
    fs::write(name(5), "{\"hello\": \"world\"}").unwrap();
    bad.push((name(5), "JSON, but not a stall report: missing field"));
    let stranger = dir.path().join("notes.md");
    fs::write(&stranger, "not a report").unwrap();
    bad.push((
        stranger,
        "not a stall report (reports are named stall-<id>.json)",
    ));
    let orphan = dir.path().join("stall-20261201T000000Z-main-7-0001.txt");
    fs::write(&orphan, "text without JSON").unwrap();
    bad.push((orphan, "a text report without its stall-<id>.json twin"));
    // Hidden files (a writer's temporary file) are passed over silently.
    fs::write(
        dir.path()
            .join(".stall-20261201T000000Z-main-6-0001.json.tmp"),
        "{",
    )
    .unwrap();
    (dir, bad)
}

/// `loopwatch` that cannot bypass file permissions: as root, without
/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (the engineer's own user
/// reading the daemon's 0600 reports, in effect).
fn loopwatch_without_privilege() -> Command {
    if !rustix::process::geteuid().is_root() {
        return loopwatch();
    }
    let setpriv = Path::new("/usr/bin/setpriv");
    assert!(
        setpriv.is_file(),
        "the unreadable-file case runs loopwatch under setpriv (util-linux) when root: install util-linux"
    );
    let mut cmd = Command::new(setpriv);
    cmd.args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(env!("CARGO_BIN_EXE_loopwatch"));
    cmd
}

fn assert_each_bad_input_named_once(stderr: &str, bad: &[(PathBuf, &str)]) {
    for (path, reason) in bad {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&*path.to_string_lossy()))
            .collect();
        assert_eq!(lines.len(), 1, "one message for {path:?}:\n{stderr}");
        assert!(
            lines[0].contains(reason),
            "{path:?} should say {reason:?}:\n{stderr}"
        );
        assert!(lines[0].starts_with("loopwatch: ") && lines[0].ends_with("; skipped"));
    }
    assert_eq!(
        stderr.lines().count(),
        bad.len(),
        "nothing else said:\n{stderr}"
    );
}

#[test]
fn bad_inputs_are_named_and_the_good_reports_still_processed() {
    let (dir, bad) = bad_inputs();
    let (stdout, stderr) = expect(loopwatch_without_privilege().arg("list").arg(dir.path()), 1);
    assert_each_bad_input_named_once(&stderr, &bad);
    assert_lists_fleet(&stdout);

    let (stdout, stderr) = expect(
        loopwatch_without_privilege().arg("summary").arg(dir.path()),
        1,
    );
    assert_each_bad_input_named_once(&stderr, &bad);
    assert!(stdout.starts_with("3 stalls in 3 reports"), "{stdout}");

    let svg = dir.path().join("out.svg");
    let (_, stderr) = expect(
        loopwatch_without_privilege()
            .arg("flamegraph")
            .arg(dir.path())
            .arg("-o")
            .arg(&svg),
        1,
    );
    assert!(
        stderr.contains("flame graph of 3 reports written"),
        "{stderr}"
    );
    assert!(svg_text(&fs::read_to_string(&svg).unwrap()).contains("demo::stall_spin"));
}

#[test]
fn nothing_processed_or_a_usage_error_exits_2() {
    let (dir, bad) = bad_inputs();
    // Each bad file alone: one message naming it, exit 2.
    for (path, reason) in &bad {
        // A file named on the command line is read whatever its name.
        let reason = if path.ends_with("notes.md") || path.extension().is_some_and(|e| e == "txt") {
            "malformed JSON at line 1"
        } else {
            reason
        };
        for sub in ["show", "list"] {
            let (stdout, stderr) = expect(loopwatch_without_privilege().arg(sub).arg(path), 2);
            assert!(stdout.is_empty(), "{sub} {path:?}: {stdout}");
            assert_eq!(stderr.lines().count(), 1, "{sub} {path:?}:\n{stderr}");
            assert!(
                stderr.contains(&*path.to_string_lossy()) && stderr.contains(reason),
                "{sub} {path:?} should say {reason:?}:\n{stderr}"
            );
        }
    }
    // symbolize reads its report the same way.
    let (truncated, reason) = &bad[0];
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(truncated)
            .args(["--debug-file", "/nonexistent.debug"]),
        2,
    );
    assert!(
        stderr.contains(&*truncated.to_string_lossy()) && stderr.contains(reason),
        "{stderr}"
    );
    let missing = dir.path().join("no-such-dir");
    let (_, stderr) = expect(loopwatch().arg("summary").arg(&missing), 2);
    assert!(
        stderr.contains("no-such-dir: cannot read: No such file"),
        "{stderr}"
    );
    let (_, stderr) = expect(
        loopwatch()
            .args(["flamegraph", "-o", "x.svg"])
            .arg(&missing),
        2,
    );
    assert!(stderr.contains("no flame graph written"), "{stderr}");
    // Usage errors are clap's, exit 2.
    expect(loopwatch().arg("summary"), 2);
    expect(loopwatch().arg("frobnicate"), 2);
    expect(loopwatch().args(["show", "a", "b"]), 2);
    // An empty directory is no error: nothing to list.
    let empty = tempfile::tempdir().unwrap();
    let (stdout, stderr) = expect(loopwatch().arg("list").arg(empty.path()), 0);
    assert!(stdout.is_empty());
    assert!(stderr.contains("no stall reports"), "{stderr}");
    // --help documents the exit codes.
    let (help, _) = expect(loopwatch().arg("--help"), 0);
    assert!(
        help.contains("Exit codes:") && help.contains("2  usage error"),
        "{help}"
    );
}

#[test]
fn a_stall_ended_by_systemds_watchdog_is_found_through_the_journal_and_listed_as_killed() {
    const MESSAGE_ID_STALL_DETECTED: &str = "c982a5b17e814d0aa9c31fe32560ac36";
    let m = harness::Manager::start_with_journald("cli-killed");
    let reports = m.dir().join("reports");
    fs::create_dir_all(&reports).expect("report directory");
    let unit = "lw-cli-killed.service";
    let out = m.dir().join("demo.out");
    m.write_unit(
        unit,
        &format!(
            "[Unit]\nDescription=loopwatch cli test: a deadlock ended by the watchdog\n\n\
             [Service]\nType=notify\nNotifyAccess=main\nWatchdogSec=2\nRestart=no\n\
             ExecStart=\"{}\" \"--report-dir\" \"{}\" \"--stall-after\" \"1\" \"--stall-kind\" \"deadlock\"\n\
             StandardOutput=append:{out}\nStandardError=append:{out}\nLimitCORE=0\n",
            demo_bin().display(),
            reports.display(),
            out = out.display()
        ),
    );
    m.systemctl_ok(&["start", "--no-block", unit]);
    let end = m.wait_for(
        unit,
        Duration::from_secs(30),
        "the watchdog to end the demo",
        |s| matches!(s.get("ActiveState"), "failed" | "inactive"),
    );
    assert_eq!(end.get("Result"), "watchdog", "{}", end.summary());

    // The journal entry of the stall names the text report; the JSON is
    // beside it (the README's recipe).
    let entries = m.journal_entries(&[&format!("MESSAGE_ID={MESSAGE_ID_STALL_DETECTED}")]);
    let text = entries
        .iter()
        .find_map(|e| e.get("LOOPWATCH_REPORT"))
        .unwrap_or_else(|| panic!("no stall entry names a report: {entries:#?}"));
    let json = PathBuf::from(text.strip_suffix(".txt").expect("a .txt path").to_string() + ".json");
    assert!(json.starts_with(&reports) && json.is_file(), "{json:?}");

    let (stdout, stderr) = expect(loopwatch().arg("list").arg(&json), 0);
    assert!(stderr.is_empty(), "{stderr}");
    let line = stdout
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("one report:\n{stdout}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (cols[3], cols[4], cols[6]),
        ("lock-wait", "demo::stall_deadlock", "killed"),
        "{stdout}"
    );
    let (summary, _) = expect(loopwatch().arg("summary").arg(&reports), 0);
    assert!(
        summary.starts_with("1 stall in 1 report from 1 host"),
        "{summary}"
    );
}

/// Runs a binutils tool, failing the test clearly when it is missing.
fn binutils(tool: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} (binutils) is needed to make a stripped build and its debug file: {e}")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_report_from_a_stripped_build_is_symbolized_from_its_debug_file() {
    // One build, shipped stripped, its debug file kept elsewhere (where
    // the running demo does not look for it).
    let work = tempfile::tempdir().unwrap();
    let (bin, debug, reports) = (
        work.path().join("bin"),
        work.path().join("debug"),
        work.path().join("reports"),
    );
    for d in [&bin, &debug, &reports] {
        fs::create_dir(d).unwrap();
    }
    let demo = bin.join("demo");
    let debug_file = debug.join("demo.debug");
    fs::copy(demo_bin(), &demo).unwrap();
    binutils(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            demo.as_os_str(),
            debug_file.as_os_str(),
        ],
    );
    binutils("strip", &["--strip-all".as_ref(), demo.as_os_str()]);
    let link = format!("--add-gnu-debuglink={}", debug_file.display());
    binutils("objcopy", &[link.as_ref(), demo.as_os_str()]);
    let status = Command::new(&demo)
        .args([
            "--stall-after",
            "0.5",
            "--stall-kind",
            "sleep",
            "--stall-for",
            "1.5",
        ])
        .args(["--threshold-ms", "300", "--exit-after", "3", "--report-dir"])
        .arg(&reports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run the stripped demo");
    assert!(status.success(), "the stripped demo failed: {status}");
    let original = json_reports(&reports)
        .pop()
        .expect("a report of the stripped demo");
    let stripped = read_report(&original);
    assert!(
        stripped.culprit.is_none(),
        "a stripped build names no culprit by itself: {:?}",
        stripped.culprit
    );
    let build_id = stripped
        .process
        .build_id
        .clone()
        .expect("the demo's build id");
    let loop_frames = &stripped
        .threads
        .iter()
        .find(|g| g.loop_thread)
        .expect("loop thread")
        .frames;
    assert!(
        loop_frames
            .iter()
            .any(|f| f.frame.build_id.as_deref() == Some(&build_id)
                && f.frame.offset.is_some()
                && f.frame.function.is_none()),
        "the demo's frames carry build id and offset, no names"
    );

    let assert_symbolized = |json: &Path| {
        let r = read_report(json);
        let c = r
            .culprit
            .unwrap_or_else(|| panic!("no culprit in {json:?}"));
        assert_eq!(c.function, "demo::stall_sleep", "{json:?}");
        assert!(c.file.as_deref().is_some_and(|f| f.ends_with("demo.rs")) && c.line.is_some());
        assert_eq!(r.format_version, loopwatch::REPORT_FORMAT_VERSION);
        assert!(
            r.notes.iter().any(|n| n.contains("loopwatch symbolize")),
            "{:?}",
            r.notes
        );
        let frames = &r.threads.iter().find(|g| g.loop_thread).unwrap().frames;
        assert!(frames
            .iter()
            .any(|f| f.frame.symbols == loopwatch::SymbolSource::Offline
                && f.frame.function.as_deref() == Some("demo::stall_sleep")));
        let text = fs::read_to_string(json.with_extension("txt")).expect("the .txt twin");
        assert!(text.contains("culprit: demo::stall_sleep at "), "{text}");
    };

    // --debug-file, to another file.
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    let symbolized = out.join("symbolized.json");
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(&original)
            .arg("--debug-file")
            .arg(&debug_file)
            .arg("-o")
            .arg(&symbolized),
        0,
    );
    assert!(
        stderr.contains("frame(s) named from") && stderr.contains("culprit demo::stall_sleep"),
        "{stderr}"
    );
    assert_symbolized(&symbolized);
    let (shown, _) = expect(loopwatch().arg("show").arg(&symbolized), 0);
    assert!(shown.contains("culprit: demo::stall_sleep at "), "{shown}");
    assert_eq!(
        read_report(&original).culprit,
        None,
        "the original is left alone with -o"
    );

    // --debug-dir in GDB's build-id layout, in place: the report and its
    // text keep their names and their mode.
    let by_id = work.path().join("by-id");
    let id_dir = by_id.join(".build-id").join(&build_id[..2]);
    fs::create_dir_all(&id_dir).unwrap();
    fs::copy(
        &debug_file,
        id_dir.join(format!("{}.debug", &build_id[2..])),
    )
    .unwrap();
    let in_place = work.path().join("in-place");
    fs::create_dir(&in_place).unwrap();
    let copy = in_place.join(original.file_name().unwrap());
    fs::copy(&original, &copy).unwrap();
    fs::copy(original.with_extension("txt"), copy.with_extension("txt")).unwrap();
    let mode = fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    expect(
        loopwatch()
            .arg("symbolize")
            .arg(&copy)
            .arg("--debug-dir")
            .arg(&by_id),
        0,
    );
    assert_symbolized(&copy);
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        mode
    );
    // Once named, there is nothing left for that directory to do.
    let before = fs::read(&copy).unwrap();
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(&copy)
            .arg("--debug-dir")
            .arg(&by_id),
        0,
    );
    assert!(
        stderr.contains("every frame already has a name"),
        "{stderr}"
    );
    assert_eq!(fs::read(&copy).unwrap(), before, "nothing rewritten");
    let (listed, _) = expect(loopwatch().arg("list").arg(&in_place), 0);
    assert!(listed.contains("demo::stall_sleep"), "{listed}");

    // --debug-dir with <module>.debug.
    let by_name = work.path().join("by-name");
    fs::create_dir(&by_name).unwrap();
    fs::copy(&debug_file, by_name.join("demo.debug")).unwrap();
    let named = out.join("by-name.json");
    expect(
        loopwatch()
            .arg("symbolize")
            .arg(&original)
            .arg("--debug-dir")
            .arg(&by_name)
            .arg("-o")
            .arg(&named),
        0,
    );
    assert_symbolized(&named);

    // Another build's file is refused by build id; a directory without the
    // build's file finds nothing; nothing is written either way.
    let wrong = out.join("wrong.json");
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(&original)
            .arg("--debug-file")
            .arg(env!("CARGO_BIN_EXE_loopwatch"))
            .arg("-o")
            .arg(&wrong),
        2,
    );
    assert!(
        stderr.contains("is not the build of any frame in the report")
            && stderr.contains(&build_id),
        "{stderr}"
    );
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(&original)
            .arg("--debug-dir")
            .arg(&out)
            .arg("-o")
            .arg(&wrong),
        2,
    );
    assert!(
        stderr.contains("no debug file for the report's unnamed frames"),
        "{stderr}"
    );
    // The stripped binary itself names nothing.
    let (_, stderr) = expect(
        loopwatch()
            .arg("symbolize")
            .arg(&original)
            .arg("--debug-file")
            .arg(&demo)
            .arg("-o")
            .arg(&wrong),
        2,
    );
    assert!(
        stderr.contains("names none of the report's addresses"),
        "{stderr}"
    );
    assert!(!wrong.exists() && !wrong.with_extension("txt").exists());
}
