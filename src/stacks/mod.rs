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
//! 2. For one thread at a time, a thread asleep in a system call (state
//!    `S` or `D`) is read without a signal first: its stack and
//!    instruction pointers from `/proc/<tid>/syscall`, its stack copied
//!    with `process_vm_readv`; the copy is kept when the thread did not
//!    run meanwhile and it unwinds to the thread's root: then a sleeping
//!    thread is neither woken nor interrupted. Only a thread in
//!    uninterruptible sleep gets a guessed frame pointer where its code
//!    needs one ([`frame_pointer`]); most Rust stacks do, so a thread in
//!    ordinary sleep is usually signalled. Otherwise, send a
//!    real-time signal with `tgkill`. Its
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
//!    `framehop` from the modules' `.eh_frame` CFI ([`modules`]), then,
//!    after the last thread, name every frame from the modules' symbol
//!    tables ([`symtab`]): module, build id, offset and function name, no
//!    file or line. The first report is written from this.
//! 4. Separately, [`StackSampler::symbolize`]: files, lines and inlined
//!    functions from DWARF ([`dwarf`]), within its own budget; then
//!    [`StackSampler::release`] drops all of it.
//!
//! Nothing is loaded at start: [`StackSampler::new`] installs the signal
//! handler and returns. What a capture keeps afterwards is the module list
//! and unwinder (views of the modules' `.eh_frame`, not copies) and the
//! stack buffer; symbolization state lives from a capture to its `release`.
//!
//! Side effect on the application: a thread that is signalled (running,
//! or asleep where reading it without a signal did not reach its root)
//! inside a system call that is not restartable (`epoll_wait`, `poll`,
//! `select`, ...) sees `EINTR`, as with any signal; the standard library,
//! mio and tokio retry.
//!
//! Only x86_64 Linux is supported; elsewhere [`StackSampler::new`] returns
//! [`Error::Capture`](crate::Error::Capture).
//!
//! # Files
//!
//! * [`capture`]: what a capture returns ([`Capture`], [`ThreadStack`],
//!   [`CaptureOutcome`], [`NotCaptured`], [`Registers`](capture::Registers),
//!   the bound [`MAX_FRAMES`](capture::MAX_FRAMES));
//! * [`frame`]: one stack [`Frame`] (whose code it is, is decided by the
//!   `origin` module);
//! * [`config`]: [`CaptureConfig`], its defaults and accepted ranges;
//! * [`sampler`]: [`StackSampler`], the public handle;
//! * [`sequence`]: the capture sequence a sampler runs on the monitor
//!   thread (budget, signalling, unwinding, naming); [`precheck`]: why a
//!   signal would be pointless, from `/proc`;
//! * [`sys`]: the signal handler, its handshake with the monitor thread,
//!   and (in `sys/files.rs`) file views, `malloc_trim` and the vdso: every
//!   `unsafe` block;
//! * [`maps`], [`modules`]: `/proc/self/maps`, the loaded ELF modules and
//!   their unwinder; [`frame_pointer`]: where the frame pointer of a
//!   thread in uninterruptible sleep probably is;
//! * [`elf`], [`debugfile`]: what an ELF file's headers say, and where its
//!   separate debug file is;
//! * [`names`], [`symtab`], [`dwarf`], [`dwarf_file`]: demangling and
//!   qualifying names, the symbol-table pass, the DWARF pass and reading
//!   one file's DWARF for it;
//! * [`offline`]: [`symbolize_offset`], a report's offset against a debug
//!   file, after the fact; [`carry`]: one capture's DWARF names reused for
//!   another capture of the same stall;
//! * [`coverage`]: the start-up log line on what reports can name.
//!
//! Inside this directory imports go one way, never in a circle: `sampler`
//! uses `sequence`, `capture` and `config`; `sequence` uses `capture`,
//! `config`, `dwarf`, `frame`, `frame_pointer`, `maps`, `modules`,
//! `precheck`, `symtab` and `sys`; `precheck` uses `capture`;
//! `dwarf` uses `capture`, `debugfile`, `dwarf_file`, `elf`, `frame`,
//! `modules` and `names` (and the `Symbolization` type of `sampler`);
//! `dwarf_file` uses `names` and `sys`; `offline` uses `dwarf_file`,
//! `frame`, `names` and `symtab`; `coverage` uses `debugfile`, `dwarf` and
//! `elf`; `symtab` uses `debugfile`, `elf`, `modules` and `names`;
//! `modules` uses `elf`, `frame`, `maps` and `sys`; `debugfile` uses `elf`;
//! `carry` uses `capture` and `frame`; `names` and `capture` use `frame`;
//! `frame`, `frame_pointer`, `config`, `elf`, `maps` and `sys` use no
//! sibling.

mod capture;
mod config;
mod frame;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod lifecycle_tests;
mod sampler;
#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests;

/// Declares modules that exist on x86_64 Linux only.
macro_rules! x86_64_linux {
    ($($module:item)*) => {
        $(
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            $module
        )*
    };
}

x86_64_linux! {
    mod carry;
    mod coverage;
    mod debugfile;
    mod dwarf;
    mod dwarf_file;
    mod elf;
    mod frame_pointer;
    mod maps;
    mod modules;
    mod names;
    mod offline;
    mod precheck;
    mod sequence;
    mod symtab;
    mod sys;
}

pub use capture::{Capture, CaptureOutcome, NotCaptured, ThreadStack};
pub use config::CaptureConfig;
pub(crate) use frame::is_system_module;
pub use frame::{Frame, Origin, SymbolSource};
pub use sampler::StackSampler;
#[allow(unused_imports)] // the diagnostics read it through `symbolize`'s result
pub use sampler::Symbolization;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use offline::{symbolize_offset, symbolize_offsets};

/// Gives frames of `to` the DWARF names their twins in `from` (an earlier
/// capture of the same stall, already symbolized) have: same build id,
/// offset and kind of address. No debug information is read.
pub(crate) fn carry_names(from: &[ThreadStack], to: &mut [ThreadStack]) {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    carry::carry_names(from, to);
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    let _ = (from, to);
}

/// Logs once what stall reports will be able to name for the main
/// executable, and how to get more (reads section headers only).
pub(crate) fn log_executable_coverage() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    coverage::log_executable_coverage();
}

/// Whether the executable has DWARF the DWARF pass can read (files, lines
/// and inlined functions); read once per process, section headers only.
pub(crate) fn executable_has_dwarf() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        coverage::executable_has_dwarf()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        false
    }
}

/// CPU time the calling thread has used (zero where unsupported).
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        sys::thread_cpu_time()
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        std::time::Duration::ZERO
    }
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
