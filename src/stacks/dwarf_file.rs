//! Reading the DWARF of one file, for the addresses a report needs.
//!
//! This module owns [`resolve_in_file`]: it maps the file read-only
//! ([`super::sys::map_file`]) for the call only, and hands `addr2line` a
//! `.debug_info` in which only the compilation units that hold the
//! addresses (found with `.debug_aranges`) and the units their inlined
//! functions refer to are real ([`SparseUnits`]): building `addr2line`'s
//! context from every unit of a 28 MB line-tables binary touches ~24 MB of
//! the file and allocates ~8 MB, where a report needs a handful of units.
//! Every gap holds one empty type unit, which `addr2line` skips. A reference
//! into a unit left out shows as a lookup error naming its offset; that
//! unit is added (its start found by walking the unit headers with
//! `pread`, which makes no page of the section resident) and only the
//! addresses that failed are looked up again, a few rounds at most, then
//! the whole section is used. It does not decide which modules to read or
//! what the report says ([`super::dwarf`] does).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Instant;

use addr2line::gimli;
use object::{Object, ObjectSection};

use super::names::Named;

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
    let t = Instant::now();
    let sections = Sections::read(&obj, &file);
    tracing::debug!(took = ?t.elapsed(), "DWARF sections read");
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
const SPARSE_ROUNDS: usize = 24;

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
            let t_ctx = Instant::now();
            let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|e| e.to_string())?;
            let t_ctx = t_ctx.elapsed();
            let t_look = Instant::now();
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
                ctx = ?t_ctx,
                lookups = ?t_look.elapsed(),
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
    /// The real section's length (the mapping is at least one byte).
    len: usize,
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
        Some(SparseUnits {
            map,
            len: info.len(),
        })
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
        &self.map[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[inline(never)]
    fn a_function_dwarf_names() -> u64 {
        std::hint::black_box(5)
    }
    #[test]
    fn sparse_and_whole_debug_info_name_the_same() {
        let exe = std::env::current_exe().unwrap();
        let maps = crate::stacks::maps::read_maps();
        let modules = crate::stacks::modules::Modules::load(&maps);
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
        assert!(f
            .file
            .as_deref()
            .is_some_and(|p| p.ends_with("dwarf_file.rs")));
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
        // An empty section stays empty.
        assert!(SparseUnits::build(&[], &BTreeSet::new())
            .unwrap()
            .bytes()
            .is_empty());
        // A unit whose length runs past the end is refused.
        let mut bad = info.clone();
        bad[32..36].copy_from_slice(&1000u32.to_le_bytes());
        assert!(SparseUnits::build(&bad, &BTreeSet::from([32])).is_none());
    }
}
