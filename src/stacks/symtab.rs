//! Naming frames from ELF symbol tables: the first report's names.
//!
//! This module owns the cheap half of symbolization: for a batch of
//! addresses of one module it reads that module's `.symtab` (or, for a
//! stripped module, the `.symtab` of its separate debug file, else its
//! `.dynsym`) once, through a read-only view of the file that is unmapped
//! right after, and returns the demangled name of the function symbol
//! containing each address. Nothing is kept but the answers, in a bounded
//! cache ([`SymtabNames`]) that [`super::StackSampler::release`] empties.
//! It does not read DWARF ([`super::dwarf`] does).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object, ObjectSymbol};

use super::debugfile;
use super::modules::KnownModule;
use super::names::demangle;

/// Answers kept before the cache starts over.
const MAX_CACHED: usize = 16 * 1024;

/// Symbol-table names of addresses already looked up: (module start,
/// stated address) → name (`None`: no function symbol covers it).
#[derive(Default)]
pub(crate) struct SymtabNames {
    cache: HashMap<(u64, u64), Option<Arc<str>>>,
    /// Per module (start address): the file its names come from.
    files: HashMap<u64, Option<PathBuf>>,
}

impl SymtabNames {
    /// The name of the function at stated address `svma` of `module`, if
    /// already looked up.
    pub(crate) fn cached(&self, module: &KnownModule, svma: u64) -> Option<Option<Arc<str>>> {
        self.cache.get(&(module.range.start, svma)).cloned()
    }

    /// Looks up every address of `svmas` (stated addresses of `module`)
    /// not cached yet, in one pass over the module's symbol table.
    pub(crate) fn look_up(&mut self, module: &KnownModule, svmas: &[u64]) {
        let mut missing: Vec<u64> = svmas
            .iter()
            .copied()
            .filter(|a| !self.cache.contains_key(&(module.range.start, *a)))
            .collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        let file = self
            .files
            .entry(module.range.start)
            .or_insert_with(|| symbol_file(module))
            .clone();
        let names = match file {
            Some(file) => names_in(&file, &missing).unwrap_or_else(|err| {
                tracing::debug!(module = %module.name, file = %file.display(), %err, "symbol table unreadable");
                vec![None; missing.len()]
            }),
            None => vec![None; missing.len()],
        };
        if self.cache.len() + missing.len() > MAX_CACHED {
            self.cache.clear();
        }
        for (svma, name) in missing.into_iter().zip(names) {
            self.cache
                .insert((module.range.start, svma), name.map(Arc::from));
        }
    }

    /// Forgets every answer.
    pub(crate) fn clear(&mut self) {
        self.cache = HashMap::new();
        self.files = HashMap::new();
    }

    /// Answers cached.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

/// The file whose symbol table names `module`'s functions: the module
/// itself when it has a `.symtab`; else its separate debug file, when one
/// is installed; else the module (its `.dynsym`).
pub(crate) fn symbol_file(module: &KnownModule) -> Option<PathBuf> {
    let path = module.path.as_ref()?;
    let elf = module.elf.as_ref()?;
    if elf.has_symtab {
        return Some(path.clone());
    }
    debugfile::find(path, elf)
        .filter(|d| super::elf::ElfFacts::read(d).is_some_and(|f| f.has_symtab))
        .or_else(|| Some(path.clone()))
}

/// The demangled names of the function symbols containing each of `svmas`
/// (sorted, distinct stated addresses) in the ELF file at `path`: its
/// `.symtab`, or its `.dynsym` when it has none.
pub(crate) fn names_in(path: &Path, svmas: &[u64]) -> std::io::Result<Vec<Option<String>>> {
    let file = File::open(path)?;
    let map = super::sys::map_file(&file)?;
    let obj = object::File::parse(&*map)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    let mut found: Vec<Option<(&str, u64)>> = vec![None; svmas.len()];
    if !scan(obj.symbols(), svmas, &mut found) {
        scan(obj.dynamic_symbols(), svmas, &mut found);
    }
    Ok(found
        .into_iter()
        .map(|f| f.map(|(name, _)| demangle(name)))
        .collect())
}

/// Records in `found` the smallest function symbol of `symbols` covering
/// each of `svmas`; false if `symbols` has no function symbol at all.
fn scan<'data, S: ObjectSymbol<'data>>(
    symbols: impl Iterator<Item = S>,
    svmas: &[u64],
    found: &mut [Option<(&'data str, u64)>],
) -> bool {
    let mut any = false;
    for s in symbols {
        if s.kind() != object::SymbolKind::Text || s.size() == 0 {
            continue;
        }
        any = true;
        let start = s.address();
        let end = start.saturating_add(s.size());
        let first = svmas.partition_point(|a| *a < start);
        let last = svmas.partition_point(|a| *a < end);
        if first == last {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        for slot in &mut found[first..last] {
            // The smallest symbol covering an address is the most precise
            // (a local label inside a larger function).
            if slot.is_none_or(|(_, size)| s.size() < size) {
                *slot = Some((name, s.size()));
            }
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_the_symbol_table_names() -> u32 {
        std::hint::black_box(11)
    }

    #[test]
    fn names_this_binarys_function_and_libcs() {
        let maps = crate::stacks::maps::read_maps();
        let modules = crate::stacks::modules::Modules::load(&maps);
        let here = a_function_the_symbol_table_names as *const () as usize as u64;
        let own = modules.find(here).unwrap();
        let svma = here - own.bias.unwrap();
        let names = names_in(own.path.as_ref().unwrap(), &[svma, svma + 1, u64::MAX]).unwrap();
        assert_eq!(
            names[0].as_deref(),
            Some("loopwatch::stacks::symtab::tests::a_function_the_symbol_table_names")
        );
        assert_eq!(names[0], names[1]);
        assert_eq!(names[2], None);

        let sleep = libc::clock_nanosleep as *const () as usize as u64;
        let libc_module = modules.find(sleep).unwrap();
        let mut cache = SymtabNames::default();
        let svma = sleep - libc_module.bias.unwrap();
        cache.look_up(libc_module, &[svma]);
        let name = cache.cached(libc_module, svma).expect("looked up");
        assert!(
            name.as_deref()
                .is_some_and(|n| n.contains("clock_nanosleep")),
            "{name:?}"
        );
        assert_eq!(cache.len(), 1);
        cache.look_up(libc_module, &[svma]);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert_eq!(cache.len(), 0);
        assert_eq!(a_function_the_symbol_table_names(), 11);
    }
}
