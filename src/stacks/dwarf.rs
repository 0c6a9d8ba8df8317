//! The DWARF pass: files, lines and inlined functions, after the first report.
//!
//! This module owns the expensive half of symbolization. For each module
//! that has frames in a capture (but not the C runtime, whose symbol table
//! is enough: see [`super::modules::is_system_module`]) it finds DWARF, in
//! the module itself or in a separate debug file ([`super::debugfile`]),
//! loads it with `addr2line`'s `Loader` (which maps the file read-only
//! instead of copying it) and replaces each symbol-table frame by the
//! functions at that address, inlined ones first. It works within a time
//! budget, says in notes what it could and could not name and why, and
//! keeps its state only until [`DebugInfo`] is dropped (the sampler's
//! `release`). It does not name frames from symbol tables
//! ([`super::symtab`]) nor unwind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::capture::ThreadStack;
use super::debugfile;
use super::elf::ElfFacts;
use super::frame::{Frame, SymbolSource};
use super::modules::{KnownModule, Modules};
use super::names::{self, Named};
use super::sampler::Symbolization;

/// Where a module's DWARF is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DwarfSource {
    /// In the module's own file.
    InModule(PathBuf),
    /// In a separate debug file.
    Separate(PathBuf),
    /// Nowhere: these paths were searched for a debug file.
    Missing {
        /// Whether the module has a symbol table.
        symtab: bool,
        /// Debug file paths tried.
        searched: Vec<PathBuf>,
    },
}

impl DwarfSource {
    /// Where the DWARF of the module at `path` (with `facts`) is.
    pub(crate) fn of(path: &Path, facts: &ElfFacts) -> Self {
        if facts.has_dwarf {
            return DwarfSource::InModule(path.to_path_buf());
        }
        if let Some(debug) = debugfile::find(path, facts) {
            let has = ElfFacts::read(&debug).is_some_and(|f| f.has_dwarf);
            if has {
                return DwarfSource::Separate(debug);
            }
        }
        DwarfSource::Missing {
            symtab: facts.has_symtab
                || debugfile::find(path, facts)
                    .is_some_and(|d| ElfFacts::read(&d).is_some_and(|f| f.has_symtab)),
            searched: debugfile::candidates(Path::new(debugfile::DEBUG_ROOT), path, facts),
        }
    }
}

/// A module's loaded DWARF.
struct Loaded {
    loader: addr2line::Loader,
}

/// The DWARF loaded for one report; dropping it unmaps every debug file
/// and frees the parsed state.
#[derive(Default)]
pub(crate) struct DebugInfo {
    /// Per module (start address): its DWARF, or `None` if it has none.
    loaded: HashMap<u64, Option<Loaded>>,
}

/// The time left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl DebugInfo {
    /// Replaces symbol-table frames of `threads` by DWARF frames, within
    /// `budget`.
    pub(crate) fn symbolize(
        &mut self,
        threads: &mut [ThreadStack],
        modules: &Modules,
        budget: Duration,
    ) -> Symbolization {
        let started = Instant::now();
        let deadline = started + budget;
        let mut notes: Vec<(String, String)> = Vec::new();
        let mut ran_out = false;
        for t in threads.iter_mut() {
            if t.frames.is_empty() {
                continue;
            }
            let frames = std::mem::take(&mut t.frames);
            let mut out = Vec::with_capacity(frames.len());
            let mut physical = 0usize;
            let mut i = 0;
            while i < frames.len() {
                let j = (i..frames.len())
                    .find(|&k| !frames[k].inlined)
                    .unwrap_or(frames.len() - 1);
                let group = &frames[i..=j];
                let outer = &frames[j];
                let is_return = physical > 0;
                physical += 1;
                i = j + 1;
                if ran_out || left(deadline).is_zero() {
                    ran_out = true;
                    out.extend_from_slice(group);
                    continue;
                }
                match self.frames_for(outer, is_return, modules, &mut notes) {
                    Some(new) => out.extend(new),
                    None => out.extend_from_slice(group),
                }
            }
            names::qualify_closures(&mut out);
            t.frames = out;
        }
        Symbolization {
            took: started.elapsed(),
            ran_out_of_time: ran_out,
            notes: notes.into_iter().map(|(_, n)| n).collect(),
        }
    }

    /// The DWARF frames of one physical frame, or `None` to keep it.
    fn frames_for(
        &mut self,
        frame: &Frame,
        is_return: bool,
        modules: &Modules,
        notes: &mut Vec<(String, String)>,
    ) -> Option<Vec<Frame>> {
        if matches!(
            frame.symbols,
            SymbolSource::DebugInfo | SymbolSource::Offline
        ) {
            return None;
        }
        let lookup = if is_return {
            frame.ip.wrapping_sub(1)
        } else {
            frame.ip
        };
        let module = modules.find(lookup)?;
        if module.system {
            return None;
        }
        let offset = frame.offset?;
        let svma = if is_return {
            offset.wrapping_sub(1)
        } else {
            offset
        };
        let loaded = self
            .loaded
            .entry(module.range.start)
            .or_insert_with(|| load(module, notes))
            .as_ref()?;
        let named = frames_at(&loaded.loader, svma, frame.function.as_deref());
        if named.is_empty() {
            return None;
        }
        let last = named.len() - 1;
        Some(
            named
                .into_iter()
                .enumerate()
                .map(|(k, n)| Frame {
                    function: n.function,
                    file: n.file,
                    line: n.line,
                    inlined: k < last,
                    symbols: SymbolSource::DebugInfo,
                    ..frame.clone()
                })
                .collect(),
        )
    }
}

/// Loads a module's DWARF, noting where it came from or why there is none.
fn load(module: &KnownModule, notes: &mut Vec<(String, String)>) -> Option<Loaded> {
    let (path, elf) = (module.path.as_ref()?, module.elf.as_ref()?);
    let note = |notes: &mut Vec<(String, String)>, text: String| {
        notes.retain(|(m, _)| *m != module.name);
        notes.push((module.name.clone(), text));
    };
    let file = match DwarfSource::of(path, elf) {
        DwarfSource::InModule(p) => {
            note(
                notes,
                format!(
                    "{}: files, lines and inlined functions from its DWARF debug info",
                    module.name
                ),
            );
            p
        }
        DwarfSource::Separate(p) => {
            note(
                notes,
                format!(
                    "{}: files, lines and inlined functions from its separate debug file {}",
                    module.name,
                    p.display()
                ),
            );
            p
        }
        DwarfSource::Missing { symtab, searched } => {
            note(notes, missing_note(module, symtab, &searched));
            return None;
        }
    };
    let started = Instant::now();
    match addr2line::Loader::new(&file) {
        Ok(loader) => {
            tracing::debug!(module = %module.name, file = %file.display(), took = ?started.elapsed(), "DWARF loaded");
            Some(Loaded { loader })
        }
        Err(err) => {
            note(notes, format!(
                "{}: its debug info in {} could not be read ({err}); frames show symbol-table names only",
                module.name,
                file.display()
            ));
            None
        }
    }
}

/// What a report says about a module without DWARF.
fn missing_note(module: &KnownModule, symtab: bool, searched: &[PathBuf]) -> String {
    let id = module.build_id().unwrap_or_else(|| "none".into());
    let looked = if searched.is_empty() {
        String::new()
    } else {
        format!(
            "; no debug file at {}",
            searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if symtab {
        format!(
            "{}: no DWARF debug info{looked}: functions named from its symbol table, without \
             file, line or inlined functions (inlined functions are invisible). For them, build \
             with `debug = \"line-tables-only\"` in [profile.release], or install its debug file \
             (build id {id})",
            module.name
        )
    } else {
        format!(
            "{}: stripped (no symbol table, no DWARF){looked}: its frames carry build id {id} and \
             file offsets only; symbolize them later against the debug file of that build \
             (e.g. `addr2line -f -i -C -e <debug file> <offset>`), or ship the binary with \
             `strip = \"debuginfo\"` instead of `strip = true` to keep function names",
            module.name
        )
    }
}

/// The functions at stated address `svma`, innermost (inlined) first, from
/// `loader`'s DWARF; the outermost is given the symbol table's name
/// (`symtab`, or the loader's own symbol table) when DWARF's has no path.
/// Empty when DWARF does not cover the address.
pub(crate) fn frames_at(loader: &addr2line::Loader, svma: u64, symtab: Option<&str>) -> Vec<Named> {
    let mut out = Vec::new();
    if let Ok(mut iter) = loader.find_frames(svma) {
        while let Ok(Some(f)) = iter.next() {
            out.push(Named {
                function: f
                    .function
                    .as_ref()
                    .and_then(|n| n.demangle().ok())
                    .map(|n| n.into_owned()),
                file: f.location.as_ref().and_then(|l| l.file).map(str::to_string),
                line: f.location.as_ref().and_then(|l| l.line),
            });
        }
    }
    if out.is_empty() {
        return out;
    }
    let from_loader;
    let symtab = match symtab {
        Some(s) => Some(s),
        None => {
            from_loader = loader.find_symbol(svma).map(names::demangle);
            from_loader.as_deref()
        }
    };
    names::qualify_outermost(&mut out, symtab);
    out
}
