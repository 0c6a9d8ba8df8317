//! `loopwatch symbolize`: names the frames of a report from a stripped
//! binary, from that binary's debug file.
//!
//! This module owns finding the debug files (the one given with
//! `--debug-file`, or, with `--debug-dir D`, one per build id on the
//! report's frames: `D/.build-id/xx/rest.debug` as GDB lays them out, then
//! `D/<module>.debug` and `D/<module>`), checking that each belongs to the
//! build the frames came from (by GNU build id), and writing the
//! symbolized report with its text twin. Naming the frames is the
//! library's ([`StallReport::symbolize_frames`] with
//! [`loopwatch::symbolize_offset`]).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use loopwatch::{StallReport, SymbolSource, REPORT_FORMAT_VERSION};

use crate::output::write_whole;

/// Where the debug information comes from.
pub enum DebugSource {
    /// One file: the unstripped binary or its `--only-keep-debug` file.
    File(PathBuf),
    /// A directory searched by build id and by module name.
    Dir(PathBuf),
}

/// What was done, for the line on stderr.
pub struct Done {
    /// Where the symbolized report went.
    pub output: String,
    /// Frames named, and frames of the matched builds that were looked up.
    pub named: usize,
    /// The debug files used.
    pub debug_files: Vec<PathBuf>,
    /// The culprit after symbolization.
    pub culprit: Option<String>,
}

/// A module of the report: its file name, how many of its frames have no
/// name from debug information yet, and how many have no name at all.
struct Module {
    name: String,
    unnamed: usize,
    nameless: usize,
}

/// Symbolizes the report at `path` and writes it to `output` (`None`: in
/// place; `-`: standard output). `None` when there was nothing to do (said
/// on stderr): every frame has a name and the directory has no debug file
/// for the builds whose names come from a symbol table only. Errors are one
/// line naming the file.
pub fn run(
    path: &Path,
    source: &DebugSource,
    output: Option<&Path>,
) -> Result<Option<Done>, String> {
    let mut report = crate::inputs::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modules = modules(&report);
    if modules.is_empty() {
        return Err(format!(
            "{}: no frame carries a build id and an offset (a report of loopwatch before 0.2?): \
             nothing to symbolize",
            path.display()
        ));
    }
    let debug_files = match source {
        DebugSource::File(file) => vec![(matching_build(file, &modules)?, file.clone())],
        DebugSource::Dir(dir) => {
            let found: Vec<(String, PathBuf)> = modules
                .iter()
                .filter(|(_, m)| m.unnamed > 0)
                .filter_map(|(id, m)| Some((id.clone(), find_in_dir(dir, id, &m.name)?)))
                .collect();
            if found.is_empty() && modules.values().all(|m| m.nameless == 0) {
                eprintln!(
                    "loopwatch: {}: every frame already has a name, and {} has no debug \
                     file for {}; nothing written",
                    path.display(),
                    dir.display(),
                    describe(&modules)
                );
                return Ok(None);
            }
            if found.is_empty() {
                return Err(format!(
                    "{}: no debug file for the report's unnamed frames ({}); looked for \
                     .build-id/xx/rest.debug, <module>.debug and <module>",
                    dir.display(),
                    describe(&modules)
                ));
            }
            found
        }
    };
    let culprit_before = report.culprit.as_ref().map(|c| c.function.clone());
    let mut named = 0;
    for (build_id, file) in &debug_files {
        let file = &fs::canonicalize(file).unwrap_or_else(|_| file.clone());
        // Which offsets this build's frames ask for (on a copy), then all of
        // them from one read of the debug file.
        let mut wanted = Vec::new();
        report
            .clone()
            .symbolize_frames(build_id, |offset, is_return| {
                wanted.push((offset, is_return));
                Ok(Vec::new())
            })
            .map_err(|e| e.to_string())?;
        let resolved = loopwatch::symbolize_offsets(file, &wanted).map_err(|e| e.to_string())?;
        let by_offset: HashMap<(u64, bool), Vec<loopwatch::Frame>> =
            wanted.into_iter().zip(resolved).collect();
        let n = report
            .symbolize_frames(build_id, |offset, is_return| {
                Ok(by_offset
                    .get(&(offset, is_return))
                    .cloned()
                    .unwrap_or_default())
            })
            .map_err(|e| e.to_string())?;
        report.notes.push(format!(
            "{n} frame(s) of build {build_id} named after the fact from {} (loopwatch symbolize)",
            file.display()
        ));
        named += n;
    }
    if named == 0 {
        let files: Vec<String> = debug_files
            .iter()
            .map(|(_, f)| f.display().to_string())
            .collect();
        return Err(format!(
            "{}: names none of the report's addresses (no debug info or symbols there); \
             nothing written",
            files.join(", ")
        ));
    }
    if let Some(c) = report
        .culprit
        .as_ref()
        .filter(|c| culprit_before.as_ref() != Some(&c.function))
    {
        let at = match (&c.file, c.line) {
            (Some(f), Some(l)) => format!(" at {f}:{l}"),
            _ => String::new(),
        };
        report.verdict.evidence.push(format!(
            "named after the fact from the debug file (loopwatch symbolize): \
             the culprit is {}{at}",
            c.function
        ));
    }
    report.format_version = REPORT_FORMAT_VERSION;
    let output = write(&report, path, output)?;
    Ok(Some(Done {
        output,
        named,
        debug_files: debug_files.into_iter().map(|(_, f)| f).collect(),
        culprit: report.culprit.as_ref().map(|c| match (&c.file, c.line) {
            (Some(f), Some(l)) => format!("{} at {f}:{l}", c.function),
            _ => c.function.clone(),
        }),
    }))
}

/// The report's modules with frames that carry a build id and an offset,
/// by build id.
fn modules(report: &StallReport) -> BTreeMap<String, Module> {
    let mut out: BTreeMap<String, Module> = BTreeMap::new();
    for f in report.threads.iter().flat_map(|g| &g.frames) {
        let f = &f.frame;
        let (Some(id), Some(_)) = (f.build_id.as_deref(), f.offset) else {
            continue;
        };
        let m = out
            .entry(id.to_ascii_lowercase())
            .or_insert_with(|| Module {
                name: f.module.clone().unwrap_or_default(),
                unnamed: 0,
                nameless: 0,
            });
        if !matches!(f.symbols, SymbolSource::DebugInfo | SymbolSource::Offline) {
            m.unnamed += 1;
        }
        if f.function.is_none() {
            m.nameless += 1;
        }
    }
    out
}

fn describe(modules: &BTreeMap<String, Module>) -> String {
    modules
        .iter()
        .filter(|(_, m)| m.unnamed > 0)
        .map(|(id, m)| format!("{} build {id}", m.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The build id of `file`, if it is one of the report's.
fn matching_build(file: &Path, modules: &BTreeMap<String, Module>) -> Result<String, String> {
    let id = build_id_of(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .ok_or_else(|| {
            format!(
                "{}: has no GNU build id, so it cannot be matched to the report's frames",
                file.display()
            )
        })?;
    if modules.contains_key(&id) {
        return Ok(id);
    }
    let known: Vec<String> = modules
        .iter()
        .map(|(id, m)| format!("{} {id}", m.name))
        .collect();
    Err(format!(
        "{}: build id {id} is not the build of any frame in the report ({})",
        file.display(),
        known.join(", ")
    ))
}

/// The GNU build id of the ELF file at `path`, in lower-case hex.
fn build_id_of(path: &Path) -> Result<Option<String>, String> {
    use object::Object;
    let file = fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let id = obj
        .build_id()
        .map_err(|e| format!("unreadable build id note: {e}"))?;
    Ok(id
        .filter(|id| !id.is_empty())
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect()))
}

/// The debug file of build `build_id` (module file name `module`) in `dir`.
fn find_in_dir(dir: &Path, build_id: &str, module: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if build_id.len() > 2 && build_id.is_ascii() {
        candidates.push(
            dir.join(".build-id")
                .join(&build_id[..2])
                .join(format!("{}.debug", &build_id[2..])),
        );
    }
    if !module.is_empty() && !module.contains('/') && module != "." && module != ".." {
        candidates.push(dir.join(format!("{module}.debug")));
        candidates.push(dir.join(module));
    }
    candidates
        .into_iter()
        .find(|c| c.is_file() && build_id_of(c).ok().flatten().as_deref() == Some(build_id))
}

/// Writes the report and its text twin: to `output` (`-` for standard
/// output, JSON only), or in place of `input`. Returns where it went.
fn write(report: &StallReport, input: &Path, output: Option<&Path>) -> Result<String, String> {
    if output == Some(Path::new("-")) {
        let mut out = io::stdout().lock();
        return writeln!(out, "{}", report.to_json())
            .and_then(|()| out.flush())
            .map(|()| "standard output".to_string())
            .map_err(|e| format!("cannot write to standard output: {e}"));
    }
    let json = output.unwrap_or(input);
    let text = match json.extension() {
        Some(e) if e == "json" => json.with_extension("txt"),
        _ => PathBuf::from(format!("{}.txt", json.display())),
    };
    // In place, the files keep the report's mode (0600 in a report store).
    let mode = fs::metadata(input)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o600);
    write_whole(&text, Some(mode), |w| {
        w.write_all(report.to_text().as_bytes())
    })?;
    write_whole(json, Some(mode), |w| {
        w.write_all(report.to_json().as_bytes())
    })?;
    Ok(json.display().to_string())
}
