//! Symbolization of unwound addresses, with a per-address cache.
//!
//! Uses `backtrace::resolve` (gimli + addr2line over the modules' DWARF),
//! which reports inlined frames innermost first. The first resolution in a
//! process loads and parses debug info and costs tens of milliseconds; a
//! sampler therefore warms it when it is created, and caches every answer
//! so that the second report of a stall pays only hash lookups.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Resolved addresses; bounded so that a long-lived sampler does not grow
/// without limit.
pub(crate) struct Symbolizer {
    cache: HashMap<u64, Arc<[Symbol]>>,
}

/// Entries kept before the cache is cleared.
const MAX_CACHED: usize = 64 * 1024;

impl Symbolizer {
    pub(crate) fn new() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }

    /// Loads the symbols of this binary and of libc (every stack ends in
    /// libc, and most stuck ones start there) by resolving one address of
    /// each. Returns whether this binary's address resolved.
    pub(crate) fn warm(&mut self) -> bool {
        let here = Self::warm as *const () as usize as u64;
        let in_libc = libc::clock_nanosleep as *const () as usize as u64;
        let _ = self.resolve(in_libc, false);
        !self.resolve(here, false).is_empty()
    }

    /// The functions at `address`, innermost (most inlined) first.
    ///
    /// `is_return_address` says that `address` is a return address: the call
    /// that leads there is the instruction before it. `backtrace::resolve`
    /// always looks up `address - 1` (it assumes return addresses), so an
    /// exact instruction pointer is passed to it as `address + 1`.
    pub(crate) fn resolve(&mut self, address: u64, is_return_address: bool) -> Arc<[Symbol]> {
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
        }
        let symbols: Arc<[Symbol]> = symbols.into();
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(lookup, symbols.clone());
        symbols
    }

    /// Number of cached addresses.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.cache.len()
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
        let mut s = Symbolizer::new();
        assert!(s.warm());
        let addr = a_named_function_for_symbols as *const () as usize as u64;
        let syms = s.resolve(addr, false);
        let f = syms.last().and_then(|s| s.function.clone()).unwrap();
        assert!(f.ends_with("a_named_function_for_symbols"), "{f}");
        assert!(!f.contains("::h"), "hash stripped: {f}");
        assert!(syms
            .last()
            .unwrap()
            .file
            .as_deref()
            .unwrap()
            .ends_with("symbols.rs"));
        let n = s.cached();
        let again = s.resolve(addr, false);
        assert!(Arc::ptr_eq(&syms, &again));
        assert_eq!(s.cached(), n);
        assert!(s.resolve(0, false).is_empty());
        assert_eq!(a_named_function_for_symbols(), 7);
    }
}
