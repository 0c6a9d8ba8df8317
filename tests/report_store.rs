//! The report store against a hostile or broken report directory, on real
//! files: a symbolic link, a directory open to everyone or owned by another
//! user, planted names, a clock that stepped back, things that are not
//! regular files, leftovers of a killed writer, a nearly full file system
//! and the hourly byte cap.
//!
//! These tests run as root (they chown to uid 65534 and mount a tmpfs);
//! root bypasses permission checks, so ownership is tested with chown, not
//! with permission bits. A test that needs root fails with a clear message
//! when it is not root.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::SmallTmpfs;
use loopwatch::bench_support::{sample_report, Pin, ReportStore, Saved, MAX_PINNED};
use loopwatch::Watchdog;

const CAP: u64 = 16 << 20;

/// `20261124T215722Z`: the id form of a UTC time.
fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// A report id at time `t` of process `pid`, sequence `seq`.
fn id_at(t: SystemTime, pid: u32, seq: u64) -> String {
    format!("{}-main-{pid}-{seq:04}", stamp(t))
}

/// An id of this process, now.
fn id_now(seq: u64) -> String {
    id_at(SystemTime::now(), std::process::id(), seq)
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The report ids present as regular files, and whether each has both halves.
fn report_ids(dir: &Path) -> BTreeSet<String> {
    let all = names(dir);
    let mut ids = BTreeSet::new();
    for n in &all {
        let Some(id) = n
            .strip_prefix("stall-")
            .and_then(|r| r.strip_suffix(".json").or_else(|| r.strip_suffix(".txt")))
        else {
            continue;
        };
        if !fs::symlink_metadata(dir.join(n)).unwrap().is_file() {
            continue;
        }
        assert!(
            all.contains(&format!("stall-{id}.json")) && all.contains(&format!("stall-{id}.txt")),
            "half a pair for {id}: {all:?}"
        );
        ids.insert(id.to_string());
    }
    ids
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn plant_pair(dir: &Path, id: &str) {
    for ext in ["json", "txt"] {
        fs::write(dir.join(format!("stall-{id}.{ext}")), b"planted").unwrap();
    }
}

fn require_root() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test needs root (it chowns to another uid or mounts a tmpfs)"
    );
}

/// Log lines captured from `tracing` on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

/// Runs `f` with its `tracing` output (INFO and up) captured.
fn with_logs<T>(f: impl FnOnce() -> T) -> (T, Logs) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, logs)
}

/// Asserts that `start()` with reports in `dir` fails with
/// `Error::ReportDir` saying `why`.
fn assert_start_refused(dir: &Path, why: &str) {
    let rt = common::current_thread();
    let started = Watchdog::builder()
        .report_dir(dir)
        .watch("main", rt.handle().clone())
        .start();
    match started {
        Err(loopwatch::Error::ReportDir { source, .. }) => {
            assert!(source.to_string().contains(why), "{source}")
        }
        Err(e) => panic!("expected Error::ReportDir ({why}), got {e}"),
        Ok(wd) => {
            wd.shutdown();
            panic!("start() accepted a report directory that {why}")
        }
    }
}

#[test]
fn a_symlinked_directory_is_refused_not_followed() {
    let root = tempfile::tempdir().unwrap();
    let real = root.path().join("elsewhere");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
    let link = root.path().join("reports");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let err = ReportStore::new(Some(link.clone()), 20, CAP).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_start_refused(&link, "symbolic link");
    assert_eq!(mode(&real), 0o755, "the link's target was not touched");
    assert!(names(&real).is_empty());

    // A dangling link is refused too, and its target is not created.
    let dangling = root.path().join("dangling");
    std::os::unix::fs::symlink(root.path().join("nowhere"), &dangling).unwrap();
    assert!(ReportStore::new(Some(dangling), 20, CAP).is_err());
    assert!(!root.path().join("nowhere").exists());

    // Swapped for a link after start: the save fails, counted, nothing written there.
    let dir = root.path().join("swapped");
    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    assert!(matches!(
        store.save(&sample_report(&id_now(1), 0), Pin::No),
        Saved::Written(_)
    ));
    fs::rename(&dir, root.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&real, &dir).unwrap();
    assert_eq!(
        store.save(&sample_report(&id_now(2), 0), Pin::No),
        Saved::Failed
    );
    assert_eq!((store.written(), store.failed()), (1, 1));
    assert!(names(&real).is_empty(), "{:?}", names(&real));
    assert_eq!(mode(&real), 0o755);
}

#[test]
fn an_existing_0777_directory_is_tightened_and_logged_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let (store, logs) = with_logs(|| {
        let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
        assert_eq!(mode(&dir), 0o700, "tightened at start");
        // Loosened again while running: tightened again at the next save.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        let saved = store.save(&sample_report(&id_now(1), 0), Pin::No);
        assert!(matches!(saved, Saved::Written(_)), "{saved:?}");
        store
    });
    assert_eq!(mode(&dir), 0o700, "tightened again before writing");
    assert_eq!(store.written(), 1);
    assert_eq!(
        logs.count("tightened to 0700"),
        1,
        "logged once: {}",
        String::from_utf8_lossy(&logs.0.lock().unwrap())
    );
    for n in names(&dir) {
        assert_eq!(mode(&dir.join(&n)), 0o600, "{n}");
    }
}

#[test]
fn a_new_directory_and_its_files_get_exact_modes_whatever_the_umask() {
    // The umask is process-wide: change it in a child of our own.
    if common::role().as_deref() == Some("umask") {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o777));
        let dir = PathBuf::from(std::env::var("REPORTS").unwrap());
        let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
        assert_eq!(mode(&dir), 0o700, "0700 as soon as it is created");
        let saved = store.save(&sample_report(&id_now(1), 0), Pin::No);
        assert!(matches!(saved, Saved::Written(_)), "{saved:?}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let out = common::run_child(
        "a_new_directory_and_its_files_get_exact_modes_whatever_the_umask",
        "umask",
        &[("REPORTS", dir.display().to_string())],
    );
    common::assert_child_ok(&out);
    assert_eq!(mode(&dir), 0o700, "directory mode under umask 0777");
    let files = names(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for n in files {
        assert_eq!(mode(&dir.join(&n)), 0o600, "{n} under umask 0777");
    }
}

#[test]
fn a_directory_of_another_user_is_refused() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();

    let err = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap_err();
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert_start_refused(&dir, "owned by uid 65534");
    assert_eq!(mode(&dir), 0o777, "another user's directory is not changed");
    assert!(names(&dir).is_empty());

    // Given away after start: the next save fails and writes nothing.
    let ours = root.path().join("ours");
    let mut store = ReportStore::new(Some(ours.clone()), 20, CAP).unwrap();
    std::os::unix::fs::chown(&ours, Some(65534), None).unwrap();
    assert_eq!(
        store.save(&sample_report(&id_now(1), 0), Pin::No),
        Saved::Failed
    );
    assert_eq!(store.failed(), 1);
    assert!(names(&ours).is_empty());
}

#[test]
fn a_deleted_or_replaced_directory_is_reopened() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    fs::remove_dir(&dir).unwrap();
    let first = id_now(1);
    assert!(matches!(
        store.save(&sample_report(&first, 0), Pin::No),
        Saved::Written(_)
    ));
    assert_eq!(mode(&dir), 0o700, "recreated 0700");
    assert_eq!(report_ids(&dir), BTreeSet::from([first]));

    // Replaced by another directory: the new one is used (and checked),
    // nothing more goes into the old one.
    let old = root.path().join("old");
    fs::rename(&dir, &old).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let second = id_now(2);
    assert!(matches!(
        store.save(&sample_report(&second, 0), Pin::No),
        Saved::Written(_)
    ));
    assert_eq!(report_ids(&dir), BTreeSet::from([second]));
    assert_eq!(report_ids(&old).len(), 1);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn planted_newer_names_never_delete_the_new_report() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    fs::create_dir(&dir).unwrap();
    // Two real reports of a run of yesterday.
    let yesterday = SystemTime::now() - Duration::from_secs(24 * 3600);
    let mut previous = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    let mut ours = BTreeSet::new();
    for seq in 1..=2 {
        let id = id_at(yesterday, 4242, seq);
        previous.save(&sample_report(&id, 0), Pin::No);
        ours.insert(id);
    }
    drop(previous);
    // Twenty planted names fifty years ahead: they sort newer than anything.
    let future = SystemTime::now() + Duration::from_secs(50 * 365 * 24 * 3600);
    for i in 0..20 {
        plant_pair(&dir, &id_at(future, 99_999, i + 1));
    }
    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    for seq in 1..=6 {
        let id = id_now(seq);
        assert!(matches!(
            store.save(&sample_report(&id, 0), Pin::No),
            Saved::Written(_)
        ));
        ours.insert(id);
        let ids = report_ids(&dir);
        assert!(
            ours.is_subset(&ids),
            "a report just written, or a real older one, was deleted before a planted one: {ids:?}"
        );
        assert_eq!(ids.len(), 20, "the keep limit still holds");
    }
}

#[test]
fn a_clock_step_back_never_deletes_the_new_report() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let now = SystemTime::now();
    let before_step = now + Duration::from_secs(7200);
    // A previous run wrote three reports while the clock was two hours ahead.
    let mut previous = ReportStore::new(Some(dir.clone()), 3, CAP).unwrap();
    for seq in 1..=3 {
        previous.save(&sample_report(&id_at(before_step, 4242, seq), 0), Pin::No);
    }
    assert_eq!(report_ids(&dir).len(), 3);

    // This run's clock is two hours behind them.
    let mut store = ReportStore::new(Some(dir.clone()), 3, CAP).unwrap();
    let mut ours = Vec::new();
    for seq in 1..=3 {
        let id = id_at(now, std::process::id(), seq);
        store.save(&sample_report(&id, 0), Pin::No);
        ours.push(id);
        let ids = report_ids(&dir);
        assert!(ours.iter().all(|o| ids.contains(o)), "{ours:?} vs {ids:?}");
        assert_eq!(ids.len(), 3);
    }
    // And a step back within this run: the later writes stay.
    for seq in 4..=5 {
        let id = id_at(now - Duration::from_secs(3600), std::process::id(), seq);
        store.save(&sample_report(&id, 0), Pin::No);
        ours.push(id);
    }
    assert_eq!(
        report_ids(&dir),
        ours[2..].iter().cloned().collect::<BTreeSet<_>>(),
        "the three written last are kept"
    );
}

#[test]
fn things_named_like_reports_that_are_not_files_do_not_stop_retention() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    fs::create_dir(&dir).unwrap();
    let old = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    // Sorted first, the oldest of all: a directory, a symlink to a file
    // outside, and a fifo.
    let as_dir = format!("stall-{}.json", id_at(old, 1, 1));
    fs::create_dir(dir.join(&as_dir)).unwrap();
    let outside = root.path().join("precious");
    fs::write(&outside, b"keep me").unwrap();
    let as_link = format!("stall-{}.txt", id_at(old, 1, 2));
    std::os::unix::fs::symlink(&outside, dir.join(&as_link)).unwrap();
    let as_fifo = format!("stall-{}.json", id_at(old, 1, 3));
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        dir.join(&as_fifo),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();

    let mut store = ReportStore::new(Some(dir.clone()), 2, CAP).unwrap();
    let mut ours = Vec::new();
    for seq in 1..=4 {
        let id = id_now(seq);
        store.save(&sample_report(&id, 0), Pin::No);
        ours.push(id);
    }
    assert_eq!(store.written(), 4);
    assert_eq!(
        report_ids(&dir),
        ours[2..].iter().cloned().collect::<BTreeSet<_>>(),
        "retention went past the odd entries: {:?}",
        names(&dir)
    );
    let left = names(&dir);
    for odd in [&as_dir, &as_link, &as_fifo] {
        assert!(left.contains(odd), "{odd} was removed");
    }
    assert_eq!(fs::read(&outside).unwrap(), b"keep me");
}

#[test]
fn stale_temporary_files_are_swept_and_fresh_ones_kept() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    fs::create_dir(&dir).unwrap();
    let two_minutes_ago = SystemTime::now() - Duration::from_secs(120);
    let backdate = |p: &Path| {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(two_minutes_ago)
            .unwrap()
    };
    // A killed writer's leftovers: this version's name and tempfile's.
    let stale = [
        ".stall-20260101T000000Z-main-7-0001.json.7-1.tmp",
        ".stall-Ab3xYz.tmp",
    ];
    for s in stale {
        fs::write(dir.join(s), b"half a report").unwrap();
        backdate(&dir.join(s));
    }
    let fresh = ".stall-20260101T000000Z-main-8-0001.txt.8-1.tmp";
    fs::write(dir.join(fresh), b"being written").unwrap();
    let not_ours = "other.tmp";
    fs::write(dir.join(not_ours), b"x").unwrap();
    backdate(&dir.join(not_ours));
    let tmp_dir = ".stall-somedir.tmp";
    fs::create_dir(dir.join(tmp_dir)).unwrap();

    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    let id = id_now(1);
    store.save(&sample_report(&id, 0), Pin::No);
    let left = names(&dir);
    for s in stale {
        assert!(!left.contains(s), "{s} was not swept: {left:?}");
    }
    for k in [fresh, not_ours, tmp_dir] {
        assert!(left.contains(k), "{k} was removed: {left:?}");
    }
    assert_eq!(report_ids(&dir), BTreeSet::from([id]));
}

#[test]
fn a_pinned_report_outlives_retention_and_pins_are_bounded() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let mut store = ReportStore::new(Some(dir.clone()), 2, CAP).unwrap();
    let first = id_now(1);
    store.save(&sample_report(&first, 0), Pin::Yes);
    let mut last = String::new();
    for seq in 2..=8 {
        last = id_now(seq);
        // Rewrites without a pin keep the pin.
        store.save(&sample_report(&first, 0), Pin::No);
        store.save(&sample_report(&last, 0), Pin::No);
    }
    let ids = report_ids(&dir);
    assert!(ids.contains(&first), "the storm's first report: {ids:?}");
    assert!(ids.contains(&last), "{ids:?}");
    assert_eq!(ids.len(), 2, "{ids:?}");

    // Pins are bounded: pinning one more than the bound releases the oldest.
    let mut store = ReportStore::new(Some(root.path().join("pins")), 1, CAP).unwrap();
    let pinned: Vec<String> = (100..=100 + MAX_PINNED as u64).map(id_now).collect();
    for id in &pinned {
        store.save(&sample_report(id, 0), Pin::Yes);
    }
    let newest = id_now(200);
    store.save(&sample_report(&newest, 0), Pin::No);
    let ids = report_ids(&root.path().join("pins"));
    let mut expected: BTreeSet<String> = pinned[1..].iter().cloned().collect();
    expected.insert(newest);
    assert_eq!(ids, expected);
}

/// A small tmpfs mounted for the test, after checking this runs as root.
fn small_tmpfs(size: &str) -> SmallTmpfs {
    require_root();
    SmallTmpfs::new(size)
}

// What this file does with the shared tmpfs (an inherent impl may sit in
// any module of the crate that defines the type).
impl SmallTmpfs {
    /// Fills the file system, then frees exactly `pages` pages.
    fn fill_leaving(&self, pages: u64) -> PathBuf {
        let filler = self.0.path().join("filler");
        let mut f = fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len - pages * 4096).unwrap();
        f.sync_all().unwrap();
        filler
    }
}

#[test]
fn a_nearly_full_filesystem_leaves_no_lone_json() {
    let fs_ = small_tmpfs("64k");
    let dir = fs_.0.path().join("reports");
    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    // A small pair that fits, to be rewritten later.
    let small = sample_report(&id_now(1), 0);
    assert!(matches!(store.save(&small, Pin::No), Saved::Written(_)));
    let before_json = fs::read(dir.join(format!("stall-{}.json", small.id))).unwrap();

    // Three free pages: room for the JSON (three pages) but not its text.
    let big = |id: &str| sample_report(id, 9 * 1024);
    let json_len = big("x").to_json().len();
    assert!(
        (8193..=12288).contains(&json_len),
        "test setup: the JSON must take exactly three pages, is {json_len} bytes"
    );
    fs_.fill_leaving(3);
    let new = big(&id_now(2));
    assert_eq!(store.save(&new, Pin::No), Saved::Failed);
    // The rewrite of an existing report keeps its previous complete pair.
    assert_eq!(store.save(&big(&small.id), Pin::No), Saved::Failed);
    assert_eq!((store.written(), store.failed()), (1, 2));
    let left = names(&dir);
    assert_eq!(
        left,
        BTreeSet::from([
            format!("stall-{}.json", small.id),
            format!("stall-{}.txt", small.id)
        ]),
        "no lone JSON and no temporary file"
    );
    assert_eq!(
        fs::read(dir.join(format!("stall-{}.json", small.id))).unwrap(),
        before_json,
        "the previous version is intact"
    );
}

#[test]
fn a_killed_writers_leftovers_filling_the_disk_are_swept_even_when_a_write_fails() {
    let fs_ = small_tmpfs("64k");
    let dir = fs_.0.path().join("reports");
    let mut store = ReportStore::new(Some(dir.clone()), 20, CAP).unwrap();
    // A killed writer left eight pages behind, two minutes ago.
    let leftover = dir.join(".stall-20260101T000000Z-main-7-0001.json.7-1.tmp");
    fs::write(&leftover, vec![0u8; 8 * 4096]).unwrap();
    fs::File::options()
        .write(true)
        .open(&leftover)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    fs_.fill_leaving(0);
    let report = |seq| sample_report(&id_now(seq), 0);
    assert_eq!(store.save(&report(1), Pin::No), Saved::Failed, "disk full");
    assert!(!leftover.exists(), "swept after the failed write");
    let saved = store.save(&report(2), Pin::No);
    assert!(matches!(saved, Saved::Written(_)), "{saved:?}");
    assert_eq!((store.written(), store.failed()), (1, 1));
}

#[test]
fn the_byte_cap_refuses_counts_and_prints_each_report_once() {
    if common::role().as_deref() == Some("cap") {
        let dir = PathBuf::from(std::env::var("REPORTS").unwrap());
        let size = {
            let r = sample_report(&id_now(1), 4000);
            (r.to_json().len() + r.to_text().len()) as u64
        };
        let (store, logs) = with_logs(|| {
            // Room for three reports.
            let mut store = ReportStore::new(Some(dir.clone()), 20, 3 * size + size / 2).unwrap();
            for seq in 1..=3 {
                let saved = store.save(&sample_report(&id_now(seq), 4000), Pin::No);
                assert!(matches!(saved, Saved::Written(_)), "{saved:?}");
            }
            // Two more reports, each saved three times (detection, second
            // capture, recovery): all refused.
            for seq in 4..=5 {
                let r = sample_report(&id_now(seq), 4000);
                for _ in 0..3 {
                    assert_eq!(store.save(&r, Pin::No), Saved::Dropped);
                }
            }
            store
        });
        assert_eq!(
            (store.written(), store.dropped(), store.failed()),
            (3, 6, 0)
        );
        assert_eq!(logs.count("hourly cap on report bytes"), 1, "logged once");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("reports");
    let out = common::run_child(
        "the_byte_cap_refuses_counts_and_prints_each_report_once",
        "cap",
        &[("REPORTS", dir.display().to_string())],
    );
    common::assert_child_ok(&out);
    assert_eq!(report_ids(&dir).len(), 3, "{:?}", names(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("hourly byte cap reached").count(),
        2,
        "one line per refused report:\n{stderr}"
    );
    assert_eq!(
        stderr.matches("loopwatch stall report").count(),
        2,
        "one compact report per refused report:\n{stderr}"
    );
}
