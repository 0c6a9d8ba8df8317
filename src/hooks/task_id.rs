//! A `tokio::task::Id` read as the number it displays as, without
//! formatting it: the before-poll hook publishes the polled task's id as a
//! plain `u64`.
//!
//! Compiled with `tokio_unstable`, where the poll hooks use it, and in tests
//! on stable tokio too, where its check against `Display` still runs.

/// The number a `tokio::task::Id` displays as, read without formatting: the
/// id is a `NonZeroU64` newtype whose derived `Hash` writes that number,
/// which this hasher captures. (A unit test checks it against `Display`.)
#[inline]
pub(super) fn task_id_bits(id: tokio::task::Id) -> u64 {
    use std::hash::{Hash, Hasher};

    struct Capture(u64);
    impl Hasher for Capture {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            if let Ok(b) = <[u8; 8]>::try_from(bytes) {
                self.0 = u64::from_ne_bytes(b);
            } else {
                for &b in bytes {
                    self.0 = (self.0 << 8) | u64::from(b);
                }
            }
        }
        fn write_u64(&mut self, v: u64) {
            self.0 = v;
        }
    }

    let mut capture = Capture(0);
    id.hash(&mut capture);
    capture.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_read_as_the_number_they_display() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for _ in 0..100 {
            let handle = rt.spawn(async {});
            let id = handle.id();
            assert_eq!(task_id_bits(id).to_string(), id.to_string());
        }
    }
}
