//! Finding and reading stall reports, and saying which inputs were bad.
//!
//! This module owns the walk over the paths given on the command line
//! (files are read whatever their name; directories are searched for
//! `stall-<id>.json`, through subdirectories such as one per host), the
//! bounded read of each file, and [`Problems`]: one line on stderr per bad
//! input, naming the file, counted for the exit code. It does not look
//! inside a report beyond [`StallReport::from_json`]; what a command does
//! with the reports is the command's module's job.

use std::collections::HashMap;
use std::fmt::Display;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use loopwatch::StallReport;

/// A report file larger than this is refused unread: loopwatch writes a
/// few hundred KiB at most (1000 storm occurrences, every thread's stack).
pub const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

/// How deep subdirectories are searched (`DIR/<host>/<service>/…`).
pub const MAX_DEPTH: usize = 8;

/// A report read from a file.
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// The report.
    pub report: StallReport,
}

/// The bad inputs met so far, each said once on stderr.
#[derive(Default)]
pub struct Problems {
    /// Inputs that could not be processed.
    pub bad: usize,
}

impl Problems {
    /// Says that `path` could not be processed, and why.
    pub fn bad(&mut self, path: &Path, why: impl Display) {
        self.bad += 1;
        eprintln!("loopwatch: {}: {why}", path.display());
    }

    /// Says something about `path` that is not an error.
    pub fn note(&self, path: &Path, what: impl Display) {
        eprintln!("loopwatch: {}: {what}", path.display());
    }
}

/// Reads every report under `paths`, oldest first (by detection time, then
/// id). Bad inputs are said and counted in `problems`; a report found twice
/// (same host and id, e.g. pulled twice) is kept once, in its most recently
/// written version.
pub fn load_all(paths: &[PathBuf], problems: &mut Problems) -> Vec<Loaded> {
    let mut files = Vec::new();
    for path in paths {
        let before = files.len() + problems.bad;
        collect(path, 0, true, &mut files, problems);
        if files.len() + problems.bad == before {
            problems.note(path, "no stall reports (stall-<id>.json) here");
        }
    }
    let mut loaded: Vec<Loaded> = files
        .into_iter()
        .filter_map(|path| match load(&path) {
            Ok(report) => Some(Loaded { path, report }),
            Err(why) => {
                problems.bad(&path, format!("{why}; skipped"));
                None
            }
        })
        .collect();
    loaded = dedup(loaded, problems);
    loaded.sort_by(|a, b| {
        (a.report.times.detected.as_str(), a.report.id.as_str())
            .cmp(&(b.report.times.detected.as_str(), b.report.id.as_str()))
    });
    loaded
}

/// Reads one report file.
pub fn load(path: &Path) -> Result<StallReport, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "{} bytes, larger than any stall report (at most {MAX_REPORT_BYTES})",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_REPORT_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "not a stall report: not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    StallReport::from_json(&text).map_err(|e| e.to_string())
}

/// What a directory entry's name says it is.
enum Entry {
    /// `stall-<id>.json`.
    Report,
    /// The text twin of a report, or a hidden file (the report store's
    /// temporary files, rsync's partial files): passed over silently.
    Ignored,
    /// `stall-<id>.txt` without its JSON twin.
    TextOnly,
    /// Anything else.
    Stranger,
}

fn classify(dir: &Path, name: &str) -> Entry {
    if name.starts_with('.') {
        return Entry::Ignored;
    }
    let Some(stem) = name.strip_prefix("stall-") else {
        return Entry::Stranger;
    };
    if stem.ends_with(".json") {
        return Entry::Report;
    }
    match stem.strip_suffix(".txt") {
        Some(id) if dir.join(format!("stall-{id}.json")).exists() => Entry::Ignored,
        Some(_) => Entry::TextOnly,
        None => Entry::Stranger,
    }
}

/// Adds the report files at `path` to `out`: `path` itself if it is a file
/// given on the command line, else the reports in the directory and its
/// subdirectories.
fn collect(path: &Path, depth: usize, given: bool, out: &mut Vec<PathBuf>, p: &mut Problems) {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => return p.bad(path, format!("cannot read: {e}; skipped")),
    };
    if !meta.is_dir() {
        if given {
            out.push(path.to_path_buf());
        }
        return;
    }
    if depth > MAX_DEPTH {
        return p.note(
            path,
            format!("deeper than {MAX_DEPTH} levels; not searched"),
        );
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => return p.bad(path, format!("cannot read the directory: {e}; skipped")),
    };
    let mut entries: Vec<_> = entries
        .filter_map(|e| {
            e.map_err(|e| p.bad(path, format!("cannot read an entry of the directory: {e}")))
                .ok()
        })
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let child = entry.path();
        let Some(name) = name.to_str() else {
            p.bad(
                &child,
                "not a stall report (reports are named stall-<id>.json); skipped",
            );
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && !name.starts_with('.') {
            collect(&child, depth + 1, false, out, p);
            continue;
        }
        match classify(path, name) {
            Entry::Report => out.push(child),
            Entry::Ignored => {}
            Entry::TextOnly => p.bad(
                &child,
                "a text report without its stall-<id>.json twin (only JSON is read); skipped",
            ),
            Entry::Stranger => p.bad(
                &child,
                "not a stall report (reports are named stall-<id>.json); skipped",
            ),
        }
    }
}

/// Keeps one copy of each (host, id), the most recently written.
fn dedup(loaded: Vec<Loaded>, problems: &Problems) -> Vec<Loaded> {
    let mut index: HashMap<(Option<String>, String), usize> = HashMap::new();
    let mut out: Vec<Loaded> = Vec::with_capacity(loaded.len());
    for l in loaded {
        let key = (l.report.process.host.clone(), l.report.id.clone());
        match index.get(&key) {
            Some(&i) => {
                let older = if l.report.times.written > out[i].report.times.written {
                    std::mem::replace(&mut out[i], l).path
                } else {
                    l.path
                };
                let kept = out[i].path.display();
                problems.note(&older, format!("the same report as {kept}; counted once"));
            }
            None => {
                index.insert(key, out.len());
                out.push(l);
            }
        }
    }
    out
}
