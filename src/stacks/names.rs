//! Function names: demangling, and qualifying bare closure names.
//!
//! This module owns the text of a frame's function name: symbol-table names
//! are demangled without Rust's hash suffix, and the bare names that
//! line-tables-only DWARF gives (`{async_fn#0}`, `{closure#0}`,
//! `{async_block#0}`, `poll<F>`) are qualified from another source where
//! one has the enclosing function: the symbol table for the outermost
//! function at an address, and the nearest enclosing frame of the same
//! source file for an inlined closure. It does not look names up
//! ([`super::symtab`], [`super::dwarf`] do).

use super::frame::Frame;

/// Demangles a symbol-table or DWARF linkage name: Rust (legacy and v0,
/// without the hash and `.llvm.` suffixes); anything else as it is.
pub(crate) fn demangle(raw: &str) -> String {
    match rustc_demangle::try_demangle(raw) {
        Ok(d) => format!("{d:#}"),
        Err(_) => raw.to_string(),
    }
}

/// Whether `name` has a path (`a::b`) outside its generic arguments:
/// `{closure#0}<demo::Env>` and `poll<F>` have none.
pub(crate) fn has_path(name: &str) -> bool {
    let mut depth = 0usize;
    let bytes = name.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' | b')' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => return true,
            _ => {}
        }
    }
    false
}

/// Whether `name` is a closure, async fn body or async block without the
/// function it belongs to: `{closure#0}`, `{async_fn#0}<T>`,
/// `{async_block#1}`, `{{closure}}`.
pub(crate) fn is_bare_closure(name: &str) -> bool {
    !has_path(name)
        && (name.starts_with("{closure#")
            || name.starts_with("{async_fn#")
            || name.starts_with("{async_block#")
            || name.starts_with("{async_gen")
            || name.starts_with("{coroutine#")
            || name.starts_with("{{closure}}"))
}

/// `name` without trailing generic arguments: `a::b<T>` → `a::b`.
fn without_generics(name: &str) -> &str {
    if !name.ends_with('>') {
        return name;
    }
    let mut depth = 0usize;
    for (i, c) in name.char_indices().rev() {
        match c {
            '>' => depth += 1,
            '<' => {
                depth -= 1;
                if depth == 0 {
                    return &name[..i];
                }
            }
            _ => {}
        }
    }
    name
}

/// One function at an address, as a symbolizer found it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Named {
    /// Demangled name.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// Gives the outermost function at an address (last of `inline_chain`,
/// innermost first) the symbol table's name `symtab` when DWARF's has no
/// path (line-tables-only DWARF names functions without their module).
pub(crate) fn qualify_outermost(inline_chain: &mut [Named], symtab: Option<&str>) {
    let (Some(outer), Some(symtab)) = (inline_chain.last_mut(), symtab) else {
        return;
    };
    if outer.function.as_deref().is_none_or(|f| !has_path(f)) {
        outer.function = Some(symtab.to_string());
    }
}

/// Qualifies bare closure names in a whole stack (innermost first): a
/// closure's enclosing function is taken from the nearest outer frame with
/// a path in its name *and the same source file*: a closure or async body
/// is written inside the function that defines it, which is on the stack
/// below it when it is called from there. Without such a frame the name
/// stays bare (its file and line still say where it is).
pub(crate) fn qualify_closures(stack: &mut [Frame]) {
    for i in 0..stack.len() {
        let Some(name) = stack[i].function.as_deref() else {
            continue;
        };
        if !is_bare_closure(name) {
            continue;
        }
        let Some(file) = stack[i].file.as_deref() else {
            continue;
        };
        let enclosing = stack[i + 1..].iter().find_map(|outer| {
            let f = outer.function.as_deref()?;
            (outer.file.as_deref() == Some(file) && has_path(f)).then_some(f)
        });
        if let Some(enclosing) = enclosing {
            let qualified = format!("{}::{name}", without_generics(enclosing));
            stack[i].function = Some(qualified);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(f: &str, file: &str) -> Named {
        Named {
            function: Some(f.into()),
            file: Some(file.into()),
            line: Some(1),
        }
    }

    fn frame(f: &str, file: &str) -> Frame {
        Frame {
            function: Some(f.into()),
            file: Some(file.into()),
            line: Some(1),
            ..Frame::default()
        }
    }

    #[test]
    fn demangles_without_hash_or_llvm_suffix() {
        assert_eq!(
            demangle("_ZN4demo11stall_sleep17h85d9c81b77469e92E"),
            "demo::stall_sleep"
        );
        assert_eq!(
            demangle("_ZN4demo3run28_$u7b$$u7b$closure$u7d$$u7d$17h3e0ac9adf9000186E.llvm.4145961406114487664"),
            "demo::run::{{closure}}"
        );
        assert_eq!(demangle("clock_nanosleep"), "clock_nanosleep");
    }

    #[test]
    fn paths_only_count_outside_generics() {
        assert!(has_path("demo::stall_sleep"));
        assert!(has_path("<demo::Db as core::future::Future>::poll"));
        assert!(!has_path("poll<F>"));
        assert!(!has_path(
            "{closure#0}<demo::housekeeping::{async_fn_env#0}, alloc::sync::Arc<T>>"
        ));
        assert!(is_bare_closure("{async_fn#0}"));
        assert!(is_bare_closure("{closure#0}<demo::Env>"));
        assert!(is_bare_closure("{{closure}}"));
        assert!(!is_bare_closure("demo::run::{{closure}}"));
        assert!(!is_bare_closure("stall_sleep"));
        assert_eq!(without_generics("a::b<T, c<D>>"), "a::b");
        assert_eq!(without_generics("a::b"), "a::b");
    }

    #[test]
    fn the_outermost_takes_the_symbol_tables_name_when_dwarfs_has_no_path() {
        let mut chain = vec![named("sleep", "std.rs"), named("stall_sleep", "demo.rs")];
        qualify_outermost(&mut chain, Some("demo::stall_sleep"));
        assert_eq!(chain[1].function.as_deref(), Some("demo::stall_sleep"));
        assert_eq!(chain[0].function.as_deref(), Some("sleep"));
        let mut full = vec![named("demo::stall_sleep", "demo.rs")];
        qualify_outermost(&mut full, Some("demo::other"));
        assert_eq!(full[0].function.as_deref(), Some("demo::stall_sleep"));
        let mut none = vec![Named::default()];
        qualify_outermost(&mut none, Some("demo::f"));
        assert_eq!(none[0].function.as_deref(), Some("demo::f"));
    }

    #[test]
    fn closures_take_the_nearest_enclosing_function_of_their_file() {
        let mut stack = vec![
            frame("sleep", "std/thread.rs"),
            frame("{async_fn#0}", "src/handler.rs"),
            frame("poll<F>", "tokio/core.rs"),
            frame("myapp::handler::serve", "src/handler.rs"),
            frame("{closure#0}<T>", "src/other.rs"),
            frame("myapp::main", "src/main.rs"),
        ];
        qualify_closures(&mut stack);
        assert_eq!(
            stack[1].function.as_deref(),
            Some("myapp::handler::serve::{async_fn#0}")
        );
        // No enclosing frame of the same file: stays bare.
        assert_eq!(stack[4].function.as_deref(), Some("{closure#0}<T>"));
        assert_eq!(stack[2].function.as_deref(), Some("poll<F>"));
    }
}
