//! One stack frame: an address with its module, and the names found for it.
//!
//! This module owns the data of a frame: [`Frame`] (an address with its
//! function, source line, ELF module, build id and offset), where its names
//! came from ([`SymbolSource`]), whose code it is ([`Origin`]) and which
//! module file names are the C runtime's ([`is_system_module`]). It does
//! not produce frames ([`super::sequence`] does, by unwinding and
//! symbolizing a copied stack), does not classify them (the `origin`
//! module does, and defines [`Frame::is_application`]) and does not pick
//! the culprit of a stall (the `verdict` module does).

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

/// Modules of the C runtime, the loader and the kernel (file name
/// prefixes). Their symbol tables name their frames well enough, so their
/// DWARF (Debian's `libc6-dbg` is 34 MiB once loaded) is never read, and
/// their frames are never anyone's culprit.
const SYSTEM_MODULES: &[&str] = &[
    "libc.so",
    "libc-",
    "libpthread",
    "ld-linux",
    "ld-musl",
    "ld.so",
    "libgcc_s",
    "libdl",
    "librt",
    "libm.so",
    "libstdc++",
    "[vdso]",
    "linux-vdso",
];

/// Whether a module file name (not a path) is one of the C runtime's.
pub(crate) fn is_system_module(name: &str) -> bool {
    SYSTEM_MODULES.iter().any(|m| name.starts_with(m))
}
