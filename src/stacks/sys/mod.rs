//! Every `unsafe` block of loopwatch: the capture signal and its handler,
//! and the few libc calls the standard library does not wrap.
//!
//! # The handshake
//!
//! One process-wide [`Slot`] describes the single capture in flight (captures
//! are serialized by [`lock_slot`]). Its `word` packs the target tid and a
//! state, so that a handler can only ever claim a slot armed *for its own
//! thread*:
//!
//! ```text
//!   monitor: IDLE/DONE/ABANDONED --arm(tid)--> ARMED(tid) --tgkill-->
//!   handler on tid:  CAS ARMED(tid) -> WRITING(tid), copy, store DONE(tid)
//!   monitor on timeout: CAS ARMED(tid) -> ABANDONED(tid)
//! ```
//!
//! A handler that runs late (the thread had the signal blocked, or was in
//! uninterruptible sleep) finds the slot abandoned or armed for another
//! thread and returns without touching memory. If the monitor's timeout
//! races with a handler that already claimed the slot (`WRITING`), the
//! monitor waits for `DONE`; if that takes implausibly long, it leaks the
//! buffers the handler writes into instead of reusing them, so a late write
//! can never land in memory that is being read or freed.
//!
//! # What the handler does
//!
//! Only async-signal-safe work: a raw `gettid`, atomics, reading three
//! registers from its `ucontext`, a search in a preallocated array of
//! readable ranges, and one copy of `[rsp, min(end of rsp's mapping,
//! rsp + cap))` into a preallocated buffer. The copy uses
//! `process_vm_readv` on our own pid when the kernel allows it (a concurrent
//! `munmap` of the range then yields a short read instead of a `SIGSEGV`),
//! else a plain memory copy. `errno` is saved and restored. No allocation,
//! no lock, no unwinder, no formatting.
//!
//! The handler stays installed for the life of the process: an RT signal
//! still queued for a thread that blocks it would kill the process if its
//! disposition went back to the default.
//!
//! The other `unsafe` calls (read-only file views, `malloc_trim`, the
//! vdso image, the thread CPU clock) are in [`files`].

mod files;

pub(crate) use files::{map_file, map_file_range, read_vdso, return_free_heap, thread_cpu_time};

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::Error;

/// The kernel thread id of the calling thread.
pub(crate) fn current_tid() -> i32 {
    raw_gettid()
}

fn raw_gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and is async-signal-safe.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Installing the handler
// ---------------------------------------------------------------------------

/// Signals whose disposition is our handler (never removed, see module docs).
static INSTALLED: parking_lot::Mutex<Vec<i32>> = parking_lot::const_mutex(Vec::new());

/// Whether the handler copies with `process_vm_readv` (probed at install).
static USE_PROCESS_VM_READV: AtomicBool = AtomicBool::new(false);

fn our_handler_address() -> usize {
    handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// The current disposition of `signal`.
fn query(signal: i32) -> Result<libc::sigaction, Error> {
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `old` is a valid out pointer.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(Error::Capture(format!(
            "sigaction({signal}) failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(old)
}

/// Default, ignored, or already ours: free for loopwatch to use.
fn free_or_ours(action: &libc::sigaction) -> bool {
    let h = action.sa_sigaction;
    h == libc::SIG_DFL || h == libc::SIG_IGN || h == our_handler_address()
}

/// Whether `signal` is still handled by loopwatch (the application may have
/// installed a handler of its own since).
pub(crate) fn handler_is_ours(signal: i32) -> bool {
    query(signal).is_ok_and(|a| a.sa_sigaction == our_handler_address())
}

/// Installs the capture handler for `signal`, once per process.
///
/// Refuses with [`Error::SignalInUse`] if the application already handles
/// the signal.
pub(crate) fn install_handler(signal: i32) -> Result<(), Error> {
    let mut installed = INSTALLED.lock();
    if installed.contains(&signal) {
        if handler_is_ours(signal) {
            return Ok(());
        }
        installed.retain(|s| *s != signal);
    }
    let old = query(signal)?;
    if !free_or_ours(&old) {
        return Err(Error::SignalInUse { signal });
    }
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = our_handler_address();
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    // SAFETY: sa_mask is a valid sigset_t owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: an all-zero sigaction is a valid value of this plain C struct.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid; `handler` has the SA_SIGINFO signature
    // and is async-signal-safe (see its documentation).
    let rc = unsafe { libc::sigaction(signal, &action, &mut previous) };
    if rc != 0 {
        return Err(Error::Capture(format!(
            "cannot install the handler for signal {signal}: {}",
            std::io::Error::last_os_error()
        )));
    }
    if !free_or_ours(&previous) {
        // Someone installed a handler between our check and ours: put it back.
        // SAFETY: `previous` is the action the kernel just returned.
        unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
        return Err(Error::SignalInUse { signal });
    }
    static PROBE: OnceLock<bool> = OnceLock::new();
    let pvr = *PROBE.get_or_init(process_vm_readv_works);
    USE_PROCESS_VM_READV.store(pvr, Ordering::Relaxed);
    installed.push(signal);
    tracing::debug!(
        signal,
        process_vm_readv = pvr,
        "stack capture handler installed"
    );
    Ok(())
}

/// Whether the handler copies stacks with `process_vm_readv`, so that a
/// stale readable range (a stack unmapped since `/proc/self/maps` was read)
/// gives a short copy instead of a fault.
pub(crate) fn copies_are_fault_safe() -> bool {
    USE_PROCESS_VM_READV.load(Ordering::Relaxed)
}

/// `process_vm_readv` on our own pid (seccomp profiles may forbid it).
fn process_vm_readv_works() -> bool {
    let source = [0x5au8; 64];
    let mut target = [0u8; 64];
    let copied = copy_with_process_vm_readv(source.as_ptr() as u64, target.as_mut_ptr(), 64);
    copied == Some(64) && target == source
}

/// Copies `len` bytes at address `from` of this process into `to` with
/// `process_vm_readv`. `None` if the system call is unavailable; a short
/// count if part of the range is not mapped. Async-signal-safe.
fn copy_with_process_vm_readv(from: u64, to: *mut u8, len: usize) -> Option<usize> {
    let local = libc::iovec {
        iov_base: to.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: from as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: getpid is async-signal-safe; process_vm_readv only writes into
    // `local` (`len` bytes at `to`, which the caller guarantees writable) and
    // reports unreadable remote memory as an error instead of faulting.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            libc::getpid(),
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    if n >= 0 {
        return Some(n as usize);
    }
    // SAFETY: errno is a valid thread-local location.
    match unsafe { *libc::__errno_location() } {
        libc::EFAULT | libc::ESRCH => Some(0),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The slot shared with the handler
// ---------------------------------------------------------------------------

const IDLE: u64 = 0;
const ARMED: u64 = 1;
const WRITING: u64 = 2;
const DONE: u64 = 3;
const ABANDONED: u64 = 4;

const fn pack(tid: i32, state: u64) -> u64 {
    ((tid as u32 as u64) << 32) | state
}

/// Result flag: the stack pointer was in no known readable mapping.
const FLAG_NO_MAPPING: usize = 1;
/// Result flag: the kernel passed no `ucontext`.
const FLAG_NO_CONTEXT: usize = 2;

/// The one capture in flight. Inputs are written by the monitor before it
/// arms the slot (release), read by the handler after its CAS (acquire);
/// outputs the other way round.
struct Slot {
    word: AtomicU64,
    buf: AtomicPtr<u8>,
    buf_len: AtomicUsize,
    ranges: AtomicPtr<[u64; 2]>,
    ranges_len: AtomicUsize,
    ip: AtomicU64,
    sp: AtomicU64,
    bp: AtomicU64,
    copied: AtomicUsize,
    flags: AtomicUsize,
}

static SLOT: Slot = Slot {
    word: AtomicU64::new(IDLE),
    buf: AtomicPtr::new(std::ptr::null_mut()),
    buf_len: AtomicUsize::new(0),
    ranges: AtomicPtr::new(std::ptr::null_mut()),
    ranges_len: AtomicUsize::new(0),
    ip: AtomicU64::new(0),
    sp: AtomicU64::new(0),
    bp: AtomicU64::new(0),
    copied: AtomicUsize::new(0),
    flags: AtomicUsize::new(0),
};

/// The capture signal handler. Async-signal-safe: see the module docs.
extern "C" fn handler(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    handle(context);
    // SAFETY: as above.
    unsafe { *errno = saved };
}

fn handle(context: *mut libc::c_void) {
    let tid = raw_gettid();
    let armed = pack(tid, ARMED);
    if SLOT.word.load(Ordering::Relaxed) != armed {
        return;
    }
    if SLOT
        .word
        .compare_exchange(
            armed,
            pack(tid, WRITING),
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    if context.is_null() {
        SLOT.flags.store(FLAG_NO_CONTEXT, Ordering::Relaxed);
        SLOT.word.store(pack(tid, DONE), Ordering::Release);
        return;
    }
    let uc = context as *const libc::ucontext_t;
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t
    // that lives for the duration of the handler; we only read registers.
    let (ip, sp, bp) = unsafe {
        let gregs = &(*uc).uc_mcontext.gregs;
        (
            gregs[libc::REG_RIP as usize] as u64,
            gregs[libc::REG_RSP as usize] as u64,
            gregs[libc::REG_RBP as usize] as u64,
        )
    };
    SLOT.ip.store(ip, Ordering::Relaxed);
    SLOT.sp.store(sp, Ordering::Relaxed);
    SLOT.bp.store(bp, Ordering::Relaxed);

    let ranges = SLOT.ranges.load(Ordering::Relaxed);
    let ranges_len = SLOT.ranges_len.load(Ordering::Relaxed);
    let mut end = 0u64;
    if !ranges.is_null() {
        // Binary search over sorted, non-overlapping [start, end) ranges.
        let (mut lo, mut hi) = (0usize, ranges_len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // SAFETY: mid < ranges_len; the monitor keeps the array alive and
            // unmodified while the slot is ARMED or WRITING.
            let [start, stop] = unsafe { *ranges.add(mid) };
            if sp < start {
                hi = mid;
            } else if sp >= stop {
                lo = mid + 1;
            } else {
                end = stop;
                break;
            }
        }
    }
    let buf = SLOT.buf.load(Ordering::Relaxed);
    let cap = SLOT.buf_len.load(Ordering::Relaxed);
    let mut copied = 0usize;
    let mut flags = 0usize;
    if end == 0 || buf.is_null() {
        flags |= FLAG_NO_MAPPING;
    } else {
        let len = ((end - sp) as usize).min(cap);
        copied = if USE_PROCESS_VM_READV.load(Ordering::Relaxed) {
            copy_with_process_vm_readv(sp, buf, len)
        } else {
            None
        }
        .unwrap_or_else(|| {
            // SAFETY: [sp, sp + len) lies inside a readable mapping of
            // /proc/self/maps read just before the signal; it holds this
            // thread's stack (at and above its own stack pointer), which is
            // mapped while the thread runs this handler. `buf` has `cap >=
            // len` writable bytes reserved for us by the ARMED slot.
            unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, buf, len) };
            len
        });
    }
    SLOT.copied.store(copied, Ordering::Relaxed);
    SLOT.flags.store(flags, Ordering::Relaxed);
    SLOT.word.store(pack(tid, DONE), Ordering::Release);
}

// ---------------------------------------------------------------------------
// The monitor side
// ---------------------------------------------------------------------------

static SLOT_LOCK: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// Exclusive use of the signal slot: one capture at a time per process.
pub(crate) struct SlotGuard(#[allow(dead_code)] parking_lot::MutexGuard<'static, ()>);

/// Takes the process-wide capture lock.
pub(crate) fn lock_slot() -> SlotGuard {
    SlotGuard(SLOT_LOCK.lock())
}

/// Memory the handler writes into: the stack copy, and the readable ranges
/// it searches. Preallocated on the monitor thread.
pub(crate) struct Arena {
    buf: Box<[u8]>,
    ranges: Vec<[u64; 2]>,
}

impl Arena {
    /// An arena whose stack copies hold up to `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: vec![0u8; cap].into_boxed_slice(),
            ranges: Vec::new(),
        }
    }

    /// Replaces the readable ranges (sorted, non-overlapping `[start, end)`).
    pub(crate) fn set_ranges(&mut self, ranges: impl Iterator<Item = [u64; 2]>) {
        self.ranges.clear();
        self.ranges.extend(ranges);
        self.ranges.sort_unstable();
    }

    /// The bytes of the last successful copy.
    pub(crate) fn stack(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// Copies the user stack of a thread that is asleep in a system call,
/// from `sp` up to the end of its readable mapping (at most the arena's
/// size), into `arena`, without signalling the thread. Returns the bytes
/// copied; 0 when `process_vm_readv` is unavailable (a copy with `memcpy`
/// could fault if the thread's stack went away meanwhile) or `sp` lies in
/// no known mapping.
pub(crate) fn copy_blocked_stack(sp: u64, arena: &mut Arena) -> usize {
    if !copies_are_fault_safe() {
        return 0;
    }
    let Some(end) = arena
        .ranges
        .iter()
        .find(|[start, end]| *start <= sp && sp < *end)
        .map(|[_, end]| *end)
    else {
        return 0;
    };
    let len = usize::try_from(end - sp)
        .unwrap_or(usize::MAX)
        .min(arena.capacity());
    // The copy goes through process_vm_readv, which reports an unmapped
    // range as a short count instead of faulting.
    copy_with_process_vm_readv(sp, arena.buf.as_mut_ptr(), len).unwrap_or(0)
}

/// Registers of the interrupted code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// How one thread answered.
#[derive(Debug)]
pub(crate) enum Sample {
    /// The handler ran; `len` bytes from `regs.sp` are in the arena.
    Copied {
        regs: Regs,
        len: usize,
        no_mapping: bool,
    },
    /// `tgkill` said the thread does not exist.
    Exited,
    /// The handler did not run within the timeout.
    TimedOut,
    /// The thread's queue of pending signals is full (it blocks the signal).
    QueueFull,
    /// `tgkill` failed otherwise (errno).
    SendFailed(i32),
    /// The kernel passed no register context.
    NoContext,
    /// A handler started copying but did not finish; its buffers were
    /// leaked and replaced.
    HandlerStuck,
    /// A handler from an earlier, abandoned request is still copying.
    SlotBusy,
}

/// How long the monitor waits for a handler that already started copying.
const WRITING_GRACE: Duration = Duration::from_millis(200);

/// Waits until the slot is not `WRITING`; false on timeout.
fn wait_not_writing(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if SLOT.word.load(Ordering::Acquire) & 0xffff_ffff != WRITING {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Waits politely: spin for the first microseconds (delivery usually takes
/// 10–40 µs), then yield, then sleep in small steps.
fn backoff(round: u32) {
    if round < 64 {
        std::hint::spin_loop();
    } else if round < 256 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Interrupts thread `tid` with `signal` and waits up to `timeout` for its
/// handler to copy its registers and stack into `arena`.
pub(crate) fn sample(
    _guard: &SlotGuard,
    signal: i32,
    tid: i32,
    arena: &mut Arena,
    timeout: Duration,
) -> Sample {
    if !wait_not_writing(timeout) {
        return Sample::SlotBusy;
    }
    SLOT.buf.store(arena.buf.as_mut_ptr(), Ordering::Relaxed);
    SLOT.buf_len.store(arena.capacity(), Ordering::Relaxed);
    SLOT.ranges
        .store(arena.ranges.as_mut_ptr(), Ordering::Relaxed);
    SLOT.ranges_len.store(arena.ranges.len(), Ordering::Relaxed);
    SLOT.copied.store(0, Ordering::Relaxed);
    SLOT.flags.store(0, Ordering::Relaxed);
    SLOT.word.store(pack(tid, ARMED), Ordering::Release);

    // SAFETY: tgkill only sends a signal; our handler is installed for it.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if rc != 0 {
        let err = errno();
        // Nothing was queued, but a stale signal from an earlier capture may
        // claim the slot right now: only disarm if still armed.
        match SLOT.word.compare_exchange(
            pack(tid, ARMED),
            pack(tid, ABANDONED),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                return match err {
                    libc::ESRCH => Sample::Exited,
                    libc::EAGAIN => Sample::QueueFull,
                    e => Sample::SendFailed(e),
                }
            }
            Err(_) => return finish(tid, arena, timeout),
        }
    }
    finish(tid, arena, timeout)
}

/// Waits for the handler of `tid` (already signalled) to finish.
fn finish(tid: i32, arena: &mut Arena, timeout: Duration) -> Sample {
    let start = Instant::now();
    let mut round = 0u32;
    loop {
        let word = SLOT.word.load(Ordering::Acquire);
        if word == pack(tid, DONE) {
            return collect();
        }
        if start.elapsed() >= timeout {
            match SLOT.word.compare_exchange(
                pack(tid, ARMED),
                pack(tid, ABANDONED),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Sample::TimedOut,
                Err(w) if w == pack(tid, WRITING) => {
                    if wait_not_writing(WRITING_GRACE) {
                        continue;
                    }
                    // The handler may still write into the arena: give its
                    // memory away for good and start over with fresh buffers.
                    let fresh = Arena::new(arena.capacity());
                    let old = std::mem::replace(arena, fresh);
                    std::mem::forget(old);
                    tracing::warn!(
                        tid,
                        "capture handler did not finish copying; buffers leaked"
                    );
                    return Sample::HandlerStuck;
                }
                Err(w) if w == pack(tid, DONE) => continue,
                // Only this thread moves the slot out of ARMED/DONE; any
                // other value would be a bug: never spin on it.
                Err(_) => return Sample::TimedOut,
            }
        }
        backoff(round);
        round = round.saturating_add(1);
    }
}

fn collect() -> Sample {
    let flags = SLOT.flags.load(Ordering::Relaxed);
    SLOT.word.store(IDLE, Ordering::Release);
    if flags & FLAG_NO_CONTEXT != 0 {
        return Sample::NoContext;
    }
    Sample::Copied {
        regs: Regs {
            ip: SLOT.ip.load(Ordering::Relaxed),
            sp: SLOT.sp.load(Ordering::Relaxed),
            bp: SLOT.bp.load(Ordering::Relaxed),
        },
        len: SLOT.copied.load(Ordering::Relaxed),
        no_mapping: flags & FLAG_NO_MAPPING != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_tid_and_state_apart() {
        assert_ne!(pack(1, ARMED), pack(2, ARMED));
        assert_ne!(pack(1, ARMED), pack(1, WRITING));
        assert_eq!(pack(-1, DONE) & 0xffff_ffff, DONE);
    }

    #[test]
    fn vdso_copy_checks_its_range() {
        assert_eq!(read_vdso(0x1000, 0x2000), None);
        let maps = super::super::maps::read_maps();
        if let Some(v) = maps.iter().find(|m| m.path.as_deref() == Some("[vdso]")) {
            let image = read_vdso(v.start, v.end).expect("vdso readable");
            assert_eq!(&image[..4], b"\x7fELF");
        }
    }
}
