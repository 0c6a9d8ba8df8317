//! `tokio_unstable`: spawn locations interned as small integers.
//!
//! The before-poll hook publishes the polled task's spawn location as an
//! index into one process-wide table of write-once cells, so the hot path
//! stores a number and the monitor reads the location back without a lock.
//! This module owns that table, [`LOCATIONS`]: inserting into it and
//! reading it back. It does not own the per-thread cache of the last two
//! locations seen (`Polling`, in [`super::slot`]), through which the hot
//! path usually skips this table, nor where the index is published
//! ([`super::poll`]).

use std::panic::Location;
use std::sync::OnceLock;

/// Size of the spawn-location table (a power of two).
const LOCATION_SLOTS: usize = 4096;
/// How far [`intern_location`] probes before giving up.
const LOCATION_PROBES: usize = 64;

/// Spawn locations seen by the poll hooks, interned so that a slot can
/// publish one as a small integer and the monitor can read it back without
/// a lock. Write-once cells; `Location`s are `'static` and few (one per
/// spawn site).
static LOCATIONS: [OnceLock<&'static Location<'static>>; LOCATION_SLOTS] =
    [const { OnceLock::new() }; LOCATION_SLOTS];

/// The index (plus one) of `location` in [`LOCATIONS`], inserting it the
/// first time; 0 if the table is full around its hash.
pub(super) fn intern_location(location: &'static Location<'static>) -> u32 {
    let address = location as *const Location<'static> as usize as u64;
    let hash = (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize;
    for probe in 0..LOCATION_PROBES {
        let i = (hash + probe) % LOCATION_SLOTS;
        let cell = &LOCATIONS[i];
        let stored = match cell.get() {
            Some(stored) => *stored,
            None => *cell.get_or_init(|| location),
        };
        if std::ptr::eq(stored, location) {
            return i as u32 + 1;
        }
    }
    0
}

/// `file:line:col` of an interned location.
pub(super) fn location_text(index: u32) -> Option<String> {
    let i = (index as usize).checked_sub(1)?;
    let location = LOCATIONS.get(i)?.get()?;
    Some(location.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_locations_intern_once() {
        #[track_caller]
        fn here() -> &'static Location<'static> {
            Location::caller()
        }
        let a = here();
        let b = here();
        let (ia, ib) = (intern_location(a), intern_location(b));
        assert_ne!(ia, 0);
        assert_ne!(ia, ib);
        assert_eq!(intern_location(a), ia);
        assert_eq!(location_text(ia).unwrap(), a.to_string());
        assert_eq!(location_text(0), None);
    }
}
