//! The capture sequence a sampler runs on the monitor thread.
//!
//! This module owns a sampler's private [`State`] (the buffers the signal
//! handler writes into, the module list, the symbol cache) and the steps of
//! one capture: reading each thread's `/proc` facts, the prechecks that
//! spare a thread a pointless signal, asking [`super::sys`] for each
//! thread's registers and stack, unwinding the copy right away
//! ([`super::modules`]) and symbolizing all frames at the end
//! ([`super::symbols`]). It contains no `unsafe`, and it is not the public
//! handle ([`super::StackSampler`]).

use std::time::{Duration, Instant};

use framehop::FrameAddress;

use super::capture::{Capture, CaptureOutcome, Registers, ThreadStack, MAX_FRAMES};
use super::config::CaptureConfig;
use super::frame::{Frame, SymbolSource};
use super::maps;
use super::modules::{Modules, Unwound};
use super::symbols::{ModuleRef, Symbolizer};
use super::sys::{self, Arena, Sample};
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
                        let mut result = self.modules.unwind(regs, stack, MAX_FRAMES);
                        if !refreshed && self.has_unknown_address(&result) {
                            refreshed = true;
                            if self.modules.refresh(&maps::read_maps()) > 0 {
                                let stack = self.arena.stack(len);
                                result = self.modules.unwind(regs, stack, MAX_FRAMES);
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
                                .filter(|_| result.frames.len() >= MAX_FRAMES)
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
                        t.detail = Some("the handler started copying but did not finish".into());
                    }
                    Sample::SlotBusy => {
                        t.detail =
                            Some("a late handler of an earlier request is still copying".into());
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
            let offset = known.and_then(|m| m.bias).map(|b| ip.wrapping_sub(b));
            let symbols = self
                .symbols
                .resolve(ip, address.is_return_address(), module_ref);
            if symbols.is_empty() {
                out.push(Frame {
                    ip,
                    module,
                    offset,
                    ..Frame::default()
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
                    offset,
                    symbols: SymbolSource::DebugInfo,
                    ..Frame::default()
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
