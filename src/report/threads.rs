//! Threads grouped by identical stack, for the report.
//!
//! A stall report lists every thread of the process, but a daemon's pool of
//! idle workers shares one stack: grouping keeps the report short. Each
//! group also says which of its frames did not move between the two
//! captures (`stuck`). Loop threads come first, then larger groups.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ReportFrame, ThreadGroup};
use crate::stacks::{Frame, ThreadStack};

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

/// Which frames of `first` are the same in `second` (compared from the
/// outermost frame inwards, by function, or address when unsymbolized).
pub(crate) fn stuck_mask(first: &[Frame], second: Option<&[Frame]>) -> Vec<bool> {
    let mut mask = vec![false; first.len()];
    let Some(second) = second else { return mask };
    let key = |f: &Frame| f.function.clone().unwrap_or_else(|| format!("{:#x}", f.ip));
    for (i, (a, b)) in first.iter().rev().zip(second.iter().rev()).enumerate() {
        if key(a) != key(b) {
            break;
        }
        let idx = first.len() - 1 - i;
        mask[idx] = true;
    }
    mask
}

/// Groups threads by identical stacks, loop threads first, then larger groups.
pub(crate) fn group_threads(
    first: &[ThreadStack],
    second: Option<&[ThreadStack]>,
    loop_tids: &[i32],
    cpu_used: &std::collections::HashMap<i32, Duration>,
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
                frames: rep
                    .frames
                    .iter()
                    .zip(mask)
                    .map(|(f, stuck)| ReportFrame {
                        frame: f.clone(),
                        stuck,
                    })
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

    fn frame(name: &str) -> Frame {
        Frame {
            ip: 0x1000,
            function: Some(name.into()),
            file: None,
            line: None,
            inlined: false,
            module: None,
            ..Frame::default()
        }
    }

    #[test]
    fn stuck_frames_are_the_common_outer_part() {
        let a = vec![frame("inner_a"), frame("mid"), frame("main")];
        let b = vec![frame("inner_b"), frame("mid"), frame("main")];
        assert_eq!(stuck_mask(&a, Some(&b)), vec![false, true, true]);
        assert_eq!(stuck_mask(&a, Some(&a)), vec![true, true, true]);
        assert_eq!(stuck_mask(&a, None), vec![false, false, false]);
    }
}
