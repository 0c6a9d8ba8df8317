//! The report as text: the full file for humans and the compact form for
//! stderr.
//!
//! Lines are short enough for `journalctl`; long source paths of the
//! standard library and registry crates are abbreviated (the JSON keeps
//! them whole). This file only renders; it decides nothing.

use std::fmt::Write as _;
use std::time::Duration;

use super::{ReportFrame, StallReport};
use crate::status::human;

/// A unicode sparkline of lags.
pub(crate) fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    values
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
    /// One line: verdict, culprit, duration.
    pub fn summary(&self) -> String {
        let culprit = self
            .culprit
            .as_ref()
            .map(|c| format!(", culprit {}", c.function))
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

    /// The compact form: header, verdict, culprit, the stuck thread's stack.
    pub fn to_compact_text(&self) -> String {
        let mut s = String::new();
        self.write_head(&mut s);
        if let Some(g) = self.threads.iter().find(|g| g.loop_thread) {
            let _ = writeln!(s, "loop thread stack:");
            write_frames(&mut s, &g.frames, 24);
        }
        s
    }

    fn write_head(&self, s: &mut String) {
        let title = format!("loopwatch stall report {}", self.id);
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
        let _ = writeln!(s, "  {}", self.verdict.summary);
        match &self.culprit {
            Some(c) => {
                let loc = match (&c.file, c.line) {
                    (Some(f), Some(l)) => format!(" at {f}:{l}"),
                    (Some(f), None) => format!(" in {f}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "culprit: {}{loc} (thread {} {:?})",
                    c.function, c.tid, c.thread
                );
            }
            None => {
                let _ = writeln!(s, "culprit: none found in application code");
            }
        }
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
            let _ = writeln!(s, "  - {e}");
        }
        if !self.stuck_workers.is_empty() {
            let _ = writeln!(s, "\nstuck workers:");
            for w in &self.stuck_workers {
                let _ = writeln!(
                    s,
                    "  - worker {} (thread {} {:?}) stuck for {}{}",
                    w.worker,
                    w.tids
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join("/"),
                    w.thread.as_deref().unwrap_or("?"),
                    secs(w.stuck_for_seconds),
                    w.task
                        .as_ref()
                        .map(|t| format!(", polling task {} spawned at {}", t.id, t.spawned_at))
                        .unwrap_or_default()
                );
            }
        }
    }

    /// The full human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_head(&mut s);
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
        let total: usize = self.threads.iter().map(|g| g.count).sum();
        let _ = writeln!(
            s,
            "\nthreads: {total} in {} groups of identical stacks (* = frame did not move between captures)",
            self.threads.len()
        );
        for g in &self.threads {
            let _ = writeln!(
                s,
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
            let mut facts = vec![format!("capture {:?}", g.outcome).to_lowercase()];
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
            let _ = writeln!(s, "  {}", facts.join(", "));
            write_frames(&mut s, &g.frames, 48);
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
        let _ = writeln!(
            s,
            "\nprocess: pid {}{}, {} threads, RSS {:.1} MiB, up {}, executable {}, build id {}",
            p.pid,
            p.host
                .as_deref()
                .map(|h| format!(" on host {h}"))
                .unwrap_or_default(),
            p.threads,
            p.rss_bytes as f64 / (1024.0 * 1024.0),
            human(p.uptime),
            p.executable.as_deref().unwrap_or("?"),
            p.build_id.as_deref().unwrap_or("?")
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
            let _ = writeln!(
                s,
                "capture ({}) at {}: {} threads, {} unresponsive, signals {}, unwind+symbols {}",
                c.reason,
                c.at,
                c.threads,
                c.unresponsive,
                secs(c.signal_seconds),
                secs(c.unwind_symbolize_seconds)
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if !self.metrics.is_empty() {
            let _ = writeln!(s, "\nmetrics at the time of writing:");
            for l in self.metrics.lines().filter(|l| !l.starts_with('#')) {
                let _ = writeln!(s, "  {l}");
            }
        }
        s
    }
}

/// A source path made short for reading: the standard library's and
/// registry crates' long prefixes are abbreviated (the JSON keeps them).
fn short_path(p: &str) -> String {
    if let Some((_, rest)) = p.split_once("/library/") {
        if p.starts_with("/rustc/") {
            return format!("<rust>/{rest}");
        }
    }
    if let Some((_, rest)) = p.split_once("/registry/src/") {
        if let Some((_, krate)) = rest.split_once('/') {
            return format!("<cargo>/{krate}");
        }
    }
    p.to_string()
}

fn write_frames(s: &mut String, frames: &[ReportFrame], max: usize) {
    for (i, f) in frames.iter().take(max).enumerate() {
        let fr = &f.frame;
        let name = fr
            .function
            .clone()
            .unwrap_or_else(|| format!("{:#x}", fr.ip));
        let loc = match (&fr.file, fr.line) {
            (Some(file), Some(line)) => format!(" at {}:{line}", short_path(file)),
            _ => fr
                .module
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default(),
        };
        let _ = writeln!(
            s,
            "  {}{i:>3}: {}{name}{loc}",
            if f.stuck { "*" } else { " " },
            if fr.inlined { "(inlined) " } else { "" }
        );
    }
    if frames.len() > max {
        let _ = writeln!(s, "       ... {} more frames", frames.len() - max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_shortened_in_text() {
        assert_eq!(
            short_path("/rustc/5980/library/std/src/thread/mod.rs"),
            "<rust>/std/src/thread/mod.rs"
        );
        assert_eq!(
            short_path("/root/.cargo/registry/src/index.crates.io-1949/tokio-1.54.1/src/lib.rs"),
            "<cargo>/tokio-1.54.1/src/lib.rs"
        );
        assert_eq!(short_path("/work/app/src/main.rs"), "/work/app/src/main.rs");
    }

    #[test]
    fn sparkline_scales_to_the_max() {
        assert_eq!(sparkline(&[0.0, 1.0, 0.5]), "▁█▅");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    }
}
