//! Where reports go: the report directory, the pair of files of each
//! report, retention, the hourly byte cap and the stderr fallback.
//!
//! The store trusts nothing in the directory:
//!
//! * **The directory** ([`dir`]) is opened without following a symbolic
//!   link in its last component, and every later operation is relative to
//!   that descriptor. It is created mode 0700 (exactly, whatever the
//!   umask); an existing directory of ours that grants group or other
//!   access is tightened to 0700, logged once. It is re-opened when it was
//!   removed or replaced while the daemon runs.
//! * **Refusals.** A report directory that is a symbolic link, is not a
//!   directory, or is owned by another user than the effective one is
//!   refused. At start that is a typed error,
//!   [`Error::ReportDir`] from
//!   [`Builder::start`](crate::Builder::start): these are a wrong setting
//!   or a planted path, they do not fix themselves, and a report directory
//!   that silently holds nothing is found out only during the incident it
//!   was meant for; the application that prefers to run without files
//!   matches the error and calls [`no_report_files`](crate::Builder::no_report_files).
//!   A directory that merely cannot be created or written *now* (missing
//!   parent, no permission, full or read-only disk) is not an error at
//!   start: it is logged and tried again at each report. If the directory
//!   turns into something refused after start, each report goes to stderr
//!   instead and the failure is counted and logged once.
//! * **Both files or neither** ([`write`](mod@write)): `stall-<id>.json` and
//!   `stall-<id>.txt` are written and fsync'd as temporary files, then
//!   renamed, then the directory is fsync'd. A reader sees the previous
//!   complete pair or the new complete pair.
//! * **Retention** ([`retention`]) removes only regular files of
//!   loopwatch's exact name pattern, ranks reports by their own time (the
//!   id), never removes the report just written or a pinned one ([`Pin`],
//!   for the first report of a storm), and sweeps temporary files of a
//!   killed writer after a minute.
//! * **Byte cap** ([`budget`]): at most `bytes_per_hour` (default
//!   [`DEFAULT_MAX_REPORT_BYTES_PER_HOUR`]) are written per hour, counted
//!   over a sliding hour on the monotonic clock. A save that would exceed
//!   it is refused and counted as *dropped* (not as failed), logged at
//!   most once per hour.
//!
//! When a report does not reach the disk (failed or dropped) its compact
//! text goes to stderr, which systemd puts in the journal: once per report
//! id, within a budget of [`budget::STDERR_BYTES_PER_HOUR`]. A failure is
//! logged once until a write succeeds again. Without a directory the
//! compact report goes to stderr once per report id too (its first
//! version), within the same budget.
//!
//! This module does not decide what a report says or when it is written
//! (that is the [`diagnostics`](crate::diagnostics)'), nor which report
//! starts a storm.

mod budget;
mod dir;
mod names;
mod retention;
mod write;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::error::{Error, Result};
use crate::report::StallReport;
use budget::{HourlyBytes, HourlyGate, StderrFallback};
use dir::{DirError, ReportDir};
use retention::{Pins, Policy};
use write::TempNames;

pub use retention::{MAX_PINNED, STALE_TEMP_AGE};

/// Default number of reports kept.
pub const DEFAULT_KEEP_REPORTS: usize = 20;

/// Where the builder was told to put reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ReportDirSetting {
    /// `$STATE_DIRECTORY` or `$RUNTIME_DIRECTORY` when systemd provides one, else none.
    #[default]
    Default,
    /// This directory.
    Dir(PathBuf),
    /// No files.
    Disabled,
}

impl ReportDirSetting {
    /// The directory this setting resolves to in the current environment.
    pub(crate) fn resolve(&self) -> Option<PathBuf> {
        match self {
            ReportDirSetting::Dir(p) => Some(p.clone()),
            ReportDirSetting::Disabled => None,
            ReportDirSetting::Default => {
                ["STATE_DIRECTORY", "RUNTIME_DIRECTORY"]
                    .iter()
                    .find_map(|v| {
                        let val = std::env::var_os(v)?;
                        // systemd separates several directories with ':'.
                        let first = val.to_string_lossy().split(':').next()?.to_string();
                        (!first.is_empty()).then(|| PathBuf::from(first).join("loopwatch"))
                    })
            }
        }
    }
}

/// Default cap on bytes written to the report directory per hour: 16 MiB.
///
/// A report of a process with a few hundred threads is 50–300 KB and is
/// written up to three times (detection, second capture, recovery), so the
/// cap lets through a few dozen full stalls an hour and stops a stall storm
/// from wearing the disk or filling it.
pub const DEFAULT_MAX_REPORT_BYTES_PER_HOUR: u64 = 16 * 1024 * 1024;

/// Whether retention must keep a report whatever its age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// An ordinary report: kept while it is among the newest.
    No,
    /// Kept while pinned (the first report of a storm). At most
    /// [`MAX_PINNED`] reports are pinned; pinning another releases the
    /// oldest pin. A pin is sticky: rewriting the report with `Pin::No`
    /// does not release it. Pins live in memory, for this run.
    Yes,
}

/// What became of one save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Both files are on disk; the text file's path.
    Written(PathBuf),
    /// The write failed (counted in [`ReportStore::failed`]); the compact
    /// report went to stderr.
    Failed,
    /// Refused by the hourly byte cap (counted in
    /// [`ReportStore::dropped`]); the compact report went to stderr.
    Dropped,
    /// No report directory: the compact report went to stderr.
    StderrOnly,
}

impl Saved {
    /// The text file's path, when the report is on disk.
    pub fn path(self) -> Option<PathBuf> {
        match self {
            Saved::Written(p) => Some(p),
            _ => None,
        }
    }
}

/// Writes reports into the report directory and remembers what happened.
///
/// ```
/// # // ReportStore is reachable from outside only through bench_support.
/// use loopwatch::bench_support::{sample_report, Pin, ReportStore, Saved};
/// let dir = tempfile::tempdir().unwrap();
/// let mut store = ReportStore::new(Some(dir.path().join("reports")), 20, 16 << 20).unwrap();
/// let report = sample_report("20260101T000000Z-main-1-0001", 0);
/// let saved = store.save(&report, Pin::Yes);
/// assert!(matches!(saved, Saved::Written(_)));
/// assert_eq!(store.written(), 1);
/// ```
#[derive(Debug)]
pub struct ReportStore {
    dir: Option<ReportDir>,
    keep: usize,
    written: u64,
    failed: u64,
    dropped: u64,
    failure_logged: bool,
    pins: Pins,
    /// Ids written by this store, oldest first (at most `keep`, at most 1024).
    written_here: VecDeque<String>,
    bytes: HourlyBytes,
    dropped_log: HourlyGate,
    retention_log: HourlyGate,
    stderr: StderrFallback,
    temp_names: TempNames,
    clock: Instant,
}

/// Most ids of its own the store remembers for ranking.
const MAX_REMEMBERED: usize = 1024;

impl ReportStore {
    /// A store for `dir` (None: no files, stderr only) keeping `keep`
    /// reports and writing at most `bytes_per_hour` bytes per hour.
    ///
    /// Opens (or creates) the directory now. Fails with
    /// [`Error::ReportDir`] when the directory is refused (a symbolic
    /// link, not a directory, another user's); a directory that cannot be
    /// created or opened now is logged and tried again at each save.
    pub fn new(dir: Option<PathBuf>, keep: usize, bytes_per_hour: u64) -> Result<Self> {
        let dir = match dir {
            Some(path) => {
                let mut d = ReportDir::new(path);
                match d.fd() {
                    Ok(_) => {}
                    Err(DirError::Refused(source)) => {
                        return Err(Error::ReportDir {
                            path: d.path().to_path_buf(),
                            source,
                        })
                    }
                    Err(DirError::Unusable(e)) => {
                        tracing::warn!(dir = %d.path().display(), error = %e,
                            "loopwatch report directory is not usable now; will retry when a stall happens");
                    }
                }
                Some(d)
            }
            None => None,
        };
        Ok(ReportStore {
            dir,
            keep: keep.max(1),
            written: 0,
            failed: 0,
            dropped: 0,
            failure_logged: false,
            pins: Pins::default(),
            written_here: VecDeque::new(),
            bytes: HourlyBytes::new(bytes_per_hour),
            dropped_log: HourlyGate::default(),
            retention_log: HourlyGate::default(),
            stderr: StderrFallback::new(),
            temp_names: TempNames::default(),
            clock: Instant::now(),
        })
    }

    /// The directory, if reports go to files.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Saves written.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Saves that failed (the directory refused or unusable, a full disk).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Saves refused by the hourly byte cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Prints the compact text of a report that could not be saved in
    /// `dir` (or that has no directory), under `headline`, once per report
    /// id (within the stderr budget).
    fn print_unsaved(
        &mut self,
        now: u64,
        report: &StallReport,
        dir: Option<&Path>,
        headline: &str,
    ) {
        self.stderr.print(now, &report.id, headline, || {
            report.to_compact_text_for(dir)
        });
    }

    /// Writes (or rewrites) `report`, pinning it first when asked.
    pub fn save(&mut self, report: &StallReport, pin: Pin) -> Saved {
        let now = self.clock.elapsed().as_secs();
        if pin == Pin::Yes {
            self.pins.pin(&report.id);
        }
        let Some(dir) = self.dir.as_mut() else {
            self.print_unsaved(now, report, None, "");
            return Saved::StderrOnly;
        };
        let path = dir.path().to_path_buf();
        let json = report.to_json();
        let txt = report.to_text();
        let size = (json.len() + txt.len()) as u64;
        if !self.bytes.fits(now, size) {
            self.dropped += 1;
            if self.dropped_log.open(now) {
                tracing::warn!(
                    dir = %path.display(), report_bytes = size, spent = self.bytes.spent(now),
                    dropped = self.dropped,
                    "loopwatch's hourly cap on report bytes is reached; reports go to stderr only \
                     (logged once per hour)"
                );
            }
            let headline = format!(
                "loopwatch: stall report {} not written to {}: hourly byte cap reached\n",
                report.id,
                path.display()
            );
            self.print_unsaved(now, report, Some(&path), &headline);
            return Saved::Dropped;
        }
        let written = match dir.fd() {
            // Diagnostics make every id; this only keeps a malformed one
            // from naming a file outside the pattern retention knows.
            _ if !names::is_report_id(&report.id) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("report id {:?} is not of loopwatch's shape", report.id),
            )),
            Err(e) => Err(e.into_io()),
            Ok(fd) => {
                let result = write::write_pair(
                    fd,
                    &mut self.temp_names,
                    &report.id,
                    json.as_bytes(),
                    txt.as_bytes(),
                );
                if result.is_ok() {
                    self.bytes.spend(now, size);
                    remember(&mut self.written_here, &report.id, self.keep);
                }
                // Also after a failed write: a killed writer's leftovers
                // may be what fills the disk.
                let policy = Policy {
                    keep: self.keep,
                    just_written: &report.id,
                    pins: &self.pins,
                    written_here: &self.written_here,
                    now: SystemTime::now(),
                };
                let trouble = match retention::sweep(fd, &policy) {
                    Ok(s) => (s.errors > 0 || s.truncated).then(|| format!("{s:?}")),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(t) = trouble.filter(|_| self.retention_log.open(now)) {
                    tracing::warn!(dir = %path.display(), outcome = %t,
                        "loopwatch retention could not tidy the report directory (logged once per hour)");
                }
                result
            }
        };
        match written {
            Ok(()) => {
                self.written += 1;
                if self.failure_logged {
                    self.failure_logged = false;
                    tracing::info!(dir = %path.display(), "loopwatch can write reports again");
                }
                Saved::Written(path.join(names::final_name(&report.id, "txt")))
            }
            Err(e) => {
                self.failed += 1;
                if !self.failure_logged {
                    self.failure_logged = true;
                    tracing::error!(
                        dir = %path.display(), error = %e, failures = self.failed,
                        "loopwatch could not write a stall report; the compact report goes to stderr"
                    );
                }
                let headline = format!(
                    "loopwatch: could not write stall report to {}: {e}\n",
                    path.display()
                );
                self.print_unsaved(now, report, Some(&path), &headline);
                Saved::Failed
            }
        }
    }
}

/// Remembers `id` as written by this store (once, newest last).
fn remember(ids: &mut VecDeque<String>, id: &str, keep: usize) {
    if let Some(i) = ids.iter().position(|x| x == id) {
        ids.remove(i);
    }
    if ids.len() >= keep.min(MAX_REMEMBERED) {
        ids.pop_front();
    }
    ids.push_back(id.to_string());
}
