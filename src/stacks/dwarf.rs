//! The DWARF pass: files, lines and inlined functions, after the first report.
//!
//! This module owns the expensive half of symbolization. For each module
//! that has frames in a capture (but not the C runtime, whose symbol table
//! is enough: see [`super::frame::is_system_module`]) it finds DWARF, in
//! the module itself or in a separate debug file ([`super::debugfile`]),
//! and replaces each symbol-table frame by the functions at that address,
//! inlined ones first, with `addr2line`. It works within a time budget and
//! says in notes what it could and could not name and why.
//!
//! Memory is the point of how it reads DWARF: modules are done one at a
//! time, each read by [`super::dwarf_file`] for the call only (a view of
//! the file, and only the compilation units the addresses need). What it
//! keeps between calls is the answers: the frames found per address, in a
//! cache bounded to [`MAX_ANSWER_BYTES`] ([`Answers`]), so that a stall that
//! comes back in the same place costs no DWARF read at all (in a debug
//! build that read is 100–300 ms of the monitor's time).
//!
//! It does not name frames from symbol tables ([`super::symtab`]) nor
//! unwind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::capture::ThreadStack;
use super::debugfile;
use super::dwarf_file::resolve_in_file;
use super::elf::ElfFacts;
use super::frame::{Frame, SymbolSource};
use super::modules::{KnownModule, Modules};
use super::names::{self, Named};
use super::sampler::Symbolization;

/// Most bytes (roughly: names, files and their overhead) the answers cache
/// keeps; past it, it starts over.
pub(crate) const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// The frames DWARF names at one address, with the build id of the module.
type Answer = (Option<String>, Arc<[Named]>);

/// DWARF answers of earlier passes: (module start, stated address) → the
/// module's build id and the frames found there (empty: DWARF has nothing),
/// and per module the note the report carries.
#[derive(Default)]
pub(crate) struct Answers {
    frames: HashMap<(u64, u64), Answer>,
    notes: HashMap<u64, (Option<String>, String)>,
    bytes: usize,
}

impl Answers {
    fn get(&self, module: &KnownModule, svma: u64) -> Option<Arc<[Named]>> {
        let (id, named) = self.frames.get(&(module.range.start, svma))?;
        (*id == module.build_id()).then(|| named.clone())
    }

    fn note(&self, module: &KnownModule) -> Option<String> {
        let (id, note) = self.notes.get(&module.range.start)?;
        (*id == module.build_id()).then(|| note.clone())
    }

    fn insert(&mut self, module: &KnownModule, svma: u64, named: &[Named]) {
        let size = 64
            + named
                .iter()
                .map(|n| {
                    48 + n.function.as_ref().map_or(0, String::len)
                        + n.file.as_ref().map_or(0, String::len)
                })
                .sum::<usize>();
        if self.bytes + size > MAX_ANSWER_BYTES {
            self.frames = HashMap::new();
            self.bytes = 0;
        }
        self.bytes += size;
        self.frames.insert(
            (module.range.start, svma),
            (module.build_id(), named.to_vec().into()),
        );
    }

    /// Approximate bytes kept.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Where a module's DWARF is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DwarfSource {
    /// In the module's own file.
    InModule(PathBuf),
    /// In a separate debug file.
    Separate(PathBuf),
    /// Nowhere: these paths were searched for a debug file.
    Missing {
        /// Whether the module (or its debug file) has a symbol table.
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
        let debug = debugfile::find(path, facts).and_then(|d| Some((ElfFacts::read(&d)?, d)));
        match debug {
            Some((f, d)) if f.has_dwarf => DwarfSource::Separate(d),
            other => DwarfSource::Missing {
                symtab: facts.has_symtab || other.is_some_and(|(f, _)| f.has_symtab),
                searched: debugfile::candidates(Path::new(debugfile::DEBUG_ROOT), path, facts),
            },
        }
    }
}

/// One physical frame waiting for DWARF: where it is in its thread.
struct Pending {
    thread: usize,
    /// Index of its (outermost) frame in the thread's frames.
    frame: usize,
    svma: u64,
}

/// Replaces the symbol-table frames of `threads` by DWARF frames, within
/// `budget`; modules in the order their first frame appears (the caller
/// lists the threads that matter first).
pub(crate) fn symbolize(
    threads: &mut [ThreadStack],
    modules: &Modules,
    answers: &mut Answers,
    budget: Duration,
) -> Symbolization {
    let started = Instant::now();
    let deadline = started + budget;
    // Per module (in order of appearance): the frames it must name.
    let mut order: Vec<u64> = Vec::new();
    let mut work: HashMap<u64, Vec<Pending>> = HashMap::new();
    for (ti, t) in threads.iter().enumerate() {
        let mut physical = 0usize;
        for (fi, f) in t.frames.iter().enumerate() {
            if f.inlined {
                continue;
            }
            let is_return = physical > 0;
            physical += 1;
            if matches!(f.symbols, SymbolSource::DebugInfo | SymbolSource::Offline) {
                continue;
            }
            let lookup = if is_return {
                f.ip.wrapping_sub(1)
            } else {
                f.ip
            };
            let (Some(m), Some(offset)) = (modules.find(lookup), f.offset) else {
                continue;
            };
            if m.system || m.build_id() != f.build_id {
                continue;
            }
            let svma = if is_return {
                offset.wrapping_sub(1)
            } else {
                offset
            };
            let key = m.range.start;
            if !work.contains_key(&key) {
                order.push(key);
            }
            work.entry(key).or_default().push(Pending {
                thread: ti,
                frame: fi,
                svma,
            });
        }
    }

    let mut notes = Vec::new();
    let mut ran_out = false;
    // (thread, frame) → its DWARF frames.
    let mut found: HashMap<(usize, usize), Vec<Named>> = HashMap::new();
    for key in order {
        let (Some(module), Some(pending)) = (modules.find(key), work.get(&key)) else {
            continue;
        };
        // Answered before: no DWARF read for those.
        let mut ask = Vec::new();
        for p in pending {
            match answers.get(module, p.svma) {
                Some(named) if !named.is_empty() => {
                    found.insert((p.thread, p.frame), named.to_vec());
                }
                Some(_) => {}
                None => ask.push(p),
            }
        }
        if ask.is_empty() {
            notes.extend(answers.note(module));
            continue;
        }
        if Instant::now() >= deadline {
            ran_out = true;
            notes.push(format!(
                "{}: not looked up in DWARF: the symbolization budget was used up",
                module.name
            ));
            continue;
        }
        let svmas: Vec<u64> = ask.iter().map(|p| p.svma).collect();
        let (named, note, complete) = resolve_module(module, &svmas, deadline);
        ran_out |= !complete;
        if let Some(note) = &note {
            answers
                .notes
                .insert(module.range.start, (module.build_id(), note.clone()));
        }
        notes.extend(note);
        for (p, n) in ask.iter().zip(named) {
            // An address not looked up (budget) is not an answer.
            if complete || !n.is_empty() {
                answers.insert(module, p.svma, &n);
            }
            if !n.is_empty() {
                found.insert((p.thread, p.frame), n);
            }
        }
    }

    for (ti, t) in threads.iter_mut().enumerate() {
        if !(0..t.frames.len()).any(|fi| found.contains_key(&(ti, fi))) {
            continue;
        }
        let frames = std::mem::take(&mut t.frames);
        let mut out = Vec::with_capacity(frames.len() * 2);
        for (fi, f) in frames.into_iter().enumerate() {
            match found.remove(&(ti, fi)) {
                Some(mut named) => {
                    names::qualify_outermost(&mut named, f.function.as_deref());
                    let last = named.len() - 1;
                    out.extend(named.into_iter().enumerate().map(|(k, n)| Frame {
                        function: n.function,
                        file: n.file,
                        line: n.line,
                        inlined: k < last,
                        symbols: SymbolSource::DebugInfo,
                        ..f.clone()
                    }));
                }
                None => out.push(f),
            }
        }
        names::qualify_closures(&mut out);
        t.frames = out;
    }
    Symbolization {
        took: started.elapsed(),
        ran_out_of_time: ran_out,
        notes,
    }
}

/// The DWARF frames at each of `svmas` of `module` (empty where DWARF has
/// nothing), a note on where they came from or why there are none, and
/// whether every address was looked up before `deadline`.
fn resolve_module(
    module: &KnownModule,
    svmas: &[u64],
    deadline: Instant,
) -> (Vec<Vec<Named>>, Option<String>, bool) {
    let none = || vec![Vec::new(); svmas.len()];
    let (Some(path), Some(elf)) = (module.path.as_ref(), module.elf.as_ref()) else {
        return (none(), None, true);
    };
    let (file, note) = match DwarfSource::of(path, elf) {
        DwarfSource::InModule(p) => (
            p,
            format!(
                "{}: files, lines and inlined functions from its DWARF debug info",
                module.name
            ),
        ),
        DwarfSource::Separate(p) => {
            let note = format!(
                "{}: files, lines and inlined functions from its separate debug file {}",
                module.name,
                p.display()
            );
            (p, note)
        }
        DwarfSource::Missing { symtab, searched } => {
            return (none(), Some(missing_note(module, symtab, &searched)), true)
        }
    };
    if ElfFacts::read(&file).is_some_and(|f| f.dwarf_compressed) {
        return (
            none(),
            Some(format!(
                "{}: its DWARF in {} is compressed, and loopwatch reads uncompressed debug info \
                 only (a decompressed copy would cost its full size in memory at every report): \
                 functions named from the symbol table, without file or line. Decompress it \
                 with `objcopy --decompress-debug-sections`",
                module.name,
                file.display()
            )),
            true,
        );
    }
    let started = Instant::now();
    match resolve_in_file(&file, svmas, deadline) {
        Ok((named, complete)) => {
            tracing::debug!(module = %module.name, file = %file.display(), addresses = svmas.len(), took = ?started.elapsed(), "DWARF pass");
            (named, Some(note), complete)
        }
        Err(err) => (
            none(),
            Some(format!(
                "{}: its debug info in {} could not be read ({err}); frames show symbol-table names only",
                module.name,
                file.display()
            )),
            true,
        ),
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
             (`loopwatch::symbolize_offset`, or `addr2line -f -i -C -e <debug file> <offset>`), \
             or ship it with `strip = \"debuginfo\"` instead of `strip = true` to keep names",
            module.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::capture::NotCaptured;

    #[inline(never)]
    fn a_function_the_dwarf_pass_names() -> u64 {
        std::hint::black_box(9)
    }

    #[test]
    fn the_second_pass_over_the_same_frames_is_answered_from_the_cache() {
        let maps = crate::stacks::maps::read_maps();
        let modules = Modules::load(&maps);
        let here = a_function_the_dwarf_pass_names as *const () as usize as u64;
        let own = modules.find(here).unwrap();
        let frame = Frame {
            ip: here,
            module: Some(own.name.clone()),
            build_id: own.build_id(),
            offset: Some(here - own.bias.unwrap()),
            symbols: SymbolSource::SymbolTable,
            function: Some("loopwatch::x".into()),
            ..Frame::default()
        };
        let thread = |f: &Frame| {
            let mut t = ThreadStack::not_captured(1, None, NotCaptured::Failed);
            t.frames = vec![f.clone()];
            t
        };
        let mut answers = Answers::default();
        let mut first = vec![thread(&frame)];
        let done = symbolize(&mut first, &modules, &mut answers, Duration::from_secs(30));
        assert!(!done.ran_out_of_time, "{done:?}");
        let f = first[0].frames.last().unwrap();
        assert_eq!(f.symbols, SymbolSource::DebugInfo, "{f:?}");
        assert!(f
            .function
            .as_deref()
            .is_some_and(|n| n.ends_with("a_function_the_dwarf_pass_names")));
        assert!(
            done.notes.iter().any(|n| n.contains("DWARF debug info")),
            "{done:?}"
        );
        let kept = answers.bytes();
        assert!(kept > 0 && kept <= MAX_ANSWER_BYTES);

        // Same frame again: the same answer, with a zero budget (no read).
        let mut second = vec![thread(&frame)];
        let again = symbolize(&mut second, &modules, &mut answers, Duration::ZERO);
        assert!(!again.ran_out_of_time, "{again:?}");
        assert_eq!(second[0].frames, first[0].frames);
        assert_eq!(answers.bytes(), kept);
        assert_eq!(a_function_the_dwarf_pass_names(), 9);
    }
}
