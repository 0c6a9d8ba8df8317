//! What a capture returns: the stacks of a set of threads.
//!
//! This module owns the public data of a capture ([`Capture`],
//! [`ThreadStack`], [`CaptureOutcome`], [`NotCaptured`], [`Registers`]),
//! its bound on frames per thread, and how it serializes (durations as
//! fractional seconds). It does not take captures ([`super::StackSampler`]
//! does) nor classify frames ([`super::frame`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::frame::Frame;
use crate::procfs::ThreadFacts;

/// Frames kept per thread; deeper stacks are cut (and say so).
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
pub const MAX_FRAMES: usize = 256;

/// The stacks of a set of threads, taken one after the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capture {
    /// One entry per requested thread, in request order.
    pub threads: Vec<ThreadStack>,
    /// Time spent signalling threads and waiting for their copies.
    #[serde(with = "crate::clock::secs_f64")]
    pub signal_duration: Duration,
    /// Time spent unwinding the copies.
    #[serde(with = "crate::clock::secs_f64")]
    pub unwind_duration: Duration,
    /// Time spent naming frames from the modules' symbol tables (the
    /// DWARF pass, [`StackSampler::symbolize`](super::StackSampler::symbolize),
    /// comes later and is timed on its own).
    #[serde(with = "crate::clock::secs_f64")]
    pub symbolize_duration: Duration,
}

/// One thread of a [`Capture`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadStack {
    /// Kernel thread id.
    pub tid: i32,
    /// `/proc` facts (name, state, wait channel, system call, CPU time);
    /// `None` if they could not be read.
    pub facts: Option<ThreadFacts>,
    /// What happened when the thread was asked for its stack.
    pub outcome: CaptureOutcome,
    /// Why the thread's stack was not captured (`None` when it was, and for
    /// the monitor thread itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_captured: Option<NotCaptured>,
    /// Why the outcome is not [`CaptureOutcome::Captured`], or why the stack
    /// is incomplete, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The thread's kernel stack (`/proc/self/task/TID/stack`, innermost
    /// first), for a thread that was not signalled because it sleeps in the
    /// kernel (`D`) or is stopped; empty when not read or not readable
    /// (the file needs `CAP_SYS_ADMIN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_stack: Vec<String>,
    /// The thread was asleep in a system call, and its stack was read
    /// where it made the call (`/proc/.../syscall`) without a signal, so
    /// the call was not cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_asleep: bool,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Not asked: the capture's time budget was used up before this thread,
    /// the application replaced the capture handler, or capture is off
    /// (the thread's `not_captured` says which).
    Skipped,
    /// Capture failed for another reason, given in the thread's `detail`.
    Failed,
}

/// Why a thread's stack is not in a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum NotCaptured {
    /// The thread blocks the capture signal (`SigBlk` in its `/proc`
    /// status); not signalled.
    SignalBlocked,
    /// A capture signal sent earlier is still pending: the thread has not
    /// run since; not signalled again.
    SignalPending,
    /// Signalled, but its handler did not run within the per-thread
    /// timeout (or what was left of the budget).
    NoAnswer,
    /// In uninterruptible sleep (`D`): it could not run the handler until
    /// the kernel lets it go; not signalled. Its wait channel, system call
    /// and kernel stack are the evidence.
    UninterruptibleSleep,
    /// Stopped (`T`) or stopped by a tracer (`t`); not signalled.
    Stopped,
    /// The capture's time budget was used up before this thread's turn.
    BudgetUsedUp,
    /// The application installed its own handler for the capture signal.
    HandlerReplaced,
    /// The thread exited before or during the capture.
    Exited,
    /// Stack capture is off (`Builder::no_stack_capture`).
    CaptureOff,
    /// The signal could not be sent or the handler could not copy the
    /// stack; the thread's `detail` says why.
    Failed,
}

impl NotCaptured {
    /// The reason in a few words, for text reports.
    pub fn describe(self) -> &'static str {
        match self {
            NotCaptured::SignalBlocked => "blocks the capture signal",
            NotCaptured::SignalPending => "capture signal still pending",
            NotCaptured::NoAnswer => "did not answer in time",
            NotCaptured::UninterruptibleSleep => "in uninterruptible sleep (D)",
            NotCaptured::Stopped => "stopped",
            NotCaptured::BudgetUsedUp => "capture budget used up",
            NotCaptured::HandlerReplaced => "the application replaced the capture handler",
            NotCaptured::Exited => "exited",
            NotCaptured::CaptureOff => "stack capture is off",
            NotCaptured::Failed => "capture failed",
        }
    }

    /// The outcome a thread not captured for this reason has.
    pub fn outcome(self) -> CaptureOutcome {
        match self {
            NotCaptured::SignalBlocked
            | NotCaptured::SignalPending
            | NotCaptured::NoAnswer
            | NotCaptured::UninterruptibleSleep
            | NotCaptured::Stopped => CaptureOutcome::Unresponsive,
            NotCaptured::BudgetUsedUp | NotCaptured::HandlerReplaced | NotCaptured::CaptureOff => {
                CaptureOutcome::Skipped
            }
            NotCaptured::Exited => CaptureOutcome::Exited,
            NotCaptured::Failed => CaptureOutcome::Failed,
        }
    }
}

impl ThreadStack {
    /// A thread whose stack is in this capture, as `outcome` (captured, or
    /// the monitor's own entry), with its `/proc` facts; stack and frames
    /// are the caller's to fill in.
    pub(crate) fn captured(tid: i32, facts: Option<ThreadFacts>, outcome: CaptureOutcome) -> Self {
        ThreadStack {
            outcome,
            not_captured: None,
            ..Self::not_captured(tid, facts, NotCaptured::Failed)
        }
    }

    /// A thread whose stack is not captured, for `reason`, with its `/proc`
    /// facts.
    pub fn not_captured(tid: i32, facts: Option<ThreadFacts>, reason: NotCaptured) -> Self {
        ThreadStack {
            tid,
            facts,
            outcome: reason.outcome(),
            not_captured: Some(reason),
            detail: None,
            kernel_stack: Vec::new(),
            read_asleep: false,
            registers: None,
            stack_bytes: 0,
            frames: Vec::new(),
        }
    }
}

/// Registers of interrupted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registers {
    /// Instruction pointer (`rip`).
    pub ip: u64,
    /// Stack pointer (`rsp`).
    pub sp: u64,
    /// Frame pointer (`rbp`).
    pub bp: u64,
}
