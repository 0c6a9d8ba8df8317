//! Naming a report's frames after the fact.
//!
//! A report from a stripped binary carries, for each frame, the module's
//! build id and the frame's offset in that module's ELF file, but no names.
//! This file owns [`StallReport::symbolize_frames`]: it replaces the frames
//! of one build by what a resolver names at their offsets (inlined
//! functions included) and finds the culprit again from the named stack,
//! with the same rule the live verdict uses. It does not read debug files
//! (the resolver does: [`symbolize_offset`](crate::symbolize_offset) in
//! the `loopwatch symbolize` command) nor write the result.

use std::collections::HashMap;

use super::{ReportFrame, StallReport, ThreadGroup};
use crate::error::Error;
use crate::origin::OwnCode;
use crate::stacks::{Frame, ThreadStack};
use crate::verdict::{Culprit, Reading};

impl StallReport {
    /// Names the frames of the binary whose GNU build id is `build_id`
    /// (lower-case hex, as in [`Frame::build_id`]): every frame of that
    /// module with an [`offset`](Frame::offset) is replaced by what
    /// `resolve(offset, is_return_address)` returns for it — innermost
    /// (inlined) first, the function the address lies in last — keeping
    /// its address, module, build id, offset and whether it moved between
    /// captures. `is_return_address` is false for a thread's first frame
    /// (the interrupted instruction) and true for its callers. An empty
    /// answer leaves the frame as it was. Each distinct offset is resolved
    /// once.
    ///
    /// Then the culprit is found again on the culprit's thread (or the
    /// first event-loop thread): the innermost application frame above the
    /// runtime, as at detection. A report from a stripped binary, which had
    /// none, gets one this way. The verdict, its evidence and the notes are
    /// left as they were written.
    ///
    /// Returns how many frames (physical, not counting inlined expansions)
    /// were named. The first error of `resolve` is returned as is, with
    /// the report partly named.
    ///
    /// ```no_run
    /// use std::path::Path;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut report = loopwatch::StallReport::from_json(&std::fs::read_to_string("stall-x.json")?)?;
    /// let build_id = report.process.build_id.clone().unwrap_or_default();
    /// let debug = Path::new("/usr/lib/debug/my-daemon.debug");
    /// let named = report.symbolize_frames(&build_id, |offset, is_return| {
    ///     loopwatch::symbolize_offset(debug, offset, is_return)
    /// })?;
    /// println!("{named} frames named; culprit {:?}", report.culprit.map(|c| c.function));
    /// # Ok(()) }
    /// ```
    pub fn symbolize_frames<F>(&mut self, build_id: &str, mut resolve: F) -> Result<usize, Error>
    where
        F: FnMut(u64, bool) -> Result<Vec<Frame>, Error>,
    {
        let mut cache: HashMap<(u64, bool), Vec<Frame>> = HashMap::new();
        let mut named = 0;
        for group in &mut self.threads {
            let mut out = Vec::with_capacity(group.frames.len());
            for (index, run) in physical_frames(&group.frames).into_iter().enumerate() {
                let outer = &run[run.len() - 1];
                let key = match (outer.frame.build_id.as_deref(), outer.frame.offset) {
                    (Some(id), Some(offset)) if id.eq_ignore_ascii_case(build_id) => {
                        (offset, index > 0)
                    }
                    _ => {
                        out.extend_from_slice(run);
                        continue;
                    }
                };
                let found = match cache.get(&key) {
                    Some(found) => found,
                    None => {
                        let found = resolve(key.0, key.1)?;
                        cache.entry(key).or_insert(found)
                    }
                };
                if found.is_empty() {
                    out.extend_from_slice(run);
                    continue;
                }
                named += 1;
                out.extend(found.iter().map(|f| ReportFrame {
                    frame: Frame {
                        ip: outer.frame.ip,
                        module: outer.frame.module.clone(),
                        build_id: outer.frame.build_id.clone(),
                        offset: outer.frame.offset,
                        origin: None,
                        ..f.clone()
                    },
                    stuck: outer.stuck,
                }));
            }
            group.frames = out;
        }
        self.find_culprit_again();
        Ok(named)
    }

    /// Sorts every frame into own code, dependency or runtime again, and
    /// finds the culprit on the culprit's (or the first loop) thread group,
    /// with what the named stacks and the executable's name tell of the
    /// application's own crates.
    fn find_culprit_again(&mut self) {
        let stacks: Vec<ThreadStack> = self.threads.iter().map(as_thread_stack).collect();
        let executable = self.process.executable.as_deref();
        let mut own = OwnCode::new(&[], executable.map(|e| e.rsplit('/').next().unwrap_or(e)));
        own.learn(&stacks);
        for group in &mut self.threads {
            for f in &mut group.frames {
                f.frame.origin = own.origin(&f.frame);
            }
        }
        let tid = self.culprit.as_ref().map(|c| c.tid);
        let Some(index) = self
            .threads
            .iter()
            .position(|g| tid.is_some_and(|t| g.tids.contains(&t)))
            .or_else(|| self.threads.iter().position(|g| g.loop_thread))
        else {
            return;
        };
        let reading = Reading::new(&stacks[index], &own, None);
        let (Some(c), Some(function)) = (reading.culprit, reading.culprit_function()) else {
            return;
        };
        let group = &self.threads[index];
        let tid = tid.or(group.tids.first().copied()).unwrap_or(0);
        let first = &reading.frames[c];
        self.culprit = Some(Culprit {
            tid,
            thread: thread_name(group, tid),
            function,
            file: first.file.clone(),
            line: first.line,
            frames: reading.own_frames(8),
            stuck_in: reading.stuck_in().cloned(),
        });
    }
}

/// A report's thread group as a captured thread, for the verdict's reading.
fn as_thread_stack(group: &ThreadGroup) -> ThreadStack {
    ThreadStack {
        tid: group.tids.first().copied().unwrap_or(0),
        facts: None,
        outcome: group.outcome,
        not_captured: None,
        kernel_stack: Vec::new(),
        read_asleep: group.read_asleep,
        detail: None,
        registers: None,
        stack_bytes: 0,
        frames: group.frames.iter().map(|f| f.frame.clone()).collect(),
    }
}

/// The culprit thread's name, as the report had it.
fn thread_name(group: &ThreadGroup, tid: i32) -> String {
    group
        .names
        .first()
        .cloned()
        .unwrap_or_else(|| format!("tid {tid}"))
}

/// A stack cut into physical frames: each run is the inlined frames of one
/// address followed by the function the address lies in.
fn physical_frames(frames: &[ReportFrame]) -> Vec<&[ReportFrame]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, f) in frames.iter().enumerate() {
        let next_same_address = frames.get(i + 1).is_some_and(|n| n.frame.ip == f.frame.ip);
        if !f.frame.inlined || !next_same_address {
            runs.push(&frames[start..=i]);
            start = i + 1;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::{CaptureOutcome, SymbolSource};

    fn bare(ip: u64, offset: u64, build_id: &str) -> ReportFrame {
        ReportFrame {
            frame: Frame {
                ip,
                module: Some("daemon".into()),
                build_id: Some(build_id.into()),
                offset: Some(offset),
                ..Frame::default()
            },
            stuck: true,
        }
    }

    fn named(function: &str, file: &str, line: u32, inlined: bool) -> Frame {
        Frame {
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            inlined,
            symbols: SymbolSource::Offline,
            ..Frame::default()
        }
    }

    fn report_with(frames: Vec<ReportFrame>) -> StallReport {
        let mut r = StallReport::blank();
        r.threads = vec![ThreadGroup {
            count: 1,
            tids: vec![42],
            names: vec!["daemon".into()],
            loop_thread: true,
            outcome: CaptureOutcome::Captured,
            state: None,
            syscall: None,
            wchan: None,
            cpu_seconds: None,
            cut: None,
            not_captured: None,
            kernel_stack: Vec::new(),
            read_asleep: false,
            frames,
        }];
        r
    }

    #[test]
    fn frames_of_the_build_are_named_and_the_culprit_found() {
        let mut r = report_with(vec![
            bare(0x7000, 0x100, "other"),
            bare(0x5010, 0x1010, "abcd"),
            bare(0x5020, 0x1020, "abcd"),
            bare(0x5010, 0x1010, "abcd"),
        ]);
        let mut asked = Vec::new();
        let n = r
            .symbolize_frames("ABCD", |offset, is_return| {
                asked.push((offset, is_return));
                Ok(match offset {
                    0x1010 => vec![
                        named(
                            "std::thread::sleep",
                            "/rustc/x/library/std/src/thread.rs",
                            9,
                            true,
                        ),
                        named("daemon::handler", "/src/main.rs", 12, false),
                    ],
                    0x1020 => vec![named(
                        "tokio::runtime::poll",
                        "/x/tokio-1.54.1/src/a.rs",
                        1,
                        false,
                    )],
                    _ => vec![],
                })
            })
            .expect("named");
        assert_eq!(n, 3, "three frames of the build");
        assert_eq!(
            asked,
            vec![(0x1010, true), (0x1020, true)],
            "each offset resolved once"
        );
        let frames = &r.threads[0].frames;
        assert_eq!(frames.len(), 6);
        assert_eq!(frames[0].frame.build_id.as_deref(), Some("other"));
        assert_eq!(frames[2].frame.function.as_deref(), Some("daemon::handler"));
        assert_eq!(frames[2].frame.ip, 0x5010, "the runtime address is kept");
        assert_eq!(frames[2].frame.module.as_deref(), Some("daemon"));
        assert!(frames[1].frame.inlined && !frames[2].frame.inlined);
        assert!(frames.iter().all(|f| f.stuck));
        let c = r.culprit.expect("a culprit once named");
        assert_eq!(
            (c.function.as_str(), c.line, c.tid),
            ("daemon::handler", Some(12), 42)
        );
    }

    #[test]
    fn the_first_frame_is_not_a_return_address_and_unknowns_stay() {
        let mut r = report_with(vec![
            bare(0x5000, 0x1000, "abcd"),
            bare(0x5010, 0x1010, "abcd"),
        ]);
        let mut asked = Vec::new();
        let n = r
            .symbolize_frames("abcd", |offset, is_return| {
                asked.push((offset, is_return));
                Ok(Vec::new())
            })
            .expect("resolved");
        assert_eq!(n, 0);
        assert_eq!(asked, vec![(0x1000, false), (0x1010, true)]);
        assert_eq!(r.threads[0].frames.len(), 2);
        assert!(r.culprit.is_none());
    }

    #[test]
    fn inlined_runs_count_as_one_physical_frame() {
        let mut a = bare(0x10, 1, "x");
        a.frame.inlined = true;
        let b = bare(0x10, 1, "x");
        let c = bare(0x20, 2, "x");
        let frames = vec![a, b, c];
        let runs = physical_frames(&frames);
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), vec![2, 1]);
    }
}
