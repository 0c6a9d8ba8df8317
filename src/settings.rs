//! Settings: what the application asked for, and what is in force.
//!
//! This module owns the two shapes of loopwatch's configuration:
//!
//! * [`Requested`] — the plain values the [`Builder`](crate::Builder)
//!   collects, exactly as the application gave them (unset values are
//!   `None`);
//! * [`Settings`] — the validated values in force, produced by
//!   [`Settings::resolve`] from a [`Requested`], the watched runtimes'
//!   names and systemd's environment. Defaults that depend on systemd are
//!   filled in here: the stall threshold is a quarter of `WatchdogSec=`
//!   under systemd and one second without.
//!
//! The builder, the monitor and the diagnostics all read [`Settings`]; this
//! module depends on none of them. It does not read the environment itself
//! (that is [`notify::SystemdEnv`](crate::notify::SystemdEnv)'s job) and
//! does not start anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::notify::SystemdEnv;
use crate::report_store::{ReportDirSetting, DEFAULT_KEEP_REPORTS};
use crate::stacks::CaptureConfig;

/// Default stall threshold when systemd gives no watchdog interval.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(1);
/// Longest default probe interval.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest stall threshold accepted: 10 ms. Below it the threshold
/// sits inside ordinary scheduling noise (a loaded 2-core host shows
/// run-queue waits of several ms), every hiccup would be a "stall" with a
/// full report, and the probe would have to wake the runtime more than
/// once per millisecond to measure it.
pub const MIN_STALL_THRESHOLD: Duration = Duration::from_millis(10);
/// The longest stall threshold (or deadline margin) accepted: one day, the
/// same bound as systemd's watchdog interval; it keeps every time
/// computation far from overflow.
pub const MAX_DURATION_SETTING: Duration = Duration::from_secs(24 * 3600);

/// How long a stall of the same runtime that looks the same as the previous
/// full report is coalesced into it instead of getting a report of its own.
pub const DEFAULT_STORM_COOL_DOWN: Duration = Duration::from_secs(60);
/// Full stall reports per runtime per hour; stalls beyond are counted and
/// listed in the latest report instead.
pub const DEFAULT_REPORTS_PER_HOUR: u32 = 10;
/// How long one worker of a multi-thread runtime may be stuck, while the
/// others still answer the probe, before pings are withheld.
pub const DEFAULT_WORKER_STUCK_LIMIT: Duration = Duration::from_secs(30);

/// The longest default warn threshold; the default is the smaller of this
/// and a quarter of the stall threshold.
pub const DEFAULT_WARN_THRESHOLD: Duration = Duration::from_millis(100);
/// The shortest warn threshold accepted.
pub const MIN_WARN_THRESHOLD: Duration = Duration::from_millis(1);
/// Hiccup captures per runtime per second, by default.
pub const DEFAULT_HICCUP_CAPTURES_PER_SECOND: u32 = 1;

/// The settings as the application gave them to the builder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Requested {
    pub stall_threshold: Option<Duration>,
    pub probe_interval: Option<Duration>,
    /// How long a stuck worker may stay stuck before pings are withheld;
    /// `None`: never.
    pub worker_stuck_limit: Option<Duration>,
    pub report_dir: ReportDirSetting,
    pub keep_reports: usize,
    /// Stack capture settings; `None` turns capture off.
    pub capture: Option<CaptureConfig>,
    pub deadline_margin: Option<Duration>,
    pub trigger_watchdog: bool,
    /// Where to serve `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<String>,
    pub storm_cool_down: Duration,
    pub reports_per_hour: u32,
    pub report_bytes_per_hour: u64,
    /// `None`: the default; `Some(None)`: hiccups off.
    pub warn_threshold: Option<Option<Duration>>,
    pub hiccup_captures_per_second: u32,
    pub keep_hiccups: usize,
    /// Crates the application names as its own (`Builder::own_crates`).
    pub own_crates: Vec<String>,
}

impl Default for Requested {
    fn default() -> Self {
        Requested {
            stall_threshold: None,
            probe_interval: None,
            worker_stuck_limit: Some(DEFAULT_WORKER_STUCK_LIMIT),
            report_dir: ReportDirSetting::Default,
            keep_reports: DEFAULT_KEEP_REPORTS,
            capture: Some(CaptureConfig::default()),
            deadline_margin: None,
            trigger_watchdog: false,
            metrics_addr: None,
            storm_cool_down: DEFAULT_STORM_COOL_DOWN,
            reports_per_hour: DEFAULT_REPORTS_PER_HOUR,
            report_bytes_per_hour: crate::report_store::DEFAULT_MAX_REPORT_BYTES_PER_HOUR,
            warn_threshold: None,
            hiccup_captures_per_second: DEFAULT_HICCUP_CAPTURES_PER_SECOND,
            keep_hiccups: crate::hiccups::DEFAULT_KEEP_HICCUPS,
            own_crates: Vec::new(),
        }
    }
}

/// What the diagnostics were configured with.
#[derive(Debug, Clone)]
pub(crate) struct DiagnosticsConfig {
    /// Report directory, resolved.
    pub report_dir: Option<PathBuf>,
    /// Reports kept.
    pub keep: usize,
    /// Stack capture settings; `None` turns capture off.
    pub capture: Option<CaptureConfig>,
    /// How long before systemd's deadline the last report must be complete.
    pub deadline_margin: Duration,
    /// Send `WATCHDOG=trigger` after the report before the deadline.
    pub trigger_watchdog: bool,
    /// Coalescing window after a full report.
    pub storm_cool_down: Duration,
    /// Full reports per runtime per hour.
    pub reports_per_hour: u32,
    /// Bytes of report files written per hour, at most.
    pub report_bytes_per_hour: u64,
    /// Crates the application names as its own code (normalized: `_`).
    pub own_crates: Vec<String>,
}

/// Validated, resolved settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub threshold: Duration,
    pub probe_interval: Duration,
    pub env: SystemdEnv,
    /// The watchdog interval that applies to this process.
    pub watchdog: Option<Duration>,
    pub pid: u32,
    pub diagnostics: DiagnosticsConfig,
    /// How long a stuck worker may stay stuck before pings are withheld;
    /// `None`: never.
    pub worker_stuck_limit: Option<Duration>,
    /// Where to serve `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<String>,
    /// Lag above which a block is a hiccup; `None`: hiccups off.
    pub warn_threshold: Option<Duration>,
    /// Hiccup captures per runtime per second (0: record without stacks).
    pub hiccup_captures_per_second: u32,
    /// Hiccups kept for `Watchdog::hiccups()`.
    pub keep_hiccups: usize,
}

impl Settings {
    /// Checks `requested` (for runtimes called `runtimes`) against `env`
    /// and fills in every default.
    pub(crate) fn resolve(
        requested: &Requested,
        runtimes: &[&str],
        env: SystemdEnv,
    ) -> Result<Arc<Settings>> {
        let r = requested;
        let pid = std::process::id();
        let watchdog = env.watchdog_for(pid);
        let threshold = match r.stall_threshold {
            Some(t) => t,
            None => watchdog.map_or(DEFAULT_STALL_THRESHOLD, |w| w / 4),
        };
        if threshold.is_zero() {
            return Err(Error::ZeroDuration {
                setting: "stall_threshold",
            });
        }
        if threshold < MIN_STALL_THRESHOLD {
            return Err(Error::DurationTooShort {
                setting: "stall_threshold",
                value: threshold,
                min: MIN_STALL_THRESHOLD,
            });
        }
        for (setting, value) in [
            ("stall_threshold", Some(threshold)),
            ("probe_interval", r.probe_interval),
            ("deadline_margin", r.deadline_margin),
            ("worker_stuck_limit", r.worker_stuck_limit),
            ("storm_cool_down", Some(r.storm_cool_down)),
        ] {
            if let Some(value) = value.filter(|v| *v > MAX_DURATION_SETTING) {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!("{value:?} is above the limit of {MAX_DURATION_SETTING:?}"),
                });
            }
        }
        if let Some(w) = watchdog {
            if threshold >= w {
                return Err(Error::ThresholdNotBelowWatchdog {
                    threshold,
                    watchdog: w,
                });
            }
        }
        let probe_interval = r
            .probe_interval
            .unwrap_or_else(|| (threshold / 4).min(DEFAULT_PROBE_INTERVAL));
        if probe_interval.is_zero() {
            return Err(Error::ZeroDuration {
                setting: "probe_interval",
            });
        }
        if probe_interval >= threshold {
            return Err(Error::ProbeIntervalNotBelowThreshold {
                probe_interval,
                threshold,
            });
        }
        if runtimes.is_empty() {
            return Err(Error::NoRuntime);
        }
        for (i, name) in runtimes.iter().enumerate() {
            if runtimes[..i].contains(name) {
                return Err(Error::DuplicateRuntimeName {
                    name: name.to_string(),
                });
            }
        }
        let warn_threshold = match r.warn_threshold {
            None => Some((threshold / 4).min(DEFAULT_WARN_THRESHOLD)),
            Some(w) => w,
        };
        if let Some(w) = warn_threshold {
            if w < MIN_WARN_THRESHOLD || w >= threshold {
                return Err(Error::InvalidSetting {
                    setting: "warn_threshold",
                    reason: format!(
                        "{w:?} must be at least {MIN_WARN_THRESHOLD:?} and below the stall \
                         threshold {threshold:?}"
                    ),
                });
            }
        }
        if r.reports_per_hour == 0 {
            return Err(Error::InvalidSetting {
                setting: "max_reports_per_hour",
                reason: "must allow at least one report an hour".into(),
            });
        }
        if r.keep_reports == 0 {
            return Err(Error::InvalidSetting {
                setting: "keep_reports",
                reason: "must keep at least one report".into(),
            });
        }
        let deadline_margin = match (r.deadline_margin, watchdog) {
            (Some(m), Some(w)) if m >= w - threshold => {
                return Err(Error::InvalidSetting {
                    setting: "deadline_margin",
                    reason: format!(
                        "{m:?} leaves no time between detection (threshold {threshold:?}) and \
                         systemd's deadline (WatchdogSec {w:?})"
                    ),
                })
            }
            (Some(m), _) => m,
            (None, Some(w)) => (w / 8).max(Duration::from_millis(100)),
            (None, None) => Duration::from_millis(100),
        };
        let mut own_crates = Vec::new();
        for name in &r.own_crates {
            let name = name.trim();
            if !crate::origin::names::is_crate_name(name) {
                return Err(Error::InvalidSetting {
                    setting: "own_crates",
                    reason: format!("{name:?} is not a crate name"),
                });
            }
            let name = name.replace('-', "_");
            if !own_crates.contains(&name) {
                own_crates.push(name);
            }
        }
        let diagnostics = DiagnosticsConfig {
            own_crates,
            report_dir: r.report_dir.resolve(),
            keep: r.keep_reports,
            capture: r.capture.clone(),
            deadline_margin,
            trigger_watchdog: r.trigger_watchdog,
            storm_cool_down: r.storm_cool_down,
            reports_per_hour: r.reports_per_hour,
            report_bytes_per_hour: r.report_bytes_per_hour,
        };
        Ok(Arc::new(Settings {
            threshold,
            probe_interval,
            env,
            watchdog,
            pid,
            diagnostics,
            worker_stuck_limit: r.worker_stuck_limit,
            metrics_addr: r.metrics_addr.clone(),
            warn_threshold,
            hiccup_captures_per_second: r.hiccup_captures_per_second,
            keep_hiccups: r.keep_hiccups,
        }))
    }
}
