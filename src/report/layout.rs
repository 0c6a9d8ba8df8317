//! Text layout for reports: lines that fit, and stacks that read in one
//! screen.
//!
//! Every line of a text report is at most [`WIDTH`] columns: prose is
//! wrapped, names lose their generic arguments (`Core<…>::poll`; the JSON
//! keeps them) and then their middle, paths are shown relative to the
//! workspace or as `<rust>/…` and `<cargo>/…`. A stack is written with
//! the application's own frames marked (`>`), frames that did not move
//! between captures starred (`*`), and every run of runtime frames folded
//! into one line (`… 31 frames of tokio and std`). This file renders; it
//! decides nothing about the stall.

use std::fmt::Write as _;

use super::{ReportFrame, StallReport};
use crate::origin::{self, names, paths};
use crate::stacks::{Frame, Origin};

/// The widest line a text report has, in characters.
pub(crate) const WIDTH: usize = 160;

/// `s` cut to `width` characters, ending in `…` when cut.
pub(crate) fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` with its middle replaced by `…` so that it is at most `width`
/// characters: both ends of a long name say the most.
pub(crate) fn fit_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let keep = width.saturating_sub(1);
    let head = keep / 2;
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// `text` wrapped at word boundaries: the first line starts with `first`,
/// the others with `rest`; no line exceeds [`WIDTH`].
pub(crate) fn wrapped(first: &str, rest: &str, text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            lines.push(fit(&line, WIDTH));
            line = rest.to_string();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    lines.push(fit(&line, WIDTH));
    lines
}

/// Writes `text` wrapped as [`wrapped`] does, at most `max_lines` lines
/// (the last one ending in `…` when cut).
pub(crate) fn write_wrapped(s: &mut String, first: &str, rest: &str, text: &str, max_lines: usize) {
    let lines = wrapped(first, rest, text);
    let cut = lines.len() > max_lines;
    for (i, l) in lines.iter().take(max_lines).enumerate() {
        if cut && i + 1 == max_lines {
            let _ = writeln!(s, "{}", fit(&format!("{l} …"), WIDTH));
        } else {
            let _ = writeln!(s, "{l}");
        }
    }
}

/// The workspace directory as the report shows it: the directory shared
/// by the sources of every own-code frame in the report.
pub(crate) fn workspace_root(report: &StallReport) -> Option<String> {
    let group_frames = report
        .threads
        .iter()
        .flat_map(|g| g.frames.iter().map(|f| &f.frame));
    let culprit_frames = report.culprit.iter().flat_map(|c| c.frames.iter());
    let roots: Vec<&str> = group_frames
        .chain(culprit_frames)
        .filter(|f| f.origin == Some(Origin::Own))
        .filter_map(|f| f.file.as_deref())
        .filter(|f| f.starts_with('/'))
        .filter_map(paths::crate_root)
        .collect();
    origin::common_dir(roots.into_iter())
}

/// A frame's name for text: generic arguments elided; its address (or
/// module and offset) when it has no name.
pub(crate) fn frame_name(f: &Frame) -> String {
    match &f.function {
        Some(n) => names::elide_generics(n),
        None => match (&f.module, f.offset) {
            (Some(m), Some(o)) => format!("{m}+{o:#x}"),
            (Some(m), None) => format!("{:#x} in {m}", f.ip),
            _ => format!("{:#x}", f.ip),
        },
    }
}

/// ` at <path>:<line>`, ` in <path>`, or ` (<module>)`.
pub(crate) fn frame_location(f: &Frame, root: Option<&str>) -> String {
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!(" at {}:{line}", paths::short_path(file, root)),
        (Some(file), None) => format!(" in {}", paths::short_path(file, root)),
        _ if f.function.is_some() => f
            .module
            .as_ref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// `<prefix><name><location>` within [`WIDTH`]: the name gives way first
/// (its middle), then the whole line.
pub(crate) fn frame_line(prefix: &str, f: &Frame, root: Option<&str>) -> String {
    let name = frame_name(f);
    let loc = frame_location(f, root);
    let fixed = prefix.chars().count() + loc.chars().count();
    let room = WIDTH.saturating_sub(fixed).max(40);
    fit(&format!("{prefix}{}{loc}", fit_middle(&name, room)), WIDTH)
}

/// Who a runtime frame belongs to, for a folded run: `tokio`, `std`,
/// `libc`, ...
fn runtime_owner(f: &Frame) -> String {
    if let Some(m) = f.module.as_deref() {
        for (prefix, owner) in [
            ("libc", "libc"),
            ("libpthread", "libc"),
            ("ld-", "ld.so"),
            ("[vdso]", "vdso"),
            ("linux-vdso", "vdso"),
            ("libgcc_s", "libgcc"),
        ] {
            if m.starts_with(prefix) {
                return owner.into();
            }
        }
    }
    if f.function
        .as_deref()
        .is_some_and(|n| n.starts_with("__rust"))
    {
        return "std".into();
    }
    let from_name = f.function.as_deref().and_then(names::crate_of);
    let from_path = f.file.as_deref().and_then(|p| match paths::place_of(p) {
        paths::SourcePlace::RustLibrary => Some("std".to_string()),
        paths::SourcePlace::Loopwatch => Some("loopwatch".to_string()),
        paths::SourcePlace::Registry(k)
        | paths::SourcePlace::Git(k)
        | paths::SourcePlace::Vendored(k) => Some(k),
        paths::SourcePlace::Local => None,
    });
    match from_name.map(str::to_string).or(from_path) {
        Some(k)
            if matches!(
                k.as_str(),
                "core" | "alloc" | "std_detect" | "panic_unwind" | "test"
            ) =>
        {
            "std".into()
        }
        Some(k) => k,
        None => "the C runtime".into(),
    }
}

/// `tokio and std`, `tokio, std and libc`.
fn owners(frames: &[ReportFrame]) -> String {
    let mut list: Vec<String> = Vec::new();
    for f in frames {
        let o = runtime_owner(&f.frame);
        if !list.contains(&o) {
            list.push(o);
        }
    }
    match list.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Writes a stack: at most `max_lines` lines, runs of runtime frames
/// folded (the innermost frame is always shown), own frames marked `>`,
/// frames that did not move marked `*`, and where the stack was cut.
pub(crate) fn write_frames(
    s: &mut String,
    frames: &[ReportFrame],
    cut: Option<&str>,
    root: Option<&str>,
    max_lines: usize,
) {
    let mut lines = 0;
    let mut i = 0;
    while i < frames.len() {
        if lines == max_lines {
            let _ = writeln!(
                s,
                "       … {} more frames (the JSON report has them all)",
                frames.len() - i
            );
            break;
        }
        let run = frames[i..]
            .iter()
            .take_while(|f| f.frame.origin == Some(Origin::Runtime))
            .count();
        if i > 0 && run >= 2 {
            let folded = &frames[i..i + run];
            let stuck = if folded.iter().all(|f| f.stuck) {
                '*'
            } else {
                ' '
            };
            let _ = writeln!(
                s,
                "{}",
                fit(
                    &format!(
                        "  {stuck}     … {run} frames of {} ({i}–{})",
                        owners(folded),
                        i + run - 1
                    ),
                    WIDTH
                )
            );
            i += run;
            lines += 1;
            continue;
        }
        let f = &frames[i];
        let own = if f.frame.origin == Some(Origin::Own) {
            '>'
        } else {
            ' '
        };
        let prefix = format!(
            "  {}{own}{i:>4}: {}",
            if f.stuck { '*' } else { ' ' },
            if f.frame.inlined { "(inlined) " } else { "" }
        );
        let _ = writeln!(s, "{}", frame_line(&prefix, &f.frame, root));
        lines += 1;
        i += 1;
    }
    if let Some(why) = cut {
        let _ = writeln!(
            s,
            "{}",
            fit(
                &format!(
                    "       … after frame {}: {why}",
                    frames.len().saturating_sub(1)
                ),
                WIDTH
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(name: &str, origin: Origin) -> ReportFrame {
        ReportFrame {
            frame: Frame {
                ip: 1,
                function: Some(name.into()),
                origin: Some(origin),
                ..Frame::default()
            },
            stuck: true,
        }
    }

    #[test]
    fn fitting_and_wrapping() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit_middle("abcdefghij", 5), "ab…ij");
        let mut s = String::new();
        let long = "word ".repeat(100);
        write_wrapped(&mut s, "  - ", "    ", &long, 99);
        assert!(s.lines().count() >= 3);
        assert!(s.lines().all(|l| l.chars().count() <= WIDTH), "{s}");
        assert!(s.starts_with("  - word"));
        assert!(s.lines().nth(1).unwrap().starts_with("    word"));
        let mut two = String::new();
        write_wrapped(&mut two, "", "", &long, 2);
        assert_eq!(two.lines().count(), 2);
        assert!(two.trim_end().ends_with('…'), "{two}");
    }

    #[test]
    fn runtime_runs_fold_into_one_line_and_the_innermost_frame_shows() {
        let frames = vec![
            rf("clock_nanosleep", Origin::Runtime),
            rf("std::thread::sleep", Origin::Runtime),
            rf(
                "std::sys::pal::unix::thread::Thread::sleep",
                Origin::Runtime,
            ),
            rf("myapp::work", Origin::Own),
            rf("tokio::runtime::task::raw::poll", Origin::Runtime),
            rf(
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                Origin::Runtime,
            ),
            rf("std::thread::local::LocalKey<T>::with", Origin::Runtime),
            rf("myapp::main", Origin::Own),
        ];
        let mut s = String::new();
        write_frames(
            &mut s,
            &frames,
            Some("stack cut at 128 KiB (max_stack_bytes)"),
            None,
            48,
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 6, "{s}");
        assert!(lines[0].contains("clock_nanosleep"), "{s}");
        assert!(lines[1].contains("… 2 frames of std (1–2)"), "{s}");
        assert!(lines[2].starts_with("  *>   3: myapp::work"), "{s}");
        assert!(
            lines[3].contains("… 3 frames of tokio and std (4–6)"),
            "{s}"
        );
        assert!(
            lines[4].contains("> ") && lines[4].contains("myapp::main"),
            "{s}"
        );
        assert!(
            lines[5].contains("after frame 7: stack cut at 128 KiB"),
            "{s}"
        );
    }

    #[test]
    fn long_generic_names_fit_the_width() {
        let name = format!(
            "<futures_util::future::future::Map<Fut,F> as core::future::future::Future>::poll<{}>",
            "alloc::boxed::Box<dyn core::future::future::Future<Output = ()>>, ".repeat(12)
        );
        let frames = vec![rf(&name, Origin::Dependency)];
        let mut s = String::new();
        write_frames(&mut s, &frames, None, None, 48);
        assert!(s.lines().all(|l| l.chars().count() <= WIDTH), "{s}");
        assert!(
            s.contains("Map<…> as core::future::future::Future>::poll<…>"),
            "{s}"
        );
        let huge = Frame {
            function: Some(format!("myapp::{}", "very_long_segment::".repeat(20))),
            file: Some(format!("/srv/{}/src/main.rs", "deep/".repeat(40))),
            line: Some(7),
            ..Frame::default()
        };
        assert!(frame_line("  ", &huge, None).chars().count() <= WIDTH);
    }
}
