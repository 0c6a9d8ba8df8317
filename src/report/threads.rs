//! Threads grouped by identical stack, for the report.
//!
//! A stall report lists every thread of the process, but a daemon's pool of
//! idle workers shares one stack: grouping keeps the report short. Each
//! group's frames carry whose code they are ([`Frame::origin`], from
//! [`OwnCode`]), which of them did not move between the two captures
//! (`stuck`), and, when the stack was cut, where and why. Loop threads come
//! first, then larger groups. Rendering is [`super::text`]'s job.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ReportFrame, ThreadGroup};
use crate::origin::OwnCode;
use crate::stacks::{CaptureOutcome, Frame, ThreadStack};
use crate::verdict::{physical, Physical};

/// Frames a capture keeps per thread (`stacks::capture::MAX_FRAMES`).
const FRAME_LIMIT: usize = 256;

/// The key that makes two stacks "identical".
fn stack_key(t: &ThreadStack) -> (String, Vec<String>) {
    (
        format!("{:?} {:?}", t.outcome, t.not_captured),
        t.frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip)))
            .collect(),
    )
}

/// Which frames of `first` are the same in `second`, compared from the
/// outermost frame inwards one physical frame (an address with the
/// functions inlined at it) at a time: by address, or by function — a
/// function that loops calling other functions (or is the innermost frame,
/// whose address moves while it runs) has not returned, whatever call it
/// is in at the moment.
pub(crate) fn stuck_mask(first: &[Frame], second: Option<&[Frame]>) -> Vec<bool> {
    let mut mask = vec![false; first.len()];
    let Some(second) = second else { return mask };
    let a = physical(first);
    let b = physical(second);
    let same = |x: &Physical<'_>, y: &Physical<'_>| {
        x.ip == y.ip || (x.function.is_some() && x.function == y.function)
    };
    for k in 0..a.len().min(b.len()) {
        let (i, j) = (a.len() - 1 - k, b.len() - 1 - k);
        if !same(&a[i], &b[j]) {
            break;
        }
        let end = a.get(i + 1).map_or(first.len(), |next| next.first);
        for m in &mut mask[a[i].first..end] {
            *m = true;
        }
    }
    mask
}

/// Why the stack of `t` is incomplete, when it is.
pub(crate) fn cut_reason(t: &ThreadStack, max_stack_bytes: Option<usize>) -> Option<String> {
    if t.outcome != CaptureOutcome::Captured {
        return None;
    }
    if let Some(max) = max_stack_bytes.filter(|max| t.stack_bytes >= *max && *max > 0) {
        return Some(format!(
            "stack cut at {} KiB (max_stack_bytes): the outer frames are missing",
            max / 1024
        ));
    }
    if t.frames.len() >= FRAME_LIMIT {
        return Some(format!(
            "stack cut at the limit of {FRAME_LIMIT} frames: the outer frames are missing"
        ));
    }
    t.detail.clone()
}

/// Groups threads by identical stacks, loop threads first, then larger
/// groups; frames classified with `own`.
pub(crate) fn group_threads(
    first: &[ThreadStack],
    second: Option<&[ThreadStack]>,
    loop_tids: &[i32],
    cpu_used: &std::collections::HashMap<i32, Duration>,
    own: &OwnCode,
    max_stack_bytes: Option<usize>,
) -> Vec<ThreadGroup> {
    let mut groups: BTreeMap<(String, Vec<String>), Vec<&ThreadStack>> = BTreeMap::new();
    for t in first {
        groups.entry(stack_key(t)).or_default().push(t);
    }
    let mut out: Vec<ThreadGroup> = groups
        .into_values()
        .map(|ts| {
            let rep = ts[0];
            let later = second.and_then(|s| s.iter().find(|x| x.tid == rep.tid));
            let mask = stuck_mask(&rep.frames, later.map(|l| l.frames.as_slice()));
            let mut names: Vec<String> = ts
                .iter()
                .filter_map(|t| t.facts.as_ref().map(|f| f.name.clone()))
                .collect();
            names.sort();
            names.dedup();
            let cpu: Option<f64> = ts
                .iter()
                .map(|t| cpu_used.get(&t.tid).map(Duration::as_secs_f64))
                .sum();
            let facts = rep.facts.as_ref();
            let mut frames = rep.frames.clone();
            own.classify(&mut frames);
            ThreadGroup {
                count: ts.len(),
                tids: ts.iter().map(|t| t.tid).collect(),
                names,
                loop_thread: ts.iter().any(|t| loop_tids.contains(&t.tid)),
                outcome: rep.outcome,
                not_captured: rep.not_captured,
                kernel_stack: rep.kernel_stack.clone(),
                state: facts.map(|f| format!("{} ({})", f.state, f.state_name)),
                syscall: facts.and_then(|f| f.syscall.as_ref()).map(|s| {
                    s.name
                        .as_deref()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("#{}", s.number))
                }),
                wchan: facts.and_then(|f| f.wchan.clone()),
                cpu_seconds: cpu,
                cut: cut_reason(rep, max_stack_bytes),
                frames: frames
                    .into_iter()
                    .zip(mask)
                    .map(|(frame, stuck)| ReportFrame { frame, stuck })
                    .collect(),
            }
        })
        .collect();
    out.sort_by_key(|g| (!g.loop_thread, std::cmp::Reverse(g.count)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, ip: u64) -> Frame {
        Frame {
            ip,
            function: Some(name.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn stuck_frames_are_the_common_outer_part() {
        let a = vec![frame("inner_a", 1), frame("mid", 2), frame("main", 3)];
        let b = vec![frame("inner_b", 4), frame("mid", 2), frame("main", 3)];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![false, true, true]);
        assert_eq!(stuck_mask(&a, Some(&a)), vec![true, true, true]);
        assert_eq!(stuck_mask(&a, None), vec![false, false, false]);
    }

    #[test]
    fn a_running_innermost_frame_is_stuck_by_function_and_inlined_frames_with_their_caller() {
        // The spinning function's address moves between captures.
        let a = vec![frame("app::spin", 0x10), frame("app::handler", 0x20)];
        let b = vec![frame("app::spin", 0x14), frame("app::handler", 0x20)];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![true, true]);
        // Without names it cannot be told.
        let nameless = |ip| Frame {
            ip,
            ..Frame::default()
        };
        let a = vec![nameless(0x10), nameless(0x20)];
        let b = vec![nameless(0x14), nameless(0x20)];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![false, true]);
        // An inlined frame shares its caller's address and fate; the second
        // capture may have only symbol-table names (no inlined frames).
        let inlined = Frame {
            inlined: true,
            ..frame("app::helper", 0x30)
        };
        let a = vec![
            frame("app::spin", 0x10),
            inlined,
            frame("app::handler", 0x30),
        ];
        let b = vec![frame("app::spin", 0x18), frame("app::handler", 0x30)];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![true, true, true]);
    }

    #[test]
    fn a_cut_stack_says_why() {
        let t = |bytes: usize, frames: usize| ThreadStack {
            tid: 1,
            facts: None,
            outcome: CaptureOutcome::Captured,
            detail: None,
            registers: None,
            stack_bytes: bytes,
            frames: vec![Frame::default(); frames],
            not_captured: None,
            kernel_stack: Vec::new(),
        };
        assert_eq!(
            cut_reason(&t(128 * 1024, 40), Some(128 * 1024)).as_deref(),
            Some("stack cut at 128 KiB (max_stack_bytes): the outer frames are missing")
        );
        assert!(cut_reason(&t(4096, 256), Some(128 * 1024))
            .is_some_and(|r| r.contains("limit of 256 frames")));
        assert_eq!(cut_reason(&t(4096, 12), Some(128 * 1024)), None);
    }
}
