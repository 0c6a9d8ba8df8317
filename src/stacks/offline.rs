//! Symbolizing a report's frames after the fact, from a debug file.
//!
//! This module owns [`symbolize_offset`] (and [`symbolize_offsets`], many
//! at once): a frame of a report from a
//! stripped binary carries its module's build id and its offset; with the
//! debug file of that build (or the unstripped binary), this function turns
//! the offset into functions, files and lines, with the same code the
//! sampler's DWARF pass uses ([`super::dwarf_file::resolve_in_file`]). It does not find
//! the debug file (the caller knows it, or looks it up by build id).

use std::path::Path;

use std::time::{Duration, Instant};

use super::dwarf_file::resolve_in_file;
use super::frame::{Frame, SymbolSource};
use super::names::Named;
use crate::error::Error;

/// The functions at `offset` of the binary whose debug information is in
/// `debug_file` (the unstripped binary, or its separate debug file):
/// innermost (inlined) first, the function the address lies in last, each
/// with [`SymbolSource::Offline`].
///
/// `offset` is a report frame's [`Frame::offset`]. For every frame but the
/// first of a thread it is a return address, which points after the call:
/// pass `is_return_address = true` for those, and the call's line is
/// reported (the instruction before it is looked up).
///
/// Without DWARF for the address, the symbol table's name is returned
/// alone; an empty list means the file names nothing there.
///
/// Errors: [`Error::DebugInfo`] if the file cannot be opened or parsed.
///
/// ```no_run
/// # fn main() -> Result<(), loopwatch::Error> {
/// let frames = loopwatch::symbolize_offset(
///     std::path::Path::new("/usr/lib/debug/.build-id/95/3637b1127184c272be285ce34dc96ed39df419.debug"),
///     0xf2493,
///     true,
/// )?;
/// for f in &frames {
///     println!("{} {}:{}", f.function.as_deref().unwrap_or("?"),
///         f.file.as_deref().unwrap_or("?"), f.line.unwrap_or(0));
/// }
/// # Ok(()) }
/// ```
pub fn symbolize_offset(
    debug_file: &Path,
    offset: u64,
    is_return_address: bool,
) -> Result<Vec<Frame>, Error> {
    Ok(symbolize_offsets(debug_file, &[(offset, is_return_address)])?
        .pop()
        .unwrap_or_default())
}

/// [`symbolize_offset`] for many offsets of one build at once: the debug
/// file is read and parsed once, not once per offset. One list of frames
/// per `(offset, is_return_address)`, in order.
///
/// Errors: [`Error::DebugInfo`] if the file cannot be opened or parsed.
pub fn symbolize_offsets(
    debug_file: &Path,
    offsets: &[(u64, bool)],
) -> Result<Vec<Vec<Frame>>, Error> {
    let error = |reason: String| Error::DebugInfo {
        path: debug_file.to_path_buf(),
        reason,
    };
    let svmas: Vec<u64> = offsets
        .iter()
        .map(|&(offset, is_return)| if is_return { offset.wrapping_sub(1) } else { offset })
        .collect();
    let far = Instant::now() + Duration::from_secs(3600);
    let (found, _) = resolve_in_file(debug_file, &svmas, far).map_err(|e| error(e.to_string()))?;
    let symtab = super::symtab::names_in(debug_file, &svmas).map_err(|e| error(e.to_string()))?;
    Ok(offsets
        .iter()
        .zip(found.into_iter().chain(std::iter::repeat_with(Vec::new)))
        .zip(symtab.into_iter().chain(std::iter::repeat(None)))
        .map(|((&(offset, _), named), symtab)| frames_at(offset, named, symtab))
        .collect())
}

/// The frames at `offset` from what DWARF (`named`, innermost first) and
/// the symbol table say about it.
fn frames_at(
    offset: u64,
    mut named: Vec<Named>,
    symtab: Option<String>,
) -> Vec<Frame> {
    let frame = |function, file, line, inlined| Frame {
        ip: offset,
        function,
        file,
        line,
        inlined,
        offset: Some(offset),
        symbols: SymbolSource::Offline,
        ..Frame::default()
    };
    if named.is_empty() {
        return symtab
            .map(|name| frame(Some(name), None, None, false))
            .into_iter()
            .collect();
    }
    super::names::qualify_outermost(&mut named, symtab.as_deref());
    let last = named.len() - 1;
    let mut frames: Vec<Frame> = named
        .into_iter()
        .enumerate()
        .map(|(i, n)| frame(n.function, n.file, n.line, i < last))
        .collect();
    super::names::qualify_closures(&mut frames);
    frames
}
