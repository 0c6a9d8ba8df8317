//! The capture sequence a sampler runs on the monitor thread.
//!
//! This module owns a sampler's private [`State`] and the steps of one
//! capture, within its time budget: for each thread in the order asked,
//! read its `/proc` facts; skip, without a signal, a thread that could not
//! answer (uninterruptible sleep, stopped, blocking the signal, one still
//! pending) and say why ([`NotCaptured`]); ask [`super::sys`] for the
//! registers and stack of the others; unwind each copy right away
//! ([`super::modules`]); once the budget is used up, signal no one else.
//! After the last thread, frames are named from symbol tables
//! ([`super::symtab`]). The DWARF pass ([`super::dwarf`]) and releasing
//! its state are separate calls. It contains no `unsafe`, and it is not the
//! public handle ([`super::StackSampler`]).
//!
//! Nothing is loaded before the first capture: the module list, the
//! unwinder and the stack buffer are built then, and kept (a few hundred
//! kilobytes of address space, mostly views of files; see
//! [`super::modules`]), so that later single-thread samples are cheap.

use std::time::{Duration, Instant};

use framehop::FrameAddress;

use super::capture::{Capture, CaptureOutcome, NotCaptured, Registers, ThreadStack, MAX_FRAMES};
use super::config::CaptureConfig;
use super::dwarf::Answers;
use super::frame::{Frame, SymbolSource};
use super::frame_pointer;
use super::maps;
use super::modules::{Modules, Unwound};
use super::precheck::{signal_precheck, task_exists};
use super::sampler::Symbolization;
use super::symtab::SymtabNames;
use super::sys::{self, Arena, Sample};
use crate::error::Error;
use crate::procfs;

/// How long `/proc/self/maps` as last read is trusted, when the handler's
/// copies are fault-safe: a thread or library newer than that is noticed
/// anyway (its stack pointer or an address falls outside every known
/// range, and the maps are read again), so a stall's repeated one-thread
/// samples need not parse the file each time.
const MAPS_FRESH: Duration = Duration::from_secs(1);

/// The least time a thread is given to answer, even when the budget has
/// less left: below it a signal is not worth sending.
const MIN_WAIT: Duration = Duration::from_micros(200);

/// A sampler's private state: the stack buffer, the module list and
/// unwinder (built at the first capture), the symbol-table names looked up
/// so far (dropped by [`State::release`]) and the DWARF pass's answers
/// (bounded; no DWARF data is kept between calls).
pub(super) struct State {
    arena: Option<Arena>,
    modules: Option<Modules>,
    /// When `/proc/self/maps` was last read into the arena and modules.
    maps_at: Option<Instant>,
    names: SymtabNames,
    answers: Answers,
}

impl State {
    /// Installs the signal handler; loads nothing.
    pub(super) fn new(config: &CaptureConfig) -> Result<Self, Error> {
        sys::install_handler(config.signal)?;
        Ok(Self {
            arena: None,
            modules: None,
            maps_at: None,
            names: SymtabNames::default(),
            answers: Answers::default(),
        })
    }

    /// Captures `tids` within `budget`. `precheck` skips threads whose
    /// `/proc` status shows the signal blocked or already pending (tests
    /// turn it off to exercise the timeout path).
    pub(super) fn capture(
        &mut self,
        config: &CaptureConfig,
        tids: &[i32],
        budget: Duration,
        precheck: bool,
    ) -> Capture {
        let started = Instant::now();
        let deadline = started + budget;
        let me = sys::current_tid();
        let mut seen = std::collections::HashSet::new();
        let order: Vec<i32> = tids.iter().copied().filter(|t| seen.insert(*t)).collect();
        let mut capture = Capture {
            threads: Vec::with_capacity(order.len()),
            signal_duration: Duration::ZERO,
            unwind_duration: Duration::ZERO,
            symbolize_duration: Duration::ZERO,
        };

        if !sys::handler_is_ours(config.signal) {
            tracing::warn!(
                signal = config.signal,
                "the application replaced loopwatch's capture signal handler"
            );
            for tid in order {
                let facts = procfs::read_thread(tid);
                capture.threads.push(if tid == me {
                    monitor(tid, facts)
                } else {
                    let mut t = ThreadStack::not_captured(tid, facts, NotCaptured::HandlerReplaced);
                    t.detail = Some(format!(
                        "signal {} is now handled by the application; stacks not captured",
                        config.signal
                    ));
                    t
                });
            }
            return capture;
        }

        let stale = self.maps_at.is_none_or(|at| at.elapsed() > MAPS_FRESH)
            || !sys::copies_are_fault_safe()
            || self.arena.is_none()
            || self.modules.is_none();
        if stale {
            let maps = maps::read_maps();
            let arena = self
                .arena
                .get_or_insert_with(|| Arena::new(config.max_stack_bytes));
            arena.set_ranges(maps.iter().filter(|m| m.readable).map(|m| [m.start, m.end]));
            match &mut self.modules {
                Some(m) => {
                    m.refresh(&maps);
                }
                None => self.modules = Some(Modules::load(&maps)),
            }
            self.maps_at = Some(Instant::now());
        }
        let (Some(arena), Some(modules)) = (self.arena.as_mut(), self.modules.as_mut()) else {
            return capture;
        };
        let mut unwound: Vec<Option<Unwound>> = Vec::with_capacity(order.len());
        let mut modules_reread = false;
        let guard = sys::lock_slot();
        for tid in order {
            let mut one = Attempt {
                config,
                arena: &mut *arena,
                modules: &mut *modules,
                capture: &mut capture,
                modules_reread: &mut modules_reread,
            };
            let (t, frames) = if tid == me {
                (monitor(tid, procfs::read_thread(tid)), None)
            } else if Instant::now() >= deadline {
                // Facts only: no signal once the budget is used up.
                let mut t = ThreadStack::not_captured(
                    tid,
                    procfs::read_thread(tid),
                    NotCaptured::BudgetUsedUp,
                );
                t.detail = Some(format!(
                    "not signalled: the {budget:?} capture budget was used up"
                ));
                (t, None)
            } else {
                one.thread(&guard, tid, deadline, precheck)
            };
            capture.threads.push(t);
            unwound.push(frames);
        }
        drop(guard);

        let named = Instant::now();
        self.name_frames(&mut capture.threads, &unwound);
        capture.symbolize_duration = named.elapsed();
        tracing::debug!(
            threads = capture.threads.len(),
            took = ?started.elapsed(),
            signal = ?capture.signal_duration,
            unwind = ?capture.unwind_duration,
            names = ?capture.symbolize_duration,
            "stacks captured"
        );
        capture
    }

    /// Turns unwound addresses into frames: module, build id, offset and
    /// the symbol table's function name.
    fn name_frames(&mut self, threads: &mut [ThreadStack], unwound: &[Option<Unwound>]) {
        let Some(modules) = self.modules.as_ref() else {
            return;
        };
        // One symbol-table pass per module for the whole capture.
        let mut wanted: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for u in unwound.iter().flatten() {
            for f in &u.frames {
                if let Some(m) = modules.find(f.address_for_lookup()) {
                    if let Some(bias) = m.bias {
                        wanted
                            .entry(m.range.start)
                            .or_default()
                            .push(f.address_for_lookup().wrapping_sub(bias));
                    }
                }
            }
        }
        for (start, svmas) in &wanted {
            if let Some(m) = modules.find(*start) {
                self.names.look_up(m, svmas);
            }
        }
        for (t, u) in threads.iter_mut().zip(unwound) {
            let Some(u) = u else { continue };
            t.frames = u
                .frames
                .iter()
                .map(|f| frame_of(f, modules, &self.names))
                .collect();
        }
    }

    /// The DWARF pass over `threads` (frames of this sampler's captures).
    pub(super) fn symbolize(
        &mut self,
        threads: &mut [ThreadStack],
        budget: Duration,
    ) -> Symbolization {
        let Some(modules) = self.modules.as_ref() else {
            return Symbolization::default();
        };
        super::dwarf::symbolize(threads, modules, &mut self.answers, budget)
    }

    /// Drops the symbol-table names and gives the freed heap back to the
    /// OS. The module list, the stack buffer and the DWARF answers (at most
    /// [`MAX_ANSWER_BYTES`](super::dwarf::MAX_ANSWER_BYTES)) stay.
    pub(super) fn release(&mut self) {
        self.names.clear();
        sys::return_free_heap();
    }

    /// Whether the module list has been read (tests).
    #[cfg(test)]
    pub(super) fn loaded(&self) -> bool {
        self.modules.is_some()
    }

    /// Symbol-table answers cached (tests).
    #[cfg(test)]
    pub(super) fn cached_names(&self) -> usize {
        self.names.len()
    }
}

/// The monitor thread's own entry: not interrupted.
fn monitor(tid: i32, facts: Option<procfs::ThreadFacts>) -> ThreadStack {
    ThreadStack::captured(tid, facts, CaptureOutcome::Monitor)
}

/// One frame: its module, build id, offset and symbol-table name.
fn frame_of(f: &FrameAddress, modules: &Modules, names: &SymtabNames) -> Frame {
    let ip = f.address();
    let lookup = f.address_for_lookup();
    let Some(m) = modules.find(lookup) else {
        return Frame {
            ip,
            ..Frame::default()
        };
    };
    let function = m
        .bias
        .and_then(|b| names.cached(m, lookup.wrapping_sub(b)))
        .flatten()
        .map(|n| n.to_string());
    Frame {
        ip,
        symbols: if function.is_some() {
            SymbolSource::SymbolTable
        } else {
            SymbolSource::None
        },
        function,
        module: Some(m.name.clone()),
        build_id: m.build_id(),
        offset: m.bias.map(|b| ip.wrapping_sub(b)),
        ..Frame::default()
    }
}

/// What one thread's turn needs.
struct Attempt<'a> {
    config: &'a CaptureConfig,
    arena: &'a mut Arena,
    modules: &'a mut Modules,
    capture: &'a mut Capture,
    /// The module list was read again during this capture: not again
    /// (code outside every module, JIT code say, would otherwise have it
    /// re-read for every thread).
    modules_reread: &'a mut bool,
}

impl Attempt<'_> {
    /// A thread asleep in a system call, read without a signal: its stack
    /// copied from the stack pointer `/proc` gives, then unwound from the
    /// instruction after the call. `None` when the copy cannot be made, the
    /// thread ran during the copy or moved, or the unwind did not reach the
    /// thread's root (the caller then signals it, or reports it from
    /// `/proc` alone). Only a thread in uninterruptible sleep gets a
    /// guessed frame pointer ([`frame_pointer`]).
    fn asleep(
        &mut self,
        tid: i32,
        facts: Option<procfs::ThreadFacts>,
        state: char,
        (sp, pc): (u64, u64),
        deadline: Instant,
    ) -> Option<(ThreadStack, Option<Unwound>)> {
        if state == 'S' {
            // Most Rust stacks need the frame pointer, which is not
            // guessed for a thread that a signal can reach: find that out
            // from one copy and unwind before any further /proc read.
            let len = self.copy_blocked(sp);
            if len == 0 {
                return None;
            }
            let probe = self.unwind(sys::Regs { ip: pc, sp, bp: 0 }, len);
            if !self.reaches_root(&probe) {
                return None;
            }
        }
        let runs = procfs::run_count(tid)?;
        let len = self.copy_blocked(sp);
        // The copy is whole if the thread did not run meanwhile and still
        // sleeps at the place the unwind starts from.
        if len == 0
            || procfs::run_count(tid) != Some(runs)
            || procfs::read_syscall(tid).and_then(|s| s.user_regs) != Some((sp, pc))
        {
            return None;
        }
        let mut result = self.unwind(sys::Regs { ip: pc, sp, bp: 0 }, len);
        let mut bp = 0;
        let mut detail = None;
        if !self.reaches_root(&result) {
            if state != 'D' {
                return None;
            }
            let guesses =
                frame_pointer::guesses(self.arena.stack(len), sp, result.read_up_to, |a| {
                    self.modules.find(a).is_some()
                });
            let started = Instant::now();
            let mut whole = None;
            for guess in guesses {
                if Instant::now() >= deadline {
                    break;
                }
                let regs = sys::Regs { ip: pc, sp, bp: guess };
                let guessed = self.modules.unwind(regs, self.arena.stack(len), MAX_FRAMES);
                if self.reaches_root(&guessed) {
                    whole = Some((guess, guessed));
                    break;
                }
            }
            self.capture.unwind_duration += started.elapsed();
            (bp, result) = whole?;
            detail = Some(
                "read in uninterruptible sleep with a guessed frame pointer: a frame outside the \
                 first one that needs it may be a stale caller"
                    .to_string(),
            );
        }
        let mut t = ThreadStack::captured(tid, facts, CaptureOutcome::Captured);
        t.detail = detail;
        t.registers = Some(Registers { ip: pc, sp, bp });
        t.stack_bytes = len;
        t.read_asleep = true;
        if state == 'D' {
            t.kernel_stack = procfs::kernel_stack(tid);
        }
        Some((t, Some(result)))
    }

    /// Unwinds the `len` bytes of stack in the arena from `regs`, once more
    /// after re-reading the module list (at most once per capture) when a
    /// frame lies in no known module (a library loaded since the list was
    /// read), and adds the time taken to the capture's unwind time.
    fn unwind(&mut self, regs: sys::Regs, len: usize) -> Unwound {
        let started = Instant::now();
        let mut result = self.modules.unwind(regs, self.arena.stack(len), MAX_FRAMES);
        if !*self.modules_reread
            && result
                .frames
                .iter()
                .any(|f| self.modules.find(f.address_for_lookup()).is_none())
            && {
                *self.modules_reread = true;
                self.modules.refresh(&maps::read_maps()) > 0
            }
        {
            result = self.modules.unwind(regs, self.arena.stack(len), MAX_FRAMES);
        }
        self.capture.unwind_duration += started.elapsed();
        result
    }

    /// Copies the stack of a thread asleep at `sp` into the arena; its
    /// length (0 when it cannot be copied). Counted as signal-and-copy
    /// time.
    fn copy_blocked(&mut self, sp: u64) -> usize {
        let started = Instant::now();
        let len = sys::copy_blocked_stack(sp, self.arena);
        self.capture.signal_duration += started.elapsed();
        len
    }

    /// Whether an unwind got to the thread's root: it stopped without an
    /// error, has a few frames, and one of its last two is in the C library
    /// (`start_thread`/`clone3` for a spawned thread, `__libc_start_main`
    /// under `_start` for the main one). A stack cut short by an unknown
    /// frame pointer ends in the application instead.
    fn reaches_root(&self, result: &Unwound) -> bool {
        if result.stopped.is_some() || result.frames.len() < 4 {
            return false;
        }
        result.frames.iter().rev().take(2).any(|f| {
            self.modules
                .find(f.address_for_lookup())
                .is_some_and(|m| m.name.starts_with("libc.so") || m.name.starts_with("libc-"))
        })
    }

    /// One thread: prechecks, signal, unwind.
    fn thread(
        &mut self,
        guard: &sys::SlotGuard,
        tid: i32,
        deadline: Instant,
        precheck: bool,
    ) -> (ThreadStack, Option<Unwound>) {
        let facts = procfs::read_thread(tid);
        let Some(state) = facts.as_ref().map(|f| f.state) else {
            return (
                ThreadStack::not_captured(tid, None, NotCaptured::Exited),
                None,
            );
        };
        // Asleep in a system call: its user registers at the call are in
        // /proc, and its user stack does not move while it sleeps. Read
        // them instead of signalling: a signal would cut short a call that
        // cannot be restarted (a read with a timeout, poll, epoll_wait)
        // with EINTR, which some application code does not expect.
        if matches!(state, 'S' | 'D') {
            if let Some(regs) = facts.as_ref().and_then(|f| f.syscall.as_ref()?.user_regs) {
                if let Some(done) = self.asleep(tid, facts.clone(), state, regs, deadline) {
                    return done;
                }
            }
        }
        match state {
            // Asleep in the kernel: the handler could only run once the
            // kernel lets the thread go, which may be never.
            'D' => {
                let mut t =
                    ThreadStack::not_captured(tid, facts, NotCaptured::UninterruptibleSleep);
                t.kernel_stack = procfs::kernel_stack(tid);
                t.detail = Some("in uninterruptible sleep (D); not signalled".into());
                return (t, None);
            }
            // A stopped thread cannot run the handler, and a signal to a
            // traced one would stop at its debugger.
            'T' | 't' => {
                let mut t = ThreadStack::not_captured(tid, facts, NotCaptured::Stopped);
                t.kernel_stack = procfs::kernel_stack(tid);
                t.detail = Some(format!(
                    "the thread is {}; not signalled",
                    if state == 'T' {
                        "stopped"
                    } else {
                        "stopped by a tracer"
                    }
                ));
                return (t, None);
            }
            'Z' | 'X' | 'x' => {
                return (
                    ThreadStack::not_captured(tid, facts, NotCaptured::Exited),
                    None,
                )
            }
            _ => {}
        }
        if precheck {
            if let Some((reason, text)) = signal_precheck(tid, self.config.signal) {
                let mut t = ThreadStack::not_captured(tid, facts, reason);
                t.detail = Some(text);
                return (t, None);
            }
        }
        let timeout = self
            .config
            .per_thread_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(MIN_WAIT);
        let mut remapped = false;
        loop {
            let sent = Instant::now();
            let sample = sys::sample(guard, self.config.signal, tid, self.arena, timeout);
            self.capture.signal_duration += sent.elapsed();
            let mut t = ThreadStack::not_captured(tid, facts.clone(), NotCaptured::Failed);
            match sample {
                Sample::Copied {
                    regs,
                    len,
                    no_mapping,
                } => {
                    if no_mapping && !remapped {
                        // A stack mapped after the ranges were read (a new
                        // thread): read them again, ask again.
                        remapped = true;
                        let maps = maps::read_maps();
                        self.arena.set_ranges(
                            maps.iter().filter(|m| m.readable).map(|m| [m.start, m.end]),
                        );
                        continue;
                    }
                    let result = self.unwind(regs, len);
                    t.outcome = CaptureOutcome::Captured;
                    t.not_captured = None;
                    t.registers = Some(Registers {
                        ip: regs.ip,
                        sp: regs.sp,
                        bp: regs.bp,
                    });
                    t.stack_bytes = len;
                    t.detail = if no_mapping {
                        Some("stack pointer outside every known mapping; stack not copied".into())
                    } else if len == 0 {
                        Some("the stack could not be read".into())
                    } else {
                        result
                            .stopped
                            .as_ref()
                            .filter(|_| result.frames.len() >= MAX_FRAMES)
                            .cloned()
                    };
                    return (t, Some(result));
                }
                Sample::Exited => {
                    return (
                        ThreadStack::not_captured(tid, facts, NotCaptured::Exited),
                        None,
                    )
                }
                Sample::TimedOut => {
                    let now = procfs::read_thread(tid);
                    let dead = now
                        .as_ref()
                        .is_none_or(|f| matches!(f.state, 'Z' | 'X' | 'x'));
                    if dead || !task_exists(tid) {
                        return (
                            ThreadStack::not_captured(tid, facts, NotCaptured::Exited),
                            None,
                        );
                    }
                    let asleep = now.as_ref().is_some_and(|f| f.state == 'D');
                    let mut t = ThreadStack::not_captured(
                        tid,
                        now,
                        if asleep {
                            NotCaptured::UninterruptibleSleep
                        } else {
                            NotCaptured::NoAnswer
                        },
                    );
                    if asleep {
                        t.kernel_stack = procfs::kernel_stack(tid);
                    }
                    t.detail = Some(format!(
                        "no answer to signal {} within {timeout:?}",
                        self.config.signal
                    ));
                    return (t, None);
                }
                Sample::QueueFull => {
                    t = ThreadStack::not_captured(tid, facts, NotCaptured::SignalBlocked);
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
                    t.detail = Some("the handler started copying but did not finish".into());
                }
                Sample::SlotBusy => {
                    t.detail = Some("a late handler of an earlier request is still copying".into());
                }
            }
            return (t, None);
        }
    }
}
