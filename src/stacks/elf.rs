//! What an ELF file holds, read from its headers alone.
//!
//! This module owns [`ElfFacts`]: where a module's unwind sections are,
//! whether it has a symbol table and DWARF debug information, its GNU build
//! id and `.gnu_debuglink`, and its loadable segments (for the load bias).
//! Reading them costs the ELF header, the program and section headers and
//! two small notes: a few kilobytes read with `pread`, whatever the size of
//! the file. It does not read symbols ([`super::symtab`]) or DWARF
//! ([`super::dwarf`]), and does not find separate debug files
//! ([`super::debugfile`]).

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSegment};

/// Where one section lies: its stated addresses and its bytes in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionPlace {
    /// Stated (link-time) addresses.
    pub svma: Range<u64>,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Size in bytes (in the file).
    pub file_size: u64,
}

/// The facts of one ELF file that stack capture and symbolization need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ElfFacts {
    /// The GNU build id (`NT_GNU_BUILD_ID`), raw bytes.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: the separate debug file's name and CRC-32.
    pub debuglink: Option<(String, u32)>,
    /// A non-empty `.symtab`: every function has a name.
    pub has_symtab: bool,
    /// DWARF line tables (`.debug_line`) or debug info (`.debug_info`).
    pub has_dwarf: bool,
    /// Bytes of all `.debug_*` sections (0 without DWARF).
    pub dwarf_bytes: u64,
    /// Some DWARF section is compressed (`SHF_COMPRESSED`, or a GNU
    /// `.zdebug_*` section), which loopwatch does not read.
    pub dwarf_compressed: bool,
    /// `.eh_frame`, the CFI the unwinder executes.
    pub eh_frame: Option<SectionPlace>,
    /// `.eh_frame_hdr`, its binary-search table.
    pub eh_frame_hdr: Option<SectionPlace>,
    /// `.debug_frame`, CFI of modules built without `.eh_frame`.
    pub debug_frame: Option<SectionPlace>,
    /// `.text` stated addresses.
    pub text: Option<Range<u64>>,
    /// `.got` stated addresses.
    pub got: Option<Range<u64>>,
    /// Loadable segments: (file offset, stated address).
    pub segments: Vec<(u64, u64)>,
}

impl ElfFacts {
    /// Reads the facts of the ELF file at `path`; `None` if it cannot be
    /// opened or is not ELF.
    pub(crate) fn read(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let cache = object::ReadCache::new(file);
        let obj = object::File::parse(&cache).ok()?;
        Self::from_object(&obj)
    }

    /// Reads the facts of an ELF image in memory (the vdso).
    pub(crate) fn from_bytes(data: &[u8]) -> Option<Self> {
        let obj = object::File::parse(data).ok()?;
        Self::from_object(&obj)
    }

    fn from_object<'data, R: object::ReadRef<'data>>(obj: &object::File<'data, R>) -> Option<Self> {
        if obj.format() != object::BinaryFormat::Elf {
            return None;
        }
        let place = |name: &str| {
            let s = obj.section_by_name(name)?;
            let (file_offset, file_size) = s.file_range()?;
            (file_size > 0).then(|| SectionPlace {
                svma: s.address()..s.address().saturating_add(s.size()),
                file_offset,
                file_size,
            })
        };
        let range = |name: &str| {
            obj.section_by_name(name)
                .map(|s| s.address()..s.address().saturating_add(s.size()))
        };
        let non_empty = |name: &str| obj.section_by_name(name).is_some_and(|s| s.size() > 0);
        let is_dwarf = |s: &object::Section<'data, '_, R>| {
            s.name()
                .is_ok_and(|n| n.starts_with(".debug_") || n.starts_with(".zdebug_"))
        };
        let dwarf_bytes = obj.sections().filter(is_dwarf).map(|s| s.size()).sum();
        let dwarf_compressed = obj.sections().filter(is_dwarf).any(|s| {
            s.name().is_ok_and(|n| n.starts_with(".zdebug_"))
                || s.compressed_file_range()
                    .is_ok_and(|c| c.format != object::CompressionFormat::None)
        });
        Some(ElfFacts {
            build_id: obj
                .build_id()
                .ok()
                .flatten()
                .filter(|id| !id.is_empty())
                .map(<[u8]>::to_vec),
            debuglink: obj
                .gnu_debuglink()
                .ok()
                .flatten()
                .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc)),
            has_symtab: non_empty(".symtab"),
            has_dwarf: non_empty(".debug_line")
                || non_empty(".debug_info")
                || non_empty(".zdebug_line")
                || non_empty(".zdebug_info"),
            dwarf_bytes,
            dwarf_compressed,
            eh_frame: place(".eh_frame"),
            eh_frame_hdr: place(".eh_frame_hdr"),
            debug_frame: place(".debug_frame"),
            text: range(".text"),
            got: range(".got"),
            segments: obj
                .segments()
                .map(|s| (s.file_range().0, s.address()))
                .collect(),
        })
    }

    /// The build id in lower-case hex.
    pub(crate) fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(hex)
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_unwind_info_and_a_build_id() {
        let exe = std::env::current_exe().unwrap();
        let facts = ElfFacts::read(&exe).expect("test binary is ELF");
        assert!(facts.eh_frame.is_some() && facts.eh_frame_hdr.is_some());
        assert!(facts.text.is_some());
        assert!(!facts.segments.is_empty());
        assert!(facts.has_symtab, "test binaries keep their symbol table");
        assert!(facts.has_dwarf, "test binaries have debug info");
        assert!(facts.dwarf_bytes > 0);
        let id = facts.build_id_hex().expect("build id");
        assert_eq!(Some(id), crate::procfs::build_id());
    }

    #[test]
    fn not_elf_is_none() {
        assert!(ElfFacts::from_bytes(b"#!/bin/sh\necho hi\n").is_none());
        assert!(ElfFacts::read(Path::new("/nonexistent/loopwatch")).is_none());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
