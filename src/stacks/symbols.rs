//! Symbolization of unwound addresses, with a per-address cache.
//!
//! Uses `backtrace::resolve` (gimli + addr2line over the modules' DWARF),
//! which reports inlined frames innermost first. The first resolution in a
//! process loads and parses debug info and costs tens of milliseconds; a
//! sampler therefore warms it when it is created, and caches every answer
//! so that the second report of a stall pays only hash lookups.
//!
//! Binaries built with `debug = "line-tables-only"` (the release profile's
//! setting here) record function names without their module path
//! (`checkout` instead of `myapp::handlers::checkout`). For the outermost
//! function at an address the ELF symbol table has the full (mangled)
//! name: it is read once per module, on first need, and replaces an
//! unqualified name.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;

use object::{Object, ObjectSymbol};

/// One symbolized (possibly inlined) function at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Symbol {
    /// Demangled name, without the Rust hash suffix.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// The module an address belongs to, for symbol-table lookups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModuleRef<'a> {
    /// Path of the ELF file.
    pub path: &'a str,
    /// Actual minus stated addresses.
    pub bias: u64,
}

/// Resolved addresses; bounded so that a long-lived sampler does not grow
/// without limit.
pub(crate) struct Symbolizer {
    cache: HashMap<u64, Arc<[Symbol]>>,
}

/// Function symbols per module (path and bias), shared by all samplers;
/// `None`: unreadable or without symbols.
type Tables = HashMap<(String, u64), Option<Arc<SymbolTable>>>;

static TABLES: parking_lot::Mutex<Option<Tables>> = parking_lot::const_mutex(None);

/// Entries kept before the cache is cleared.
const MAX_CACHED: usize = 64 * 1024;

impl Symbolizer {
    pub(crate) fn new() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }

    /// Loads the symbols of this binary and of libc (every stack ends in
    /// libc, and most stuck ones start there): resolves the calling thread's
    /// own stack (walked with `backtrace::trace`, outside any signal
    /// handler), `std::thread::sleep` and a libc function. Returns whether
    /// this binary's own address resolved.
    pub(crate) fn warm(&mut self, module_of: impl Fn(u64) -> Option<(String, u64)>) -> bool {
        let here = Self::new as *const () as usize as u64;
        let mut addresses = vec![
            (libc::clock_nanosleep as *const () as usize as u64, false),
            (
                std::thread::sleep as fn(_) as *const () as usize as u64,
                false,
            ),
            (here, false),
        ];
        let mut first = true;
        backtrace::trace(|frame| {
            addresses.push((frame.ip() as usize as u64, !first));
            first = false;
            addresses.len() < 128
        });
        for (address, is_return) in addresses {
            let module = module_of(address);
            let module = module
                .as_ref()
                .map(|(path, bias)| ModuleRef { path, bias: *bias });
            let _ = self.resolve(address, is_return, module);
        }
        self.cache.get(&here).is_some_and(|s| !s.is_empty())
    }

    /// The functions at `address`, innermost (most inlined) first.
    ///
    /// `is_return_address` says that `address` is a return address: the call
    /// that leads there is the instruction before it. `backtrace::resolve`
    /// always looks up `address - 1` (it assumes return addresses), so an
    /// exact instruction pointer is passed to it as `address + 1`.
    /// `module` (when known) lets an unqualified outermost name be replaced
    /// by the symbol table's.
    pub(crate) fn resolve(
        &mut self,
        address: u64,
        is_return_address: bool,
        module: Option<ModuleRef<'_>>,
    ) -> Arc<[Symbol]> {
        let lookup = if is_return_address {
            address.wrapping_sub(1)
        } else {
            address
        };
        if let Some(hit) = self.cache.get(&lookup) {
            return hit.clone();
        }
        let mut symbols = Vec::new();
        if lookup != 0 && lookup != u64::MAX {
            let pass = lookup.wrapping_add(1) as usize as *mut std::ffi::c_void;
            backtrace::resolve(pass, |sym| {
                symbols.push(Symbol {
                    function: sym.name().map(|n| format!("{n:#}")),
                    file: sym.filename().map(|p| p.to_string_lossy().into_owned()),
                    line: sym.lineno(),
                });
            });
            if let Some(module) = module {
                Self::qualify(&mut symbols, lookup, module);
            }
        }
        let symbols: Arc<[Symbol]> = symbols.into();
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(lookup, symbols.clone());
        symbols
    }

    /// Replaces the outermost function's name by the symbol table's when
    /// DWARF gave none or one without a path.
    fn qualify(symbols: &mut Vec<Symbol>, lookup: u64, module: ModuleRef<'_>) {
        let needs = symbols
            .last()
            .is_none_or(|s| s.function.as_deref().is_none_or(|f| !f.contains("::")));
        if !needs {
            return;
        }
        let table = TABLES
            .lock()
            .get_or_insert_with(HashMap::new)
            .entry((module.path.to_string(), module.bias))
            .or_insert_with(|| SymbolTable::read(module.path).map(Arc::new))
            .clone();
        let Some(raw) = table
            .as_ref()
            .and_then(|t| t.find(lookup.wrapping_sub(module.bias)))
        else {
            return;
        };
        let name = format!("{:#}", backtrace::SymbolName::new(raw));
        match symbols.last_mut() {
            Some(outer) if outer.function.is_none() || name.contains("::") => {
                outer.function = Some(name);
            }
            Some(_) => {}
            None => symbols.push(Symbol {
                function: Some(name),
                file: None,
                line: None,
            }),
        }
    }

    /// Number of cached addresses.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// (start, end, name) of the sized function symbols among `symbols`.
fn text_symbols<'data, S: ObjectSymbol<'data>>(
    symbols: impl Iterator<Item = S>,
) -> Vec<(u64, u64, Box<[u8]>)> {
    symbols
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let name = s.name_bytes().ok()?;
            let start = s.address();
            Some((start, start.saturating_add(s.size()), Box::from(name)))
        })
        .collect()
}

/// The function symbols of one ELF file, sorted by address.
struct SymbolTable {
    /// (start, end, mangled name), stated addresses.
    entries: Vec<(u64, u64, Box<[u8]>)>,
}

impl SymbolTable {
    /// Reads `.symtab` (or `.dynsym` if stripped) of the file at `path`.
    fn read(path: &str) -> Option<Self> {
        let file = fs::File::open(path).ok()?;
        let cache = object::ReadCache::new(file);
        let obj = object::File::parse(&cache).ok()?;
        let mut entries = text_symbols(obj.symbols());
        if entries.is_empty() {
            entries = text_symbols(obj.dynamic_symbols());
        }
        if entries.is_empty() {
            return None;
        }
        entries.sort_by_key(|e| e.0);
        tracing::debug!(path, symbols = entries.len(), "symbol table loaded");
        Some(Self { entries })
    }

    /// The mangled name of the function containing `svma`.
    fn find(&self, svma: u64) -> Option<&[u8]> {
        let i = self.entries.partition_point(|e| e.0 <= svma);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (*start <= svma && svma < *end).then_some(&**name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_named_function_for_symbols() -> usize {
        std::hint::black_box(7)
    }

    #[test]
    fn resolves_and_caches() {
        let maps = crate::stacks::maps::read_maps();
        let modules = crate::stacks::modules::Modules::load(&maps);
        let module_of = |a: u64| {
            let m = modules.find(a)?;
            Some((m.path.clone()?, m.bias?))
        };
        let mut s = Symbolizer::new();
        assert!(s.warm(module_of));
        let addr = a_named_function_for_symbols as *const () as usize as u64;
        let (path, bias) = module_of(addr).unwrap();
        let module = Some(ModuleRef { path: &path, bias });
        let syms = s.resolve(addr, false, module);
        let f = syms.last().and_then(|s| s.function.clone()).unwrap();
        // Qualified and without hash, whatever the debug info level.
        assert_eq!(
            f,
            "loopwatch::stacks::symbols::tests::a_named_function_for_symbols"
        );
        let file = syms.last().unwrap().file.clone().unwrap();
        assert!(file.ends_with("symbols.rs"), "{file}");
        let n = s.cached();
        let again = s.resolve(addr, false, module);
        assert!(Arc::ptr_eq(&syms, &again));
        assert_eq!(s.cached(), n);
        assert!(s.resolve(0, false, None).is_empty());
        assert_eq!(a_named_function_for_symbols(), 7);
    }
}
