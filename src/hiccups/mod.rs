//! Hiccups: event-loop blocks above the warn threshold but below a stall.
//!
//! The blocks that hurt tail latency every day — tens to hundreds of
//! milliseconds — never reach the stall threshold. When a probe's lag
//! crosses the warn threshold while the loop is still blocked, the monitor
//! captures the loop thread alone (one signal, symbol-table names) and
//! records a [`Hiccup`] once the probe answers: its runtime, start,
//! duration, cause (on CPU, in which system call, waiting on a lock, the
//! process not scheduled) and culprit (the innermost own-code frame inside
//! the current poll).
//! A block caught only after it ended (shorter than the warn threshold plus
//! one probe interval) is recorded without a capture: its duration is
//! known, its culprit is not.
//!
//! This module owns the record of hiccups: the last N of them
//! ([`HiccupLog`], read by [`Watchdog::hiccups`](crate::Watchdog::hiccups)
//! and the exporter's `/hiccups`), the blocked time per culprit with a hard
//! cap on distinct culprits (the `culprit` label of
//! `loopwatch_hiccup_seconds_total`), and the log lines, aggregated under
//! load ([`aggregate`]). When to capture, and the rate limit on captures,
//! are the monitor's (`monitor::hiccup_watch`).

mod aggregate;

use std::collections::{HashMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::stacks::{Frame, ThreadStack};
pub(crate) use aggregate::{LogAggregator, Suppressed};

/// Hiccups kept by default for [`Watchdog::hiccups`](crate::Watchdog::hiccups).
pub const DEFAULT_KEEP_HICCUPS: usize = 64;
/// Distinct culprits counted per runtime; the rest are counted as `other`.
pub const MAX_CULPRITS: usize = 32;
/// The culprit label for blocks caught without a capture.
pub(crate) const UNKNOWN_CULPRIT: &str = "unknown";
/// The culprit label past [`MAX_CULPRITS`].
pub(crate) const OTHER_CULPRIT: &str = "other";

/// One block of the event loop above the warn threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Hiccup {
    /// The runtime's name.
    pub runtime: String,
    /// When the block began at the latest: the unanswered wake (RFC 3339).
    pub start: String,
    /// How long the loop did not answer (seconds).
    pub duration_seconds: f64,
    /// What the loop thread was doing.
    pub cause: HiccupCause,
    /// The innermost application function on the loop thread's stack, when
    /// it was caught live.
    pub culprit: Option<String>,
    /// The loop thread's stack when it was caught live (addresses, modules,
    /// symbol-table names), innermost first; empty otherwise.
    pub stack: Vec<Frame>,
    /// True when the block was still in progress when the monitor looked,
    /// so its stack was captured.
    pub caught_live: bool,
    /// True when the block went on into a stall (its capture is that
    /// stall's first sample).
    pub grew_into_stall: bool,
}

/// What the loop thread was doing during a hiccup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HiccupCause {
    /// Running on a CPU.
    OnCpu,
    /// Asleep in a system call.
    SystemCall {
        /// The system call's name (or number).
        name: String,
    },
    /// Waiting on a lock (a futex).
    LockWait,
    /// The process (or the monitor) was not scheduled.
    NotScheduled,
    /// Not caught live, or nothing conclusive.
    Unknown,
}

impl fmt::Display for HiccupCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiccupCause::OnCpu => f.write_str("on CPU"),
            HiccupCause::SystemCall { name } => write!(f, "in system call {name}"),
            HiccupCause::LockWait => f.write_str("waiting on a lock"),
            HiccupCause::NotScheduled => f.write_str("process not scheduled"),
            HiccupCause::Unknown => f.write_str("cause unknown"),
        }
    }
}

impl HiccupCause {
    /// The cause seen in a capture of the loop thread; `paused` when the
    /// monitor itself was not scheduled during the block.
    pub(crate) fn of(sample: Option<&ThreadStack>, paused: bool) -> HiccupCause {
        if paused {
            return HiccupCause::NotScheduled;
        }
        let Some(facts) = sample.and_then(|s| s.facts.as_ref()) else {
            return HiccupCause::Unknown;
        };
        match (facts.state, facts.syscall.as_ref()) {
            ('R', _) => HiccupCause::OnCpu,
            (_, Some(s)) if s.name.as_deref() == Some("futex") => HiccupCause::LockWait,
            (_, Some(s)) => HiccupCause::SystemCall {
                name: s
                    .name
                    .as_deref()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("#{}", s.number)),
            },
            _ => HiccupCause::Unknown,
        }
    }
}

/// Blocked time and count per culprit of one runtime.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Blocker {
    /// The culprit function (`unknown` for blocks caught after the fact,
    /// `other` past the cap on distinct culprits).
    pub culprit: String,
    /// Hiccups attributed to it.
    pub count: u64,
    /// Total blocked time (seconds).
    pub seconds: f64,
}

/// The record of hiccups: the last N, and blocked time per culprit.
#[derive(Debug)]
pub(crate) struct HiccupLog {
    keep: usize,
    recent: VecDeque<Hiccup>,
    /// Per runtime: culprit → (count, seconds), at most [`MAX_CULPRITS`]
    /// distinct plus `other` and `unknown`.
    blockers: Vec<HashMap<String, (u64, f64)>>,
}

impl HiccupLog {
    /// A log keeping the last `keep` hiccups of `runtimes` runtimes.
    pub(crate) fn new(keep: usize, runtimes: usize) -> HiccupLog {
        HiccupLog {
            keep,
            recent: VecDeque::with_capacity(keep.min(1024)),
            blockers: vec![HashMap::new(); runtimes],
        }
    }

    /// Records a hiccup of runtime `runtime`; returns the culprit label it
    /// was counted under.
    pub(crate) fn record(&mut self, runtime: usize, hiccup: Hiccup) -> String {
        let label = match &hiccup.culprit {
            None => UNKNOWN_CULPRIT.to_string(),
            Some(c) => {
                let named = |map: &HashMap<String, (u64, f64)>| {
                    map.keys()
                        .filter(|k| *k != UNKNOWN_CULPRIT && *k != OTHER_CULPRIT)
                        .count()
                };
                match self.blockers.get(runtime) {
                    Some(map) if map.contains_key(c) || named(map) < MAX_CULPRITS => c.clone(),
                    _ => OTHER_CULPRIT.to_string(),
                }
            }
        };
        if let Some(map) = self.blockers.get_mut(runtime) {
            let e = map.entry(label.clone()).or_default();
            e.0 += 1;
            e.1 += hiccup.duration_seconds;
        }
        if self.keep > 0 {
            if self.recent.len() == self.keep {
                self.recent.pop_front();
            }
            self.recent.push_back(hiccup);
        }
        label
    }

    /// The last hiccups, oldest first.
    pub(crate) fn recent(&self) -> Vec<Hiccup> {
        self.recent.iter().cloned().collect()
    }

    /// The last hiccups of the runtime called `runtime`, oldest first.
    pub(crate) fn recent_of(&self, runtime: &str) -> Vec<Hiccup> {
        self.recent
            .iter()
            .filter(|h| h.runtime == runtime)
            .cloned()
            .collect()
    }

    /// Runtime `runtime`'s top `n` blockers by blocked time.
    pub(crate) fn top_blockers(&self, runtime: usize, n: usize) -> Vec<Blocker> {
        let Some(map) = self.blockers.get(runtime) else {
            return Vec::new();
        };
        let mut v: Vec<Blocker> = map
            .iter()
            .map(|(c, (count, seconds))| Blocker {
                culprit: c.clone(),
                count: *count,
                seconds: *seconds,
            })
            .collect();
        v.sort_by(|a, b| {
            b.seconds
                .total_cmp(&a.seconds)
                .then(a.culprit.cmp(&b.culprit))
        });
        v.truncate(n);
        v
    }
}

/// What `/hiccups` serves and [`Watchdog::hiccups`](crate::Watchdog::hiccups)
/// summarises: the last hiccups and each runtime's top blockers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HiccupsDocument {
    pub hiccups: Vec<Hiccup>,
    pub top_blockers: Vec<RuntimeBlockers>,
}

/// One runtime's top blockers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RuntimeBlockers {
    pub runtime: String,
    pub blockers: Vec<Blocker>,
}

impl HiccupLog {
    /// The `/hiccups` document, as JSON.
    pub(crate) fn document_json(&self, names: &[String]) -> String {
        serde_json::to_string_pretty(&self.document(names))
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The `/hiccups` document for runtimes called `names`.
    pub(crate) fn document(&self, names: &[String]) -> HiccupsDocument {
        HiccupsDocument {
            hiccups: self.recent(),
            top_blockers: names
                .iter()
                .enumerate()
                .map(|(i, n)| RuntimeBlockers {
                    runtime: n.clone(),
                    blockers: self.top_blockers(i, 10),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hiccup(culprit: Option<&str>, seconds: f64) -> Hiccup {
        Hiccup {
            runtime: "main".into(),
            start: String::new(),
            duration_seconds: seconds,
            cause: HiccupCause::OnCpu,
            culprit: culprit.map(str::to_string),
            stack: Vec::new(),
            caught_live: culprit.is_some(),
            grew_into_stall: false,
        }
    }

    #[test]
    fn the_log_keeps_the_last_n_and_sums_per_culprit() {
        let mut log = HiccupLog::new(3, 1);
        for i in 0..5 {
            log.record(0, hiccup(Some("app::render"), 0.1 * f64::from(i)));
        }
        log.record(0, hiccup(None, 0.05));
        assert_eq!(log.recent().len(), 3);
        let top = log.top_blockers(0, 5);
        assert_eq!(top[0].culprit, "app::render");
        assert_eq!(top[0].count, 5);
        assert!((top[0].seconds - 1.0).abs() < 1e-9);
        assert_eq!(top[1].culprit, UNKNOWN_CULPRIT);
    }

    #[test]
    fn distinct_culprits_are_capped() {
        let mut log = HiccupLog::new(0, 1);
        for i in 0..(MAX_CULPRITS + 20) {
            log.record(0, hiccup(Some(&format!("app::f{i}")), 0.1));
        }
        log.record(0, hiccup(None, 0.1));
        let all = log.top_blockers(0, usize::MAX);
        assert!(all.len() <= MAX_CULPRITS + 3, "{} labels", all.len());
        let other = all.iter().find(|b| b.culprit == OTHER_CULPRIT).unwrap();
        assert!(other.count >= 18, "{other:?}");
        assert!(log.recent().is_empty(), "keep 0 keeps none");
    }

    #[test]
    fn causes_read_as_words() {
        assert_eq!(HiccupCause::OnCpu.to_string(), "on CPU");
        assert_eq!(
            HiccupCause::SystemCall {
                name: "read".into()
            }
            .to_string(),
            "in system call read"
        );
        assert_eq!(HiccupCause::of(None, true), HiccupCause::NotScheduled);
        assert_eq!(HiccupCause::of(None, false), HiccupCause::Unknown);
    }
}
