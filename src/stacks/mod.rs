//! Every thread's stack, captured without stopping the process.
//!
//! This module owns stack capture for stall reports, and all of loopwatch's
//! `unsafe` code (in [`sys`]). How a capture works:
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
//! [`Error::Capture`].

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod maps;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod modules;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod symbols;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests;

use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::procfs::ThreadFacts;

/// Smallest accepted [`CaptureConfig::max_stack_bytes`].
pub const MIN_STACK_BYTES: usize = 16 * 1024;
/// Largest accepted [`CaptureConfig::max_stack_bytes`].
pub const MAX_STACK_BYTES: usize = 1024 * 1024;
/// Longest accepted [`CaptureConfig::per_thread_timeout`].
pub const MAX_PER_THREAD_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames kept per thread; deeper stacks are cut (and say so).
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
pub const MAX_FRAMES: usize = 256;

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
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            signal: default_signal(),
            max_stack_bytes: 128 * 1024,
            per_thread_timeout: Duration::from_millis(50),
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
        Ok(())
    }
}

/// The stacks of a set of threads, taken one after the other.
#[derive(Debug, Clone, Serialize)]
pub struct Capture {
    /// One entry per requested thread, in request order.
    pub threads: Vec<ThreadStack>,
    /// Time spent signalling threads and waiting for their copies.
    #[serde(serialize_with = "serialize_duration_secs")]
    pub signal_duration: Duration,
    /// Time spent unwinding the copies.
    #[serde(serialize_with = "serialize_duration_secs")]
    pub unwind_duration: Duration,
    /// Time spent turning addresses into functions, files and lines.
    #[serde(serialize_with = "serialize_duration_secs")]
    pub symbolize_duration: Duration,
}

/// One thread of a [`Capture`].
#[derive(Debug, Clone, Serialize)]
pub struct ThreadStack {
    /// Kernel thread id.
    pub tid: i32,
    /// `/proc` facts (name, state, wait channel, system call, CPU time);
    /// `None` if they could not be read.
    pub facts: Option<ThreadFacts>,
    /// What happened when the thread was asked for its stack.
    pub outcome: CaptureOutcome,
    /// Why the outcome is not [`CaptureOutcome::Captured`], or why the stack
    /// is incomplete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Registers of the interrupted code, when captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registers: Option<Registers>,
    /// Bytes of stack copied.
    pub stack_bytes: usize,
    /// Frames, innermost first. Inlined functions are frames of their own
    /// (marked [`Frame::inlined`]) sharing the address of their caller.
    pub frames: Vec<Frame>,
}

/// What happened to one thread during a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureOutcome {
    /// Registers and stack copied; frames unwound.
    Captured,
    /// The thread did not answer the signal in time: it blocks the signal,
    /// is in uninterruptible sleep (`D`), or is stopped. Its `/proc` facts
    /// are the evidence.
    Unresponsive,
    /// The thread exited before or during the capture.
    Exited,
    /// The thread doing the capture (the monitor); not interrupted.
    Monitor,
    /// Capture failed for another reason, given in the thread's `detail`.
    Failed,
}

/// Registers of interrupted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Registers {
    /// Instruction pointer (`rip`).
    pub ip: u64,
    /// Stack pointer (`rsp`).
    pub sp: u64,
    /// Frame pointer (`rbp`).
    pub bp: u64,
}

/// One stack frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Code address: the interrupted instruction for the first frame, the
    /// return address for callers (whose `file`/`line` describe the call).
    pub ip: u64,
    /// Demangled function name, without Rust's hash suffix.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// This function was inlined into the next frame (same `ip`).
    pub inlined: bool,
    /// File name of the ELF module containing `ip` (`[vdso]` for the vdso).
    pub module: Option<String>,
}

/// Crates whose frames are runtime plumbing, not the application.
const RUNTIME_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "mio",
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    "futures_core",
    "futures_util",
    "futures_executor",
    "hashbrown",
    "tracing",
    "tracing_core",
    "backtrace",
    "loopwatch",
];

/// Modules of the C runtime (file name prefixes).
const SYSTEM_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "libgcc_s",
    "libdl",
    "librt",
    "libm.so",
    "libstdc++",
    "[vdso]",
    "linux-vdso",
];

/// Entry points of the C runtime found at the root of every stack.
const RUNTIME_ENTRY_POINTS: &[&str] = &["main", "_start", "start_thread", "clone", "clone3"];

impl Frame {
    /// Whether this frame is the application's own code rather than the
    /// standard library, the async runtime, locks, loopwatch or libc.
    ///
    /// False for frames without a function name; in a system module (libc,
    /// the dynamic loader, the vdso, ...); whose source file belongs to the
    /// Rust standard library (`/rustc/<hash>/library/...`), to loopwatch, or
    /// to one of the crates below (found from the `registry/src/<index>/<crate>-<version>/`
    /// or `vendor/<crate>/` part of the path); whose function is in one of
    /// `std`, `core`, `alloc`, `tokio`, `tokio_util`, `mio`, `parking_lot`,
    /// `parking_lot_core`, `lock_api`, `futures_*`, `hashbrown`, `tracing`,
    /// `tracing_core`, `backtrace`, `loopwatch`; whose name starts with `__`
    /// or is a C entry point (`main`, `_start`, `start_thread`, `clone`);
    /// and trait implementations `<T as Trait>::f` where `T` is one of those
    /// crates' types, or a bare generic (`F`) and `Trait` is theirs (closure
    /// shims such as `<F as core::ops::FnOnce>::call_once`). True otherwise:
    /// `<myapp::Db as core::future::Future>::poll` is the application's.
    ///
    /// The source file matters for inlined frames of binaries built with
    /// `debug = "line-tables-only"`: their names carry no path
    /// (`call_once<F>` rather than `core::ops::FnOnce::call_once`).
    ///
    /// The stall verdict names the innermost application frame.
    pub fn is_application(&self) -> bool {
        let Some(function) = self.function.as_deref() else {
            return false;
        };
        if let Some(module) = self.module.as_deref() {
            if SYSTEM_MODULES.iter().any(|m| module.starts_with(m)) {
                return false;
            }
        }
        if self.file.as_deref().is_some_and(is_runtime_file) {
            return false;
        }
        if function.starts_with("__") || RUNTIME_ENTRY_POINTS.contains(&function) {
            return false;
        }
        if let Some(qualified) = function.strip_prefix('<') {
            return is_application_impl(qualified);
        }
        !is_runtime_path(function)
    }
}

/// loopwatch's own sources, as recorded in debug info.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// Whether a source path belongs to the standard library, loopwatch, or a
/// crate of [`RUNTIME_CRATES`].
fn is_runtime_file(path: &str) -> bool {
    if path.starts_with("/rustc/")
        || path.contains("/lib/rustlib/src/rust/library/")
        || path.starts_with(OWN_SOURCES)
    {
        return true;
    }
    let package = if let Some((_, rest)) = path.split_once("/registry/src/") {
        // <index>/<crate>-<version>/...
        rest.split('/').nth(1)
    } else if let Some((_, rest)) = path.rsplit_once("/vendor/") {
        rest.split('/').next()
    } else {
        None
    };
    let Some(package) = package else {
        return false;
    };
    // Strip "-<version>": the first '-' followed by a digit.
    let name = package
        .char_indices()
        .find(|&(i, c)| c == '-' && package[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .map_or(package, |(i, _)| &package[..i])
        .replace('-', "_");
    RUNTIME_CRATES.contains(&name.as_str()) || name.starts_with("futures_")
}

/// `<T as Trait>::f`, given what follows the first `<`.
fn is_application_impl(qualified: &str) -> bool {
    let self_ty = qualified
        .trim_start_matches('<')
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim_start_matches("*const ")
        .trim_start_matches("*mut ")
        .trim_start_matches("dyn ");
    if is_runtime_path(self_ty) {
        return false;
    }
    // The self type ends at the first " as " at nesting depth 0 (or at the
    // closing `>` of an inherent `<T>::f`).
    let mut depth = 0usize;
    let mut end = self_ty.len();
    for (i, c) in self_ty.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            '>' if depth == 0 => {
                end = i;
                break;
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && self_ty[i..].starts_with(" as ") => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let ty = &self_ty[..end];
    let generic = !ty.contains("::");
    if generic {
        // `<u64>::unchecked_add`: an inherent method of a type without a
        // path is a primitive's, i.e. core's.
        if self_ty[end..].starts_with('>') {
            return false;
        }
        let trait_path = self_ty[end..].trim_start_matches(" as ");
        if is_runtime_path(trait_path) {
            return false;
        }
    }
    true
}

fn is_runtime_path(path: &str) -> bool {
    RUNTIME_CRATES.iter().any(|c| {
        path.strip_prefix(c)
            .is_some_and(|rest| rest.starts_with("::"))
    })
}

fn serialize_duration_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

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

/// The clock-tick rate `/proc` counts CPU times in (`sysconf(_SC_CLK_TCK)`;
/// 100, Linux's `USER_HZ` everywhere, where loopwatch cannot ask).
pub(crate) fn clock_ticks_per_second() -> u64 {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        sys::clock_ticks_per_second()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        100
    }
}

/// Captures the stacks of this process's threads on demand.
///
/// Create it at start (it installs the signal handler, loads the module
/// list and warms the symbolizer, which together take tens of
/// milliseconds), then call [`capture_all`](Self::capture_all) from the
/// monitor thread when a stall is detected. Several samplers may exist;
/// their captures are serialized process-wide.
pub struct StackSampler {
    config: CaptureConfig,
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    state: parking_lot::Mutex<imp::State>,
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
            let state = imp::State::new(&config)?;
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
    /// calling thread, if listed, is reported as [`CaptureOutcome::Monitor`].
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

    /// Captures every thread of the process (`/proc/self/task`).
    pub fn capture_all(&self) -> Capture {
        self.capture(&crate::procfs::list_threads())
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    //! The capture sequence on the monitor thread.

    use std::time::{Duration, Instant};

    use framehop::FrameAddress;

    use super::modules::{Modules, Unwound};
    use super::symbols::{ModuleRef, Symbolizer};
    use super::sys::{self, Arena, Sample};
    use super::{maps, Capture, CaptureConfig, CaptureOutcome, Frame, Registers, ThreadStack};
    use crate::error::Error;
    use crate::procfs;

    /// A sampler's private state: buffers, module list, symbol cache.
    pub(super) struct State {
        arena: Arena,
        modules: Modules,
        symbols: Symbolizer,
    }

    impl State {
        pub(super) fn new(config: &CaptureConfig) -> Result<Self, Error> {
            sys::install_handler(config.signal)?;
            let started = Instant::now();
            let modules = Modules::load(&maps::read_maps());
            let modules_loaded = started.elapsed();
            let mut symbols = Symbolizer::new();
            let warmed = symbols.warm(|address| {
                let m = modules.find(address)?;
                Some((m.path.clone()?, m.bias?))
            });
            tracing::debug!(
                modules = modules.len(),
                ?modules_loaded,
                symbolizer_warmed = warmed,
                warm_up = ?(started.elapsed() - modules_loaded),
                "stack sampler ready"
            );
            Ok(Self {
                arena: Arena::new(config.max_stack_bytes),
                modules,
                symbols,
            })
        }

        /// Captures `tids`. `precheck` skips threads whose `/proc` status
        /// shows the signal blocked or already pending (tests turn it off to
        /// exercise the timeout path).
        pub(super) fn capture(
            &mut self,
            config: &CaptureConfig,
            tids: &[i32],
            precheck: bool,
        ) -> Capture {
            let me = sys::current_tid();
            let mut seen = std::collections::HashSet::new();
            let mut threads: Vec<ThreadStack> = tids
                .iter()
                .copied()
                .filter(|tid| seen.insert(*tid))
                .map(|tid| ThreadStack {
                    tid,
                    facts: procfs::read_thread(tid),
                    outcome: CaptureOutcome::Failed,
                    detail: None,
                    registers: None,
                    stack_bytes: 0,
                    frames: Vec::new(),
                })
                .collect();
            let mut capture = Capture {
                threads: Vec::new(),
                signal_duration: Duration::ZERO,
                unwind_duration: Duration::ZERO,
                symbolize_duration: Duration::ZERO,
            };

            if !sys::handler_is_ours(config.signal) {
                tracing::warn!(
                    signal = config.signal,
                    "the application replaced loopwatch's capture signal handler"
                );
                for t in &mut threads {
                    if t.tid == me {
                        t.outcome = CaptureOutcome::Monitor;
                    } else {
                        t.detail = Some(format!(
                            "signal {} is now handled by the application; stacks not captured",
                            config.signal
                        ));
                    }
                }
                capture.threads = threads;
                return capture;
            }

            self.set_ranges();
            let mut unwound: Vec<Option<Unwound>> = Vec::with_capacity(threads.len());
            let mut refreshed = false;
            let guard = sys::lock_slot();
            for t in &mut threads {
                unwound.push(None);
                if t.tid == me {
                    t.outcome = CaptureOutcome::Monitor;
                    continue;
                }
                if precheck {
                    match t.facts.as_ref().map(|f| f.state) {
                        // A stopped thread cannot run the handler, and a
                        // signal to a traced one would stop at its debugger.
                        Some(state @ ('T' | 't')) => {
                            t.outcome = CaptureOutcome::Unresponsive;
                            t.detail = Some(format!(
                                "the thread is {}; not signalled",
                                if state == 'T' {
                                    "stopped"
                                } else {
                                    "stopped by a tracer"
                                }
                            ));
                            continue;
                        }
                        Some('Z' | 'X' | 'x') => {
                            t.outcome = CaptureOutcome::Exited;
                            continue;
                        }
                        _ => {}
                    }
                    if let Some(reason) = signal_precheck(t.tid, config.signal) {
                        t.outcome = CaptureOutcome::Unresponsive;
                        t.detail = Some(reason);
                        continue;
                    }
                }
                let mut remapped = false;
                loop {
                    let sent = Instant::now();
                    let sample = sys::sample(
                        &guard,
                        config.signal,
                        t.tid,
                        &mut self.arena,
                        config.per_thread_timeout,
                    );
                    capture.signal_duration += sent.elapsed();
                    match sample {
                        Sample::Copied {
                            regs,
                            len,
                            no_mapping,
                        } => {
                            if no_mapping && !remapped {
                                // A stack mapped after the ranges were read
                                // (a new thread): read them again, ask again.
                                remapped = true;
                                self.set_ranges();
                                continue;
                            }
                            let started = Instant::now();
                            let stack = self.arena.stack(len);
                            let mut result = self.modules.unwind(regs, stack, super::MAX_FRAMES);
                            if !refreshed && self.has_unknown_address(&result) {
                                refreshed = true;
                                if self.modules.refresh(&maps::read_maps()) > 0 {
                                    let stack = self.arena.stack(len);
                                    result = self.modules.unwind(regs, stack, super::MAX_FRAMES);
                                }
                            }
                            capture.unwind_duration += started.elapsed();
                            t.outcome = CaptureOutcome::Captured;
                            t.registers = Some(Registers {
                                ip: regs.ip,
                                sp: regs.sp,
                                bp: regs.bp,
                            });
                            t.stack_bytes = len;
                            t.detail = if no_mapping {
                                Some(
                                    "stack pointer outside every known mapping; stack not copied"
                                        .into(),
                                )
                            } else if len == 0 {
                                Some("the stack could not be read".into())
                            } else {
                                result
                                    .stopped
                                    .as_ref()
                                    .filter(|_| result.frames.len() >= super::MAX_FRAMES)
                                    .cloned()
                            };
                            if let Some(slot) = unwound.last_mut() {
                                *slot = Some(result);
                            }
                        }
                        Sample::Exited => t.outcome = CaptureOutcome::Exited,
                        Sample::TimedOut => {
                            let now = procfs::read_thread(t.tid);
                            let dead = now
                                .as_ref()
                                .is_some_and(|f| matches!(f.state, 'Z' | 'X' | 'x'));
                            if task_exists(t.tid) && !dead {
                                t.outcome = CaptureOutcome::Unresponsive;
                                t.detail = Some(format!(
                                    "no answer to signal {} within {:?}",
                                    config.signal, config.per_thread_timeout
                                ));
                                t.facts = now.or(t.facts.take());
                            } else {
                                t.outcome = CaptureOutcome::Exited;
                            }
                        }
                        Sample::QueueFull => {
                            t.outcome = CaptureOutcome::Unresponsive;
                            t.detail = Some("the thread's signal queue is full".into());
                        }
                        Sample::SendFailed(errno) => {
                            t.detail = Some(format!(
                                "tgkill failed: {}",
                                std::io::Error::from_raw_os_error(errno)
                            ));
                        }
                        Sample::NoContext => {
                            t.detail = Some("the kernel passed no register context".into());
                        }
                        Sample::HandlerStuck => {
                            t.detail =
                                Some("the handler started copying but did not finish".into());
                        }
                        Sample::SlotBusy => {
                            t.detail = Some(
                                "a late handler of an earlier request is still copying".into(),
                            );
                        }
                    }
                    break;
                }
            }
            drop(guard);

            let started = Instant::now();
            for (t, unwound) in threads.iter_mut().zip(&unwound) {
                if let Some(unwound) = unwound {
                    t.frames = self.symbolize(&unwound.frames);
                }
            }
            capture.symbolize_duration = started.elapsed();
            capture.threads = threads;
            tracing::debug!(
                threads = capture.threads.len(),
                signal = ?capture.signal_duration,
                unwind = ?capture.unwind_duration,
                symbolize = ?capture.symbolize_duration,
                "stacks captured"
            );
            capture
        }

        /// Reads the readable ranges of `/proc/self/maps` into the arena.
        fn set_ranges(&mut self) {
            let maps = maps::read_maps();
            self.arena
                .set_ranges(maps.iter().filter(|m| m.readable).map(|m| [m.start, m.end]));
        }

        fn has_unknown_address(&self, unwound: &Unwound) -> bool {
            unwound
                .frames
                .iter()
                .any(|f| self.modules.find(f.address_for_lookup()).is_none())
        }

        fn symbolize(&mut self, frames: &[FrameAddress]) -> Vec<Frame> {
            let mut out = Vec::with_capacity(frames.len());
            for address in frames {
                let ip = address.address();
                let known = self.modules.find(address.address_for_lookup());
                let module = known.map(|m| m.name.clone());
                let module_ref = known.and_then(|m| {
                    Some(ModuleRef {
                        path: m.path.as_deref()?,
                        bias: m.bias?,
                    })
                });
                let symbols = self
                    .symbols
                    .resolve(ip, address.is_return_address(), module_ref);
                if symbols.is_empty() {
                    out.push(Frame {
                        ip,
                        function: None,
                        file: None,
                        line: None,
                        inlined: false,
                        module,
                    });
                    continue;
                }
                let last = symbols.len() - 1;
                for (i, s) in symbols.iter().enumerate() {
                    out.push(Frame {
                        ip,
                        function: s.function.clone(),
                        file: s.file.clone(),
                        line: s.line,
                        inlined: i < last,
                        module: module.clone(),
                    });
                }
            }
            out
        }

        #[cfg(test)]
        pub(super) fn cached_symbols(&self) -> usize {
            self.symbols.cached()
        }
    }

    fn task_exists(tid: i32) -> bool {
        std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
    }

    /// Why sending the signal to `tid` would be pointless: it blocks the
    /// signal, or one from an earlier capture is still pending. Reads
    /// `SigBlk` and `SigPnd` of `/proc/self/task/TID/status`.
    fn signal_precheck(tid: i32, signal: i32) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
        let (blocked, pending) = signal_masks(&status, signal);
        if blocked {
            Some(format!("the thread blocks signal {signal}"))
        } else if pending {
            Some(format!(
                "signal {signal} from an earlier capture is still pending (the thread has not run since)"
            ))
        } else {
            None
        }
    }

    /// Whether `signal` is set in the `SigBlk:` and `SigPnd:` masks.
    pub(super) fn signal_masks(status: &str, signal: i32) -> (bool, bool) {
        let bit = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .zip(u32::try_from(signal - 1).ok().filter(|b| *b < 64))
                .is_some_and(|(mask, b)| mask & (1u64 << b) != 0)
        };
        (bit("SigBlk:"), bit("SigPnd:"))
    }
}
