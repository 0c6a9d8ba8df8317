//! What a capture returns: the stacks of a set of threads.
//!
//! This module owns the public data of a capture ([`Capture`],
//! [`ThreadStack`], [`CaptureOutcome`], [`Registers`]), its bound on frames
//! per thread, and how it serializes (durations as fractional seconds). It
//! does not take captures ([`super::StackSampler`] does) nor classify
//! frames ([`super::frame`]).

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
    /// Time spent turning addresses into functions, files and lines.
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
    /// Capture failed for another reason, given in the thread's `detail`.
    Failed,
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
