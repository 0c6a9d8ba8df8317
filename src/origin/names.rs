//! Demangled Rust function names: whose crate a name belongs to, the named
//! function a closure or async body belongs to, and a short form for text.
//!
//! This file only reads strings. It does not decide whose code a crate is
//! (the parent module does, with what it learned about the workspace) and
//! does not symbolize anything (the `stacks` module does).

/// The crate whose code a demangled name is, when the name says so.
///
/// `tokio::runtime::park::Inner::park` is tokio's; a trait method
/// `<T as Trait>::f` belongs to `T`'s crate when `T` has a path
/// (`<myapp::Db as core::future::Future>::poll` is myapp's), else to the
/// trait's (`<F as core::ops::FnOnce<()>>::call_once` is core's); an
/// inherent method of a primitive (`<u64>::unchecked_add`, `<[T]>::sort`)
/// is core's. `None` for names without a path: C functions
/// (`clock_nanosleep`) and the bare names of inlined functions that some
/// debug info carries (`call_once<F>`).
pub(crate) fn crate_of(name: &str) -> Option<&str> {
    let name = name.trim();
    if let Some(qualified) = name.strip_prefix('<') {
        return crate_of_qualified(qualified);
    }
    let first = leading_segment(name)?;
    name[first.len()..].starts_with("::").then_some(first)
}

/// `<T as Trait>::f` or `<T>::f`, given what follows the first `<`.
fn crate_of_qualified(qualified: &str) -> Option<&str> {
    let self_ty = strip_type_prefixes(qualified);
    let end = self_type_end(self_ty);
    let ty = &self_ty[..end];
    if ty.contains("::") {
        return crate_of(ty);
    }
    let rest = &self_ty[end..];
    match rest.strip_prefix(" as ") {
        // A generic parameter (`F`) or a primitive implementing a trait:
        // the trait's crate wrote the code.
        Some(trait_path) => crate_of(strip_type_prefixes(trait_path)),
        // `<u64>::f`, `<[T]>::f`, `<str>::f`: a primitive's inherent method.
        None => Some("core"),
    }
}

/// Skips `&`, `&mut `, `*const `, `*mut `, `dyn `, `impl ` and tuple or
/// slice brackets in front of a type.
fn strip_type_prefixes(mut ty: &str) -> &str {
    loop {
        let before = ty;
        for prefix in [
            "&mut ", "&", "*const ", "*mut ", "dyn ", "impl ", "(", "[", "<",
        ] {
            ty = ty.strip_prefix(prefix).unwrap_or(ty);
        }
        if ty == before {
            return ty;
        }
    }
}

/// Where the self type of `<T as Trait>` ends: at the first ` as ` or `>`
/// at nesting depth 0.
fn self_type_end(s: &str) -> usize {
    let mut depth = 0usize;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '>' if prev == '-' => {}
            '>' if depth == 0 => return i,
            '>' => depth -= 1,
            ' ' if depth == 0 && s[i..].starts_with(" as ") => return i,
            _ => {}
        }
        prev = c;
    }
    s.len()
}

/// The identifier at the start of `name`, if it starts with one.
fn leading_segment(name: &str) -> Option<&str> {
    let end = name
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_'))
        .map_or(name.len(), |(i, _)| i);
    let seg = &name[..end];
    let starts_well = seg
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_');
    starts_well.then_some(seg)
}

/// The named function that a closure, async block or async fn body
/// belongs to: trailing segments in braces are folded away.
///
/// `myapp::run::{{closure}}::{{closure}}` (legacy mangling),
/// `myapp::handler::{closure#0}`, `myapp::serve::{async_fn#0}` and
/// `myapp::main::{async_block#0}` (v0 mangling and debug info) all belong to
/// the function before them. A name that is nothing but such a segment
/// is returned as it is.
pub(crate) fn enclosing_function(name: &str) -> String {
    let mut n = name.trim();
    while let Some((head, last)) = split_last_segment(n) {
        if !(last.starts_with('{') && last.ends_with('}')) || head.is_empty() {
            break;
        }
        n = head;
    }
    n.to_string()
}

/// Splits `a::b::c` into (`a::b`, `c`) at the last `::` outside brackets.
fn split_last_segment(name: &str) -> Option<(&str, &str)> {
    let bytes = name.as_bytes();
    let mut depth = 0i32;
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        match bytes[i] {
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' | b'}' => depth += 1,
            b'<' | b'(' | b'[' | b'{' => depth -= 1,
            b':' if depth == 0 && i > 0 && bytes[i - 1] == b':' => {
                return Some((&name[..i - 1], &name[i + 1..]));
            }
            _ => {}
        }
    }
    None
}

/// The name with every generic argument list elided:
/// `<alloc::boxed::Box<F,A> as core::ops::FnOnce<Args>>::call_once` reads
/// `<alloc::boxed::Box<…> as core::ops::FnOnce<…>>::call_once`. The
/// angle brackets of a qualified path (`<T as Trait>`) stay; an
/// unbalanced name is returned unchanged.
pub(crate) fn elide_generics(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.char_indices().peekable();
    let mut prev: Option<char> = None;
    while let Some((i, c)) = chars.next() {
        let opens_arguments =
            c == '<' && prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '}');
        if !opens_arguments {
            out.push(c);
            prev = Some(c);
            continue;
        }
        let Some(close) = matching_close(&name[i..]) else {
            return name.to_string();
        };
        out.push_str("<…>");
        let end = i + close;
        while chars.peek().is_some_and(|&(j, _)| j <= end) {
            chars.next();
        }
        prev = Some('>');
    }
    out
}

/// The byte offset of the `>` that closes the `<` at the start of `s`.
fn matching_close(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if prev == '-' => {}
            '>' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        prev = c;
    }
    None
}

/// Whether `name` is a valid crate name (an identifier; `-` allowed, as in
/// a package name).
pub(crate) fn is_crate_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crates_of_names() {
        let c = crate_of;
        assert_eq!(c("tokio::runtime::park::Inner::park"), Some("tokio"));
        assert_eq!(c("alloc::vec::Vec<T>::push"), Some("alloc"));
        assert_eq!(
            c("<myapp::Db as core::future::future::Future>::poll"),
            Some("myapp")
        );
        assert_eq!(c("<&mut myapp::Db as myapp::Store>::get"), Some("myapp"));
        assert_eq!(
            c("<F as core::ops::function::FnOnce<()>>::call_once"),
            Some("core")
        );
        assert_eq!(c("<F as myapp::Job>::run"), Some("myapp"));
        assert_eq!(
            c("<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once"),
            Some("alloc")
        );
        assert_eq!(c("<u64>::unchecked_add"), Some("core"));
        assert_eq!(c("<[T]>::sort_by"), Some("core"));
        assert_eq!(c("<(A,B) as serde::Serialize>::serialize"), Some("serde"));
        assert_eq!(c("<dyn core::any::Any + Send>::downcast_ref"), Some("core"));
        assert_eq!(c("clock_nanosleep"), None);
        assert_eq!(c("call_once<(), F>"), None);
        assert_eq!(c("{async_fn#0}"), None);
        assert_eq!(
            c("serde_json::de::from_str<myapp::Catalog>"),
            Some("serde_json")
        );
    }

    #[test]
    fn closures_and_async_bodies_belong_to_their_function() {
        let e = enclosing_function;
        assert_eq!(e("demo::stall_spin::{{closure}}"), "demo::stall_spin");
        assert_eq!(e("demo::run::{{closure}}::{{closure}}"), "demo::run");
        assert_eq!(e("myapp::handler::{closure#0}"), "myapp::handler");
        assert_eq!(e("myapp::serve::{async_fn#0}"), "myapp::serve");
        assert_eq!(
            e("myapp::main::{async_block#0}::{closure#1}"),
            "myapp::main"
        );
        assert_eq!(
            e("<myapp::Db as myapp::Store>::get::{async_fn#0}"),
            "<myapp::Db as myapp::Store>::get"
        );
        assert_eq!(e("{async_fn#0}"), "{async_fn#0}");
        assert_eq!(e("demo::run"), "demo::run");
        assert_eq!(
            e("myapp::f<core::option::Option<{closure#0}>>::{closure#0}"),
            "myapp::f<core::option::Option<{closure#0}>>"
        );
    }

    #[test]
    fn generic_arguments_are_elided_but_qualified_paths_kept() {
        let e = elide_generics;
        assert_eq!(
            e("<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once"),
            "<alloc::boxed::Box<…> as core::ops::function::FnOnce<…>>::call_once"
        );
        assert_eq!(
            e("tokio::runtime::task::core::Core<T,S>::poll::{{closure}}"),
            "tokio::runtime::task::core::Core<…>::poll::{{closure}}"
        );
        assert_eq!(
            e("hashbrown::map::HashMap<K,V,S,A>::insert<alloc::string::String, core::option::Option<alloc::boxed::Box<dyn core::ops::function::Fn(u8) -> u8>>>"),
            "hashbrown::map::HashMap<…>::insert<…>"
        );
        assert_eq!(e("<u64>::unchecked_add"), "<u64>::unchecked_add");
        assert_eq!(e("plain::name"), "plain::name");
        assert_eq!(e("broken<name"), "broken<name");
    }
}
