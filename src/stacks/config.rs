//! How stacks are captured: [`CaptureConfig`] and its accepted ranges.
//!
//! This module owns the settings of a capture (signal, stack bytes copied
//! per thread, per-thread timeout), their defaults and their validation. It
//! does not apply them: [`super::StackSampler`] and its capture sequence
//! do.

use std::time::Duration;

use crate::error::Error;

/// Smallest accepted [`CaptureConfig::max_stack_bytes`].
pub const MIN_STACK_BYTES: usize = 16 * 1024;
/// Largest accepted [`CaptureConfig::max_stack_bytes`].
pub const MAX_STACK_BYTES: usize = 1024 * 1024;
/// Longest accepted [`CaptureConfig::per_thread_timeout`].
pub const MAX_PER_THREAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted [`CaptureConfig::budget`] and
/// [`CaptureConfig::symbolize_budget`].
pub const MAX_BUDGET: Duration = Duration::from_secs(10);

/// How stacks are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The real-time signal used to interrupt threads; it must be in
    /// `SIGRTMIN..=SIGRTMAX` and not handled by the application.
    /// Default: `SIGRTMIN + 3`.
    pub signal: i32,
    /// Most bytes of stack copied per thread, from the stack pointer up
    /// (16 KiB to 1 MiB; default 128 KiB). Frames beyond it are cut.
    pub max_stack_bytes: usize,
    /// How long to wait for one thread's handler before reporting the thread
    /// unresponsive (more than zero, at most 1 s; default 50 ms: a thread
    /// answers in microseconds once scheduled, and a loaded machine may take
    /// tens of milliseconds to schedule it).
    pub per_thread_timeout: Duration,
    /// Total wall time one capture of many threads may take (default
    /// 200 ms; more than zero, at most 10 s). The diagnostics never give a
    /// capture more than half the time left before systemd's deadline.
    /// Threads not reached within it are reported with the reason.
    pub budget: Duration,
    /// Wall time the DWARF pass (files, lines, inlined functions) of one
    /// report may take (default 1 s; more than zero, at most 10 s). The
    /// first report is written before it, from symbol-table names only.
    pub symbolize_budget: Duration,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            signal: default_signal(),
            max_stack_bytes: 128 * 1024,
            per_thread_timeout: Duration::from_millis(50),
            budget: Duration::from_millis(200),
            symbolize_budget: Duration::from_secs(1),
        }
    }
}

#[cfg(target_os = "linux")]
fn default_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

#[cfg(not(target_os = "linux"))]
fn default_signal() -> i32 {
    0
}

impl CaptureConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), Error> {
        #[cfg(target_os = "linux")]
        {
            let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
            if !(min..=max).contains(&self.signal) {
                return Err(Error::InvalidSetting {
                    setting: "capture_signal",
                    reason: format!(
                        "signal {} is not a real-time signal ({min}..={max})",
                        self.signal
                    ),
                });
            }
        }
        if !(MIN_STACK_BYTES..=MAX_STACK_BYTES).contains(&self.max_stack_bytes) {
            return Err(Error::InvalidSetting {
                setting: "max_stack_bytes",
                reason: format!(
                    "{} bytes is outside {MIN_STACK_BYTES}..={MAX_STACK_BYTES}",
                    self.max_stack_bytes
                ),
            });
        }
        if self.per_thread_timeout.is_zero() || self.per_thread_timeout > MAX_PER_THREAD_TIMEOUT {
            return Err(Error::InvalidSetting {
                setting: "capture_timeout",
                reason: format!(
                    "{:?} is outside (0, {MAX_PER_THREAD_TIMEOUT:?}]",
                    self.per_thread_timeout
                ),
            });
        }
        for (setting, value) in [
            ("capture_budget", self.budget),
            ("symbolize_budget", self.symbolize_budget),
        ] {
            if value.is_zero() || value > MAX_BUDGET {
                return Err(Error::InvalidSetting {
                    setting,
                    reason: format!("{value:?} is outside (0, {MAX_BUDGET:?}]"),
                });
            }
        }
        Ok(())
    }
}
