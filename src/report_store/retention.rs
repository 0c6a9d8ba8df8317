//! Retention: which reports stay in the directory, and the sweep of
//! orphaned temporary files.
//!
//! After each report is written, one pass over the directory (through its
//! descriptor, at most [`MAX_SCANNED_ENTRIES`] entries) considers only
//! names of loopwatch's exact pattern ([`names`](super::names)) that are
//! regular files (checked with `fstatat(AT_SYMLINK_NOFOLLOW)`; directories,
//! symbolic links, fifos and the rest are skipped, never removed, and do
//! not stop the pass). It keeps, in this order:
//!
//! 1. the report just written, always;
//! 2. pinned reports ([`Pins`], at most [`MAX_PINNED`]), always;
//! 3. up to `keep` reports in all, newest first: first the ones this store
//!    wrote in this run, by the order it wrote them (immune to a clock
//!    that steps), then the others by the UTC time in their id — the
//!    report's own time, not the file's mtime, which a rewrite or `touch`
//!    changes. A report whose id time is later than now cannot be newer
//!    than what was just written: it predates a clock step back, or was
//!    planted, so it ranks below every other.
//!
//! Everything else of the pattern is removed (both halves). Temporary
//! files of ours (`.stall-*.tmp`, regular files) whose mtime is more than
//! [`STALE_TEMP_AGE`] old are the leftovers of a killed writer and are
//! removed too.
//!
//! The id time rather than the JSON's `times.detected`: both are the wall
//! clock at detection, written by the same code at the same moment; the id
//! is in the name, so reading it costs no file read, and a planted file can
//! lie in either.

use std::collections::{HashMap, VecDeque};
use std::os::fd::BorrowedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType};
use rustix::io::Errno;

use super::names::{is_temp_name, ReportName};

/// How many reports can be pinned at once; pinning one more releases the
/// oldest pin.
pub const MAX_PINNED: usize = 4;
/// A temporary file older than this was left by a writer that died.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);
/// Entries looked at per pass: a directory flooded with names costs a
/// bounded amount of work per report.
pub const MAX_SCANNED_ENTRIES: usize = 4096;
/// A report id time up to this far ahead of now still counts as "now".
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// Reports that retention keeps whatever their age.
#[derive(Debug, Default)]
pub(super) struct Pins {
    ids: VecDeque<String>,
}

impl Pins {
    /// Pins `id`; at [`MAX_PINNED`] the oldest pin is released first.
    pub(super) fn pin(&mut self, id: &str) {
        if self.contains(id) {
            return;
        }
        if self.ids.len() >= MAX_PINNED {
            self.ids.pop_front();
        }
        self.ids.push_back(id.to_string());
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.iter().any(|p| p == id)
    }
}

/// What one pass is told.
pub(super) struct Policy<'a> {
    /// Reports to keep in all (the just-written and pinned ones may exceed it).
    pub keep: usize,
    /// The report just written.
    pub just_written: &'a str,
    pub pins: &'a Pins,
    /// Ids this store wrote in this run, oldest first.
    pub written_here: &'a VecDeque<String>,
    /// The wall clock now.
    pub now: SystemTime,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    /// Reports removed.
    pub reports_removed: usize,
    /// Orphaned temporary files removed.
    pub temps_removed: usize,
    /// Entries that could not be removed.
    pub errors: usize,
    /// The directory had more than [`MAX_SCANNED_ENTRIES`] entries.
    pub truncated: bool,
}

/// One report found on disk: its regular files and its rank.
struct Found {
    files: Vec<String>,
    time: SystemTime,
    pid: u64,
    seq: u64,
}

/// One retention pass over `dir`.
pub(super) fn sweep(dir: BorrowedFd<'_>, policy: &Policy<'_>) -> rustix::io::Result<Swept> {
    let mut swept = Swept::default();
    let mut found: HashMap<String, Found> = HashMap::new();
    let stale_before = policy.now.checked_sub(STALE_TEMP_AGE);
    for (n, entry) in Dir::read_from(dir)?.enumerate() {
        if n >= MAX_SCANNED_ENTRIES {
            swept.truncated = true;
            break;
        }
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if let Some(r) = ReportName::parse(name) {
            if regular_file(dir, name).is_none() {
                continue;
            }
            found
                .entry(r.id.to_string())
                .or_insert_with(|| Found {
                    files: Vec::new(),
                    time: r.time,
                    pid: r.pid,
                    seq: r.seq,
                })
                .files
                .push(name.to_string());
        } else if is_temp_name(name) {
            let Some(st) = regular_file(dir, name) else {
                continue;
            };
            let mtime = UNIX_EPOCH + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
            if stale_before.is_some_and(|before| mtime < before) {
                match remove(dir, name) {
                    true => swept.temps_removed += 1,
                    false => swept.errors += 1,
                }
            }
        }
    }
    for id in doomed(&found, policy) {
        let Some(f) = found.get(id) else { continue };
        let mut ok = true;
        for name in &f.files {
            ok &= remove(dir, name);
        }
        if ok {
            swept.reports_removed += 1;
        } else {
            swept.errors += 1;
        }
    }
    Ok(swept)
}

/// The ids to remove: everything past the kept ones (see the module doc).
fn doomed<'f>(found: &'f HashMap<String, Found>, policy: &Policy<'_>) -> Vec<&'f str> {
    let always = |id: &str| id == policy.just_written || policy.pins.contains(id);
    let kept_always = found.keys().filter(|id| always(id)).count();
    let mut room = policy.keep.saturating_sub(kept_always);
    // Newest first: this run's own reports by write order, then the others.
    let written_here: HashMap<&str, usize> = policy
        .written_here
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let now = policy.now + CLOCK_SLACK;
    let mut ranked: Vec<(&str, &Found)> = found
        .iter()
        .filter(|(id, _)| !always(id))
        .map(|(id, f)| (id.as_str(), f))
        .collect();
    ranked.sort_by_key(|(id, f)| {
        std::cmp::Reverse((
            written_here.get(id).map(|i| i + 1).unwrap_or(0),
            f.time <= now,
            f.time,
            f.seq,
            f.pid,
        ))
    });
    let mut out = Vec::new();
    for (id, _) in ranked {
        if room > 0 {
            room -= 1;
        } else {
            out.push(id);
        }
    }
    out
}

/// The entry's status when it is a regular file (not followed).
fn regular_file(dir: BorrowedFd<'_>, name: &str) -> Option<rustix::fs::Stat> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some(st)
}

/// Removes a file (never a directory: `unlinkat` without `AT_REMOVEDIR`).
/// True when it is gone.
fn remove(dir: BorrowedFd<'_>, name: &str) -> bool {
    matches!(
        rustix::fs::unlinkat(dir, name, AtFlags::empty()),
        Ok(()) | Err(Errno::NOENT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(time_secs: u64, seq: u64) -> Found {
        Found {
            files: vec![],
            time: UNIX_EPOCH + Duration::from_secs(time_secs),
            pid: 1,
            seq,
        }
    }

    #[test]
    fn ranking_keeps_own_then_newest_and_puts_future_last() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut map = HashMap::new();
        map.insert("old".to_string(), found(10, 1));
        map.insert("mid".to_string(), found(500_000, 2));
        map.insert("future".to_string(), found(2_000_000, 3));
        map.insert("own-early".to_string(), found(5, 4));
        map.insert("pinned".to_string(), found(1, 5));
        map.insert("new".to_string(), found(3, 6));
        let mut pins = Pins::default();
        pins.pin("pinned");
        let written_here: VecDeque<String> = ["own-early".to_string()].into();
        let policy = Policy {
            keep: 4,
            just_written: "new",
            pins: &pins,
            written_here: &written_here,
            now,
        };
        let mut gone = doomed(&map, &policy);
        gone.sort();
        assert_eq!(gone, vec!["future", "old"]);
    }

    #[test]
    fn pins_are_bounded_oldest_released_first() {
        let mut p = Pins::default();
        for i in 0..6 {
            p.pin(&format!("r{i}"));
        }
        p.pin("r5");
        assert!(!p.contains("r0") && !p.contains("r1"));
        assert!((2..6).all(|i| p.contains(&format!("r{i}"))));
    }
}
