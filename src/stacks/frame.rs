//! One stack frame, and whether it is the application's code.
//!
//! This module owns [`Frame`] (an address with its function, source line
//! and ELF module) and the classification of frames into the
//! application's own code versus plumbing: the Rust standard library, the
//! async runtime and its dependencies, locks, loopwatch itself and the C
//! runtime. It does not produce frames ([`super::sequence`] does, by
//! unwinding and symbolizing a copied stack) nor pick the culprit of a
//! stall (the `verdict` module does, from [`Frame::is_application`]).

use serde::{Deserialize, Serialize};

/// One stack frame.
///
/// Every frame carries its module's build id and its address inside that
/// module (`offset`), so that a report from a binary without symbols can be
/// symbolized later against the matching debug file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Frame {
    /// Code address: the interrupted instruction for the first frame, the
    /// return address for callers (whose `file`/`line` describe the call).
    pub ip: u64,
    /// Demangled function name, without Rust's hash suffix.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// This function was inlined into the next frame (same `ip`).
    pub inlined: bool,
    /// File name of the ELF module containing `ip` (`[vdso]` for the vdso).
    pub module: Option<String>,
    /// The module's GNU build id, in hex, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// `ip` as an address of the module's ELF file (the runtime address
    /// minus the load bias): what `addr2line -e <file> <offset>` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Where `function`, `file` and `line` came from.
    #[serde(default)]
    pub symbols: SymbolSource,
    /// Whose code this is: the application's own, a dependency's, or the
    /// runtime's (std, tokio, libc, loopwatch). Set once the frame is
    /// classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a frame's names came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SymbolSource {
    /// Nothing: the address only (a stripped module, or not looked up yet).
    #[default]
    None,
    /// The module's ELF symbol table: the function's name, no file or line,
    /// no inlined functions.
    SymbolTable,
    /// DWARF debug information (in the module or a separate debug file):
    /// file, line and inlined functions.
    DebugInfo,
    /// Filled in after the fact from a debug file (`loopwatch symbolize`).
    Offline,
}

/// Whose code a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The application's own crates (its workspace).
    Own,
    /// A dependency of the application (registry, git or vendored crates).
    Dependency,
    /// The Rust standard library, the async runtime, the C library, the
    /// dynamic loader, loopwatch.
    Runtime,
}

/// Crates whose frames are runtime plumbing, not the application.
const RUNTIME_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "tokio",
    "tokio_util",
    "mio",
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    "futures_core",
    "futures_util",
    "futures_executor",
    "hashbrown",
    "tracing",
    "tracing_core",
    "backtrace",
    "loopwatch",
];

/// Modules of the C runtime (file name prefixes).
const SYSTEM_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "libgcc_s",
    "libdl",
    "librt",
    "libm.so",
    "libstdc++",
    "[vdso]",
    "linux-vdso",
];

/// Entry points of the C runtime found at the root of every stack.
const RUNTIME_ENTRY_POINTS: &[&str] = &["main", "_start", "start_thread", "clone", "clone3"];

impl Frame {
    /// Whether this frame is the application's own code rather than the
    /// standard library, the async runtime, locks, loopwatch or libc.
    ///
    /// False for frames without a function name; in a system module (libc,
    /// the dynamic loader, the vdso, ...); whose source file belongs to the
    /// Rust standard library (`/rustc/<hash>/library/...`), to loopwatch, or
    /// to one of the crates below (found from the `registry/src/<index>/<crate>-<version>/`
    /// or `vendor/<crate>/` part of the path); whose function is in one of
    /// `std`, `core`, `alloc`, `tokio`, `tokio_util`, `mio`, `parking_lot`,
    /// `parking_lot_core`, `lock_api`, `futures_*`, `hashbrown`, `tracing`,
    /// `tracing_core`, `backtrace`, `loopwatch`; whose name starts with `__`
    /// or is a C entry point (`main`, `_start`, `start_thread`, `clone`);
    /// and trait implementations `<T as Trait>::f` where `T` is one of those
    /// crates' types, or a bare generic (`F`) and `Trait` is theirs (closure
    /// shims such as `<F as core::ops::FnOnce>::call_once`). True otherwise:
    /// `<myapp::Db as core::future::Future>::poll` is the application's.
    ///
    /// The source file matters for inlined frames of binaries built with
    /// `debug = "line-tables-only"`: their names carry no path
    /// (`call_once<F>` rather than `core::ops::FnOnce::call_once`).
    ///
    /// The stall verdict names the innermost application frame.
    pub fn is_application(&self) -> bool {
        let Some(function) = self.function.as_deref() else {
            return false;
        };
        if let Some(module) = self.module.as_deref() {
            if SYSTEM_MODULES.iter().any(|m| module.starts_with(m)) {
                return false;
            }
        }
        if self.file.as_deref().is_some_and(is_runtime_file) {
            return false;
        }
        if function.starts_with("__") || RUNTIME_ENTRY_POINTS.contains(&function) {
            return false;
        }
        if let Some(qualified) = function.strip_prefix('<') {
            return is_application_impl(qualified);
        }
        !is_runtime_path(function)
    }
}

/// loopwatch's own sources, as recorded in debug info.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

/// Whether a source path belongs to the standard library, loopwatch, or a
/// crate of [`RUNTIME_CRATES`].
fn is_runtime_file(path: &str) -> bool {
    if path.starts_with("/rustc/")
        || path.contains("/lib/rustlib/src/rust/library/")
        || path.starts_with(OWN_SOURCES)
    {
        return true;
    }
    let package = if let Some((_, rest)) = path.split_once("/registry/src/") {
        // <index>/<crate>-<version>/...
        rest.split('/').nth(1)
    } else if let Some((_, rest)) = path.rsplit_once("/vendor/") {
        rest.split('/').next()
    } else {
        None
    };
    let Some(package) = package else {
        return false;
    };
    // Strip "-<version>": the first '-' followed by a digit.
    let name = package
        .char_indices()
        .find(|&(i, c)| c == '-' && package[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        .map_or(package, |(i, _)| &package[..i])
        .replace('-', "_");
    RUNTIME_CRATES.contains(&name.as_str()) || name.starts_with("futures_")
}

/// `<T as Trait>::f`, given what follows the first `<`.
fn is_application_impl(qualified: &str) -> bool {
    let self_ty = qualified
        .trim_start_matches('<')
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim_start_matches("*const ")
        .trim_start_matches("*mut ")
        .trim_start_matches("dyn ");
    if is_runtime_path(self_ty) {
        return false;
    }
    // The self type ends at the first " as " at nesting depth 0 (or at the
    // closing `>` of an inherent `<T>::f`).
    let mut depth = 0usize;
    let mut end = self_ty.len();
    for (i, c) in self_ty.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            '>' if depth == 0 => {
                end = i;
                break;
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && self_ty[i..].starts_with(" as ") => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let ty = &self_ty[..end];
    let generic = !ty.contains("::");
    if generic {
        // `<u64>::unchecked_add`: an inherent method of a type without a
        // path is a primitive's, i.e. core's.
        if self_ty[end..].starts_with('>') {
            return false;
        }
        let trait_path = self_ty[end..].trim_start_matches(" as ");
        if is_runtime_path(trait_path) {
            return false;
        }
    }
    true
}

fn is_runtime_path(path: &str) -> bool {
    RUNTIME_CRATES.iter().any(|c| {
        path.strip_prefix(c)
            .is_some_and(|rest| rest.starts_with("::"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_frames() {
        let frame = |function: Option<&str>, module: Option<&str>| Frame {
            ip: 1,
            function: function.map(str::to_string),
            file: None,
            line: None,
            inlined: false,
            module: module.map(str::to_string),
            ..Frame::default()
        };
        let app = |f: &str| frame(Some(f), Some("mydaemon")).is_application();
        assert!(app("mydaemon::handlers::checkout"));
        assert!(app("mydaemon::handlers::checkout::{{closure}}"));
        assert!(app("<mydaemon::Db as core::future::future::Future>::poll"));
        assert!(app("<&mut mydaemon::Db as mydaemon::Store>::get"));
        assert!(app("<F as mydaemon::Job>::run"));
        assert!(app("stdx::thing"));
        assert!(!app("std::thread::sleep"));
        assert!(!app("core::hint::black_box"));
        assert!(!app("alloc::vec::Vec<T>::push"));
        assert!(!app("tokio::runtime::park::Inner::park"));
        assert!(!app("parking_lot::raw_mutex::RawMutex::lock_slow"));
        assert!(!app("parking_lot_core::parking_lot::park"));
        assert!(!app("loopwatch::monitor::run"));
        assert!(!app("<F as core::ops::function::FnOnce<()>>::call_once"));
        assert!(!app(
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once"
        ));
        assert!(!app(
            "<core::pin::Pin<P> as core::future::future::Future>::poll"
        ));
        assert!(!app(
            "<tokio::task::JoinHandle<T> as core::future::future::Future>::poll"
        ));
        assert!(!app("__rust_begin_short_backtrace"));
        assert!(!app("main"));
        assert!(!app("start_thread"));
        assert!(!frame(Some("clock_nanosleep"), Some("libc.so.6")).is_application());
        assert!(!frame(Some("__vdso_clock_gettime"), Some("[vdso]")).is_application());
        assert!(!frame(None, Some("mydaemon")).is_application());
        assert!(frame(Some("mydaemon::f"), None).is_application());

        // Inlined frames of line-tables-only builds have unqualified names: the
        // source path decides.
        let in_file = |function: &str, file: &str| Frame {
            file: Some(file.to_string()),
            ..frame(Some(function), Some("mydaemon"))
        };
        let rustc =
            "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/panic/unwind_safe.rs";
        assert!(!in_file("call_once<(), F>", rustc).is_application());
        assert!(!in_file(
            "poll<F>",
            "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.0/src/runtime/task/core.rs"
        )
        .is_application());
        assert!(!in_file(
            "lock<T>",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/parking_lot_core-0.9.10/src/parking_lot.rs"
        )
        .is_application());
        assert!(
            !in_file("next<S>", "/build/vendor/futures-util/src/stream/mod.rs").is_application()
        );
        assert!(!in_file(
            "capture",
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/stacks/mod.rs")
        )
        .is_application());
        assert!(in_file("checkout", "/srv/mydaemon/src/handlers.rs").is_application());
        assert!(in_file(
            "parse<T>",
            "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde_json-1.0.140/src/de.rs"
        )
        .is_application());
    }
}
