//! `loopwatch show`: a JSON report as the text a human reads.
//!
//! This module owns the colouring of [`StallReport::to_text`]: on a
//! terminal (or with `--color always`) the title, the verdict line, the
//! culprit line and the frames of the culprit function stand out. The text
//! itself is the library's, the same as the `stall-<id>.txt` file.

use std::io::{self, IsTerminal, Write};

use clap::builder::styling::{AnsiColor, Style};
use loopwatch::StallReport;

/// When to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// When standard output is a terminal (and `NO_COLOR` is not set).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour what goes to standard output.
    pub fn on_stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Writes `report` as text, coloured if `color`.
pub fn write(report: &StallReport, color: bool, out: &mut dyn Write) -> io::Result<()> {
    let text = report.to_text();
    if !color {
        return out.write_all(text.as_bytes());
    }
    let title = Style::new().bold();
    let verdict = Style::new().bold().fg_color(Some(
        if report.recovered {
            AnsiColor::Yellow
        } else {
            AnsiColor::Red
        }
        .into(),
    ));
    let culprit = Style::new()
        .bold()
        .fg_color(Some(AnsiColor::Magenta.into()));
    let culprit_frame = Style::new().bold();
    let culprit_fn = report.culprit.as_ref().map(|c| c.function.as_str());
    for (i, line) in text.lines().enumerate() {
        let style = if i == 0 {
            Some(title)
        } else if i == 2 && line.starts_with("event loop ") {
            Some(verdict)
        } else if line.starts_with("culprit: ") {
            Some(culprit)
        } else if is_frame_of(line, culprit_fn) {
            Some(culprit_frame)
        } else {
            None
        };
        match style {
            Some(s) => writeln!(out, "{s}{line}{s:#}")?,
            None => writeln!(out, "{line}")?,
        }
    }
    Ok(())
}

/// A stack line (`  *>   4: demo::stall_sleep at …`) of the culprit
/// function or one of its closures.
fn is_frame_of(line: &str, culprit: Option<&str>) -> bool {
    let Some(culprit) = culprit else {
        return false;
    };
    // Markers before the index: `*` did not move, `>` the application's code.
    let rest = line
        .trim_start()
        .trim_start_matches(['*', '>'])
        .trim_start();
    let Some((index, name)) = rest.split_once(": ") else {
        return false;
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let name = name.strip_prefix("(inlined) ").unwrap_or(name);
    let Some(after) = name.strip_prefix(culprit) else {
        return false;
    };
    after.is_empty() || after.starts_with(' ') || after.starts_with("::{{closure}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprit_frames_are_recognised() {
        let c = Some("demo::stall_sleep");
        assert!(is_frame_of(
            "  *  4: demo::stall_sleep at /x/demo.rs:420",
            c
        ));
        assert!(is_frame_of(
            "     5: demo::stall_sleep::{{closure}} at /x",
            c
        ));
        assert!(is_frame_of("  * 12: (inlined) demo::stall_sleep at /x", c));
        assert!(is_frame_of(
            "  *>   4: demo::stall_sleep at examples/demo.rs:439",
            c
        ));
        assert!(!is_frame_of("     5: demo::stall_sleeper at /x", c));
        assert!(!is_frame_of("culprit: demo::stall_sleep at /x", c));
        assert!(!is_frame_of("  *  4: demo::stall_sleep", None));
    }
}
