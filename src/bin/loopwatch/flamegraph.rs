//! `loopwatch flamegraph`: the stuck stacks of many reports as one SVG.
//!
//! This module owns turning reports into folded stacks (one line per
//! stall: the event-loop thread's frames, outermost first, `;`-separated,
//! and a weight) and handing them to `inferno`, which draws the SVG. The
//! stack is the one of the culprit's thread, else of the first event-loop
//! thread, as captured at detection; frames without a name are shown as
//! `module+0xoffset`. It does not read report files.

use std::collections::BTreeMap;
use std::io::{self, Write};

use inferno::flamegraph::{self, color, Options};
use loopwatch::{ReportFrame, StallReport};

use crate::facts::stalled;
use crate::inputs::Loaded;

/// What a stall's width in the graph stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Weight {
    /// Each stall counts one (a storm report counts its coalesced stalls too).
    Stalls,
    /// Each stall counts the milliseconds it lasted (its report's stack
    /// stands for the coalesced stalls too).
    Time,
}

/// The frame drawn for a report without a captured loop-thread stack.
pub const NO_STACK: &str = "[no stack captured]";

/// The folded stacks of `reports`: (stack, weight) with identical stacks
/// merged, in a stable order.
pub fn folded(reports: &[Loaded], weight: Weight) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in reports {
        let r = &l.report;
        let w = match weight {
            Weight::Stalls => r.coalesced_stalls.saturating_add(1),
            Weight::Time => {
                let own = stalled(r).as_millis() as u64;
                let coalesced = r.occurrences.iter().fold(0u64, |sum, o| {
                    let ms = crate::facts::seconds(o.duration_seconds.unwrap_or(0.0)).as_millis();
                    sum.saturating_add(u64::try_from(ms).unwrap_or(u64::MAX))
                });
                own.saturating_add(coalesced).max(1)
            }
        };
        let total = out.entry(stack_of(r)).or_insert(0u64);
        *total = total.saturating_add(w);
    }
    out
}

/// The stuck stack of `report`, outermost first, `;`-separated.
pub fn stack_of(report: &StallReport) -> String {
    let tid = report.culprit.as_ref().map(|c| c.tid);
    let group = report
        .threads
        .iter()
        .find(|g| tid.is_some_and(|t| g.tids.contains(&t)))
        .or_else(|| report.threads.iter().find(|g| g.loop_thread))
        .filter(|g| !g.frames.is_empty());
    let Some(group) = group else {
        return NO_STACK.to_string();
    };
    group
        .frames
        .iter()
        .rev()
        .map(frame_name)
        .collect::<Vec<_>>()
        .join(";")
}

/// A frame's name as drawn: the function, else `module+0xoffset`, else the
/// address. `;` (the folded format's separator) becomes `:`.
fn frame_name(f: &ReportFrame) -> String {
    let f = &f.frame;
    let name = match (&f.function, &f.module, f.offset) {
        (Some(function), _, _) => function.clone(),
        (None, Some(module), Some(offset)) => format!("{module}+{offset:#x}"),
        (None, Some(module), None) => format!("{module}@{:#x}", f.ip),
        (None, None, _) => format!("{:#x}", f.ip),
    };
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// Draws the flame graph of `reports` as SVG into `out`.
pub fn write(
    reports: &[Loaded],
    weight: Weight,
    title: Option<&str>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let folded = folded(reports, weight);
    let stalls = reports.iter().fold(0u64, |sum, l| {
        sum.saturating_add(l.report.coalesced_stalls.saturating_add(1))
    });
    let mut opts = Options::default();
    opts.title = title.map(str::to_string).unwrap_or_else(|| {
        format!(
            "Stuck event loops: {stalls} stall{} in {} report{}",
            if stalls == 1 { "" } else { "s" },
            reports.len(),
            if reports.len() == 1 { "" } else { "s" }
        )
    });
    opts.subtitle = Some(
        "the event-loop thread's stack at detection, outermost at the bottom (loopwatch flamegraph)".into(),
    );
    opts.count_name = match weight {
        Weight::Stalls => "stalls".into(),
        Weight::Time => "ms stalled".into(),
    };
    opts.colors = color::Palette::Multi(color::MultiPalette::Rust);
    opts.hash = true;
    opts.deterministic = true;
    let lines: Vec<String> = folded
        .iter()
        .map(|(stack, w)| format!("{stack} {w}"))
        .collect();
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}
