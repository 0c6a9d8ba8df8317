//! The DWARF pass: files, lines and inlined functions, after the first report.
//!
//! This module owns the expensive half of symbolization. For each module
//! that has frames in a capture (but not the C runtime, whose symbol table
//! is enough: see [`super::modules::is_system_module`]) it finds DWARF, in
//! the module itself or in a separate debug file ([`super::debugfile`]),
//! and replaces each symbol-table frame by the functions at that address,
//! inlined ones first, with `addr2line`. It works within a time budget and
//! says in notes what it could and could not name and why.
//!
//! Memory is the point of how it reads DWARF. Modules are done one at a
//! time, and nothing outlives the call: the file is a read-only view
//! ([`super::sys::map_file`]), unmapped when the module is done. And
//! `addr2line` is not given the whole `.debug_info`: building its context
//! from every compilation unit of a 28 MB line-tables binary touches ~24 MB
//! of the file and allocates ~8 MB; what a report needs is the few units
//! that hold its addresses (found with `.debug_aranges`) and the units
//! their inlined functions refer to. [`SparseUnits`] gives it a
//! `.debug_info` of the section's size in which only those units are real;
//! every gap holds one empty type unit, which `addr2line` skips. A
//! reference into a unit left out shows as a lookup error naming its
//! offset; that unit is added and the module is read again (a few rounds at
//! most, then the whole section is used). Peak for the demo: ~5 MiB
//! instead of ~32 MiB.
//!
//! It does not name frames from symbol tables ([`super::symtab`]) nor
//! unwind.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use addr2line::gimli;
use object::{Object, ObjectSection};

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
        if Instant::now() >= deadline {
            ran_out = true;
            notes.push(format!(
                "{}: not looked up in DWARF: the symbolization budget was used up",
                module.name
            ));
            continue;
        }
        let svmas: Vec<u64> = pending.iter().map(|p| p.svma).collect();
        let (named, note, complete) = resolve_module(module, &svmas, deadline);
        ran_out |= !complete;
        notes.extend(note);
        for (p, n) in pending.iter().zip(named) {
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

/// The DWARF frames at each of `svmas` in the ELF file at `path` (empty
/// where its DWARF has nothing), and whether all were looked up before
/// `deadline`. The file is mapped for the call only.
pub(crate) fn resolve_in_file(
    path: &Path,
    svmas: &[u64],
    deadline: Instant,
) -> std::io::Result<(Vec<Vec<Named>>, bool)> {
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let file = std::fs::File::open(path)?;
    let map = super::sys::map_file(&file)?;
    let obj = object::File::parse(&*map).map_err(|e| invalid(e.to_string()))?;
    let sections = Sections::read(&obj, &file);
    sections.resolve(svmas, deadline).map_err(invalid)
}

type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// The DWARF sections of one file: views of it, or decompressed copies.
struct Sections<'a> {
    endian: gimli::RunTimeEndian,
    data: HashMap<gimli::SectionId, Cow<'a, [u8]>>,
    /// Whether to use `.debug_aranges` to pick units (tests turn it off).
    use_aranges: bool,
    /// Offsets of every unit of `.debug_info`, read when first needed.
    all_units: std::cell::OnceCell<Vec<usize>>,
    /// The file, and where its uncompressed `.debug_info` starts in it:
    /// unit headers are read from it with `pread` rather than through the
    /// view, so that walking them makes no page of the section resident.
    info_in_file: Option<(&'a std::fs::File, u64)>,
}

/// The DWARF sections `addr2line` reads.
const SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
];

/// Rounds of adding referenced units before the whole `.debug_info` is used.
const SPARSE_ROUNDS: usize = 8;

impl<'a> Sections<'a> {
    fn read(obj: &object::File<'a>, file: &'a std::fs::File) -> Self {
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let mut data = HashMap::new();
        for id in SECTIONS {
            if let Some(bytes) = obj
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
            {
                data.insert(*id, bytes);
            }
        }
        let info_in_file = obj
            .section_by_name(gimli::SectionId::DebugInfo.name())
            .filter(|s| {
                s.compressed_file_range()
                    .is_ok_and(|c| c.format == object::CompressionFormat::None)
            })
            .and_then(|s| s.file_range())
            .map(|(offset, _)| (file, offset));
        Sections {
            endian,
            data,
            use_aranges: true,
            all_units: std::cell::OnceCell::new(),
            info_in_file,
        }
    }

    /// Offsets of every unit in `.debug_info`, from their headers' lengths.
    fn walk_units(&self) -> Vec<usize> {
        use std::os::unix::fs::FileExt;
        let info = self.bytes(gimli::SectionId::DebugInfo);
        let word = |at: usize| -> Option<u32> {
            let mut b = [0u8; 4];
            match self.info_in_file {
                Some((file, base)) => file.read_exact_at(&mut b, base + at as u64).ok()?,
                None => b.copy_from_slice(info.get(at..at + 4)?),
            }
            Some(match self.endian {
                gimli::RunTimeEndian::Little => u32::from_le_bytes(b),
                gimli::RunTimeEndian::Big => u32::from_be_bytes(b),
            })
        };
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos + 4 <= info.len() && out.len() < 1_000_000 {
            let Some(length) = word(pos) else { break };
            // 64-bit DWARF units are not walked (not produced by rustc).
            if length >= 0xffff_fff0 {
                break;
            }
            out.push(pos);
            pos += 4 + length as usize;
        }
        out
    }

    fn bytes(&self, id: gimli::SectionId) -> &[u8] {
        self.data.get(&id).map_or(&[], |c| c)
    }

    /// The units holding `svmas` (sorted), from `.debug_aranges`, read
    /// in one pass without keeping the table; `None` without the section.
    fn units_of_addresses(&self, svmas: &[u64]) -> Option<BTreeSet<usize>> {
        let raw = self.bytes(gimli::SectionId::DebugAranges);
        if raw.is_empty() || !self.use_aranges {
            return None;
        }
        let mut units = BTreeSet::new();
        let mut headers = gimli::DebugAranges::new(raw, self.endian).headers();
        while let Ok(Some(h)) = headers.next() {
            let unit = h.debug_info_offset().0;
            let mut entries = h.entries();
            while let Ok(Some(e)) = entries.next() {
                let r = e.range();
                let i = svmas.partition_point(|a| *a < r.begin);
                if svmas.get(i).is_some_and(|a| *a < r.end) {
                    units.insert(unit);
                }
            }
        }
        Some(units)
    }

    /// The unit holding `.debug_info` offset `offset`.
    fn unit_of_offset(&self, offset: usize) -> Option<usize> {
        let all = self.all_units.get_or_init(|| self.walk_units());
        let i = all.partition_point(|s| *s <= offset);
        all.get(i.checked_sub(1)?).copied()
    }

    fn resolve(&self, svmas: &[u64], deadline: Instant) -> Result<(Vec<Vec<Named>>, bool), String> {
        let info = self.bytes(gimli::SectionId::DebugInfo);
        let mut sorted = svmas.to_vec();
        sorted.sort_unstable();
        let (mut needed, mut whole) = match self.units_of_addresses(&sorted) {
            Some(units) => (units, false),
            None => (BTreeSet::new(), true),
        };
        let mut out: Vec<Option<Vec<Named>>> = vec![None; svmas.len()];
        let mut complete = true;
        for round in 0..=SPARSE_ROUNDS {
            let sparse = if whole {
                None
            } else {
                Some(SparseUnits::build(info, &needed).ok_or("malformed .debug_info")?)
            };
            let debug_info = sparse.as_ref().map_or(info, |s| s.bytes());
            let dwarf = gimli::Dwarf::load(|id| -> Result<Reader<'_>, gimli::Error> {
                let bytes = if id == gimli::SectionId::DebugInfo {
                    debug_info
                } else {
                    self.bytes(id)
                };
                Ok(gimli::EndianSlice::new(bytes, self.endian))
            })
            .map_err(|e| e.to_string())?;
            let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())?;
            // Only the addresses a unit left out made fail are looked up again.
            let mut missing = BTreeSet::new();
            let mut retry = false;
            for (svma, slot) in svmas.iter().zip(out.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                if Instant::now() >= deadline {
                    complete = false;
                    break;
                }
                match frames_in(&ctx, *svma) {
                    Ok(named) => *slot = Some(named),
                    Err(gimli::Error::NoEntryAtGivenOffset(offset)) if !whole => {
                        retry = true;
                        match usize::try_from(offset)
                            .ok()
                            .and_then(|o| self.unit_of_offset(o))
                            .filter(|u| !needed.contains(u))
                        {
                            Some(unit) => {
                                missing.insert(unit);
                            }
                            // Not a unit found by walking the headers: read them all.
                            None => whole = true,
                        }
                    }
                    Err(_) => *slot = Some(Vec::new()),
                }
            }
            tracing::debug!(
                round,
                units = if sparse.is_some() { needed.len() } else { 0 },
                whole = sparse.is_none(),
                added = missing.len(),
                "DWARF lookup round"
            );
            if !retry || !complete {
                break;
            }
            needed.extend(missing);
            if round + 1 >= SPARSE_ROUNDS {
                whole = true;
            }
        }
        let complete = complete && out.iter().all(Option::is_some);
        Ok((
            out.into_iter().map(Option::unwrap_or_default).collect(),
            complete,
        ))
    }
}

/// The functions at `svma`, innermost first.
fn frames_in(ctx: &addr2line::Context<Reader<'_>>, svma: u64) -> Result<Vec<Named>, gimli::Error> {
    let mut iter = ctx.find_frames(svma).skip_all_loads()?;
    let mut out = Vec::new();
    while let Some(f) = iter.next()? {
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
    Ok(out)
}

/// A `.debug_info` of the real one's size in which only some units are
/// real: each gap between them holds one empty DWARF 5 type unit (which
/// `addr2line` skips), the rest is untouched zero pages of an anonymous
/// mapping (no memory until written). Offsets into the real units stay
/// valid.
struct SparseUnits {
    map: memmap2::MmapMut,
}

/// Size of the header of a DWARF 5 type unit in 32-bit DWARF.
const TYPE_UNIT_HEADER: usize = 24;

impl SparseUnits {
    /// Copies the units at `offsets` of `info`; `None` if one is malformed.
    fn build(info: &[u8], offsets: &BTreeSet<usize>) -> Option<Self> {
        let mut map = memmap2::MmapMut::map_anon(info.len().max(1)).ok()?;
        let mut pos = 0usize;
        for &start in offsets {
            if start < pos {
                continue;
            }
            let length = u32::from_le_bytes(info.get(start..start + 4)?.try_into().ok()?);
            // 64-bit DWARF (0xffffffff) and reserved lengths: not sparse.
            if length >= 0xffff_fff0 {
                return None;
            }
            let end = start.checked_add(4)?.checked_add(length as usize)?;
            Self::filler(&mut map, pos, start)?;
            map.get_mut(start..end)?
                .copy_from_slice(info.get(start..end)?);
            pos = end;
        }
        Self::filler(&mut map, pos, info.len())?;
        Some(SparseUnits { map })
    }

    /// An empty type unit over `[start, end)`; nothing for an empty gap.
    fn filler(map: &mut [u8], start: usize, end: usize) -> Option<()> {
        if start >= end {
            return Some(());
        }
        // Every gap is made of whole real units, so it is larger than one
        // header, unless the section is malformed.
        if end - start <= TYPE_UNIT_HEADER {
            return None;
        }
        let header = map.get_mut(start..start + TYPE_UNIT_HEADER)?;
        let length = u32::try_from(end - start - 4).ok()?;
        header[0..4].copy_from_slice(&length.to_le_bytes());
        header[4..6].copy_from_slice(&5u16.to_le_bytes()); // DWARF 5
        header[6] = 0x02; // DW_UT_type
        header[7] = 8; // address size
                       // abbreviation offset 0, type signature 0
        header[20..24].copy_from_slice(&(TYPE_UNIT_HEADER as u32).to_le_bytes());
        Some(())
    }

    fn bytes(&self) -> &[u8] {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_dwarf_names() -> u64 {
        std::hint::black_box(5)
    }

    #[test]
    fn sparse_and_whole_debug_info_name_the_same() {
        let exe = std::env::current_exe().unwrap();
        let maps = crate::stacks::maps::read_maps();
        let modules = Modules::load(&maps);
        let here = a_function_dwarf_names as *const () as usize as u64;
        let own = modules.find(here).unwrap();
        let svma = here - own.bias.unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let (named, complete) = resolve_in_file(&exe, &[svma, u64::MAX - 8], far).unwrap();
        assert!(complete);
        let f = named[0].last().expect("DWARF names this test");
        assert!(
            f.function
                .as_deref()
                .is_some_and(|n| n.ends_with("a_function_dwarf_names")),
            "{f:?}"
        );
        assert!(f.file.as_deref().is_some_and(|p| p.ends_with("dwarf.rs")));
        assert!(named[1].is_empty());

        // The same answer with the whole section.
        let file = std::fs::File::open(&exe).unwrap();
        let map = crate::stacks::sys::map_file(&file).unwrap();
        let obj = object::File::parse(&*map).unwrap();
        let mut sections = Sections::read(&obj, &file);
        sections.use_aranges = false;
        let (whole, _) = sections.resolve(&[svma], far).unwrap();
        assert_eq!(whole[0], named[0]);
        assert_eq!(a_function_dwarf_names(), 5);
    }

    #[test]
    fn fillers_are_type_units_and_real_units_keep_their_offsets() {
        // Three fake 32-byte "units": only the middle one is copied.
        let mut info = Vec::new();
        for fill in [0x11u8, 0x22, 0x33] {
            info.extend_from_slice(&28u32.to_le_bytes());
            info.extend(std::iter::repeat_n(fill, 28));
        }
        let sparse = SparseUnits::build(&info, &BTreeSet::from([32])).unwrap();
        let b = sparse.bytes();
        assert_eq!(b.len(), info.len());
        assert_eq!(&b[32..64], &info[32..64]);
        assert_eq!(&b[0..4], &28u32.to_le_bytes());
        assert_eq!((b[4], b[6]), (5, 0x02));
        assert_eq!(&b[64..68], &28u32.to_le_bytes());
        // A unit whose length runs past the end is refused.
        let mut bad = info.clone();
        bad[32..36].copy_from_slice(&1000u32.to_le_bytes());
        assert!(SparseUnits::build(&bad, &BTreeSet::from([32])).is_none());
    }
}
