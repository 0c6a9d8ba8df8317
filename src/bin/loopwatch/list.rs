//! `loopwatch list`: one line per report, oldest first.
//!
//! This module owns the listing's columns and their alignment. Finding and
//! reading the reports is [`inputs`](crate::inputs)' job, the facts shown
//! [`facts`](crate::facts)'.

use std::io::{self, Write};
use std::time::SystemTime;

use crate::facts::{short_duration, Facts};
use crate::inputs::Loaded;

const HEADER: [&str; 8] = [
    "DETECTED", "HOST", "RUNTIME", "VERDICT", "CULPRIT", "STALLED", "END", "REPORT",
];

/// Writes the listing of `reports` (already oldest first) to `out`.
pub fn write(reports: &[Loaded], out: &mut dyn Write) -> io::Result<()> {
    let now = SystemTime::now();
    let rows: Vec<[String; 8]> = reports
        .iter()
        .map(|l| {
            let f = Facts::of(&l.report, now);
            let end = match f.coalesced {
                0 => f.ending.as_str().to_string(),
                n => format!("{} (+{n} like)", f.ending.as_str()),
            };
            [
                f.time,
                f.host.to_string(),
                f.runtime.to_string(),
                f.verdict.to_string(),
                f.culprit.to_string(),
                short_duration(f.duration),
                end,
                l.path.display().to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_row(out, &HEADER.map(str::to_string), &widths)?;
    for row in &rows {
        write_row(out, row, &widths)?;
    }
    Ok(())
}

fn write_row(out: &mut dyn Write, row: &[String; 8], widths: &[usize; 8]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            let pad = w.saturating_sub(cell.chars().count());
            line.push_str(cell);
            line.push_str(&" ".repeat(pad + 2));
        }
    }
    writeln!(out, "{line}")
}
