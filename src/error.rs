//! The one error type of the crate.
//!
//! Everything that can go wrong when a [`Watchdog`](crate::Watchdog) is
//! configured or started is a variant of [`Error`]. Failures at run time
//! (a ping that could not be sent, a report that could not be written) are
//! never returned to the application: the monitor counts them, logs them and
//! carries on, because a watchdog must not take its daemon down.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What went wrong while configuring or starting loopwatch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `WATCHDOG_USEC` is set but is not a positive whole number.
    #[error("WATCHDOG_USEC={value:?} is not a positive whole number of microseconds")]
    InvalidWatchdogUsec {
        /// The value found in the environment.
        value: String,
    },
    /// `WATCHDOG_USEC` is a number, but too small to leave time for a report.
    #[error(
        "WATCHDOG_USEC={value} is below loopwatch's floor of {min:?}: a stall report could not \
         be written before systemd's deadline (set WatchdogSec= to at least that)"
    )]
    WatchdogTooShort {
        /// The value found in the environment, µs.
        value: u64,
        /// The smallest accepted watchdog interval.
        min: Duration,
    },
    /// `NOTIFY_SOCKET` is set but is neither an absolute path nor an
    /// abstract socket name (`@name`).
    #[error("NOTIFY_SOCKET={value:?} is neither an absolute path nor an abstract @name")]
    InvalidNotifySocket {
        /// The value found in the environment.
        value: String,
    },
    /// `WATCHDOG_PID` is set but is not a process id.
    #[error("WATCHDOG_PID={value:?} is not a process id")]
    InvalidWatchdogPid {
        /// The value found in the environment.
        value: String,
    },
    /// The stall threshold leaves no time to act before systemd's deadline.
    #[error(
        "stall threshold {threshold:?} must be below systemd's watchdog interval {watchdog:?} \
         (WatchdogSec=); the default is a quarter of it"
    )]
    ThresholdNotBelowWatchdog {
        /// The configured threshold.
        threshold: Duration,
        /// The watchdog interval from `WATCHDOG_USEC`.
        watchdog: Duration,
    },
    /// A duration setting that must be positive was zero.
    #[error("{setting} must be greater than zero")]
    ZeroDuration {
        /// The builder method whose value was zero.
        setting: &'static str,
    },
    /// A duration setting is below the smallest value loopwatch accepts.
    #[error("{setting} {value:?} is below the floor of {min:?}")]
    DurationTooShort {
        /// The builder method concerned.
        setting: &'static str,
        /// The value given.
        value: Duration,
        /// The smallest accepted value.
        min: Duration,
    },
    /// The probe would not run often enough to see a stall of the threshold.
    #[error("probe interval {probe_interval:?} must be below the stall threshold {threshold:?}")]
    ProbeIntervalNotBelowThreshold {
        /// The configured probe interval.
        probe_interval: Duration,
        /// The configured (or default) threshold.
        threshold: Duration,
    },
    /// `start()` was called without any `watch()`.
    #[error("no runtime to watch: call watch(name, handle) at least once")]
    NoRuntime,
    /// Two watched runtimes share a name.
    #[error("runtime name {name:?} is watched twice; names label metrics and reports and must be unique")]
    DuplicateRuntimeName {
        /// The repeated name.
        name: String,
    },
    /// A setting is outside the range loopwatch accepts.
    #[error("{setting}: {reason}")]
    InvalidSetting {
        /// The builder method concerned.
        setting: &'static str,
        /// Why the value was refused.
        reason: String,
    },
    /// A stall report could not be read: the text is not JSON (or ends
    /// early), or it is JSON but not a stall report.
    #[error("{reason}")]
    InvalidReport {
        /// What is wrong, in one line: truncated, malformed (with line and
        /// column), or the field that is missing or of the wrong type.
        reason: String,
    },
    /// A stall report of a later format version than this loopwatch reads
    /// (see [`REPORT_FORMAT_VERSION`](crate::REPORT_FORMAT_VERSION)).
    #[error(
        "report format version {found} is newer than this loopwatch reads (up to {supported}): \
         read it with a newer loopwatch"
    )]
    ReportVersion {
        /// The version the report says it is.
        found: u32,
        /// The newest version this loopwatch reads.
        supported: u32,
    },
    /// The real-time signal chosen for stack capture is already handled by the application.
    #[error(
        "signal {signal} already has a handler in this process; choose another with \
         Builder::capture_signal (SIGRTMIN..SIGRTMAX)"
    )]
    SignalInUse {
        /// The signal number.
        signal: i32,
    },
    /// The monitor thread (or another loopwatch thread) could not be spawned.
    #[error("could not spawn the {thread} thread: {source}")]
    SpawnThread {
        /// Which thread.
        thread: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A message to systemd could not be sent.
    #[error("could not notify systemd: {0}")]
    Notify(#[source] io::Error),
    /// The report directory is refused: it is a symbolic link, exists and
    /// is not a directory, or is owned by another user (see
    /// [`Builder::report_dir`](crate::Builder::report_dir)). A directory
    /// that merely cannot be created or written now is no error at start.
    #[error("report directory {path}: {source}")]
    ReportDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The metrics exporter could not bind its address.
    #[error("metrics exporter cannot listen on {addr}: {source}")]
    ExporterBind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A metric could not be registered (usually a name clash in the registry).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Preparing stack capture failed (signal handler, module list).
    #[error("stack capture setup failed: {0}")]
    Capture(String),
    /// A debug file given to [`symbolize_offset`](crate::symbolize_offset)
    /// could not be opened or parsed.
    #[error("debug file {path}: {reason}")]
    DebugInfo {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// `Result` with loopwatch's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
