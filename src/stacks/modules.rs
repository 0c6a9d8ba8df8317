//! The loaded ELF modules and the `framehop` unwinder that walks copied stacks.
//!
//! Built once when a [`StackSampler`](super::StackSampler) is created, from
//! the file-backed executable mappings of `/proc/self/maps` (plus the vdso,
//! copied from memory). For each module, the `object` crate reads the
//! section headers and copies `.eh_frame` and `.eh_frame_hdr` (the DWARF CFI
//! the unwinder executes) and notes the addresses of `.text` and `.got`
//! (which CFI pointer encodings are relative to). framehop does not read
//! `.text` bytes for ELF (it only analyses instructions for Mach-O), so they
//! are not copied. The list is refreshed only when an address falls outside
//! every known module (a library loaded later with `dlopen`).
//!
//! The modules are deliberately not enumerated with `dl_iterate_phdr`: it
//! takes the dynamic loader's lock, which a stuck thread inside `dlopen`
//! could be holding.

use std::fs;
use std::ops::Range;
use std::path::Path;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};

use super::maps::Mapping;
use super::sys::Regs;

/// Page size of x86_64 Linux mappings.
const PAGE: u64 = 4096;

/// A module the unwinder knows.
#[derive(Debug, Clone)]
pub(crate) struct KnownModule {
    /// Addresses covered by the module's mappings.
    pub range: Range<u64>,
    /// File name (no directory), or `[vdso]`.
    pub name: String,
    /// Path to open the module's file with (`None` for the vdso).
    pub path: Option<String>,
    /// Actual minus stated addresses, when the module could be read.
    pub bias: Option<u64>,
}

/// The unwinder with its module list and rule cache.
pub(crate) struct Modules {
    unwinder: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    known: Vec<KnownModule>,
}

/// The frames of one stack, innermost first.
#[derive(Debug, Default)]
pub(crate) struct Unwound {
    /// The instruction pointer, then return addresses.
    pub frames: Vec<FrameAddress>,
    /// Why unwinding stopped before the root, if framehop could tell.
    pub stopped: Option<String>,
}

impl Modules {
    /// Loads every module in `maps`.
    pub(crate) fn load(maps: &[Mapping]) -> Self {
        let mut modules = Self {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            known: Vec::new(),
        };
        modules.refresh(maps);
        modules
    }

    /// Adds modules mapped since the last call and drops unmapped ones.
    /// Returns the number of modules added.
    pub(crate) fn refresh(&mut self, maps: &[Mapping]) -> usize {
        let candidates = group_modules(maps);
        let before = self.known.len();
        // Drop modules that are gone (or whose range changed).
        let gone: Vec<u64> = self
            .known
            .iter()
            .filter(|k| {
                !candidates
                    .iter()
                    .any(|c| c.range == k.range && c.name() == k.name)
            })
            .map(|k| k.range.start)
            .collect();
        for start in &gone {
            self.unwinder.remove_module(*start);
        }
        self.known.retain(|k| !gone.contains(&k.range.start));
        let mut added = 0;
        for candidate in candidates {
            if self.known.iter().any(|k| k.range == candidate.range) {
                continue;
            }
            let name = candidate.name();
            match load_module(&candidate) {
                Some(loaded) => {
                    self.unwinder.add_module(loaded.module);
                    if !loaded.has_cfi {
                        tracing::debug!(module = %name, "no .eh_frame: frame-pointer unwinding only");
                    }
                    self.known.push(KnownModule {
                        range: candidate.range.clone(),
                        name,
                        path: loaded.path,
                        bias: Some(loaded.bias),
                    });
                    added += 1;
                }
                None => {
                    tracing::debug!(module = %name, "module not loadable for unwinding");
                    // Remember it anyway, so that its addresses do not
                    // trigger a refresh on every capture.
                    self.known.push(KnownModule {
                        range: candidate.range.clone(),
                        name,
                        path: None,
                        bias: None,
                    });
                }
            }
        }
        self.known.sort_by_key(|k| k.range.start);
        tracing::debug!(
            modules = self.known.len(),
            added,
            removed = gone.len(),
            before,
            "unwinder module list refreshed"
        );
        added
    }

    /// The module containing `address`.
    pub(crate) fn find(&self, address: u64) -> Option<&KnownModule> {
        let i = self.known.partition_point(|k| k.range.start <= address);
        let k = self.known.get(i.checked_sub(1)?)?;
        (address < k.range.end).then_some(k)
    }

    /// Number of known modules.
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    /// Unwinds a stack copied at `regs.sp` (`stack` holds the bytes from
    /// `regs.sp` upwards), up to `max_frames` frames.
    pub(crate) fn unwind(&mut self, regs: Regs, stack: &[u8], max_frames: usize) -> Unwound {
        let base = regs.sp;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(base).ok_or(())?).map_err(|_| ())?;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut iter = self.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            &mut self.cache,
            &mut read_stack,
        );
        let mut out = Unwound::default();
        loop {
            if out.frames.len() >= max_frames {
                out.stopped = Some(format!("stopped at {max_frames} frames"));
                break;
            }
            match iter.next() {
                Ok(Some(frame)) => out.frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    out.stopped = Some(err.to_string());
                    break;
                }
            }
        }
        out
    }
}

/// Consecutive mappings of one file (or of the vdso) with some executable part.
#[derive(Debug)]
struct Candidate<'a> {
    path: &'a str,
    range: Range<u64>,
    mappings: Vec<&'a Mapping>,
}

impl Candidate<'_> {
    fn name(&self) -> String {
        Path::new(self.path.trim_end_matches(" (deleted)"))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.to_string())
    }
}

fn group_modules(maps: &[Mapping]) -> Vec<Candidate<'_>> {
    let mut groups: Vec<Candidate<'_>> = Vec::new();
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if !(path.starts_with('/') || path == "[vdso]") {
            continue;
        }
        match groups.last_mut() {
            Some(g) if g.path == path && g.range.end == m.start => {
                g.range.end = m.end;
                g.mappings.push(m);
            }
            _ => groups.push(Candidate {
                path,
                range: m.start..m.end,
                mappings: vec![m],
            }),
        }
    }
    groups.retain(|g| g.mappings.iter().any(|m| m.executable));
    groups
}

/// A module read for the unwinder.
struct Loaded {
    module: Module<Vec<u8>>,
    has_cfi: bool,
    bias: u64,
    path: Option<String>,
}

/// Reads a module's unwind sections and computes its load bias.
fn load_module(c: &Candidate<'_>) -> Option<Loaded> {
    if c.path == "[vdso]" {
        let image = super::sys::read_vdso(c.range.start, c.range.end)?;
        let obj = object::File::parse(&image[..]).ok()?;
        return build_module(c, &obj, None);
    }
    let (file, path) = open_module_file(c)?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    build_module(c, &obj, Some(path))
}

/// Opens the mapped file; for a file deleted since it was mapped (an
/// upgraded binary), tries the kernel's `map_files` link.
fn open_module_file(c: &Candidate<'_>) -> Option<(fs::File, String)> {
    let open = |p: &str| fs::File::open(p).ok().map(|f| (f, p.to_string()));
    if let Some(stripped) = c.path.strip_suffix(" (deleted)") {
        let m = c.mappings.first()?;
        let link = format!("/proc/self/map_files/{:x}-{:x}", m.start, m.end);
        return open(&link).or_else(|| open(stripped));
    }
    open(c.path)
}

fn build_module<'data, R: object::ReadRef<'data>>(
    c: &Candidate<'_>,
    obj: &object::File<'data, R>,
    path: Option<String>,
) -> Option<Loaded> {
    if obj.format() != object::BinaryFormat::Elf {
        return None;
    }
    let bias = load_bias(c, obj)?;
    let range_of = |name: &str| {
        obj.section_by_name(name)
            .map(|s| s.address()..s.address().saturating_add(s.size()))
    };
    let data_of = |name: &str| {
        obj.section_by_name(name)
            .and_then(|s| s.data().ok())
            .filter(|d| !d.is_empty())
            .map(<[u8]>::to_vec)
    };
    let eh_frame = data_of(".eh_frame");
    let debug_frame = if eh_frame.is_none() {
        data_of(".debug_frame")
    } else {
        None
    };
    let has_cfi = eh_frame.is_some() || debug_frame.is_some();
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: range_of(".text"),
        text: None,
        got_svma: range_of(".got"),
        eh_frame_svma: range_of(".eh_frame"),
        eh_frame,
        eh_frame_hdr_svma: range_of(".eh_frame_hdr"),
        eh_frame_hdr: data_of(".eh_frame_hdr"),
        debug_frame,
        ..Default::default()
    };
    // framehop keys relative addresses as u32 from the base.
    if c.range.end.checked_sub(bias)? > u64::from(u32::MAX) {
        return None;
    }
    Some(Loaded {
        module: Module::new(c.name(), c.range.clone(), bias, info),
        has_cfi,
        bias,
        path,
    })
}

/// The load bias: actual address minus the address stated in the ELF file.
/// A mapping at `start` of file offset `offset` holds the `PT_LOAD` segment
/// whose page-aligned file offset is `offset`; its page-aligned stated
/// address then sits at `start`.
fn load_bias<'data, R: object::ReadRef<'data>>(
    c: &Candidate<'_>,
    obj: &object::File<'data, R>,
) -> Option<u64> {
    let segments: Vec<(u64, u64)> = obj
        .segments()
        .map(|s| (s.file_range().0, s.address()))
        .collect();
    for m in &c.mappings {
        for &(file_offset, address) in &segments {
            if file_offset & !(PAGE - 1) == m.offset {
                return Some(m.start.wrapping_sub(address & !(PAGE - 1)));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::maps::read_maps;

    #[test]
    fn finds_this_binary_and_libc() {
        let maps = read_maps();
        let modules = Modules::load(&maps);
        assert!(modules.len() >= 2, "{:?}", modules.known);
        let here = finds_this_binary_and_libc as *const () as usize as u64;
        let own = modules.find(here).expect("own code is in a module");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            own.name,
            exe.file_name().unwrap().to_string_lossy(),
            "{own:?}"
        );
        let libc_fn = libc::getpid as *const () as usize as u64;
        let libc_module = modules.find(libc_fn).expect("libc is a module");
        assert!(libc_module.name.starts_with("libc"), "{libc_module:?}");
        assert!(modules.find(0).is_none());
    }

    #[test]
    fn refresh_without_changes_adds_nothing() {
        let maps = read_maps();
        let mut modules = Modules::load(&maps);
        let n = modules.len();
        assert_eq!(modules.refresh(&maps), 0);
        assert_eq!(modules.len(), n);
    }

    #[test]
    fn grouping_needs_an_executable_mapping() {
        let maps = crate::stacks::maps::parse_maps(
            "1000-2000 r--p 00000000 08:01 1 /lib/a.so\n\
             2000-3000 r-xp 00001000 08:01 1 /lib/a.so\n\
             3000-4000 r--p 00000000 08:01 2 /usr/share/data\n\
             5000-6000 r-xp 00000000 00:00 0 [vdso]\n\
             6000-7000 rw-p 00000000 00:00 0\n",
        );
        let groups = group_modules(&maps);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].range, 0x1000..0x3000);
        assert_eq!(groups[0].name(), "a.so");
        assert_eq!(groups[1].name(), "[vdso]");
    }

    #[test]
    fn unwinding_garbage_terminates() {
        let maps = read_maps();
        let mut modules = Modules::load(&maps);
        let stack = vec![0xffu8; 4096];
        let regs = Regs {
            ip: 0x10,
            sp: 0x7000_0000,
            bp: 0x7000_0010,
        };
        let out = modules.unwind(regs, &stack, 64);
        assert!(out.frames.len() <= 64);
        let out = modules.unwind(regs, &[], 64);
        assert!(!out.frames.is_empty());
    }
}
