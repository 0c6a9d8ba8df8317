//! [`StackSampler`]: the public handle that captures stacks on demand.
//!
//! This module owns the sampler's lifetime (validating its
//! [`CaptureConfig`], installing the signal handler) and the three calls a
//! report makes: [`StackSampler::capture_within`] (stacks, named from
//! symbol tables), [`StackSampler::symbolize`] (the DWARF pass) and
//! [`StackSampler::release`]. It serializes them. The capture sequence
//! itself is in [`super::sequence`]; the signal handler and its handshake
//! in [`super::sys`].

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
/// Create it at start: that only installs the signal handler (well under a
/// millisecond) and loads nothing. At a stall, from the monitor thread:
/// [`capture_within`](Self::capture_within) the threads that matter first
/// (the first capture also builds the module list and unwinder, a few
/// milliseconds), write a report from its symbol-table names, then
/// [`symbolize`](Self::symbolize) (files, lines, inlined functions from
/// DWARF), rewrite, and [`release`](Self::release) what symbolization
/// loaded. Several samplers may exist; their captures are serialized
/// process-wide.
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
    /// Validates `config` and installs the capture handler for its signal.
    /// Nothing else: modules and symbols are read at the first capture.
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

    /// Captures the given threads, in order (duplicates are dropped), within
    /// the configured [`CaptureConfig::budget`]. See
    /// [`capture_within`](Self::capture_within).
    pub fn capture(&self, tids: &[i32]) -> Capture {
        self.capture_within(tids, self.config.budget)
    }

    /// Captures the given threads in order within `budget` (total wall
    /// time of signalling and unwinding; duplicates are dropped).
    ///
    /// The calling thread, if listed, is reported as
    /// [`CaptureOutcome::Monitor`](super::CaptureOutcome::Monitor). A thread
    /// in uninterruptible sleep or stopped, one that blocks the signal or
    /// still has one pending, is not signalled; one that does not answer
    /// within [`CaptureConfig::per_thread_timeout`] (or what is left of the
    /// budget) is given up; once the budget is used up no other thread is
    /// signalled. Each carries its [`NotCaptured`](super::NotCaptured)
    /// reason and its `/proc` facts. Frames come named from symbol tables
    /// ([`SymbolSource::SymbolTable`](super::SymbolSource::SymbolTable)),
    /// with module, build id and offset.
    pub fn capture_within(&self, tids: &[i32], budget: std::time::Duration) -> Capture {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            self.state.lock().capture(&self.config, tids, budget, true)
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            let _ = (tids, budget);
            self.never.unreachable()
        }
    }

    /// Fills in files, lines and inlined functions of `threads`' frames
    /// (from this sampler's captures) from DWARF debug information, within
    /// `budget`, and says in [`Symbolization::notes`] what could not be
    /// named and why. The C runtime's frames keep their symbol-table names.
    /// What it loads stays until [`release`](Self::release).
    pub fn symbolize(
        &self,
        threads: &mut [super::ThreadStack],
        budget: std::time::Duration,
    ) -> Symbolization {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            self.state.lock().symbolize(threads, budget)
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            let _ = (threads, budget);
            self.never.unreachable()
        }
    }

    /// Releases all symbolization state (DWARF, symbol-table names) and
    /// returns the freed heap to the OS. The module list and unwinder stay,
    /// so later captures stay cheap.
    pub fn release(&self) {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        self.state.lock().release();
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        self.never.unreachable()
    }

    /// Captures every thread of the process (`/proc/self/task`).
    pub fn capture_all(&self) -> Capture {
        self.capture(&crate::procfs::list_threads())
    }
}
