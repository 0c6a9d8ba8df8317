//! The monotonic microsecond clock shared by the probe and the monitor.
//!
//! Every timestamp loopwatch stores in an atomic is a `u64` count of
//! microseconds since a process-wide origin taken the first time the clock is
//! read. It comes from [`Instant`] (`CLOCK_MONOTONIC`, read through the vDSO,
//! tens of nanoseconds), so it does not depend on tokio's 1 ms timer wheel and
//! keeps running while the process is stopped.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since the clock's origin.
#[inline]
pub(crate) fn now_us() -> u64 {
    micros(origin().elapsed())
}

/// The [`Instant`] that a clock reading stands for.
pub(crate) fn instant_of(us: u64) -> Instant {
    origin() + Duration::from_micros(us)
}

/// A duration as whole microseconds, saturating.
#[inline]
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds as a duration.
#[inline]
pub(crate) fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

/// Serde for a [`Duration`] as a number of seconds (`f64`), the unit
/// reports and metrics use. Negative, non-finite or huge values read back
/// as zero or saturate instead of failing.
pub(crate) mod secs_f64 {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Ok(Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_counts_micros() {
        let a = now_us();
        std::thread::sleep(Duration::from_millis(5));
        let b = now_us();
        assert!(
            b >= a + 5_000,
            "clock advanced only {} µs over a 5 ms sleep",
            b - a
        );
        assert!(instant_of(b) >= instant_of(a));
    }
}
