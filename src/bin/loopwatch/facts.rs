//! The few facts of a report that the listing commands show, and how they
//! are written.
//!
//! This module owns [`Facts`] (when, where, which runtime, verdict,
//! culprit, how long, how it ended) read from a [`StallReport`], the
//! stalls a report stands for (itself and the like stalls coalesced into
//! it), and the short forms of times and durations. It does not print
//! tables (`list` and `summary` do).

use std::time::{Duration, SystemTime};

use loopwatch::{StallReport, VerdictKind};

/// How a stall ended, as far as its last report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The loop answered again.
    Recovered,
    /// Not recovered, and systemd's watchdog deadline has passed: systemd
    /// ended the process (loopwatch withholds `WATCHDOG=1` until recovery,
    /// and a recovery rewrites the report).
    Killed,
    /// Not recovered when the report was last written, and no watchdog
    /// deadline has passed: still stuck, or the process ended otherwise.
    Stuck,
}

impl Ending {
    /// The word shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Recovered => "recovered",
            Ending::Killed => "killed",
            Ending::Stuck => "stuck",
        }
    }
}

/// What a line of `loopwatch list` says about a report.
pub struct Facts<'a> {
    /// Detection time, RFC 3339 to the second.
    pub time: String,
    /// The host, or `-` for reports written before hosts were recorded.
    pub host: &'a str,
    /// The runtime's name.
    pub runtime: &'a str,
    /// The verdict.
    pub verdict: VerdictKind,
    /// The culprit function, or `-`.
    pub culprit: &'a str,
    /// How long the loop did not answer (at least, if not recovered).
    pub duration: Duration,
    /// How it ended.
    pub ending: Ending,
    /// Like stalls coalesced into this report.
    pub coalesced: u64,
}

impl<'a> Facts<'a> {
    /// Reads the facts of `report`, judging the ending at `now`.
    pub fn of(report: &'a StallReport, now: SystemTime) -> Facts<'a> {
        Facts {
            time: short_time(&report.times.detected),
            host: host(report),
            runtime: &report.runtime,
            verdict: report.verdict.kind,
            culprit: report.culprit.as_ref().map_or("-", |c| c.function.as_str()),
            duration: stalled(report),
            ending: ending(report, now),
            coalesced: report.coalesced_stalls,
        }
    }
}

/// The host that wrote `report`, or `-`.
pub fn host(report: &StallReport) -> &str {
    report.process.host.as_deref().unwrap_or("-")
}

/// How long the report's own stall lasted (or had lasted when written).
pub fn stalled(report: &StallReport) -> Duration {
    seconds(
        report
            .duration_seconds
            .unwrap_or(report.stalled_for_seconds),
    )
}

/// How the report's stall ended, judged at `now`.
pub fn ending(report: &StallReport, now: SystemTime) -> Ending {
    if report.recovered {
        return Ending::Recovered;
    }
    let deadline = report
        .times
        .deadline
        .as_deref()
        .and_then(|d| humantime::parse_rfc3339_weak(d).ok());
    match deadline {
        Some(d) if d <= now => Ending::Killed,
        _ => Ending::Stuck,
    }
}

/// One stall a report stands for: its own, or a coalesced occurrence.
pub struct Stall<'a> {
    /// When it started or was detected (RFC 3339).
    pub at: &'a str,
    /// Its verdict.
    pub verdict: VerdictKind,
    /// Its culprit function.
    pub culprit: Option<&'a str>,
    /// How long it lasted (known so far).
    pub duration: Duration,
}

/// The stalls `report` stands for: its own first, then the listed
/// occurrences. Occurrences past the listed ones (more than 1000) are in
/// [`unlisted`].
pub fn stalls(report: &StallReport) -> impl Iterator<Item = Stall<'_>> {
    let own = Stall {
        at: &report.times.detected,
        verdict: report.verdict.kind,
        culprit: report.culprit.as_ref().map(|c| c.function.as_str()),
        duration: stalled(report),
    };
    std::iter::once(own).chain(report.occurrences.iter().map(|o| Stall {
        at: &o.start,
        verdict: o.verdict,
        culprit: o.culprit.as_deref(),
        duration: seconds(o.duration_seconds.unwrap_or(0.0)),
    }))
}

/// Coalesced stalls counted in `report` but not listed in it.
pub fn unlisted(report: &StallReport) -> u64 {
    report
        .coalesced_stalls
        .saturating_sub(report.occurrences.len() as u64)
}

/// A duration from report seconds; negative or odd values are zero.
pub fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// `2026-11-24T21:57:22Z` from `2026-11-24T21:57:22.250Z`; other text as is.
pub fn short_time(rfc3339: &str) -> String {
    match (rfc3339.get(..19), rfc3339.ends_with('Z')) {
        (Some(head), true) if rfc3339.len() > 19 => format!("{head}Z"),
        _ => rfc3339.to_string(),
    }
}

/// `850ms`, `3.0s`, `2m05s`, `1h02m`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms() {
        assert_eq!(
            short_time("2026-11-24T21:57:22.250Z"),
            "2026-11-24T21:57:22Z"
        );
        assert_eq!(short_time("garbage"), "garbage");
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_millis(3040)), "3.0s");
        assert_eq!(short_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(short_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(seconds(-1.0), Duration::ZERO);
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
    }
}
