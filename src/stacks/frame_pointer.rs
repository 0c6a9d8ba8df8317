//! Frame-pointer guesses for a thread in uninterruptible sleep.
//!
//! A thread asleep in a system call is read from `/proc/<tid>/syscall`,
//! which gives its stack and instruction pointers but not `rbp`. Code built
//! with frame pointers (the standard library as rustup ships it here, any
//! crate at `opt-level = 0`) says in its CFI that its caller is found
//! through `rbp`, so an unwind that starts with `rbp` unknown stops at the
//! first such frame. This module owns the guess: the places in the copied
//! stack, at or above the stack pointer of that first frame, that look
//! like a frame record (a saved frame pointer that points further up the
//! stack, or is 0 at the root, followed by an address in a known module).
//!
//! A guess is not proof. A stale record left in the uninitialised locals of
//! that first frame by an earlier call can chain into the live records and
//! reach the thread's root with one invented caller. So the capture
//! sequence guesses only for a thread in uninterruptible sleep (D), which
//! no signal can reach and which would otherwise have no stack at all, and
//! the report says the frame pointer was guessed; a thread in ordinary
//! sleep (S) whose stack needs the frame pointer is signalled instead.
//!
//! It does not unwind (the `modules` module does) nor decide whether an
//! unwind is whole (the capture sequence does).

/// Most guesses tried for one thread.
pub(super) const MAX_GUESSES: usize = 16;

/// How far above the stack pointer guesses are looked for: the frames
/// between the system call and the first frame that uses `rbp` (the C
/// library's and the standard library's wrappers) are small.
const SCAN_BYTES: usize = 16 * 1024;

/// Addresses in `stack` (copied from `sp` upwards) at or above `floor` that
/// look like a frame record, lowest first, at most [`MAX_GUESSES`].
/// `floor` is the stack pointer of the first frame that needs the frame
/// pointer (its record lies in its own frame, above it); `is_code` says
/// whether an address lies in a known module.
pub(super) fn guesses(
    stack: &[u8],
    sp: u64,
    floor: u64,
    is_code: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let top = sp.saturating_add(stack.len() as u64);
    let word = |offset: usize| -> Option<u64> {
        let bytes = stack.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let mut found = Vec::new();
    if sp % 8 != 0 {
        return found;
    }
    for offset in (0..stack.len().min(SCAN_BYTES)).step_by(8) {
        let (Some(saved), Some(ret)) = (word(offset), offset.checked_add(8).and_then(word)) else {
            break;
        };
        let at = sp + offset as u64;
        if at < floor {
            continue;
        }
        let links_up = saved == 0 || (saved > at && saved < top && saved % 8 == 0);
        if links_up && is_code(ret) {
            found.push(at);
            if found.len() == MAX_GUESSES {
                break;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack_of(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn a_frame_record_is_found_and_noise_is_not() {
        let sp = 0x7000_0000;
        let code = |a: u64| (0x40_0000..0x50_0000).contains(&a);
        let stack = stack_of(&[
            0x1234,    // sp + 0: noise
            0x40_1000, // sp + 8: a code address, but sp + 0 is no link
            sp + 0x20, // sp + 16: saved rbp pointing up...
            0x40_2000, // sp + 24: ...then a return address: a record
            0,         // sp + 32: the root's record
            0x40_3000, // sp + 40
            sp - 8,    // sp + 48: points down: not a record
            0x40_4000, // sp + 56
        ]);
        assert_eq!(guesses(&stack, sp, sp, code), vec![sp + 16, sp + 32]);
        // Below the floor nothing counts.
        assert_eq!(guesses(&stack, sp, sp + 24, code), vec![sp + 32]);
    }

    #[test]
    fn guesses_are_bounded_and_need_an_aligned_stack() {
        let sp = 0x7000_0000;
        let words: Vec<u64> = (0..200).flat_map(|_| [0, 0x40_0000]).collect();
        let stack = stack_of(&words);
        let all = |_: u64| true;
        assert_eq!(guesses(&stack, sp, sp, all).len(), MAX_GUESSES);
        assert!(guesses(&stack, sp + 4, sp + 4, all).is_empty());
        assert!(guesses(&[], sp, sp, all).is_empty());
        assert!(guesses(&stack[..12], sp, sp, all).is_empty());
    }
}
