//! The loaded ELF modules and the `framehop` unwinder that walks copied stacks.
//!
//! Built at the first capture (never at start), from the file-backed
//! executable mappings of `/proc/self/maps` (plus the vdso, copied from
//! memory), and brought up to date at each capture: modules mapped since
//! are added, unmapped ones dropped. For each module, [`ElfFacts`] reads
//! the section headers; the unwinder then gets `.eh_frame` and
//! `.eh_frame_hdr` (the DWARF CFI it executes) as read-only views of the
//! file ([`sys::map_file_range`](super::sys::map_file_range)), not as heap
//! copies: only the pages an unwind touches become resident, and they are
//! the page cache's. The views are loopwatch's own mappings, so a library
//! the application unloads with `dlclose` cannot pull them away mid-unwind.
//! framehop does not read `.text` bytes for ELF (it only analyses
//! instructions for Mach-O), so they are not mapped.
//!
//! The modules are deliberately not enumerated with `dl_iterate_phdr`: it
//! takes the dynamic loader's lock, which a stuck thread inside `dlopen`
//! could be holding.

use std::fs;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use super::elf::{ElfFacts, SectionPlace};
use super::frame::is_system_module;
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
    pub path: Option<PathBuf>,
    /// Actual minus stated addresses, when the module could be read.
    pub bias: Option<u64>,
    /// What its headers say (`None` if it could not be read).
    pub elf: Option<Arc<ElfFacts>>,
    /// The C runtime, the dynamic loader or the vdso.
    pub system: bool,
}

impl KnownModule {
    /// The build id in hex.
    pub(crate) fn build_id(&self) -> Option<String> {
        self.elf.as_ref()?.build_id_hex()
    }
}

/// Bytes of a section for the unwinder: a view of the file, or (for the
/// vdso, which has no file) a copy.
pub(crate) enum SectionBytes {
    /// A view of exactly the section's bytes in the file.
    Mapped(memmap2::Mmap),
    /// Owned bytes.
    Owned(Vec<u8>),
}

impl Default for SectionBytes {
    fn default() -> Self {
        SectionBytes::Owned(Vec::new())
    }
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SectionBytes::Mapped(map) => map,
            SectionBytes::Owned(v) => v,
        }
    }
}

/// The unwinder with its module list and rule cache.
pub(crate) struct Modules {
    unwinder: UnwinderX86_64<SectionBytes>,
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
    /// The end of the highest stack word the unwind read: where the frame
    /// it stopped in begins, when it stopped for want of a frame pointer.
    pub read_up_to: u64,
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
            let system = is_system_module(&name);
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
                        elf: Some(Arc::new(loaded.elf)),
                        system,
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
                        elf: None,
                        system,
                    });
                }
            }
        }
        self.known.sort_by_key(|k| k.range.start);
        if added > 0 || !gone.is_empty() {
            tracing::debug!(
                modules = self.known.len(),
                added,
                removed = gone.len(),
                "unwinder module list refreshed"
            );
        }
        added
    }

    /// The module containing `address`.
    pub(crate) fn find(&self, address: u64) -> Option<&KnownModule> {
        let i = self.known.partition_point(|k| k.range.start <= address);
        let k = self.known.get(i.checked_sub(1)?)?;
        (address < k.range.end).then_some(k)
    }

    /// Number of known modules.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len()
    }

    /// Unwinds a stack copied at `regs.sp` (`stack` holds the bytes from
    /// `regs.sp` upwards), up to `max_frames` frames.
    pub(crate) fn unwind(&mut self, regs: Regs, stack: &[u8], max_frames: usize) -> Unwound {
        let base = regs.sp;
        let mut read_up_to = base;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(base).ok_or(())?).map_err(|_| ())?;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            read_up_to = read_up_to.max(addr.saturating_add(8));
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
        out.read_up_to = read_up_to;
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
    module: Module<SectionBytes>,
    has_cfi: bool,
    bias: u64,
    path: Option<PathBuf>,
    elf: ElfFacts,
}

/// Reads a module's headers, maps its unwind sections and computes its
/// load bias.
fn load_module(c: &Candidate<'_>) -> Option<Loaded> {
    if c.path == "[vdso]" {
        let image = super::sys::read_vdso(c.range.start, c.range.end)?;
        let elf = ElfFacts::from_bytes(&image)?;
        let copy = |p: &Option<SectionPlace>| {
            let p = p.as_ref()?;
            let start = usize::try_from(p.file_offset).ok()?;
            let end = start.checked_add(usize::try_from(p.file_size).ok()?)?;
            Some(SectionBytes::Owned(image.get(start..end)?.to_vec()))
        };
        let sections = (copy(&elf.eh_frame), copy(&elf.eh_frame_hdr), None);
        return build_module(c, elf, sections, None);
    }
    let (file, path) = open_module_file(c)?;
    let elf = ElfFacts::read(&path)?;
    let map = |p: &Option<SectionPlace>| {
        let p = p.as_ref()?;
        let len = usize::try_from(p.file_size).ok()?;
        let view = super::sys::map_file_range(&file, p.file_offset, len).ok()?;
        Some(SectionBytes::Mapped(view))
    };
    let eh_frame = map(&elf.eh_frame);
    let debug_frame = if eh_frame.is_none() {
        map(&elf.debug_frame)
    } else {
        None
    };
    let sections = (eh_frame, map(&elf.eh_frame_hdr), debug_frame);
    build_module(c, elf, sections, Some(path))
}

/// Opens the mapped file; for a file deleted since it was mapped (an
/// upgraded binary), tries the kernel's `map_files` link.
fn open_module_file(c: &Candidate<'_>) -> Option<(fs::File, PathBuf)> {
    let open = |p: &str| fs::File::open(p).ok().map(|f| (f, PathBuf::from(p)));
    if let Some(stripped) = c.path.strip_suffix(" (deleted)") {
        let m = c.mappings.first()?;
        let link = format!("/proc/self/map_files/{:x}-{:x}", m.start, m.end);
        return open(&link).or_else(|| open(stripped));
    }
    open(c.path)
}

/// `.eh_frame`, `.eh_frame_hdr` and `.debug_frame` bytes of a module.
type UnwindSections = (
    Option<SectionBytes>,
    Option<SectionBytes>,
    Option<SectionBytes>,
);

fn build_module(
    c: &Candidate<'_>,
    elf: ElfFacts,
    (eh_frame, eh_frame_hdr, debug_frame): UnwindSections,
    path: Option<PathBuf>,
) -> Option<Loaded> {
    let bias = load_bias(c, &elf.segments)?;
    let has_cfi = eh_frame.is_some() || debug_frame.is_some();
    let svma = |p: &Option<SectionPlace>| p.as_ref().map(|p| p.svma.clone());
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: elf.text.clone(),
        text: None,
        got_svma: elf.got.clone(),
        eh_frame_svma: svma(&elf.eh_frame),
        eh_frame,
        eh_frame_hdr_svma: svma(&elf.eh_frame_hdr),
        eh_frame_hdr,
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
        elf,
    })
}

/// The load bias: actual address minus the address stated in the ELF file.
/// A mapping at `start` of file offset `offset` holds the `PT_LOAD` segment
/// whose page-aligned file offset is `offset`; its page-aligned stated
/// address then sits at `start`.
fn load_bias(c: &Candidate<'_>, segments: &[(u64, u64)]) -> Option<u64> {
    for m in &c.mappings {
        for &(file_offset, address) in segments {
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
        assert!(!own.system);
        assert_eq!(own.build_id(), crate::procfs::build_id());
        let libc_fn = libc::getpid as *const () as usize as u64;
        let libc_module = modules.find(libc_fn).expect("libc is a module");
        assert!(libc_module.name.starts_with("libc"), "{libc_module:?}");
        assert!(libc_module.system);
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
