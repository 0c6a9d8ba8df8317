//! Every thread's stack, captured without stopping the process.
//!
//! This module owns stack capture for stall reports, and all of loopwatch's
//! `unsafe` code (in [`sys`]). It does not read thread facts from `/proc`
//! (the `procfs` module does; a capture only attaches them), nor decide
//! what a stack means for a stall (the `verdict` module does, with
//! [`Frame::is_application`]). How a capture works:
//!
//! 1. On the monitor thread: read each thread's `/proc` facts, parse
//!    `/proc/self/maps` into a preallocated array of readable ranges.
//! 2. For one thread at a time: send a real-time signal with `tgkill`. Its
//!    handler copies the interrupted `rip`/`rsp`/`rbp` (from its
//!    `ucontext`) and the stack from `rsp` up to the end of its mapping
//!    (capped at [`CaptureConfig::max_stack_bytes`]) into preallocated
//!    memory, and nothing else (see [`sys`] for the handshake). A thread
//!    whose `/proc` status shows it stopped, blocking the signal, or still
//!    holding one from an earlier capture is reported
//!    [`CaptureOutcome::Unresponsive`] without being signalled; one that
//!    does not answer within [`CaptureConfig::per_thread_timeout`] (in
//!    uninterruptible sleep, say) is reported the same way: the capture
//!    never waits longer.
//! 3. Still on the monitor thread, right after the copy: unwind it with
//!    `framehop` from the modules' `.eh_frame` CFI ([`modules`]).
//! 4. After all threads: symbolize with `backtrace::resolve`, cached per
//!    address ([`symbols`]).
//!
//! Side effect on the application: a thread interrupted inside a system
//! call that is not restartable (`epoll_wait`, `poll`, `select`, ...) sees
//! `EINTR`, as with any signal; the standard library, mio and tokio retry.
//!
//! Only x86_64 Linux is supported; elsewhere [`StackSampler::new`] returns
//! [`Error::Capture`](crate::Error::Capture).
//!
//! # Files
//!
//! * [`capture`]: what a capture returns ([`Capture`], [`ThreadStack`],
//!   [`CaptureOutcome`], [`Registers`](capture::Registers), the bound
//!   [`MAX_FRAMES`](capture::MAX_FRAMES));
//! * [`frame`]: one stack [`Frame`] (whose code it is, is decided by the
//!   `origin` module);
//! * [`config`]: [`CaptureConfig`], its defaults and accepted ranges;
//! * [`sampler`]: [`StackSampler`], the public handle;
//! * [`sequence`]: the capture sequence a sampler runs on the monitor
//!   thread (prechecks, signalling, unwinding, symbolizing);
//! * [`sys`]: the signal handler, its handshake with the monitor thread,
//!   and every other `unsafe` block;
//! * [`maps`], [`modules`], [`symbols`]: `/proc/self/maps`, the loaded ELF
//!   modules and their unwinder, and the symbol cache.
//!
//! Inside this directory imports go one way, never in a circle: `sampler`
//! uses `sequence`, `capture` and `config`; `sequence` uses every other
//! file but `sampler`; `capture` uses `frame`; `modules` uses `maps` and
//! `sys`; `frame`, `config`, `maps`, `symbols` and `sys` use no sibling.

mod capture;
mod config;
mod frame;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod maps;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod modules;
mod sampler;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sequence;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod symbols;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests;

pub use capture::{Capture, CaptureOutcome, ThreadStack};
pub use config::CaptureConfig;
pub use frame::{Frame, Origin, SymbolSource};
pub use sampler::StackSampler;
#[allow(unused_imports)] // the diagnostics read it through `symbolize`'s result
pub use sampler::Symbolization;

/// Kernel thread id of the calling thread (0 where unsupported).
pub(crate) fn current_tid() -> i32 {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        sys::current_tid()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        0
    }
}
