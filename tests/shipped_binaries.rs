//! Stall reports from binaries as they are shipped.
//!
//! One `cargo build --release --example demo` (this repository's release
//! profile has `debug = "line-tables-only"`), then binutils derive what
//! teams ship:
//!
//! * `line-tables`: the build as it is;
//! * `symtab-only`: `strip --strip-debug`, what Cargo's default release
//!   profile gives (it strips debug info but keeps the symbol table; see
//!   BENCHMARKS.md, "Binaries as shipped", for what differs);
//! * `stripped`: `strip --strip-all`, what `strip = true` gives;
//! * `debuglink`: stripped, with its DWARF in `demo.debug` next to it,
//!   named by `.gnu_debuglink` (`objcopy --only-keep-debug` and
//!   `--add-gnu-debuglink`);
//! * `build-id`: stripped, with its debug file installed as
//!   `/usr/lib/debug/.build-id/xx/yyyy.debug` (needs root; removed after);
//! * `compressed`: `objcopy --compress-debug-sections=zlib`, which
//!   loopwatch does not read (it says so; the symbol table still names).
//!
//! Each runs the demo's blocking-sleep stall. The verdict is right in all;
//! the culprit is named wherever symbols allow, with file and line where
//! DWARF is found; the report's notes say which; every frame carries build
//! id and offset; and a stripped build's offsets resolve, with the matching
//! debug file, to the stalling function through `loopwatch::symbolize_offset`
//! (the same code the sampler's DWARF pass runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{has_two_captures, DemoStall};
use serde_json::Value;

/// The tests of this file run one at a time: the `build-id` one installs a
/// debug file that every variant of the same build would find.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The release demo, built once per test process.
fn release_demo() -> &'static Path {
    static DEMO: OnceLock<PathBuf> = OnceLock::new();
    DEMO.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary");
        // target/<profile>/deps/<test> -> target
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--example", "demo", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("run cargo build --release --example demo");
        assert!(
            status.success(),
            "cargo build --release --example demo failed"
        );
        let demo = target.join("release/examples/demo");
        assert!(demo.is_file(), "no release demo at {}", demo.display());
        demo
    })
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (binutils) is needed to derive the variants: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
}

/// A variant of the release demo in `dir`; returns the binary to run and
/// the file holding its debug info (for offline symbolization).
fn variant(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let demo = release_demo();
    let bin = dir.join("demo");
    std::fs::copy(demo, &bin).unwrap();
    let b = bin.to_str().unwrap();
    let debug = dir.join("demo.debug");
    let d = debug.to_str().unwrap();
    match name {
        "line-tables" => return (bin.clone(), bin),
        "symtab-only" => run("strip", &["--strip-debug", b]),
        "stripped" => {
            run("objcopy", &["--only-keep-debug", b, d]);
            run("strip", &["--strip-all", b]);
        }
        "debuglink" => {
            run("objcopy", &["--only-keep-debug", b, d]);
            run("strip", &["--strip-all", b]);
            run("objcopy", &[&format!("--add-gnu-debuglink={d}"), b]);
        }
        "compressed" => run("objcopy", &["--compress-debug-sections=zlib", b]),
        "build-id" => {
            run("objcopy", &["--only-keep-debug", b, d]);
            run("strip", &["--strip-all", b]);
        }
        other => panic!("unknown variant {other}"),
    }
    (bin, debug)
}

/// Runs `bin` with a blocking-sleep stall and returns its final report
/// (second capture taken and symbolized).
fn stall_report(bin: &Path) -> Value {
    stall_report_of(bin, "sleep")
}

/// Like [`stall_report`], for the demo's stall `kind`.
fn stall_report_of(bin: &Path, kind: &str) -> Value {
    let demo = DemoStall::start_bin(bin, kind, "forever");
    demo.report_when(Duration::from_secs(30), has_two_captures)
        .unwrap_or_else(|| panic!("no report with two captures from {}", bin.display()));
    // The second capture's DWARF pass and rewrite follow at once.
    std::thread::sleep(Duration::from_millis(1500));
    demo.newest_report().expect("report")
}

/// Derives variant `name` in `dir`, runs its blocking-sleep stall and makes
/// the [`common_checks`]; returns the report and the variant's debug file.
fn checked_variant_report(name: &str, dir: &Path) -> (Value, PathBuf) {
    let (bin, debug) = variant(name, dir);
    let r = stall_report(&bin);
    common_checks(&r, name);
    (r, debug)
}

/// The stripped variant in `dir` with its debug file deleted: nothing but
/// the binary itself to name frames with.
fn stripped_alone(dir: &Path) -> PathBuf {
    let (bin, debug) = variant("stripped", dir);
    std::fs::remove_file(debug).unwrap();
    bin
}

fn loop_group(r: &Value) -> &Value {
    r["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["loop_thread"] == true)
        .unwrap_or_else(|| panic!("no loop thread group: {r}"))
}

fn notes(r: &Value) -> String {
    r["notes"].to_string()
}

/// The verdict every variant must reach.
fn verdict_check(r: &Value, variant: &str) {
    assert_eq!(
        r["verdict"]["kind"], "blocked-syscall",
        "{variant}: wrong verdict: {}",
        r["verdict"]
    );
}

/// Checks shared by every variant: the verdict, and build id and offset on
/// every frame of a known module.
fn common_checks(r: &Value, variant: &str) {
    verdict_check(r, variant);
    let id = r["process"]["build_id"].as_str().expect("process build id");
    for g in r["threads"].as_array().unwrap() {
        for f in g["frames"].as_array().unwrap() {
            if f["module"].is_null() {
                continue;
            }
            assert!(
                f["build_id"].is_string() && f["offset"].is_u64(),
                "{variant}: a frame without build id or offset: {f}"
            );
            if f["module"] == "demo" {
                assert_eq!(f["build_id"], id, "{variant}: {f}");
            }
        }
    }
}

fn culprit(r: &Value) -> (&str, Option<&str>) {
    (
        r["culprit"]["function"].as_str().unwrap_or(""),
        r["culprit"]["file"].as_str(),
    )
}

/// Asserts the culprit is the demo's stalling function, with its file.
fn assert_culprit_with_file(r: &Value) {
    let (f, file) = culprit(r);
    assert!(f.ends_with("demo::stall_sleep"), "{}", r["culprit"]);
    assert!(
        file.is_some_and(|p| p.ends_with("demo.rs")),
        "{}",
        r["culprit"]
    );
}

#[test]
fn line_tables_name_the_culprit_with_file_and_line() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = checked_variant_report("line-tables", dir.path());
    assert_culprit_with_file(&r);
    assert!(
        notes(&r).contains("demo: files, lines and inlined functions from its DWARF debug info"),
        "{}",
        notes(&r)
    );
}

#[test]
fn the_default_release_profile_names_the_culprit_and_says_what_is_missing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = checked_variant_report("symtab-only", dir.path());
    let (f, file) = culprit(&r);
    assert!(f.ends_with("demo::stall_sleep"), "{}", r["culprit"]);
    assert_eq!(file, None, "no DWARF, so no file: {}", r["culprit"]);
    let n = notes(&r);
    assert!(
        n.contains("demo: no DWARF debug info") && n.contains("line-tables-only"),
        "the report says what it could not name and how to get it: {n}"
    );
    for f in loop_group(&r)["frames"].as_array().unwrap() {
        if f["module"] == "demo" {
            assert_ne!(f["symbols"], "debug-info", "{f}");
        }
    }
}

#[test]
fn a_separate_debug_file_next_to_the_binary_is_found() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (r, debug) = checked_variant_report("debuglink", dir.path());
    assert_culprit_with_file(&r);
    let n = notes(&r);
    assert!(
        n.contains("separate debug file") && n.contains(debug.to_str().unwrap()),
        "{n}"
    );
}

#[test]
fn compressed_debug_info_is_not_read_and_the_report_says_so() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = checked_variant_report("compressed", dir.path());
    let (f, file) = culprit(&r);
    assert!(f.ends_with("demo::stall_sleep"), "{}", r["culprit"]);
    assert_eq!(file, None, "{}", r["culprit"]);
    assert!(
        notes(&r).contains("is compressed") && notes(&r).contains("--decompress-debug-sections"),
        "{}",
        notes(&r)
    );
}

/// A debug file installed under `/usr/lib/debug/.build-id`, removed on drop.
struct Installed(PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_debug_file_under_usr_lib_debug_build_id_is_found() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (bin, debug) = variant("build-id", dir.path());
    let out = Command::new("readelf")
        .args(["-n"])
        .arg(&bin)
        .output()
        .expect("readelf (binutils)");
    let notes_text = String::from_utf8_lossy(&out.stdout);
    let id = notes_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("the demo has a GNU build id")
        .trim()
        .to_string();
    let target = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap_or_else(|e| {
        panic!("this test installs a debug file under /usr/lib/debug/.build-id and needs root: {e}")
    });
    std::fs::copy(&debug, &target)
        .unwrap_or_else(|e| panic!("this test needs root to install {}: {e}", target.display()));
    let _installed = Installed(target.clone());
    let r = stall_report(&bin);
    common_checks(&r, "build-id");
    assert_culprit_with_file(&r);
    assert!(
        notes(&r).contains(target.to_str().unwrap()),
        "{}",
        notes(&r)
    );
}

#[test]
fn a_stripped_build_reports_offsets_that_resolve_to_the_stalling_function() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (bin, debug) = variant("stripped", dir.path());
    // The debug file is not where loopwatch looks: the report must do with
    // what the binary has.
    let aside = dir.path().join("elsewhere");
    std::fs::create_dir(&aside).unwrap();
    let debug = {
        let moved = aside.join("demo.debug");
        std::fs::rename(&debug, &moved).unwrap();
        moved
    };
    let r = stall_report(&bin);
    common_checks(&r, "stripped");
    assert!(
        r["culprit"].is_null() || !culprit(&r).0.contains("stall_sleep"),
        "nothing to name it with: {}",
        r["culprit"]
    );
    let n = notes(&r);
    assert!(
        n.contains("demo: stripped") && n.contains("symbolize_offset"),
        "the report says the binary is stripped and how to symbolize later: {n}"
    );
    // Later, with the debug file of that build: the loop thread's demo
    // frames resolve, one of them to the stalling function.
    let frames = loop_group(&r)["frames"].as_array().unwrap();
    let mut resolved = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if f["module"] != "demo" {
            continue;
        }
        let offset = f["offset"].as_u64().unwrap();
        let named = loopwatch::symbolize_offset(&debug, offset, i > 0).expect("symbolize");
        resolved.extend(named.into_iter().filter_map(|n| n.function));
    }
    assert!(
        resolved.iter().any(|n| n.ends_with("demo::stall_sleep")),
        "offsets of a stripped build resolve to the stalling function: {resolved:#?}"
    );
}

/// Issue 13, item 3: verdicts never depend on symbols. A thread asleep in a
/// system call is `blocked-syscall` even when nothing names its frames.
#[test]
fn a_stripped_build_still_gets_the_right_verdict() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bin = stripped_alone(dir.path());
    let r = stall_report(&bin);
    verdict_check(&r, "stripped");
}

/// Issue 13, item 3, for a CPU stall: a thread on CPU with the same stack
/// (by address) in both captures is `cpu-bound` though nothing names its
/// frames, and the report says symbols were missing and how to get them.
#[test]
fn a_stripped_cpu_stall_is_cpu_bound_and_says_symbols_are_missing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let bin = stripped_alone(dir.path());
    let r = stall_report_of(&bin, "spin");
    assert_eq!(r["verdict"]["kind"], "cpu-bound", "{}", r["verdict"]);
    let said = format!("{}{}", r["verdict"]["evidence"], r["notes"]);
    assert!(
        said.contains("line-tables-only") || said.contains("symbolize"),
        "the report says symbols were missing and how to get them: {said}"
    );
}
