//! The names loopwatch gives its files, and nothing else.
//!
//! A report is `stall-<id>.json` and `stall-<id>.txt`, where the id is made
//! by the diagnostics as `<YYYYMMDDTHHMMSSZ>-<runtime>-<pid>-<seq>`: the UTC
//! second of detection, the runtime's name reduced to at most 32 ASCII
//! letters, digits and `_`, the process id, and a per-process sequence
//! number of at least four digits. A temporary file is `.stall-<…>.tmp`.
//!
//! This module recognises those names exactly (so retention never touches
//! a file loopwatch did not name) and makes temporary names. It does not
//! look at the files themselves: whether a name is a regular file is
//! [`retention`](super::retention)'s check.

use std::time::SystemTime;

/// The two files of a report.
pub(super) const EXTENSIONS: [&str; 2] = ["json", "txt"];

/// Longest runtime part of an id (the diagnostics cut names to 32 chars).
const MAX_RUNTIME_CHARS: usize = 32;
/// Longest decimal number accepted for the pid and the sequence number.
const MAX_NUMBER_DIGITS: usize = 20;

/// A file name that loopwatch gives a report file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReportName<'a> {
    /// The report id (`<time>-<runtime>-<pid>-<seq>`).
    pub id: &'a str,
    /// The UTC time in the id.
    pub time: SystemTime,
    /// The writing process.
    pub pid: u64,
    /// The writer's sequence number.
    pub seq: u64,
}

impl<'a> ReportName<'a> {
    /// Parses `stall-<id>.json` or `stall-<id>.txt`; `None` for any other name.
    pub(super) fn parse(name: &'a str) -> Option<Self> {
        let rest = name.strip_prefix("stall-")?;
        let id = EXTENSIONS
            .iter()
            .find_map(|ext| rest.strip_suffix(ext)?.strip_suffix('.'))?;
        let parsed = parse_id(id)?;
        Some(ReportName { id, ..parsed })
    }
}

/// True when `id` is a report id of loopwatch's shape (so it is safe as
/// part of a file name: no `/`, no `..`).
pub(super) fn is_report_id(id: &str) -> bool {
    parse_id(id).is_some()
}

/// Parses an id `<YYYYMMDDTHHMMSSZ>-<runtime>-<pid>-<seq>`.
fn parse_id(id: &str) -> Option<ReportName<'_>> {
    let stamp = id.get(..16)?;
    let rest = id.get(16..)?.strip_prefix('-')?;
    let time = parse_compact_utc(stamp)?;
    // The runtime part has no '-' (the diagnostics replace it by '_').
    let mut parts = rest.rsplitn(3, '-');
    let seq = parts.next()?;
    let pid = parts.next()?;
    let runtime = parts.next()?;
    let runtime_ok = runtime.len() <= MAX_RUNTIME_CHARS
        && runtime
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !runtime_ok || seq.len() < 4 {
        return None;
    }
    Some(ReportName {
        id,
        time,
        pid: parse_number(pid)?,
        seq: parse_number(seq)?,
    })
}

fn parse_number(s: &str) -> Option<u64> {
    let ok = !s.is_empty() && s.len() <= MAX_NUMBER_DIGITS && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten()
}

/// `20261124T215722Z` → the time it names (UTC); `None` unless it is exactly that shape
/// and a real calendar time.
fn parse_compact_utc(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let shape = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// True for a temporary file name of loopwatch's: `.stall-<…>.tmp`, where
/// `<…>` is ASCII letters, digits, `_`, `.` and `-` (this version's names
/// and the `tempfile` names of earlier versions).
pub(super) fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(".stall-")
        .and_then(|r| r.strip_suffix(".tmp"))
        .is_some_and(|middle| {
            !middle.is_empty()
                && middle
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        })
}

/// The temporary name for one file of report `id`: unique per process
/// (`pid`) and per attempt (`n`).
pub(super) fn temp_name(id: &str, ext: &str, pid: u32, n: u64) -> String {
    format!(".stall-{id}.{ext}.{pid}-{n}.tmp")
}

/// The final name of one file of report `id`.
pub(super) fn final_name(id: &str, ext: &str) -> String {
    format!("stall-{id}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn only_the_exact_report_pattern_is_recognised() {
        let n = ReportName::parse("stall-20261124T215722Z-main_rt-4242-0007.json").unwrap();
        assert_eq!(n.id, "20261124T215722Z-main_rt-4242-0007");
        assert_eq!((n.pid, n.seq), (4242, 7));
        assert_eq!(
            n.time,
            UNIX_EPOCH + Duration::from_secs(1_795_557_442),
            "2026-11-24T21:57:22Z"
        );
        assert!(ReportName::parse("stall-20261124T215722Z--1-12345.txt").is_some());
        assert!(is_report_id("20261124T215722Z-main-1-0001"));
        assert!(!is_report_id("20261124T215722Z-../x-1-0001"));
        for bad in [
            "stall-20261124T215722Z-main-4242-0007.json.bak",
            "stall-20261124T215722Z-main-4242-0007.log",
            "stall-20261124T215722Z-main-4242-007.json",
            "stall-20261124T215722Z-ma-in-4242-0007.json",
            "stall-20261124T215722Z-main-42a2-0007.json",
            "stall-20261324T215722Z-main-4242-0007.json",
            "stall-2026112XT215722Z-main-4242-0007.json",
            "stall-20261124T215722-main-4242-0007.json",
            "xstall-20261124T215722Z-main-4242-0007.json",
            "stall-2026-1.json",
            ".stall-abc.tmp",
            "notes.txt",
        ] {
            assert_eq!(ReportName::parse(bad), None, "{bad}");
        }
        let long = format!("stall-20261124T215722Z-{}-1-0001.txt", "a".repeat(33));
        assert_eq!(ReportName::parse(&long), None);
    }

    #[test]
    fn temporary_names_round_trip() {
        let t = temp_name("20261124T215722Z-main-1-0001", "json", 77, 3);
        assert!(is_temp_name(&t), "{t}");
        assert!(is_temp_name(".stall-a1B2c3.tmp"), "tempfile's names");
        for bad in [
            ".stall-.tmp",
            ".stall-a/b.tmp",
            "stall-a.tmp",
            ".stall-a.tmp.x",
        ] {
            assert!(!is_temp_name(bad), "{bad}");
        }
    }
}
