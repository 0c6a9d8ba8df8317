//! The report as text: the full file for humans and the compact form for
//! stderr.
//!
//! The full text opens with what the on-call engineer needs on one screen
//! (verdict, culprit, the frame it was stuck in, times, evidence), then
//! every thread group's stack. The compact form is that first screen only,
//! at most about 25 lines, for stderr when no report file could be written.
//! Line width, name and path shortening and the folding of runtime frames
//! are [`super::layout`]'s. This file only renders; it decides nothing.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::layout::{
    fit, fit_middle, frame_line, workspace_root, write_frames, write_wrapped, WIDTH,
};
use super::StallReport;
use crate::origin::{names, whose_code};
use crate::stacks::Origin;
use crate::status::human;

/// Lines of the verdict's summary the compact form shows.
const COMPACT_SUMMARY: usize = 3;
/// Lines of evidence the compact form shows.
const COMPACT_EVIDENCE: usize = 6;
/// Own-code frames the compact form shows.
const COMPACT_FRAMES: usize = 6;

/// A unicode sparkline of lags, at most `WIDTH - 4` bars (the largest lag
/// of each span of probes when there are more).
pub(crate) fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let per_bar = values.len().div_ceil(WIDTH - 4).max(1);
    let pooled: Vec<f64> = values
        .chunks(per_bar)
        .map(|c| c.iter().copied().fold(0.0_f64, f64::max))
        .collect();
    let max = pooled.iter().copied().fold(0.0_f64, f64::max);
    pooled
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn secs(v: f64) -> String {
    human(Duration::from_secs_f64(v.max(0.0)))
}

impl StallReport {
    /// One line: verdict, culprit (and the dependency it was stuck in),
    /// duration.
    pub fn summary(&self) -> String {
        let culprit = self
            .culprit
            .as_ref()
            .map(|c| {
                let inside = c
                    .stuck_in
                    .as_ref()
                    .filter(|s| s.origin == Some(Origin::Dependency))
                    .and_then(|s| s.function.as_deref())
                    .map(|f| {
                        format!(
                            " (stuck in {})",
                            names::elide_generics(&names::enclosing_function(f))
                        )
                    })
                    .unwrap_or_default();
                format!(", culprit {}{inside}", names::elide_generics(&c.function))
            })
            .unwrap_or_default();
        let how_long = match self.duration_seconds {
            Some(d) => format!("recovered after {}", secs(d)),
            None => format!("stalled for {} so far", secs(self.stalled_for_seconds)),
        };
        format!(
            "event loop {:?} stall: verdict {}{culprit}; {how_long}",
            self.runtime, self.verdict.kind
        )
    }

    /// The compact form for stderr, when no report directory is set: the
    /// verdict, the culprit and the frame it was stuck in, the evidence,
    /// the loop thread's own-code frames; at most about 25 lines.
    pub fn to_compact_text(&self) -> String {
        self.to_compact_text_for(None)
    }

    /// The compact form, saying that the full report could not be written
    /// to `dir` (or, with `None`, that no report directory is set).
    ///
    /// ```
    /// # fn show(report: &loopwatch::StallReport) {
    /// eprint!("{}", report.to_compact_text_for(Some(std::path::Path::new("/var/lib/app/loopwatch"))));
    /// # }
    /// ```
    pub fn to_compact_text_for(&self, dir: Option<&Path>) -> String {
        let root = workspace_root(self);
        let root = root.as_deref();
        let mut s = String::new();
        let title = format!(
            "loopwatch stall report {}: event loop {:?} {} — verdict: {}",
            self.id,
            self.runtime,
            if self.recovered {
                "RECOVERED"
            } else {
                "STALLED"
            },
            self.verdict.kind,
        );
        let _ = writeln!(s, "{}", fit(&title, WIDTH));
        write_wrapped(
            &mut s,
            "  ",
            "  ",
            &names::elide_generics(&self.verdict.summary),
            COMPACT_SUMMARY,
        );
        self.write_culprit(&mut s, root);
        let _ = writeln!(s, "{}", fit(&self.how_long(), WIDTH));
        if !self.verdict.evidence.is_empty() {
            let _ = writeln!(s, "evidence:");
            for e in self.verdict.evidence.iter().take(COMPACT_EVIDENCE) {
                let _ = writeln!(
                    s,
                    "{}",
                    fit(&format!("  - {}", names::elide_generics(e)), WIDTH)
                );
            }
            if self.verdict.evidence.len() > COMPACT_EVIDENCE {
                let _ = writeln!(
                    s,
                    "  - … {} more",
                    self.verdict.evidence.len() - COMPACT_EVIDENCE
                );
            }
        }
        if let Some(g) = self.threads.iter().find(|g| g.loop_thread) {
            // Own frames inside the stuck poll when there is a culprit
            // (`main` outside it says nothing), else every own frame.
            let in_poll = |f: &crate::stacks::Frame| {
                self.culprit.as_ref().is_none_or(|c| {
                    c.frames
                        .iter()
                        .any(|x| x.ip == f.ip && x.function == f.function)
                })
            };
            let own: Vec<_> = g
                .frames
                .iter()
                .enumerate()
                .filter(|(_, f)| f.frame.origin == Some(Origin::Own) && in_poll(&f.frame))
                .collect();
            if own.is_empty() {
                let _ = writeln!(s, "loop thread: no frame of your code on its stack");
            } else {
                let _ = writeln!(s, "your code on the loop thread, innermost first:");
                for (i, f) in own.iter().take(COMPACT_FRAMES) {
                    let prefix = format!("  {}>{i:>4}: ", if f.stuck { '*' } else { ' ' });
                    let _ = writeln!(s, "{}", frame_line(&prefix, &f.frame, root));
                }
                if own.len() > COMPACT_FRAMES {
                    let _ = writeln!(s, "       … {} more", own.len() - COMPACT_FRAMES);
                }
            }
            if let Some(cut) = &g.cut {
                let _ = writeln!(s, "{}", fit(&format!("  ({cut})"), WIDTH));
            }
        }
        let whereto = match dir {
            Some(d) => format!(
                "full report: could not be written to {}; this is the short form",
                d.display()
            ),
            None => "full report: not written (no report directory: set Builder::report_dir, or \
                     StateDirectory= under systemd)"
                .to_string(),
        };
        let _ = writeln!(s, "{}", fit(&whereto, WIDTH));
        s
    }

    /// `culprit: …` and `stuck in: …` lines.
    fn write_culprit(&self, s: &mut String, root: Option<&str>) {
        match &self.culprit {
            Some(c) => {
                let thread = format!(" (thread {} {:?})", c.tid, c.thread);
                let frame = crate::stacks::Frame {
                    function: Some(c.function.clone()),
                    file: c.file.clone(),
                    line: c.line,
                    ..crate::stacks::Frame::default()
                };
                let line = frame_line("culprit: ", &frame, root);
                let _ = writeln!(s, "{}", fit(&format!("{line}{thread}"), WIDTH));
                if let Some(st) = &c.stuck_in {
                    let prefix = format!("stuck in ({}): ", whose_code(st.origin));
                    let _ = writeln!(s, "{}", frame_line(&prefix, st, root));
                }
            }
            None => {
                let _ = writeln!(s, "culprit: none found in your code");
            }
        }
    }

    fn how_long(&self) -> String {
        let how_long = match self.duration_seconds {
            Some(d) => format!("recovered after {}", secs(d)),
            None => format!("stalled for {} so far", secs(self.stalled_for_seconds)),
        };
        format!(
            "{how_long}; lag {} > threshold {} at detection ({})",
            secs(self.lag_at_detection_seconds),
            secs(self.thresholds.stall_threshold_seconds),
            self.times.detected
        )
    }

    fn write_head(&self, s: &mut String, root: Option<&str>) {
        let title = fit(&format!("loopwatch stall report {}", self.id), WIDTH);
        let _ = writeln!(s, "{title}\n{}", "=".repeat(title.chars().count()));
        let _ = writeln!(
            s,
            "event loop {:?} {} — verdict: {}",
            self.runtime,
            if self.recovered {
                "RECOVERED"
            } else {
                "STALLED"
            },
            self.verdict.kind
        );
        write_wrapped(
            s,
            "  ",
            "  ",
            &names::elide_generics(&self.verdict.summary),
            usize::MAX,
        );
        self.write_culprit(s, root);
        let t = &self.times;
        let th = &self.thresholds;
        let _ = writeln!(s);
        let _ = writeln!(s, "stall start  {}", t.stall_start);
        let _ = writeln!(
            s,
            "detected     {} (lag {} > threshold {})",
            t.detected,
            secs(self.lag_at_detection_seconds),
            secs(th.stall_threshold_seconds)
        );
        match (&t.deadline, th.watchdog_seconds) {
            (Some(d), Some(w)) => {
                let _ = writeln!(s, "deadline     {d} (systemd WatchdogSec={})", secs(w));
            }
            _ => {
                let _ = writeln!(s, "deadline     none (no systemd watchdog)");
            }
        }
        match (&t.end, self.duration_seconds) {
            (Some(e), Some(d)) => {
                let _ = writeln!(s, "ended        {e} (recovered after {})", secs(d));
            }
            _ => {
                let _ = writeln!(
                    s,
                    "ended        not yet (stalled for {} when written at {})",
                    secs(self.stalled_for_seconds),
                    t.written
                );
            }
        }
        let _ = writeln!(s, "\nevidence:");
        for e in &self.verdict.evidence {
            write_wrapped(s, "  - ", "    ", &names::elide_generics(e), usize::MAX);
        }
        if !self.stuck_workers.is_empty() {
            let _ = writeln!(s, "\nstuck workers:");
            for w in &self.stuck_workers {
                let line = format!(
                    "  - worker {} (thread {} {:?}) stuck for {}{}",
                    w.worker,
                    w.tids_label(),
                    w.thread.as_deref().unwrap_or("?"),
                    secs(w.stuck_for_seconds),
                    w.task
                        .as_ref()
                        .map(|t| format!(", polling task {} spawned at {}", t.id, t.spawned_at))
                        .unwrap_or_default()
                );
                let _ = writeln!(s, "{}", fit(&line, WIDTH));
            }
        }
    }

    /// The hiccups before the stall (the last few) and the top blockers
    /// by blocked time, when there are any.
    fn write_hiccups(&self, s: &mut String) {
        const SHOWN_HICCUPS: usize = 8;
        const SHOWN_BLOCKERS: usize = 5;
        if !self.hiccups.is_empty() {
            let n = self.hiccups.len();
            let shown = n.min(SHOWN_HICCUPS);
            let _ = writeln!(
                s,
                "\nhiccups before the stall ({n}{}, oldest first):",
                if shown < n {
                    format!(", last {shown} shown")
                } else {
                    String::new()
                }
            );
            for h in &self.hiccups[n - shown..] {
                // RFC 3339 start: the time of day is what a reader needs.
                let at = h.start.get(11..23).unwrap_or(&h.start);
                let mut line = format!(
                    "  {at}  {:>9}  {}{}",
                    secs(h.duration_seconds),
                    if h.grew_into_stall {
                        "(grew into this stall) "
                    } else {
                        ""
                    },
                    h.cause,
                );
                if let Some(c) = &h.culprit {
                    let room = WIDTH.saturating_sub(line.chars().count() + 4);
                    let _ = write!(line, " in {}", fit_middle(&names::elide_generics(c), room));
                }
                let _ = writeln!(s, "{line}");
            }
        }
        if !self.top_blockers.is_empty() {
            let _ = writeln!(
                s,
                "top blockers since start, by blocked time:\n  {:>6}  {:>9}  CULPRIT",
                "BLOCKS", "BLOCKED"
            );
            for b in self.top_blockers.iter().take(SHOWN_BLOCKERS) {
                let line = format!(
                    "  {:>6}  {:>9}  {}",
                    b.count,
                    secs(b.seconds),
                    names::elide_generics(&b.culprit)
                );
                let _ = writeln!(s, "{}", fit(&line, WIDTH));
            }
        }
    }

    /// The full human-readable report. No line is wider than 160
    /// characters; the JSON keeps every name and path whole.
    pub fn to_text(&self) -> String {
        let root = workspace_root(self);
        let root = root.as_deref();
        let mut s = String::new();
        self.write_head(&mut s, root);
        if !self.timeline.is_empty() {
            let lags: Vec<f64> = self.timeline.iter().map(|l| l.lag_seconds).collect();
            let max = lags.iter().copied().fold(0.0, f64::max);
            let span = -self.timeline[0].at_seconds;
            let _ = writeln!(
                s,
                "\nlag before the stall (last {}, {} probes, max {}):\n  {}",
                secs(span),
                lags.len(),
                secs(max),
                sparkline(&lags)
            );
        }
        self.write_hiccups(&mut s);
        let total: usize = self.threads.iter().map(|g| g.count).sum();
        let _ = writeln!(
            s,
            "\nthreads: {total} in {} groups of identical stacks (> = your code, * = did not move between captures)",
            self.threads.len()
        );
        if let Some(r) = root {
            let _ = writeln!(s, "{}", fit(&format!("paths relative to {r}"), WIDTH));
        }
        for g in &self.threads {
            let head = format!(
                "\n{}{} thread(s) {}: tids {}",
                if g.loop_thread { "[event loop] " } else { "" },
                g.count,
                g.names
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                g.tids
                    .iter()
                    .take(16)
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let _ = writeln!(s, "{}", fit(&head, WIDTH + 1));
            let mut facts = vec![format!("capture {:?}", g.outcome).to_lowercase()];
            if let Some(why) = g.not_captured {
                facts.push(format!("not captured: {}", why.describe()));
            }
            if g.read_asleep {
                facts.push("read asleep in its system call (not signalled)".into());
            }
            if let Some(st) = &g.state {
                facts.push(format!("state {st}"));
            }
            if let Some(sc) = &g.syscall {
                facts.push(format!("syscall {sc}"));
            }
            if let Some(w) = &g.wchan {
                facts.push(format!("wchan {w}"));
            }
            if let Some(c) = g.cpu_seconds {
                facts.push(format!("cpu {c:.3} s"));
            }
            let _ = writeln!(s, "{}", fit(&format!("  {}", facts.join(", ")), WIDTH));
            for k in g.kernel_stack.iter().take(16) {
                let _ = writeln!(s, "{}", fit(&format!("    [kernel] {k}"), WIDTH));
            }
            write_frames(&mut s, &g.frames, g.cut.as_deref(), root, 48);
        }
        if let Some(m) = &self.runtime_metrics {
            let _ = writeln!(
                s,
                "\ntokio runtime: {} worker(s), {} alive task(s), global queue depth {}",
                m.workers, m.alive_tasks, m.global_queue_depth
            );
            for w in 0..m.workers {
                let _ = writeln!(
                    s,
                    "  worker {w}: busy {:.3} s, parked {} times, park/unpark {}",
                    m.worker_busy_seconds.get(w).copied().unwrap_or(0.0),
                    m.worker_park_count.get(w).copied().unwrap_or(0),
                    m.worker_park_unpark_count.get(w).copied().unwrap_or(0)
                );
            }
        }
        let p = &self.process;
        let process = format!(
            "\nprocess: pid {}{}, {} threads, RSS {:.1} MiB, up {}",
            p.pid,
            p.host
                .as_deref()
                .map(|h| format!(" on host {h}"))
                .unwrap_or_default(),
            p.threads,
            p.rss_bytes as f64 / (1024.0 * 1024.0),
            human(p.uptime),
        );
        let _ = writeln!(s, "{}", fit(&process, WIDTH + 1));
        // The build id is what `loopwatch symbolize` matches debug files
        // by: it is never cut; a long executable path loses its middle.
        let build_id = format!(", build id {}", p.build_id.as_deref().unwrap_or("?"));
        let room = WIDTH.saturating_sub("executable ".len() + build_id.chars().count());
        let _ = writeln!(
            s,
            "executable {}{build_id}",
            fit_middle(p.executable.as_deref().unwrap_or("?"), room)
        );
        let _ = writeln!(
            s,
            "settings: threshold {}, probe every {}, watchdog {}, deadline margin {}",
            secs(self.thresholds.stall_threshold_seconds),
            secs(self.thresholds.probe_interval_seconds),
            self.thresholds
                .watchdog_seconds
                .map_or("off".to_string(), secs),
            secs(self.thresholds.deadline_margin_seconds)
        );
        for c in &self.captures {
            let line = format!(
                "capture ({}) at {}: {} threads, {} unresponsive, signals {}, unwind+symbols {}",
                c.reason,
                c.at,
                c.threads,
                c.unresponsive,
                secs(c.signal_seconds),
                secs(c.unwind_symbolize_seconds)
            );
            let _ = writeln!(s, "{}", fit(&line, WIDTH));
        }
        for n in &self.notes {
            write_wrapped(&mut s, "note: ", "      ", n, usize::MAX);
        }
        if !self.metrics.is_empty() {
            let _ = writeln!(s, "\nmetrics at the time of writing:");
            for l in self.metrics.lines().filter(|l| !l.starts_with('#')) {
                let _ = writeln!(s, "{}", fit(&format!("  {l}"), WIDTH));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests;
