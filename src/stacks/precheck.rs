//! Why signalling a thread would be pointless, from `/proc` alone.
//!
//! Before the capture sequence signals a thread it asks this module
//! whether the thread blocks the capture signal or still holds one from an
//! earlier capture (`SigBlk` and `SigPnd` of its `/proc` status), and,
//! after a thread did not answer, whether it still exists. It does not
//! signal anyone (the capture sequence does) nor read the other facts of a
//! thread (the `procfs` module does).

use super::capture::NotCaptured;

/// Whether the thread `tid` of this process still exists.
pub(super) fn task_exists(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Why sending the signal to `tid` would be pointless: it blocks the
/// signal, or one from an earlier capture is still pending. Reads
/// `SigBlk` and `SigPnd` of `/proc/self/task/TID/status`.
pub(super) fn signal_precheck(tid: i32, signal: i32) -> Option<(NotCaptured, String)> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    let (blocked, pending) = signal_masks(&status, signal);
    if blocked {
        Some((
            NotCaptured::SignalBlocked,
            format!("the thread blocks signal {signal}"),
        ))
    } else if pending {
        Some((
            NotCaptured::SignalPending,
            format!(
                "signal {signal} from an earlier capture is still pending (the thread has not run since)"
            ),
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
