//! Structured entries for systemd-journald, one per stall event, findable
//! across a fleet by a fixed `MESSAGE_ID`.
//!
//! Under systemd ([`Journal::detect`]: journald's socket exists, or
//! `JOURNAL_STREAM` is set) loopwatch sends each stall event to journald as
//! one structured entry over journald's native protocol, besides the report
//! files and the log line. Off systemd nothing is sent and nothing changes.
//!
//! This module owns the entry ([`JournalEntry`]: what it may hold, its
//! bounds, its encoding), the sending ([`Journal`]: a datagram, or a sealed
//! memory file for a large entry) and the mapping from a stall report to an
//! entry. It does not decide when an event happened (the monitor and the
//! diagnostics do) and it does not count failures: [`Journal::send`]
//! returns them to the caller, which counts and logs them.
//!
//! # Bounds
//!
//! * `MESSAGE` is one line of at most [`MAX_MESSAGE_CHARS`] (500)
//!   characters;
//! * at most [`MAX_FIELDS`] (64) other fields, and at most
//!   [`MAX_ENTRY_BYTES`] (1 MiB) encoded; a field beyond either bound is
//!   dropped and counted, and the entry says so in
//!   `LOOPWATCH_DROPPED_FIELDS`;
//! * field names are valid journal field names ([`field_name_is_valid`]);
//!   others are made valid ([`sanitize_field_name`]) rather than silently
//!   dropped by journald; values are arbitrary bytes;
//! * a send waits at most [`SEND_TIMEOUT`] (50 ms) for room in journald's
//!   queue, and fails rather than waits longer.
//!
//! # Catalog
//!
//! Every entry carries `MESSAGE_ID` (fixed per event kind, never changed),
//! `PRIORITY` and a one-line `MESSAGE`. Find them with, for example,
//! `journalctl MESSAGE_ID=c982a5b17e814d0aa9c31fe32560ac36 -o json`.
//! journald adds its trusted fields (`_PID`, `_COMM`, `_SYSTEMD_UNIT`,
//! `_HOSTNAME`, `_BOOT_ID`, ...) to each.
//!
//! ## `c982a5b17e814d0aa9c31fe32560ac36` — event loop stalled
//!
//! [`JournalEvent::StallDetected`], `PRIORITY=3` (err). An event loop did
//! not answer loopwatch's probe for longer than the stall threshold. While
//! it is stalled, loopwatch stops systemd's watchdog pings: unless the loop
//! recovers, systemd acts at the watchdog deadline. The report named in
//! `LOOPWATCH_REPORT` says which thread was stuck where, and why loopwatch
//! thinks so. Example message:
//! `event loop "main" stalled for 1.2 s: cpu-bound in myapp::render (src/render.rs:88); report /var/lib/myapp/loopwatch/stall-….txt`.
//!
//! Fields:
//!
//! | field | value |
//! |---|---|
//! | `LOOPWATCH_STALL_ID` | the report's id; the same in every entry of one stall |
//! | `LOOPWATCH_RUNTIME` | the stalled runtime's name, as given to `watch()` |
//! | `LOOPWATCH_VERDICT` | `cpu-bound`, `blocked-syscall`, `lock-wait`, `process-paused`, `overload`, `worker-stuck` or `unknown` |
//! | `LOOPWATCH_VERDICT_SUMMARY` | the verdict in one sentence |
//! | `LOOPWATCH_CULPRIT`, `CODE_FUNC` | the application function that blocked the loop (when found) |
//! | `CODE_FILE`, `CODE_LINE` | its source file and line (when known) |
//! | `LOOPWATCH_CULPRIT_THREAD`, `LOOPWATCH_CULPRIT_TID` | the stuck thread's name and id |
//! | `LOOPWATCH_STALLED_SECONDS` | how long the stall had lasted when the entry was made |
//! | `LOOPWATCH_LAG_SECONDS` | the probe's lag when the stall was declared |
//! | `LOOPWATCH_STALL_THRESHOLD_SECONDS` | the stall threshold in force |
//! | `LOOPWATCH_STALL_START`, `LOOPWATCH_DETECTED` | when the loop stopped answering, when the stall was declared (RFC 3339, UTC) |
//! | `LOOPWATCH_REPORT` | the text report's path (absent when the report went to stderr only); the JSON report is next to it |
//! | `LOOPWATCH_VERSION` | the loopwatch version |
//!
//! Seconds are decimal with three digits after the point.
//!
//! ## `c99bca98b5e04badb90b4db1cada91ce` — event loop recovered
//!
//! [`JournalEvent::StallRecovered`], `PRIORITY=5` (notice). A stalled loop
//! answered again; the pings to systemd resume. Same fields as a stall,
//! plus `LOOPWATCH_DURATION_SECONDS` (how long the loop did not answer) and
//! `LOOPWATCH_END` (when it answered, RFC 3339). Example message:
//! `event loop "main" recovered after 3.2 s (cpu-bound in myapp::render (src/render.rs:88)); report …`.
//!
//! ## `3ebb4b83f5764ba7a61e5bc03735dbe6` — worker stuck in a poll
//!
//! [`JournalEvent::WorkerStuck`], `PRIORITY=4` (warning). One worker of a
//! multi-thread runtime watched with hooks made no progress in a poll while
//! the other workers still answered, so the loop as a whole is not stalled
//! yet. Same fields as a stall, plus `LOOPWATCH_STUCK_WORKERS` (the stuck
//! workers' indexes, comma-separated). Its recovery is a
//! `c99bca98b5e04badb90b4db1cada91ce` entry with the same
//! `LOOPWATCH_STALL_ID`.
//!
//! ## `ef88eb614843406b983e5f0cb50f50ca` — stall storm coalesced
//!
//! [`JournalEvent::StallStormCoalesced`], `PRIORITY=4` (warning). Stalls
//! of one runtime that looked alike repeated within a cool-down, and
//! loopwatch counted them into the previous report instead of writing full
//! reports (see `Builder::storm_cool_down`). Sent when a report that
//! gained coalesced stalls is rewritten (at most every 30 s while the storm
//! lasts, and once when it is over). Example message:
//! `event loop "main": 37 more stall(s) like report 20261124T…-0001 (cpu-bound in myapp::render) coalesced into it`.
//!
//! Fields: `LOOPWATCH_STALL_ID` (the report the stalls were coalesced
//! into), `LOOPWATCH_RUNTIME`, `LOOPWATCH_VERDICT`, `LOOPWATCH_CULPRIT` and
//! `CODE_FUNC`, `LOOPWATCH_COALESCED_STALLS` (how many so far),
//! `LOOPWATCH_REPORT`, `LOOPWATCH_VERSION`.
//!
//! ## `85a4305524654e18ae03f40edb3901af` — hiccup summary
//!
//! [`JournalEvent::HiccupSummary`], `PRIORITY=5` (notice). Event-loop
//! blocks shorter than a stall, summarised over a period. Reserved, not
//! sent: hiccups reach the journal as loopwatch's own log lines (one per
//! hiccup, aggregated per culprit under load, through `tracing`), and are
//! counted in the metrics and listed at `/hiccups` and in stall reports.

mod entry;
mod stall;
mod transport;

pub use entry::{
    field_name_is_valid, sanitize_field_name, JournalEntry, JournalEvent, Priority,
    DROPPED_FIELDS_FIELD, MAX_ENTRY_BYTES, MAX_FIELDS, MAX_FIELD_NAME_LEN, MAX_MESSAGE_CHARS,
};
pub(crate) use stall::{stall_entry, storm_entry};
pub use transport::{Journal, JOURNAL_SOCKET, SEND_TIMEOUT};

/// `MESSAGE_ID` of [`JournalEvent::StallDetected`]: an event loop stalled.
pub const MESSAGE_ID_STALL_DETECTED: &str = "c982a5b17e814d0aa9c31fe32560ac36";
/// `MESSAGE_ID` of [`JournalEvent::StallRecovered`]: a stalled loop answered again.
pub const MESSAGE_ID_STALL_RECOVERED: &str = "c99bca98b5e04badb90b4db1cada91ce";
/// `MESSAGE_ID` of [`JournalEvent::StallStormCoalesced`]: repeated stalls
/// counted into the previous report.
pub const MESSAGE_ID_STALL_STORM_COALESCED: &str = "ef88eb614843406b983e5f0cb50f50ca";
/// `MESSAGE_ID` of [`JournalEvent::WorkerStuck`]: one worker stuck in a poll.
pub const MESSAGE_ID_WORKER_STUCK: &str = "3ebb4b83f5764ba7a61e5bc03735dbe6";
/// `MESSAGE_ID` of [`JournalEvent::HiccupSummary`]: event-loop blocks
/// shorter than a stall, summarised.
pub const MESSAGE_ID_HICCUP_SUMMARY: &str = "85a4305524654e18ae03f40edb3901af";

#[cfg(test)]
mod tests;
